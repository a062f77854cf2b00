//! Answering a Recall frame: the search runs on the blocking pool, and the results go
//! back in as many RecallResult frames as the frame limit needs.

use std::sync::Arc;

use crate::index::{RecallError, RecallHit, RecallQuery};
use crate::ingest::Engine;
use crate::transport::protocol::{Frame, RecallStatus, FRAME_HEADER_BYTES, RECALL_HIT_FIXED_BYTES};

/// Bytes of a RecallResult besides its message and hits.
const RESULT_FIXED_BYTES: usize = FRAME_HEADER_BYTES + 8 + 2 + 2 + 8 + 1 + 2;

/// Answers a Recall; `query_id`, if any, names the stored observation whose embedding is
/// the query.
pub(super) async fn answer_recall(
    engine: Arc<Engine>,
    request_id: u64,
    mut query: RecallQuery,
    query_id: Option<String>,
) -> Vec<Frame> {
    let frame_bytes_max = engine.limits().frame_bytes_max as usize;
    let recalled = tokio::task::spawn_blocking(move || {
        if let Some(id) = query_id {
            query.embedding = engine.embedding_of(&query.space, &id)?;
        }
        engine.recall(&query)
    })
    .await
    .expect("recall does not panic");
    match recalled {
        Ok(recalled) => split(request_id, recalled.as_of.0, recalled.hits, frame_bytes_max),
        Err(e) => vec![Frame::RecallResult {
            request_id,
            status: status_of(&e),
            message: e.to_string(),
            as_of_lsn: 0,
            more: false,
            hits: Vec::new(),
        }],
    }
}

fn status_of(e: &RecallError) -> RecallStatus {
    match e {
        RecallError::UnknownSpace { .. } => RecallStatus::UnknownSpace,
        RecallError::DimensionMismatch { .. } => RecallStatus::DimensionMismatch,
        RecallError::NonFinite { .. }
        | RecallError::InvalidK { .. }
        | RecallError::InvalidEf { .. } => RecallStatus::InvalidQuery,
        RecallError::FutureLsn { .. } => RecallStatus::FutureLsn,
        RecallError::UnknownId { .. } => RecallStatus::UnknownId,
        RecallError::Wal(_) | RecallError::Index(_) | RecallError::BadRecord { .. } => {
            RecallStatus::Failed
        }
    }
}

/// The hits in frames of at most `frame_bytes_max` bytes, best first; at least one frame.
fn split(
    request_id: u64,
    as_of_lsn: u64,
    hits: Vec<RecallHit>,
    frame_bytes_max: usize,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = RESULT_FIXED_BYTES;
    for hit in hits {
        let size = RECALL_HIT_FIXED_BYTES + hit.id.len() + hit.what.len();
        // One hit always fits: ingest bounds ids and texts well under the frame limit.
        if !chunk.is_empty() && bytes + size > frame_bytes_max {
            frames.push(std::mem::take(&mut chunk));
            bytes = RESULT_FIXED_BYTES;
        }
        bytes += size;
        chunk.push(hit);
    }
    frames.push(chunk);
    let last = frames.len() - 1;
    frames
        .into_iter()
        .enumerate()
        .map(|(i, hits)| Frame::RecallResult {
            request_id,
            status: RecallStatus::Ok,
            message: String::new(),
            as_of_lsn,
            more: i < last,
            hits,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Lsn;

    #[test]
    fn results_split_into_frames_within_the_limit_and_in_order() {
        let hits: Vec<RecallHit> = (0..10)
            .map(|i| RecallHit {
                id: format!("id-{i}"),
                score: 1.0 - i as f32 / 10.0,
                what: "w".repeat(100),
                when_unix_ns: i,
                confidence: 1.0,
                lsn: Lsn(i as u64 + 1),
            })
            .collect();
        let frames = split(7, 42, hits.clone(), 400);
        assert!(frames.len() > 1);
        let mut again = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let mut bytes = Vec::new();
            frame.encode(&mut bytes);
            assert!(bytes.len() - 4 <= 400, "frame {i} is {} bytes", bytes.len());
            let Frame::RecallResult {
                more,
                hits,
                as_of_lsn,
                ..
            } = frame
            else {
                panic!("{frame:?}");
            };
            assert_eq!((*more, *as_of_lsn), (i + 1 < frames.len(), 42));
            again.extend(hits.iter().cloned());
        }
        assert_eq!(again, hits);
        assert_eq!(split(7, 42, Vec::new(), 400).len(), 1, "no hits: one frame");
    }
}

//! `Session::recall`: the nearest observations of a space, over the session.

use super::{ClientError, Session};
use crate::index::{Consistency, RecallQuery, Recalled};
use crate::transport::protocol::{Frame, RecallStatus};
use crate::wal::Lsn;

impl Session {
    /// The `query.k` observations of `query.space` nearest to its embedding. Asked after
    /// everything this session sent before, so with ReadYourWrites the session's own
    /// acknowledged observations are candidates. A refusal (no such space, a wrong
    /// dimension...) is `ClientError::Recall`; the session goes on.
    pub async fn recall(&mut self, query: &RecallQuery) -> Result<Recalled, ClientError> {
        self.recall_request(query, String::new()).await
    }

    /// Like `recall`, with the embedding stored with (`query.space`, `id`) as the query;
    /// `query.embedding` is not sent.
    pub async fn recall_by_id(
        &mut self,
        query: &RecallQuery,
        id: &str,
    ) -> Result<Recalled, ClientError> {
        let query = RecallQuery {
            embedding: Vec::new(),
            ..query.clone()
        };
        self.recall_request(&query, id.to_owned()).await
    }

    async fn recall_request(
        &mut self,
        query: &RecallQuery,
        query_id: String,
    ) -> Result<Recalled, ClientError> {
        let k = u16::try_from(query.k).map_err(|_| ClientError::Recall {
            status: RecallStatus::InvalidQuery,
            message: format!("k is {}; expected at most {}", query.k, u16::MAX),
        })?;
        let ef = u16::try_from(query.ef.unwrap_or(0)).unwrap_or(u16::MAX);
        let request_id = self
            .request(|request_id| Frame::Recall {
                request_id,
                space: query.space.clone(),
                k,
                ef,
                consistency: query.consistency,
                query_id,
                embedding: query.embedding.clone(),
            })
            .await?;
        let mut recalled = Recalled {
            as_of: Lsn::ZERO,
            hits: Vec::new(),
            scanned: 0,
        };
        loop {
            match self.answer(request_id).await? {
                Frame::RecallResult {
                    status: RecallStatus::Ok,
                    as_of_lsn,
                    more,
                    hits,
                    ..
                } => {
                    recalled.as_of = Lsn(as_of_lsn);
                    recalled.hits.extend(hits);
                    if !more {
                        return Ok(recalled);
                    }
                }
                Frame::RecallResult {
                    status, message, ..
                } => return Err(ClientError::Recall { status, message }),
                other => return Err(ClientError::Unexpected(format!("{other:?}"))),
            }
        }
    }
}

impl RecallQuery {
    /// A ReadYourWrites query at the server's default beam.
    pub fn new(space: &str, embedding: Vec<f32>, k: usize) -> RecallQuery {
        RecallQuery {
            space: space.to_owned(),
            embedding,
            k,
            ef: None,
            consistency: Consistency::ReadYourWrites,
        }
    }
}

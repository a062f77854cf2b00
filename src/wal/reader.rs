//! Reading the open log from an LSN, zero-copy, up to the durable LSN.

use std::sync::Arc;

use tokio::sync::watch;

use super::error::{CorruptionAt, CorruptionReason, Result, WalError};
use super::format::{decode_record, Decoded, RecordKind};
use super::log::Shared;
use super::lsn::Lsn;
use super::segment::{Segment, FIRST_RECORD_OFFSET};

/// A handle for reading the log; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct WalReader {
    shared: Arc<Shared>,
}

/// One durable record. Its payload borrows the segment's mapping, which the record keeps
/// alive even if the segment is truncated away meanwhile.
#[derive(Clone)]
pub struct Record {
    segment: Arc<Segment>,
    payload_offset: usize,
    payload_len: usize,
    pub lsn: Lsn,
    pub kind: RecordKind,
}

impl Record {
    pub fn payload(&self) -> &[u8] {
        &self.segment.bytes()[self.payload_offset..self.payload_offset + self.payload_len]
    }

    pub fn segment_name(&self) -> &str {
        self.segment.name()
    }

    /// Offset of the record's frame in its segment file.
    pub fn offset(&self) -> u64 {
        (self.payload_offset - super::format::RECORD_HEADER_BYTES) as u64
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("lsn", &self.lsn)
            .field("kind", &self.kind)
            .field("len", &self.payload_len)
            .finish()
    }
}

impl WalReader {
    pub(crate) fn new(shared: Arc<Shared>) -> WalReader {
        WalReader { shared }
    }

    pub fn durable_lsn(&self) -> Lsn {
        *self.shared.durable.borrow()
    }

    pub fn subscribe_durable(&self) -> watch::Receiver<Lsn> {
        self.shared.durable.subscribe()
    }

    /// The oldest LSN still in the log (older ones were truncated).
    pub fn oldest_lsn(&self) -> Lsn {
        let segments = self.shared.segments.read().expect("segment list lock");
        segments.first().map_or(Lsn::FIRST, |s| s.first_lsn())
    }

    /// A cursor that yields records from `from` on, each once it is durable.
    pub fn cursor(&self, from: Lsn) -> RecordCursor {
        RecordCursor {
            shared: self.shared.clone(),
            segment: None,
            offset: 0,
            next_lsn: from.max(Lsn::FIRST),
        }
    }
}

#[derive(Clone)]
pub struct RecordCursor {
    shared: Arc<Shared>,
    segment: Option<Arc<Segment>>,
    offset: usize,
    next_lsn: Lsn,
}

impl RecordCursor {
    /// The LSN of the record `read_next` returns next.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The next record, or `None` if it is not durable yet.
    pub fn read_next(&mut self) -> Result<Option<Record>> {
        if self.next_lsn > *self.shared.durable.borrow() {
            return Ok(None);
        }
        if self.segment.is_none() {
            self.locate()?;
        }
        loop {
            let segment = self.segment.clone().expect("located");
            match decode_record(
                segment.bytes_from(self.offset),
                segment.header().salt,
                self.next_lsn,
            ) {
                Decoded::Record(r) => {
                    let (payload_len, lsn, kind, frame_len) =
                        (r.payload.len(), r.lsn, r.kind, r.frame_len);
                    let record = Record {
                        payload_offset: self.offset + super::format::RECORD_HEADER_BYTES,
                        payload_len,
                        lsn,
                        kind,
                        segment,
                    };
                    self.offset += frame_len;
                    self.next_lsn = self.next_lsn.next();
                    return Ok(Some(record));
                }
                Decoded::Padding { frame_len } => self.offset += frame_len,
                Decoded::End | Decoded::Incomplete { .. } => {
                    // A durable record that is not here must start the next segment.
                    let next = self.segment_starting_at(self.next_lsn).ok_or_else(|| {
                        self.corruption(
                            &segment,
                            CorruptionReason::LsnGap {
                                expected: self.next_lsn,
                                found: Lsn::ZERO,
                            },
                        )
                    })?;
                    self.segment = Some(next);
                    self.offset = FIRST_RECORD_OFFSET as usize;
                }
                Decoded::Invalid(invalid) => {
                    return Err(self.corruption(&segment, CorruptionReason::Record(invalid)))
                }
            }
        }
    }

    /// Waits until the next record is durable, then returns it. `None` once the log closes.
    pub async fn next_durable(&mut self) -> Result<Option<Record>> {
        let mut durable = self.shared.durable.subscribe();
        loop {
            if let Some(record) = self.read_next()? {
                return Ok(Some(record));
            }
            if durable.wait_for(|&d| d >= self.next_lsn).await.is_err() {
                return Ok(None);
            }
        }
    }

    fn segment_starting_at(&self, lsn: Lsn) -> Option<Arc<Segment>> {
        let segments = self.shared.segments.read().expect("segment list lock");
        segments.iter().find(|s| s.first_lsn() == lsn).cloned()
    }

    /// Finds the segment holding `next_lsn` and the offset of its record.
    fn locate(&mut self) -> Result<()> {
        let segment = {
            let segments = self.shared.segments.read().expect("segment list lock");
            let oldest = segments.first().map_or(Lsn::FIRST, |s| s.first_lsn());
            if self.next_lsn < oldest {
                return Err(WalError::Truncated {
                    requested: self.next_lsn,
                    oldest,
                });
            }
            segments
                .iter()
                .rev()
                .find(|s| s.first_lsn() <= self.next_lsn)
                .cloned()
                .expect("a durable LSN is in a segment")
        };
        let mut offset = FIRST_RECORD_OFFSET as usize;
        let mut lsn = segment.first_lsn();
        while lsn < self.next_lsn {
            match decode_record(segment.bytes_from(offset), segment.header().salt, lsn) {
                Decoded::Record(r) => offset += r.frame_len,
                Decoded::Padding { frame_len } => {
                    offset += frame_len;
                    continue;
                }
                Decoded::Invalid(invalid) => {
                    self.offset = offset;
                    return Err(self.corruption(&segment, CorruptionReason::Record(invalid)));
                }
                // The record lies in a later segment; `read_next` moves there.
                Decoded::End | Decoded::Incomplete { .. } => break,
            }
            lsn = lsn.next();
        }
        self.segment = Some(segment);
        self.offset = offset;
        Ok(())
    }

    fn corruption(&self, segment: &Segment, reason: CorruptionReason) -> WalError {
        WalError::Corruption(CorruptionAt {
            segment: segment.name().to_owned(),
            offset: self.offset as u64,
            lsn: self.next_lsn,
            reason,
        })
    }
}

//! The observation: what clients stream and the log stores, as an rkyv archive that
//! readers access in place (zero-copy) after validating it.

use rkyv::rancor;

/// One thing a client observed.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct Observation {
    /// The memory space it belongs to; each space has its own index.
    pub space: String,
    /// The client's id for it, unique within the space.
    pub id: String,
    pub when_unix_ns: i64,
    pub confidence: f32,
    /// The text that was observed.
    pub what: String,
    pub embedding: Vec<f32>,
}

/// Archive bytes besides the strings and floats: field headers and alignment padding.
const ARCHIVE_OVERHEAD_BYTES: usize = 64;

/// A payload that is not a valid archived observation.
#[derive(Debug, thiserror::Error)]
#[error("the payload is not a valid archive: {0}")]
pub struct PayloadError(String);

impl PayloadError {
    pub(crate) fn new(reason: String) -> PayloadError {
        PayloadError(reason)
    }
}

impl Observation {
    /// The record payload for this observation.
    pub fn to_payload(&self) -> Vec<u8> {
        // Sized up front: growing (and copying out of an aligned buffer) showed in profiles.
        // Positions inside the archive are relative, so an unaligned Vec is fine here; the
        // log stores every payload 8-aligned.
        let estimate = ARCHIVE_OVERHEAD_BYTES
            + self.space.len()
            + self.id.len()
            + self.what.len()
            + 4 * self.embedding.len();
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, Vec::with_capacity(estimate))
            .expect("archiving into memory cannot fail")
    }

    /// Views a payload in place. The payload must be 8-byte aligned, as WAL records are.
    pub fn view(payload: &[u8]) -> Result<&ArchivedObservation, PayloadError> {
        rkyv::access::<ArchivedObservation, rancor::Error>(payload)
            .map_err(|e| PayloadError(e.to_string()))
    }

    /// Copies an archived observation out, for callers that need an owned one.
    pub fn from_archived(archived: &ArchivedObservation) -> Observation {
        rkyv::deserialize::<Observation, rancor::Error>(archived)
            .expect("a validated archive deserializes")
    }
}

impl ArchivedObservation {
    pub fn dimension(&self) -> usize {
        self.embedding.len()
    }

    /// The embedding as native floats: borrowed in place on little-endian machines (the
    /// archive's byte order), copied elsewhere.
    pub fn embedding(&self) -> std::borrow::Cow<'_, [f32]> {
        let archived = self.embedding.as_slice();
        #[cfg(target_endian = "little")]
        {
            const _: () = assert!(
                std::mem::size_of::<rkyv::rend::f32_le>() == 4
                    && std::mem::align_of::<rkyv::rend::f32_le>() == 4
            );
            // SAFETY: on a little-endian machine `f32_le` has the size, alignment and
            // byte layout of `f32` (asserted above), and every bit pattern is a valid f32.
            let native = unsafe {
                std::slice::from_raw_parts(archived.as_ptr().cast::<f32>(), archived.len())
            };
            std::borrow::Cow::Borrowed(native)
        }
        #[cfg(not(target_endian = "little"))]
        {
            std::borrow::Cow::Owned(archived.iter().map(|x| x.to_native()).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_through_an_aligned_buffer() {
        let obs = Observation {
            space: "notes".into(),
            id: "n-1".into(),
            when_unix_ns: 1_700_000_000_000_000_000,
            confidence: 0.5,
            what: "saw a heron".into(),
            embedding: vec![0.25, -1.0, 3.5],
        };
        let mut payload = rkyv::util::AlignedVec::<8>::new();
        payload.extend_from_slice(&obs.to_payload());
        let view = Observation::view(&payload).expect("valid");
        assert_eq!(view.space.as_str(), "notes");
        assert_eq!(view.dimension(), 3);
        assert_eq!(&*view.embedding(), &[0.25, -1.0, 3.5]);
        assert_eq!(Observation::from_archived(view), obs);
        assert!(Observation::view(&payload[..payload.len() - 4]).is_err());
    }
}

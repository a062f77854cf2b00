//! A space defined explicitly, before its first observation: the log record that keeps
//! an empty space, its dimension and its distance across restarts. A space that is never
//! defined takes the dimension of its first observation and the default metric.

use rkyv::rancor;

/// How the space's index compares embeddings (the index, issue 4, uses it).
#[derive(
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Metric {
    #[default]
    Cosine = 0,
    L2 = 1,
    Dot = 2,
}

impl Metric {
    pub fn from_u8(code: u8) -> Option<Metric> {
        Some(match code {
            0 => Metric::Cosine,
            1 => Metric::L2,
            2 => Metric::Dot,
            _ => return None,
        })
    }
}

/// The payload of a `RecordKind::Space` record.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct SpaceDefinition {
    pub name: String,
    pub dim: u32,
    pub metric: Metric,
}

impl SpaceDefinition {
    pub fn to_payload(&self) -> Vec<u8> {
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, Vec::with_capacity(64))
            .expect("archiving into memory cannot fail")
    }

    /// Views a payload in place; it must be 8-byte aligned, as WAL records are.
    pub fn view(
        payload: &[u8],
    ) -> Result<&ArchivedSpaceDefinition, crate::observation::PayloadError> {
        rkyv::access::<ArchivedSpaceDefinition, rancor::Error>(payload)
            .map_err(|e| crate::observation::PayloadError::new(e.to_string()))
    }
}

impl ArchivedSpaceDefinition {
    pub fn metric(&self) -> Metric {
        match self.metric {
            ArchivedMetric::Cosine => Metric::Cosine,
            ArchivedMetric::L2 => Metric::L2,
            ArchivedMetric::Dot => Metric::Dot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_round_trips_through_an_aligned_buffer() {
        let def = SpaceDefinition {
            name: "notes".into(),
            dim: 384,
            metric: Metric::L2,
        };
        let mut payload = rkyv::util::AlignedVec::<8>::new();
        payload.extend_from_slice(&def.to_payload());
        let view = SpaceDefinition::view(&payload).unwrap();
        assert_eq!(
            (view.name.as_str(), view.dim.to_native(), view.metric()),
            ("notes", 384, Metric::L2)
        );
        assert!(SpaceDefinition::view(&payload[..payload.len() - 4]).is_err());
    }
}

//! Checks one observation against the limits and its space, naming what was wrong.

use std::fmt;

use crate::observation::Observation;
use crate::transport::protocol::{Frame, RejectCode};

use super::limits::{IngestLimits, ID_BYTES_MAX, SPACE_NAME_BYTES_MAX};
use super::spaces::{Definition, DimensionClaim, SpaceRegistry};
use crate::space::Metric;

/// Why an observation was refused: the field, what was expected, what came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: RejectCode,
    pub field: &'static str,
    pub expected: String,
    pub got: String,
}

impl Rejection {
    /// The session's token may not write `space`. Said the same whether or not the space
    /// exists.
    pub fn forbidden(space: &str) -> Rejection {
        Rejection::new(
            RejectCode::Forbidden,
            "space",
            "a space the session's token may write",
            space,
        )
    }

    fn new(
        code: RejectCode,
        field: &'static str,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Rejection {
        Rejection {
            code,
            field,
            expected: expected.into(),
            got: got.into(),
        }
    }

    pub fn to_frame(&self, seq: u64) -> Frame {
        Frame::Reject {
            seq,
            code: self.code as u16,
            field: self.field.to_owned(),
            expected: clip(&self.expected),
            got: clip(&self.got),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}: field {} expected {}, got {}",
            self.code, self.field, self.expected, self.got
        )
    }
}

/// Messages quote client input: keep them short enough for a str16 and a log line.
fn clip(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn is_space_name(name: &str) -> bool {
    (1..=SPACE_NAME_BYTES_MAX as usize).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn check_space_name(name: &str) -> Result<(), Rejection> {
    if is_space_name(name) {
        return Ok(());
    }
    Err(Rejection::new(
        RejectCode::InvalidSpace,
        "space",
        format!("1-{SPACE_NAME_BYTES_MAX} bytes of [A-Za-z0-9_.-]"),
        format!("{name:?} ({} bytes)", name.len()),
    ))
}

fn check_dimension(
    dim: usize,
    field: &'static str,
    limits: &IngestLimits,
) -> Result<(), Rejection> {
    if dim == 0 {
        return Err(Rejection::new(
            RejectCode::EmptyEmbedding,
            field,
            "at least 1 dimension",
            "0",
        ));
    }
    if dim > limits.embedding_dim_max as usize {
        return Err(Rejection::new(
            RejectCode::DimensionTooLarge,
            field,
            format!("at most {} dimensions", limits.embedding_dim_max),
            format!("{dim} dimensions"),
        ));
    }
    Ok(())
}

fn too_many_spaces(name: &str, limits: &IngestLimits) -> Rejection {
    Rejection::new(
        RejectCode::TooManySpaces,
        "space",
        format!("one of the existing spaces (at most {})", limits.spaces_max),
        format!("new space {name:?}"),
    )
}

/// Validates an explicit definition of `name` with `dim` and `metric`, and defines it
/// in `spaces` unless it exists already. Nothing is logged here.
pub fn validate_definition(
    name: &str,
    dim: u32,
    metric: Metric,
    limits: &IngestLimits,
    spaces: &SpaceRegistry,
) -> Result<Definition, Rejection> {
    check_space_name(name)?;
    check_dimension(dim as usize, "dim", limits)?;
    match spaces.define(name, dim, metric, limits.spaces_max) {
        Definition::Full => Err(too_many_spaces(name, limits)),
        Definition::Conflict {
            dim: existing,
            metric: existing_metric,
        } => Err(Rejection::new(
            RejectCode::DimensionMismatch,
            "dim",
            format!("dimension {existing} and metric {existing_metric:?} (space {name} exists)"),
            format!("dimension {dim} and metric {metric:?}"),
        )),
        created_or_exists => Ok(created_or_exists),
    }
}

/// Validates `obs`; on success its space has the embedding's dimension (claimed now if the
/// space is new). Nothing is stored here.
pub fn validate(
    obs: &Observation,
    limits: &IngestLimits,
    spaces: &SpaceRegistry,
) -> Result<(), Rejection> {
    use RejectCode::*;
    check_space_name(&obs.space)?;
    if obs.id.is_empty() || obs.id.len() > ID_BYTES_MAX as usize {
        return Err(Rejection::new(
            InvalidId,
            "id",
            format!("1-{ID_BYTES_MAX} bytes"),
            format!("{} bytes", obs.id.len()),
        ));
    }
    if obs.what.len() > limits.what_bytes_max as usize {
        return Err(Rejection::new(
            WhatTooLong,
            "what",
            format!("at most {} bytes", limits.what_bytes_max),
            format!("{} bytes", obs.what.len()),
        ));
    }
    if !(0.0..=1.0).contains(&obs.confidence) {
        return Err(Rejection::new(
            ConfidenceOutOfRange,
            "confidence",
            "a number in [0, 1]",
            obs.confidence.to_string(),
        ));
    }
    let dim = obs.embedding.len();
    check_dimension(dim, "embedding", limits)?;
    if let Some(i) = obs.embedding.iter().position(|x| !x.is_finite()) {
        return Err(Rejection::new(
            NonFiniteEmbedding,
            "embedding",
            "finite numbers",
            format!("{} at index {i}", obs.embedding[i]),
        ));
    }
    match spaces.claim_dimension(&obs.space, dim as u32, limits.spaces_max) {
        DimensionClaim::Matches | DimensionClaim::Claimed => Ok(()),
        DimensionClaim::Full => Err(too_many_spaces(&obs.space, limits)),
        DimensionClaim::Mismatch { expected } => Err(Rejection::new(
            DimensionMismatch,
            "embedding",
            format!("dimension {expected} (space {})", obs.space),
            format!("dimension {dim}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs() -> Observation {
        Observation {
            space: "notes".into(),
            id: "a".into(),
            when_unix_ns: 0,
            confidence: 0.5,
            what: "w".into(),
            embedding: vec![0.1, 0.2, 0.3],
        }
    }

    fn check(edit: impl FnOnce(&mut Observation)) -> Result<(), Rejection> {
        let mut o = obs();
        edit(&mut o);
        let spaces = SpaceRegistry::default();
        validate(&obs(), &IngestLimits::default(), &spaces).expect("the base observation is valid");
        validate(&o, &IngestLimits::default(), &spaces)
    }

    #[test]
    fn each_bad_field_is_named_with_what_was_expected_and_got() {
        type Edit = Box<dyn FnOnce(&mut Observation)>;
        let cases: Vec<(Edit, RejectCode, &str, &str)> = vec![
            (
                Box::new(|o| o.space = "bad name!".into()),
                RejectCode::InvalidSpace,
                "space",
                "\"bad name!\" (9 bytes)",
            ),
            (
                Box::new(|o| o.space = "x".repeat(65)),
                RejectCode::InvalidSpace,
                "space",
                "(65 bytes)",
            ),
            (
                Box::new(|o| o.space.clear()),
                RejectCode::InvalidSpace,
                "space",
                "(0 bytes)",
            ),
            (
                Box::new(|o| o.id.clear()),
                RejectCode::InvalidId,
                "id",
                "0 bytes",
            ),
            (
                Box::new(|o| o.id = "i".repeat(257)),
                RejectCode::InvalidId,
                "id",
                "257 bytes",
            ),
            (
                Box::new(|o| o.what = "w".repeat(65537)),
                RejectCode::WhatTooLong,
                "what",
                "65537 bytes",
            ),
            (
                Box::new(|o| o.confidence = 1.5),
                RejectCode::ConfidenceOutOfRange,
                "confidence",
                "1.5",
            ),
            (
                Box::new(|o| o.confidence = f32::NAN),
                RejectCode::ConfidenceOutOfRange,
                "confidence",
                "NaN",
            ),
            (
                Box::new(|o| o.embedding.clear()),
                RejectCode::EmptyEmbedding,
                "embedding",
                "0",
            ),
            (
                Box::new(|o| o.embedding[1] = f32::NAN),
                RejectCode::NonFiniteEmbedding,
                "embedding",
                "NaN at index 1",
            ),
            (
                Box::new(|o| o.embedding[2] = f32::INFINITY),
                RejectCode::NonFiniteEmbedding,
                "embedding",
                "inf at index 2",
            ),
            (
                Box::new(|o| o.embedding = vec![0.0; 4097]),
                RejectCode::DimensionTooLarge,
                "embedding",
                "4097 dimensions",
            ),
            (
                Box::new(|o| o.embedding = vec![0.0; 4]),
                RejectCode::DimensionMismatch,
                "embedding",
                "dimension 4",
            ),
        ];
        for (edit, code, field, got) in cases {
            let r = check(edit).expect_err("must be rejected");
            assert_eq!((r.code, r.field), (code, field), "{r}");
            assert!(r.got.contains(got), "{r}");
            assert!(!r.expected.is_empty());
        }
        let mismatch = check(|o| o.embedding = vec![0.0; 4]).unwrap_err();
        assert_eq!(mismatch.expected, "dimension 3 (space notes)");
        assert!(check(|o| o.space = "A-z_0.9".into()).is_ok());
        assert!(check(|o| o.confidence = 0.0).is_ok());
    }

    #[test]
    fn a_reject_frame_quotes_client_input_within_bounds() {
        let r = check(|o| o.space = "é".repeat(200)).unwrap_err();
        let Frame::Reject { got, .. } = r.to_frame(9) else {
            panic!()
        };
        assert!(got.len() <= 203 && got.ends_with("..."), "{got}");
    }
}

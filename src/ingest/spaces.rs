//! The memory spaces the server knows, and each one's embedding dimension.

use std::collections::HashMap;
use std::sync::RwLock;

/// What claiming a dimension for a space found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DimensionClaim {
    /// The space has this dimension.
    Matches,
    /// The space was new and now has this dimension.
    Claimed,
    Mismatch {
        expected: u32,
    },
}

/// Space name to dimension. A space takes the dimension of its first observation; two
/// sessions racing to create one see a single winner (the claim is made under the lock).
/// Rebuilt from the log on start (`record`).
#[derive(Debug, Default)]
pub struct SpaceRegistry {
    dims: RwLock<HashMap<String, u32>>,
}

impl SpaceRegistry {
    pub fn claim_dimension(&self, space: &str, dim: u32) -> DimensionClaim {
        if let Some(&expected) = self.dims.read().expect("space registry lock").get(space) {
            return if expected == dim {
                DimensionClaim::Matches
            } else {
                DimensionClaim::Mismatch { expected }
            };
        }
        let mut dims = self.dims.write().expect("space registry lock");
        match dims.get(space) {
            Some(&expected) if expected == dim => DimensionClaim::Matches,
            Some(&expected) => DimensionClaim::Mismatch { expected },
            None => {
                dims.insert(space.to_owned(), dim);
                DimensionClaim::Claimed
            }
        }
    }

    /// Records a space seen in the log during recovery.
    pub fn record(&self, space: &str, dim: u32) {
        self.dims
            .write()
            .expect("space registry lock")
            .entry(space.to_owned())
            .or_insert(dim);
    }

    pub fn dimension(&self, space: &str) -> Option<u32> {
        self.dims
            .read()
            .expect("space registry lock")
            .get(space)
            .copied()
    }

    pub fn len(&self) -> usize {
        self.dims.read().expect("space registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_creators_of_a_space_see_one_dimension() {
        let registry = std::sync::Arc::new(SpaceRegistry::default());
        let outcomes: Vec<DimensionClaim> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u32)
                .map(|i| {
                    let registry = registry.clone();
                    s.spawn(move || registry.claim_dimension("s", 3 + i % 2))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == DimensionClaim::Claimed)
                .count(),
            1
        );
        let dim = registry.dimension("s").unwrap();
        for o in outcomes {
            match o {
                DimensionClaim::Mismatch { expected } => assert_eq!(expected, dim),
                DimensionClaim::Matches | DimensionClaim::Claimed => {}
            }
        }
    }
}

//! The memory spaces the server knows, and each one's embedding dimension.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::space::Metric;
use crate::wal::Lsn;

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
    /// The space is new and the server already has the most spaces it keeps.
    Full,
}

/// What defining a space explicitly found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Definition {
    /// The space is new: it must now be logged.
    Created,
    /// The space already has this dimension and metric.
    Exists,
    /// The space exists with another dimension or metric.
    Conflict { dim: u32, metric: Metric },
    /// The space is new and the server already has the most spaces it keeps.
    Full,
}

/// What the server knows of one space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceSummary {
    pub name: String,
    pub dim: u32,
    pub metric: Metric,
    /// Observations stored durably (each (space, id) once).
    pub observations: u64,
    /// The log position of its newest stored observation; 0 if none yet.
    pub last_lsn: Lsn,
}

#[derive(Debug)]
struct SpaceState {
    dim: u32,
    metric: Metric,
    observations: u64,
    last_lsn: Lsn,
}

/// Space name to dimension and counts. A space takes the dimension of its first
/// observation; two sessions racing to create one see a single winner (the claim is made
/// under the lock). Rebuilt from the log on start (`record`).
#[derive(Debug, Default)]
pub struct SpaceRegistry {
    spaces: RwLock<HashMap<String, SpaceState>>,
}

impl SpaceRegistry {
    pub fn claim_dimension(&self, space: &str, dim: u32, spaces_max: u32) -> DimensionClaim {
        if let Some(state) = self.read().get(space) {
            return if state.dim == dim {
                DimensionClaim::Matches
            } else {
                DimensionClaim::Mismatch {
                    expected: state.dim,
                }
            };
        }
        let mut spaces = self.write();
        match spaces.get(space) {
            Some(state) if state.dim == dim => DimensionClaim::Matches,
            Some(state) => DimensionClaim::Mismatch {
                expected: state.dim,
            },
            None if spaces.len() >= spaces_max as usize => DimensionClaim::Full,
            None => {
                spaces.insert(space.to_owned(), SpaceState::new(dim));
                DimensionClaim::Claimed
            }
        }
    }

    /// Defines `space` explicitly with `dim` and `metric`, unless it exists.
    pub fn define(&self, space: &str, dim: u32, metric: Metric, spaces_max: u32) -> Definition {
        let mut spaces = self.write();
        match spaces.get(space) {
            Some(s) if s.dim == dim && s.metric == metric => Definition::Exists,
            Some(s) => Definition::Conflict {
                dim: s.dim,
                metric: s.metric,
            },
            None if spaces.len() >= spaces_max as usize => Definition::Full,
            None => {
                let mut state = SpaceState::new(dim);
                state.metric = metric;
                spaces.insert(space.to_owned(), state);
                Definition::Created
            }
        }
    }

    /// Forgets a space whose definition could not be logged, if nothing was stored in it.
    pub fn undefine(&self, space: &str) {
        let mut spaces = self.write();
        if spaces.get(space).is_some_and(|s| s.observations == 0) {
            spaces.remove(space);
        }
    }

    /// Records a definition found in the log during recovery. An observation logged just
    /// before its space's definition record created the space with the default metric;
    /// the definition's metric stands.
    pub fn record_definition(&self, space: &str, dim: u32, metric: Metric) {
        let mut spaces = self.write();
        let state = spaces
            .entry(space.to_owned())
            .or_insert_with(|| SpaceState::new(dim));
        state.metric = metric;
    }

    /// Counts `count` observations of `space` stored, the newest at `last_lsn`.
    pub fn stored(&self, space: &str, count: u64, last_lsn: Lsn) {
        let mut spaces = self.write();
        let state = spaces
            .get_mut(space)
            .expect("a space is claimed before its observations are stored");
        state.observations += count;
        state.last_lsn = state.last_lsn.max(last_lsn);
    }

    /// Records an observation found in the log during recovery; `first` if its
    /// (space, id) had not been seen before in the log.
    pub fn record(&self, space: &str, dim: u32, lsn: Lsn, first: bool) {
        let mut spaces = self.write();
        let state = spaces
            .entry(space.to_owned())
            .or_insert_with(|| SpaceState::new(dim));
        if first {
            state.observations += 1;
            state.last_lsn = state.last_lsn.max(lsn);
        }
    }

    pub fn dimension(&self, space: &str) -> Option<u32> {
        self.read().get(space).map(|s| s.dim)
    }

    /// The space's dimension and metric, if it exists.
    pub fn shape(&self, space: &str) -> Option<(u32, Metric)> {
        self.read().get(space).map(|s| (s.dim, s.metric))
    }

    /// The LSN of the space's newest stored observation (0 if none), recorded before any
    /// observation up to it is acknowledged.
    pub fn newest_lsn(&self, space: &str) -> Lsn {
        self.read().get(space).map_or(Lsn::ZERO, |s| s.last_lsn)
    }

    /// Every space, by name.
    pub fn summaries(&self) -> Vec<SpaceSummary> {
        let mut all: Vec<SpaceSummary> = self
            .read()
            .iter()
            .map(|(name, s)| SpaceSummary {
                name: name.clone(),
                dim: s.dim,
                metric: s.metric,
                observations: s.observations,
                last_lsn: s.last_lsn,
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, SpaceState>> {
        self.spaces.read().expect("space registry lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, SpaceState>> {
        self.spaces.write().expect("space registry lock")
    }
}

impl SpaceState {
    fn new(dim: u32) -> SpaceState {
        SpaceState {
            dim,
            metric: Metric::default(),
            observations: 0,
            last_lsn: Lsn(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dim_of(registry: &SpaceRegistry) -> u32 {
        registry.dimension("s").unwrap()
    }

    #[test]
    fn racing_creators_of_a_space_see_one_dimension() {
        let registry = std::sync::Arc::new(SpaceRegistry::default());
        let outcomes: Vec<DimensionClaim> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u32)
                .map(|i| {
                    let registry = registry.clone();
                    s.spawn(move || registry.claim_dimension("s", 3 + i % 2, 10))
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
        assert_eq!(registry.claim_dimension("t", 3, 1), DimensionClaim::Full);
        assert_eq!(
            registry.claim_dimension("s", dim_of(&registry), 1),
            DimensionClaim::Matches
        );
        let dim = registry.dimension("s").unwrap();
        for o in outcomes {
            match o {
                DimensionClaim::Mismatch { expected } => assert_eq!(expected, dim),
                DimensionClaim::Matches | DimensionClaim::Claimed => {}
                DimensionClaim::Full => panic!("one space is under the bound"),
            }
        }
    }
}

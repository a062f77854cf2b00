//! Exactly-once: each (space, id) is stored once, also across reconnects and restarts.
//!
//! A key is reserved before its observation is appended, so two sessions sending the same
//! observation at once never both store it: the second waits for the first's outcome.
//! Keys are 128-bit hashes of (space, id) with per-process random keys: a false match
//! needs a 128-bit collision (about n²/2^129 for n keys, nil in practice). The index is
//! rebuilt from the log on start (`record_durable`).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::wal::Lsn;

const SHARDS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pending,
    Durable(Lsn),
    /// The append failed; whoever waits may try again.
    Released,
}

enum Slot {
    Durable(Lsn),
    Pending(watch::Receiver<Outcome>),
}

pub struct DedupeIndex {
    hashers: [std::collections::hash_map::RandomState; 2],
    shards: Vec<Mutex<HashMap<u128, Slot>>>,
}

/// What reserving a key found.
pub enum Reservation {
    /// Nobody has stored it: append it, then `commit` the claim (dropping it releases).
    New(Claim),
    /// Already stored at this LSN: acknowledge without storing again.
    Durable(Lsn),
    /// Another session is appending it now.
    InFlight(InFlight),
}

/// The right to store one key. Dropped without `commit`, it releases the key.
pub struct Claim {
    index: Arc<DedupeIndex>,
    key: u128,
    outcome: watch::Sender<Outcome>,
    committed: bool,
}

pub struct InFlight {
    outcome: watch::Receiver<Outcome>,
}

impl Default for DedupeIndex {
    fn default() -> Self {
        DedupeIndex {
            hashers: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl DedupeIndex {
    fn key(&self, space: &str, id: &str) -> u128 {
        let half = |h: &std::collections::hash_map::RandomState| {
            let mut hasher = h.build_hasher();
            hasher.write(space.as_bytes());
            hasher.write_u8(0xff); // no (space, id) pair runs into another
            hasher.write(id.as_bytes());
            hasher.finish() as u128
        };
        half(&self.hashers[0]) << 64 | half(&self.hashers[1])
    }

    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, HashMap<u128, Slot>> {
        self.shards[(key as usize) % SHARDS]
            .lock()
            .expect("dedupe shard lock")
    }

    pub fn reserve(self: &Arc<Self>, space: &str, id: &str) -> Reservation {
        let key = self.key(space, id);
        let mut shard = self.shard(key);
        match shard.get(&key) {
            Some(Slot::Durable(lsn)) => Reservation::Durable(*lsn),
            Some(Slot::Pending(rx)) => Reservation::InFlight(InFlight {
                outcome: rx.clone(),
            }),
            None => {
                let (tx, rx) = watch::channel(Outcome::Pending);
                shard.insert(key, Slot::Pending(rx));
                Reservation::New(Claim {
                    index: self.clone(),
                    key,
                    outcome: tx,
                    committed: false,
                })
            }
        }
    }

    /// Records an observation found in the log during recovery.
    pub fn record_durable(&self, space: &str, id: &str, lsn: Lsn) {
        let key = self.key(space, id);
        self.shard(key).entry(key).or_insert(Slot::Durable(lsn));
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("dedupe shard lock").len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Claim {
    /// The observation is durable at `lsn`.
    pub fn commit(mut self, lsn: Lsn) {
        self.index
            .shard(self.key)
            .insert(self.key, Slot::Durable(lsn));
        self.committed = true;
        self.outcome.send_replace(Outcome::Durable(lsn));
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.committed {
            self.index.shard(self.key).remove(&self.key);
            self.outcome.send_replace(Outcome::Released);
        }
    }
}

impl InFlight {
    /// Waits for the other append: `Some(lsn)` once it is durable, `None` if it failed
    /// (then reserve again).
    pub async fn outcome(mut self) -> Option<Lsn> {
        let outcome = self
            .outcome
            .wait_for(|o| *o != Outcome::Pending)
            .await
            .map(|o| *o);
        match outcome {
            Ok(Outcome::Durable(lsn)) => Some(lsn),
            // A dropped sender without a decision is a release.
            Ok(Outcome::Released) | Ok(Outcome::Pending) | Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_key_is_durable_and_a_released_one_free() {
        let index = Arc::new(DedupeIndex::default());
        let Reservation::New(claim) = index.reserve("s", "a") else {
            panic!("new key")
        };
        claim.commit(Lsn(5));
        assert!(matches!(
            index.reserve("s", "a"),
            Reservation::Durable(Lsn(5))
        ));
        assert!(
            matches!(index.reserve("t", "a"), Reservation::New(_)),
            "keys are per space"
        );
        let Reservation::New(claim) = index.reserve("s", "b") else {
            panic!()
        };
        drop(claim);
        assert!(
            matches!(index.reserve("s", "b"), Reservation::New(_)),
            "a failed append frees the key"
        );
        // Separator: ("ab", "c") and ("a", "bc") are different keys.
        let Reservation::New(c) = index.reserve("ab", "c") else {
            panic!()
        };
        c.commit(Lsn(9));
        assert!(matches!(index.reserve("a", "bc"), Reservation::New(_)));
        index.record_durable("r", "x", Lsn(1));
        assert!(matches!(
            index.reserve("r", "x"),
            Reservation::Durable(Lsn(1))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_sessions_store_a_key_once_and_learn_its_lsn() {
        let index = Arc::new(DedupeIndex::default());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let index = index.clone();
                tokio::spawn(async move {
                    loop {
                        match index.reserve("s", "same") {
                            Reservation::New(claim) => {
                                tokio::task::yield_now().await;
                                claim.commit(Lsn(77));
                                return (true, Lsn(77));
                            }
                            Reservation::Durable(lsn) => return (false, lsn),
                            Reservation::InFlight(wait) => {
                                if let Some(lsn) = wait.outcome().await {
                                    return (false, lsn);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        let mut stored = 0;
        for t in tasks {
            let (was_stored, lsn) = t.await.unwrap();
            stored += was_stored as u32;
            assert_eq!(lsn, Lsn(77));
        }
        assert_eq!(stored, 1, "exactly one session stores it");
    }

    #[tokio::test]
    async fn a_waiter_retries_when_the_first_append_fails() {
        let index = Arc::new(DedupeIndex::default());
        let Reservation::New(claim) = index.reserve("s", "k") else {
            panic!()
        };
        let Reservation::InFlight(wait) = index.reserve("s", "k") else {
            panic!("in flight")
        };
        drop(claim);
        assert_eq!(wait.outcome().await, None);
        assert!(matches!(index.reserve("s", "k"), Reservation::New(_)));
    }
}

//! Exactly-once: each (space, id) is stored once, also across reconnects and restarts.
//!
//! A key is reserved before its observation is appended, so two sessions sending the same
//! observation at once never both store it: the second waits for the first's outcome.
//! Keys are 128-bit hashes of (space, id) with per-process random keys: a false match
//! needs a 128-bit collision (about n²/2^129 for n keys, nil in practice). The index is
//! rebuilt from the log on start (`record_durable`).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;

use crate::wal::Lsn;

const SHARDS: usize = 16;

enum Slot {
    Durable(Lsn),
    /// The `n`-th key claimed by a batch. Its LSN is the batch's first plus `n` once the
    /// batch is durable: committing a batch is one store, not one map update per key.
    Claimed(Arc<BatchClaim>, u32),
}

/// What the keys of one batch share.
#[derive(Default)]
struct BatchClaim {
    /// The LSN of the first claimed key, once the batch is durable.
    first_lsn: OnceLock<Lsn>,
    /// Set when the batch is durable or released; waiters are woken after.
    decided: AtomicBool,
    woken: Notify,
}

impl BatchClaim {
    fn decide(&self) {
        self.decided.store(true, Ordering::Release);
        self.woken.notify_waiters();
    }

    async fn wait_decided(&self) {
        loop {
            let woken = self.woken.notified();
            tokio::pin!(woken);
            // Registered before the check, so a decision between the two is not missed.
            woken.as_mut().enable();
            if self.decided.load(Ordering::Acquire) {
                return;
            }
            woken.await;
        }
    }
}

/// Where a slot stands now.
enum SlotState {
    Durable(Lsn),
    Pending(Arc<BatchClaim>),
}

impl Slot {
    fn state(&self) -> SlotState {
        match self {
            Slot::Durable(lsn) => SlotState::Durable(*lsn),
            Slot::Claimed(batch, n) => match batch.first_lsn.get() {
                Some(first) => SlotState::Durable(Lsn(first.0 + u64::from(*n))),
                None => SlotState::Pending(batch.clone()),
            },
        }
    }
}

/// Keys are already uniform keyed hashes: the map uses their low half as its hash instead
/// of hashing them again (SipHash over every key showed in profiles). Shards are chosen
/// by the high half, so a shard's keys still spread over all its buckets.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, key: u128) {
        self.0 = key as u64;
    }
}

type Shard = HashMap<u128, Slot, BuildHasherDefault<KeyHasher>>;

pub struct DedupeIndex {
    hashers: [std::collections::hash_map::RandomState; 2],
    shards: Vec<Mutex<Shard>>,
}

/// What reserving a key found.
pub enum Reservation {
    /// Nobody has stored it: it joined the batch's claims; append it, then commit them.
    New,
    /// Already stored at this LSN: acknowledge without storing again.
    Durable(Lsn),
    /// Another batch is appending it now.
    InFlight(InFlight),
}

/// The keys one batch has the right to store, in reservation order. Committed, they are
/// durable; dropped without `commit`, they are released. Either way, whoever waits on
/// them wakes up: one signal per batch, not per key.
pub struct Claims {
    index: Arc<DedupeIndex>,
    keys: Vec<u128>,
    batch: Arc<BatchClaim>,
    committed: bool,
}

pub struct InFlight {
    index: Arc<DedupeIndex>,
    key: u128,
    batch: Arc<BatchClaim>,
}

impl Default for DedupeIndex {
    fn default() -> Self {
        DedupeIndex {
            hashers: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
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

    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[((key >> 64) as usize) % SHARDS]
            .lock()
            .expect("dedupe shard lock")
    }

    /// An empty set of claims for one batch.
    pub fn claims(self: &Arc<Self>) -> Claims {
        Claims {
            index: self.clone(),
            keys: Vec::new(),
            batch: Arc::new(BatchClaim::default()),
            committed: false,
        }
    }

    /// Looks (space, id) up; if nobody holds it, `claims` takes it.
    pub fn reserve(self: &Arc<Self>, space: &str, id: &str, claims: &mut Claims) -> Reservation {
        assert!(
            Arc::ptr_eq(self, &claims.index),
            "claims belong to this index"
        );
        let key = self.key(space, id);
        let mut shard = self.shard(key);
        match shard.get(&key).map(Slot::state) {
            Some(SlotState::Durable(lsn)) => Reservation::Durable(lsn),
            Some(SlotState::Pending(batch)) => Reservation::InFlight(InFlight {
                index: self.clone(),
                key,
                batch,
            }),
            None => {
                let n = u32::try_from(claims.keys.len()).expect("a batch claims under 2^32 keys");
                shard.insert(key, Slot::Claimed(claims.batch.clone(), n));
                claims.keys.push(key);
                Reservation::New
            }
        }
    }

    /// Records an observation found in the log during recovery; false if its key was
    /// already recorded (the first LSN stands).
    pub fn record_durable(&self, space: &str, id: &str, lsn: Lsn) -> bool {
        let key = self.key(space, id);
        let mut shard = self.shard(key);
        if shard.contains_key(&key) {
            return false;
        }
        shard.insert(key, Slot::Durable(lsn));
        true
    }

    /// Where (space, id) is stored, if it is durable.
    pub fn durable(&self, space: &str, id: &str) -> Option<Lsn> {
        self.durable_lsn(self.key(space, id))
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

    fn durable_lsn(&self, key: u128) -> Option<Lsn> {
        match self.shard(key).get(&key).map(Slot::state) {
            Some(SlotState::Durable(lsn)) => Some(lsn),
            Some(SlotState::Pending(_)) | None => None,
        }
    }
}

impl Claims {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The claimed observations are durable, in claim order from `first`: they were
    /// appended together, so the `n`-th is at `first + n`.
    pub fn commit(mut self, first: Lsn) {
        self.batch
            .first_lsn
            .set(first)
            .expect("a batch is committed once");
        self.committed = true;
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        if !self.committed {
            for key in &self.keys {
                self.index.shard(*key).remove(key);
            }
        }
        // After the slots are settled: a woken waiter looks its key up again.
        self.batch.decide();
    }
}

impl InFlight {
    /// Waits for the other batch: `Some(lsn)` once it is durable, `None` if its append
    /// failed (then reserve again).
    pub async fn outcome(self) -> Option<Lsn> {
        self.batch.wait_decided().await;
        self.index.durable_lsn(self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_key_is_durable_and_a_released_one_free() {
        let index = Arc::new(DedupeIndex::default());
        let mut claims = index.claims();
        assert!(matches!(
            index.reserve("s", "a", &mut claims),
            Reservation::New
        ));
        claims.commit(Lsn(5));
        let mut claims = index.claims();
        assert!(matches!(
            index.reserve("s", "a", &mut claims),
            Reservation::Durable(Lsn(5))
        ));
        assert!(
            matches!(index.reserve("t", "a", &mut claims), Reservation::New),
            "keys are per space"
        );
        assert!(matches!(
            index.reserve("s", "b", &mut claims),
            Reservation::New
        ));
        assert_eq!(claims.len(), 2);
        drop(claims);
        let mut claims = index.claims();
        assert!(
            matches!(index.reserve("s", "b", &mut claims), Reservation::New),
            "a failed append frees the key"
        );
        assert!(
            matches!(index.reserve("t", "a", &mut claims), Reservation::New),
            "every key of a failed batch is freed"
        );
        // Separator: ("ab", "c") and ("a", "bc") are different keys.
        assert!(matches!(
            index.reserve("ab", "c", &mut claims),
            Reservation::New
        ));
        claims.commit(Lsn(7));
        let mut claims = index.claims();
        assert!(matches!(
            index.reserve("a", "bc", &mut claims),
            Reservation::New
        ));
        index.record_durable("r", "x", Lsn(1));
        assert!(matches!(
            index.reserve("r", "x", &mut claims),
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
                        let mut claims = index.claims();
                        match index.reserve("s", "same", &mut claims) {
                            Reservation::New => {
                                tokio::task::yield_now().await;
                                claims.commit(Lsn(77));
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
        let mut first = index.claims();
        assert!(matches!(
            index.reserve("s", "k", &mut first),
            Reservation::New
        ));
        let mut second = index.claims();
        let Reservation::InFlight(wait) = index.reserve("s", "k", &mut second) else {
            panic!("in flight")
        };
        drop(first);
        assert_eq!(wait.outcome().await, None);
        assert!(matches!(
            index.reserve("s", "k", &mut second),
            Reservation::New
        ));
    }
}

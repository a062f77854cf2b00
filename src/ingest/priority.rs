//! How the index threads yield the cores to the threads that acknowledge observations and
//! answer recalls (docs/operations/streaming-tuning.md, docs/performance.md "Where the ack
//! tail at 50K/s comes from").

use std::time::Duration;

/// The nice value of the index threads when they run under the normal scheduler: below
/// the threads that acknowledge observations and answer recalls, so that indexing takes
/// the cores they leave idle.
pub const INDEX_NICE_DEFAULT: i32 = 10;

/// The time slice the index threads ask of Linux's scheduler (EEVDF, Linux 6.12 and
/// later; older kernels ignore it). A nice value alone does not let a waking thread run
/// at once: EEVDF lets the running thread finish its slice, and on a kernel without
/// high-resolution ticks that lasts until the next tick. A thread waking with a shorter
/// slice than the running one preempts it. With the index threads on the longest slice
/// the kernel allows, every other thread has the shorter one: the committer after its
/// sync, the tokio workers, and the kernel's own writeback workers that a sync waits
/// for. Measured on 2 cores with the index busy: the server's p99 from arrival to ack
/// fell from 51 ms to under 6.4 ms.
pub const INDEX_SLICE: Duration = Duration::from_millis(100);

/// The longest slice Linux takes; it clamps longer ones.
pub const INDEX_SLICE_MAX: Duration = Duration::from_millis(100);

/// How the index threads yield the cores to the threads that acknowledge observations
/// and answer recalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexPriority {
    /// The normal scheduler at `nice` (0-19; the default 10): a share of a busy core, 0
    /// an equal one; asking for `slice` (the default [`INDEX_SLICE`]; zero: the kernel's
    /// own).
    Nice { nice: i32, slice: Duration },
    /// For throughput (`--index-yield`): the inserts run under SCHED_IDLE while the
    /// index keeps up (its lag under half its bound, the load state below Warning), and
    /// at `Nice { nice, slice }` once it falls behind; the workers always at `Nice`.
    /// Indexing then takes only the cores nothing else wants while it can afford to, and
    /// a share of them when ingest would otherwise soon wait for it, also when another
    /// busy process wants every core. A thread cannot leave SCHED_IDLE without
    /// privilege, so the two priorities are two insert pools (`engram-insert-K` at
    /// `Nice`, `engram-yield-K` under SCHED_IDLE), and each batch goes to one of them.
    Yielding { nice: i32, slice: Duration },
    /// Linux's SCHED_IDLE: a thread that runs only when no normal thread wants its core,
    /// and that a waking normal thread preempts at once. For a machine engram has to
    /// itself: any busy process then stops indexing, and past the lag bound ingest with
    /// it, which a share (`Nice`) never does.
    Idle,
}

impl IndexPriority {
    /// The priority of the threads that index whatever the lag: the workers, and the
    /// insert pool used once the index falls behind.
    pub fn sharing(self) -> IndexPriority {
        match self {
            IndexPriority::Yielding { nice, slice } => IndexPriority::Nice { nice, slice },
            other => other,
        }
    }
}

impl Default for IndexPriority {
    fn default() -> IndexPriority {
        IndexPriority::Nice {
            nice: INDEX_NICE_DEFAULT,
            slice: INDEX_SLICE,
        }
    }
}

/// The kernel's `struct sched_attr` as of its first version (SCHED_ATTR_SIZE_VER0, 48
/// bytes); the kernel accepts any size it knows.
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    /// For the normal policies, the slice (Linux 6.12 and later), in nanoseconds.
    runtime: u64,
    deadline: u64,
    period: u64,
}

const SCHED_ATTR_SIZE: u32 = std::mem::size_of::<SchedAttr>() as u32;
const _: () = assert!(SCHED_ATTR_SIZE == 48, "SCHED_ATTR_SIZE_VER0");

/// Gives the calling thread `priority`. On Linux the scheduling policy, the nice value
/// and the slice belong to each thread, not to the process. Lowering the nice value and
/// lengthening the slice need no privilege; failing leaves the thread as it was, which
/// costs latency, not correctness, so it is logged and not fatal.
pub(crate) fn set_thread_priority(priority: IndexPriority) {
    let rc = match priority.sharing() {
        IndexPriority::Nice { nice, slice } => {
            assert!(
                slice <= INDEX_SLICE_MAX,
                "slice {slice:?} over the kernel's bound"
            );
            let attr = SchedAttr {
                size: SCHED_ATTR_SIZE,
                policy: libc::SCHED_OTHER as u32,
                nice,
                // Zero asks for the kernel's default slice.
                runtime: slice.as_nanos() as u64,
                ..SchedAttr::default()
            };
            // SAFETY: pid 0 is the calling thread; `attr` is a valid sched_attr of the
            // size it states and outlives the call.
            let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) };
            if rc == 0 {
                0
            } else {
                // sched_setattr filtered out (some sandboxes): the nice value alone.
                // SAFETY: gettid and setpriority only read their arguments.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) }
            }
        }
        IndexPriority::Yielding { .. } => unreachable!("sharing() is Nice or Idle"),
        IndexPriority::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: pid 0 is the calling thread; `param` outlives the call.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) }
        }
    };
    if rc != 0 {
        tracing::warn!(?priority, error = %std::io::Error::last_os_error(),
            "could not lower an index thread's priority");
    }
}

/// Whether this kernel honours a slice asked for a normal thread (Linux 6.12 and later;
/// before it the kernel ignores one); None if its release cannot be read.
pub fn kernel_takes_custom_slices() -> Option<bool> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Some((major, minor) >= (6, 12)),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn own_nice() -> i32 {
        // SAFETY: gettid and getpriority only read their arguments.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    pub(crate) fn own_policy() -> i32 {
        // SAFETY: pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// The calling thread's slice as the kernel reports it.
    pub(crate) fn own_slice() -> Duration {
        let mut attr = SchedAttr::default();
        // SAFETY: pid 0 is the calling thread; the kernel writes at most the size given.
        let rc =
            unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr, SCHED_ATTR_SIZE, 0) };
        assert_eq!(rc, 0, "sched_getattr: {}", std::io::Error::last_os_error());
        Duration::from_nanos(attr.runtime)
    }

    pub(crate) fn kernel_takes_custom_slices() -> bool {
        super::kernel_takes_custom_slices().expect("a readable kernel release")
    }

    #[test]
    fn set_thread_priority_lowers_the_calling_thread_alone() {
        let (nice_before, policy_before, slice_before) = (own_nice(), own_policy(), own_slice());
        assert_ne!(
            slice_before, INDEX_SLICE,
            "a test thread starts on the kernel's slice"
        );
        let wanted = (nice_before + 5).min(19);
        let inside = std::thread::spawn(move || {
            set_thread_priority(IndexPriority::default());
            let default_slice = own_slice();
            set_thread_priority(IndexPriority::Nice {
                nice: wanted,
                slice: Duration::ZERO,
            });
            let (nice, slice) = (own_nice(), own_slice());
            set_thread_priority(IndexPriority::Idle);
            (nice, default_slice, slice, own_policy())
        })
        .join()
        .unwrap();
        assert_eq!((inside.0, inside.3), (wanted, libc::SCHED_IDLE));
        if kernel_takes_custom_slices() {
            assert_eq!(inside.1, INDEX_SLICE, "the index's long slice");
            assert_eq!(inside.2, slice_before, "zero: back to the kernel's slice");
        }
        assert_eq!(
            (own_nice(), own_policy(), own_slice()),
            (nice_before, policy_before, slice_before),
            "the spawning thread keeps its priority"
        );
    }
}

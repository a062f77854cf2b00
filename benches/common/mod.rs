//! What the criterion benches share.

use std::time::Duration;

use criterion::Criterion;

/// For benches whose every sample is a whole run timed by `iter_custom` (seconds each):
/// no warm-up beyond the first sample, and as few samples as criterion takes.
pub fn whole_runs() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args()
}

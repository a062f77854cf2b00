//! Exact scores, for the records a recall scans outside the HNSW graph (the unindexed
//! tail, AsOf snapshots). They equal what the graph's distances convert to (`Score`).

use crate::space::Metric;

/// Lanes summed independently so the compiler vectorizes the loops.
const LANES: usize = 8;

/// The sum of `term` over the pairs of components, in independent lanes.
#[inline(always)]
fn sum_lanes(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut sums = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| term(*x, *y))
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            sums[lane] += term(x[lane], y[lane]);
        }
    }
    sums.iter().sum::<f32>() + tail
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum_lanes(a, b, |x, y| x * y)
}

fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    sum_lanes(a, b, |x, y| (x - y) * (x - y))
}

/// Scores candidates against one query: higher is more similar. Cosine: the cosine
/// similarity; dot: the inner product; L2: minus the Euclidean distance.
pub struct Scorer<'q> {
    metric: Metric,
    query: &'q [f32],
    query_norm: f32,
}

impl<'q> Scorer<'q> {
    pub fn new(metric: Metric, query: &'q [f32]) -> Scorer<'q> {
        Scorer {
            metric,
            query,
            query_norm: dot(query, query).sqrt(),
        }
    }

    pub fn score(&self, candidate: &[f32]) -> f32 {
        match self.metric {
            Metric::Cosine => {
                let norms = self.query_norm * dot(candidate, candidate).sqrt();
                if norms == 0.0 {
                    0.0
                } else {
                    dot(self.query, candidate) / norms
                }
            }
            Metric::Dot => dot(self.query, candidate),
            Metric::L2 => -l2_squared(self.query, candidate).sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_each_metric() {
        let q = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        let v = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        let cos = Scorer::new(Metric::Cosine, &q).score(&v);
        assert!((cos - 4.0 / 5.0).abs() < 1e-6, "{cos}");
        assert_eq!(Scorer::new(Metric::Dot, &q).score(&v), 4.0);
        let l2 = Scorer::new(Metric::L2, &q).score(&v);
        assert!((l2 + 2f32.sqrt()).abs() < 1e-6, "{l2}");
        assert_eq!(Scorer::new(Metric::Cosine, &q).score(&[0.0; 9]), 0.0);
    }
}

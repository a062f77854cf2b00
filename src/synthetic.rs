//! Deterministic synthetic observations for load generation and checking: the embedding of
//! (seed, space, id) is always the same, so any checker can recompute what was sent.

use serde::{Deserialize, Serialize};

use crate::observation::Observation;

/// Clusters in the `clustered` distribution.
pub const CLUSTERS: u64 = 64;
/// How far a clustered point strays from its centre, relative to the centre's unit length.
const CLUSTER_SPREAD: f32 = 0.35;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Independent random unit vectors.
    Uniform,
    /// Unit vectors around 64 random centres, like real embeddings of related texts.
    Clustered,
}

/// FNV-1a: a hash that never changes between builds or platforms.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64: a small, well-mixed generator, so vectors depend on nothing but the seed.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Roughly normal: the sum of four uniforms, centred.
    fn next_normalish(&mut self) -> f32 {
        let sum: f32 = (0..4)
            .map(|_| (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
            .sum();
        sum - 2.0
    }
}

fn random_unit(seed: u64, dim: usize) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    let mut v: Vec<f32> = (0..dim).map(|_| rng.next_normalish()).collect();
    normalize(&mut v);
    v
}

fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The embedding of (seed, space, id): unit length, `dim` components.
pub fn embedding(
    seed: u64,
    space: &str,
    id: &str,
    dim: usize,
    distribution: Distribution,
) -> Vec<f32> {
    let point_seed = stable_hash(&[&seed.to_le_bytes(), space.as_bytes(), id.as_bytes()]);
    match distribution {
        Distribution::Uniform => random_unit(point_seed, dim),
        Distribution::Clustered => {
            let cluster = point_seed % CLUSTERS;
            let centre = random_unit(
                stable_hash(&[
                    &seed.to_le_bytes(),
                    space.as_bytes(),
                    &cluster.to_le_bytes(),
                ]),
                dim,
            );
            let noise = random_unit(point_seed.rotate_left(17), dim);
            let mut v: Vec<f32> = centre
                .iter()
                .zip(&noise)
                .map(|(c, n)| c + CLUSTER_SPREAD * n)
                .collect();
            normalize(&mut v);
            v
        }
    }
}

/// The `n`-th synthetic observation of a load run: id `{prefix}{n}`.
pub fn observation(
    seed: u64,
    space: &str,
    prefix: &str,
    n: u64,
    dim: usize,
    distribution: Distribution,
) -> Observation {
    let id = format!("{prefix}{n}");
    Observation {
        embedding: embedding(seed, space, &id, dim, distribution),
        what: format!("synthetic observation {id} of {space}"),
        space: space.to_owned(),
        when_unix_ns: 1_700_000_000_000_000_000 + n as i64,
        confidence: 0.5 + (n % 50) as f32 / 100.0,
        id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        for distribution in [Distribution::Uniform, Distribution::Clustered] {
            let a = embedding(7, "s", "id-1", 384, distribution);
            assert_eq!(a, embedding(7, "s", "id-1", 384, distribution));
            assert_ne!(a, embedding(8, "s", "id-1", 384, distribution));
            assert_ne!(a, embedding(7, "t", "id-1", 384, distribution));
            let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        }
    }

    #[test]
    fn clustered_points_are_closer_to_their_neighbours_than_uniform_ones() {
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let best_neighbour = |d| {
            let points: Vec<Vec<f32>> = (0..300)
                .map(|i| embedding(1, "s", &i.to_string(), 64, d))
                .collect();
            let best: f32 = (1..300)
                .map(|j| dot(&points[0], &points[j]))
                .fold(f32::MIN, f32::max);
            best
        };
        assert!(
            best_neighbour(Distribution::Clustered) > best_neighbour(Distribution::Uniform) + 0.3
        );
    }
}

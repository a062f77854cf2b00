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

/// A 32-bit integer hash (the "lowbias32" finaliser): well mixed, and cheap enough to run
/// once per component, where a stateful generator would serialise the loop.
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// A random unit vector that depends on nothing but `seed`. Component `j` is a pure
/// function of (seed, j), counter-style, so the compiler can vectorise the loop: a load
/// generator should spend its core on sending, not on making vectors. Each component,
/// before normalising, is the centred sum of two 16-bit uniforms (a triangular, roughly
/// bell-shaped distribution), so the directions spread over the whole sphere.
fn random_unit(seed: u64, dim: usize) -> Vec<f32> {
    let base = mix32(seed as u32 ^ mix32((seed >> 32) as u32));
    let mut v: Vec<f32> = (0..dim as u32)
        .map(|j| {
            let h = mix32(base.wrapping_add(j.wrapping_mul(0x9e37_79b9)));
            ((h & 0xffff) + (h >> 16)) as f32 / 65_536.0 - 1.0
        })
        .collect();
    normalize(&mut v);
    v
}

fn normalize(v: &mut [f32]) {
    // Eight partial sums: a single running sum keeps the compiler from vectorising.
    let mut partial = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|x| x * x).sum();
    for chunk in chunks {
        for (p, x) in partial.iter_mut().zip(chunk) {
            *p += x * x;
        }
    }
    let norm = (partial.iter().sum::<f32>() + tail).sqrt();
    if norm > 0.0 {
        let scale = 1.0 / norm;
        v.iter_mut().for_each(|x| *x *= scale);
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

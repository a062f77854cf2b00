//! The graph's distance kernels on x86-64 with AVX2, FMA and F16C.
//!
//! usearch's own f32 kernel (NumKong's `dot_f32_haswell`) widens every component to f64
//! and adds four lanes at a time down one dependency chain, for precision this graph does
//! not need; on this machine that left building and searching at 60-65% of hnswlib's rate
//! (docs/performance.md, "Index candidates"). These kernels keep eight f32 lanes and four
//! independent chains, for f32 and f16 vectors alike. Elsewhere usearch's kernels stay.
//!
//! The distances are usearch's own, so `Hnsw::score` converts either the same way:
//! cosine and inner product as `1 - similarity`, L2 as the squared Euclidean distance.

use std::cell::{Cell, UnsafeCell};

use super::{Quantization, StoredForm};
use crate::space::Metric;

/// Installs the kernel for `metric` over vectors of `dim` components held in `form`;
/// false where usearch's stay (the same distances): on a CPU without the instructions,
/// and in debug builds, where usearch's C++ is still compiled with -O3 but these kernels
/// would run unoptimised and slow every test that indexes (the unit tests below and in
/// hnsw.rs call them directly).
pub fn install(graph: &mut usearch::Index, metric: Metric, form: StoredForm, dim: usize) -> bool {
    !cfg!(debug_assertions) && install_own(graph, metric, form, dim)
}

/// Installs this module's kernel whatever the build; false where the CPU lacks the
/// instructions.
pub fn install_own(
    graph: &mut usearch::Index,
    metric: Metric,
    form: StoredForm,
    dim: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        let half = form.quantization == Quantization::F16;
        // Between unit vectors the cosine distance is the inner product's.
        let metric = match metric {
            Metric::Cosine if form.unit_length => Metric::Dot,
            other => other,
        };
        match (half, metric) {
            (false, Metric::Cosine) => graph.change_metric(kernel::<false, COSINE, f32>(dim)),
            (false, Metric::Dot) => graph.change_metric(kernel::<false, DOT, f32>(dim)),
            (false, Metric::L2) => graph.change_metric(kernel::<false, L2, f32>(dim)),
            (true, Metric::Cosine) => {
                graph.change_metric(kernel::<true, COSINE, usearch::f16>(dim))
            }
            (true, Metric::Dot) => graph.change_metric(kernel::<true, DOT, usearch::f16>(dim)),
            (true, Metric::L2) => graph.change_metric(kernel::<true, L2, usearch::f16>(dim)),
        }
        return true;
    }
    let _ = (graph, metric, form, dim);
    false
}

/// The f16 query of the search or insert running on this thread, widened to f32 once.
///
/// Every distance usearch measures while it searches, and while an insert looks for its
/// neighbours, is between the query (its first argument, one buffer throughout) and a
/// stored vector. Converting the query again in every call was half of an f16 kernel's
/// conversions. `Hnsw` arms the cache around each search and insert (`QueryScope`); the
/// first distance after that widens its first argument, and later calls with the same
/// pointer read the widened copy. Any other first argument (an insert linking two
/// stored neighbours) is converted as before, so the distances are the same either way.
struct QueryCache {
    armed: Cell<bool>,
    at: Cell<*const u8>,
    widened: UnsafeCell<Vec<f32>>,
}

thread_local! {
    static QUERY: QueryCache = const {
        QueryCache {
            armed: Cell::new(false),
            at: Cell::new(std::ptr::null()),
            widened: UnsafeCell::new(Vec::new()),
        }
    };
}

/// While alive, the f16 kernels on this thread widen the query once (`QueryCache`). Hold
/// it only around one usearch search or add, which measure every distance on the
/// calling thread and keep their query buffer unchanged until they return.
pub struct QueryScope(std::marker::PhantomData<*const ()>);

impl QueryScope {
    pub fn arm() -> QueryScope {
        QUERY.with(|q| {
            // A nested operation would overwrite the outer one's widened query.
            debug_assert!(!q.armed.get(), "one QueryScope at a time per thread");
            q.armed.set(true);
            q.at.set(std::ptr::null());
        });
        QueryScope(std::marker::PhantomData)
    }
}

impl Drop for QueryScope {
    fn drop(&mut self) {
        QUERY.with(|q| {
            q.armed.set(false);
            q.at.set(std::ptr::null());
        });
    }
}

/// The widened copy of the f16 vector at `a` if it is this operation's query; `None`
/// when no `QueryScope` is armed on this thread or `a` is another vector.
///
/// # Safety
/// `a` points at `dim` readable f16 components.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
unsafe fn widened_query(a: *const u8, dim: usize) -> Option<*const f32> {
    QUERY.with(|q| {
        if !q.armed.get() {
            return None;
        }
        // SAFETY: only this thread touches its cache, and no reference to the vector
        // outlives this closure.
        let widened = unsafe { &mut *q.widened.get() };
        if q.at.get().is_null() {
            widened.clear();
            widened.extend((0..dim).map(|i| {
                // SAFETY: the caller's promise: `dim` f16 components at `a`.
                let bits = unsafe { a.add(i * 2).cast::<u16>().read_unaligned() };
                half::f16::from_bits(bits).to_f32()
            }));
            q.at.set(a);
        }
        (q.at.get() == a && widened.len() == dim).then_some(widened.as_ptr())
    })
}

// The distance a kernel computes, as a const parameter so each kernel is compiled alone.
const COSINE: u8 = 0;
const DOT: u8 = 1;
const L2: u8 = 2;

/// The distance from the three sums a kernel gathers: a·b, a·a and b·b, or for L2 the
/// squared differences in the first.
fn finish<const FORM: u8>(ab: f32, aa: f32, bb: f32) -> f32 {
    match FORM {
        COSINE => {
            let norms = (aa * bb).sqrt();
            // As `Scorer`: a zero vector is similar to nothing.
            if norms == 0.0 {
                1.0
            } else {
                1.0 - ab / norms
            }
        }
        DOT => 1.0 - ab,
        _ => ab,
    }
}

/// The closure usearch calls with two stored vectors: `f32` components, or `f16` ones
/// when `HALF`. 16 lanes at a time where the CPU has AVX-512, else 8.
#[cfg(target_arch = "x86_64")]
fn kernel<const HALF: bool, const FORM: u8, T>(
    dim: usize,
) -> Box<dyn Fn(*const T, *const T) -> f32 + Send + Sync> {
    assert!(
        avx2::available(),
        "the AVX2 kernels run only where the CPU has them"
    );
    // SAFETY (both closures): usearch passes two vectors of the graph's `dim`
    // components, stored as the graph's scalar kind, which `install` matched to `HALF`;
    // `available` checked the instructions the kernels are compiled for.
    if avx512::available() {
        Box::new(move |a, b| unsafe { measure::<true, HALF, FORM>(a.cast(), b.cast(), dim) })
    } else {
        Box::new(move |a, b| unsafe { measure::<false, HALF, FORM>(a.cast(), b.cast(), dim) })
    }
}

/// The distance between `a` and `b`, with the query widened once when `HALF`
/// (`QueryCache`); with the 16-lane kernel when `WIDE`.
///
/// # Safety
/// As `avx2::distance` (and `avx512::distance` when `WIDE`), with both vectors f16 when
/// `HALF` and f32 otherwise.
#[cfg(target_arch = "x86_64")]
unsafe fn measure<const WIDE: bool, const HALF: bool, const FORM: u8>(
    a: *const u8,
    b: *const u8,
    dim: usize,
) -> f32 {
    // A widened query holds `dim` f32 components of the f16 vector `a` points at.
    let widened = if HALF { widened_query(a, dim) } else { None };
    match (widened, WIDE) {
        (Some(query), true) => avx512::distance::<false, true, FORM>(query.cast(), b, dim),
        (Some(query), false) => avx2::distance::<false, true, FORM>(query.cast(), b, dim),
        (None, true) => avx512::distance::<HALF, HALF, FORM>(a, b, dim),
        (None, false) => avx2::distance::<HALF, HALF, FORM>(a, b, dim),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{finish, COSINE, L2};

    /// Eight f32 lanes in a register; four registers summed independently, so one
    /// FMA's latency does not hold up the next.
    const WIDTH: usize = 8;
    const CHAINS: usize = 4;
    const CACHE_LINE: usize = 64;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// Eight components from `base`, component `at` on, as f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load<const HALF: bool>(base: *const u8, at: usize) -> __m256 {
        if HALF {
            _mm256_cvtph_ps(_mm_loadu_si128(base.add(at * 2).cast()))
        } else {
            _mm256_loadu_ps(base.add(at * 4).cast())
        }
    }

    /// One component, for the tail past the last whole register.
    unsafe fn scalar<const HALF: bool>(base: *const u8, at: usize) -> f32 {
        if HALF {
            half::f16::from_bits(base.add(at * 2).cast::<u16>().read_unaligned()).to_f32()
        } else {
            base.add(at * 4).cast::<f32>().read_unaligned()
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn horizontal_sum(chains: [__m256; CHAINS]) -> f32 {
        let pairs = _mm256_add_ps(
            _mm256_add_ps(chains[0], chains[1]),
            _mm256_add_ps(chains[2], chains[3]),
        );
        let quad = _mm_add_ps(
            _mm256_castps256_ps128(pairs),
            _mm256_extractf128_ps(pairs, 1),
        );
        let duo = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        _mm_cvtss_f32(_mm_add_ss(duo, _mm_shuffle_ps(duo, duo, 1)))
    }

    /// Adds one register of both vectors to chain `c` of the sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn step<const FORM: u8>(
        x: __m256,
        y: __m256,
        c: usize,
        ab: &mut [__m256; CHAINS],
        aa: &mut [__m256; CHAINS],
        bb: &mut [__m256; CHAINS],
    ) {
        if FORM == L2 {
            let d = _mm256_sub_ps(x, y);
            ab[c] = _mm256_fmadd_ps(d, d, ab[c]);
        } else {
            ab[c] = _mm256_fmadd_ps(x, y, ab[c]);
            if FORM == COSINE {
                aa[c] = _mm256_fmadd_ps(x, x, aa[c]);
                bb[c] = _mm256_fmadd_ps(y, y, bb[c]);
            }
        }
    }

    /// Asks for every cache line of `b`'s `dim` components at once: the candidate is
    /// usually far from cache (a neighbour met in the graph), and one request per line
    /// beats one miss after the other.
    #[inline]
    pub unsafe fn prefetch<const B_HALF: bool>(b: *const u8, dim: usize) {
        let bytes = dim * if B_HALF { 2 } else { 4 };
        let mut line = 0;
        while line < bytes {
            _mm_prefetch::<_MM_HINT_T0>(b.add(line).cast());
            line += CACHE_LINE;
        }
    }

    /// # Safety
    /// `a` and `b` point at `dim` readable components each (f16 when `A_HALF` and
    /// `B_HALF`, else f32), and the CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn distance<const A_HALF: bool, const B_HALF: bool, const FORM: u8>(
        a: *const u8,
        b: *const u8,
        dim: usize,
    ) -> f32 {
        prefetch::<B_HALF>(b, dim);
        let (ab, aa, bb) = sums::<A_HALF, B_HALF, FORM>(a, b, 0, dim);
        finish::<FORM>(ab, aa, bb)
    }

    /// a·b, a·a and b·b (for L2 the squared differences, then zeros) over components
    /// `from..dim`.
    ///
    /// # Safety
    /// As `distance`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn sums<const A_HALF: bool, const B_HALF: bool, const FORM: u8>(
        a: *const u8,
        b: *const u8,
        from: usize,
        dim: usize,
    ) -> (f32, f32, f32) {
        let zero = _mm256_setzero_ps();
        let (mut ab, mut aa, mut bb) = ([zero; CHAINS], [zero; CHAINS], [zero; CHAINS]);
        let mut at = from;
        while at + WIDTH * CHAINS <= dim {
            for c in 0..CHAINS {
                let (x, y) = (load::<A_HALF>(a, at), load::<B_HALF>(b, at));
                step::<FORM>(x, y, c, &mut ab, &mut aa, &mut bb);
                at += WIDTH;
            }
        }
        while at + WIDTH <= dim {
            let (x, y) = (load::<A_HALF>(a, at), load::<B_HALF>(b, at));
            step::<FORM>(x, y, 0, &mut ab, &mut aa, &mut bb);
            at += WIDTH;
        }
        let (mut ab, mut aa, mut bb) = (horizontal_sum(ab), horizontal_sum(aa), horizontal_sum(bb));
        for i in at..dim {
            let (x, y) = (scalar::<A_HALF>(a, i), scalar::<B_HALF>(b, i));
            if FORM == L2 {
                ab += (x - y) * (x - y);
            } else {
                ab += x * y;
                aa += x * x;
                bb += y * y;
            }
        }
        (ab, aa, bb)
    }
}

/// The same kernels sixteen lanes wide, for CPUs with AVX-512 (hnswlib, compiled for
/// the machine it runs on, uses them too). What is left past the last whole 16-lane
/// register goes to the AVX2 kernel's loop.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{avx2, finish, COSINE, L2};

    const WIDTH: usize = 16;
    const CHAINS: usize = 4;

    pub fn available() -> bool {
        avx2::available() && is_x86_feature_detected!("avx512f")
    }

    /// Sixteen components from `base`, component `at` on, as f32.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn load<const HALF: bool>(base: *const u8, at: usize) -> __m512 {
        if HALF {
            _mm512_cvtph_ps(_mm256_loadu_si256(base.add(at * 2).cast()))
        } else {
            _mm512_loadu_ps(base.add(at * 4).cast())
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn step<const FORM: u8>(
        x: __m512,
        y: __m512,
        c: usize,
        ab: &mut [__m512; CHAINS],
        aa: &mut [__m512; CHAINS],
        bb: &mut [__m512; CHAINS],
    ) {
        if FORM == L2 {
            let d = _mm512_sub_ps(x, y);
            ab[c] = _mm512_fmadd_ps(d, d, ab[c]);
        } else {
            ab[c] = _mm512_fmadd_ps(x, y, ab[c]);
            if FORM == COSINE {
                aa[c] = _mm512_fmadd_ps(x, x, aa[c]);
                bb[c] = _mm512_fmadd_ps(y, y, bb[c]);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn horizontal_sum(chains: [__m512; CHAINS]) -> f32 {
        _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(chains[0], chains[1]),
            _mm512_add_ps(chains[2], chains[3]),
        ))
    }

    /// # Safety
    /// As `avx2::distance`, and the CPU has AVX-512F.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn distance<const A_HALF: bool, const B_HALF: bool, const FORM: u8>(
        a: *const u8,
        b: *const u8,
        dim: usize,
    ) -> f32 {
        avx2::prefetch::<B_HALF>(b, dim);
        let zero = _mm512_setzero_ps();
        let (mut ab, mut aa, mut bb) = ([zero; CHAINS], [zero; CHAINS], [zero; CHAINS]);
        let mut at = 0;
        while at + WIDTH * CHAINS <= dim {
            for c in 0..CHAINS {
                let (x, y) = (load::<A_HALF>(a, at), load::<B_HALF>(b, at));
                step::<FORM>(x, y, c, &mut ab, &mut aa, &mut bb);
                at += WIDTH;
            }
        }
        while at + WIDTH <= dim {
            let (x, y) = (load::<A_HALF>(a, at), load::<B_HALF>(b, at));
            step::<FORM>(x, y, 0, &mut ab, &mut aa, &mut bb);
            at += WIDTH;
        }
        let (tail_ab, tail_aa, tail_bb) = avx2::sums::<A_HALF, B_HALF, FORM>(a, b, at, dim);
        finish::<FORM>(
            horizontal_sum(ab) + tail_ab,
            horizontal_sum(aa) + tail_aa,
            horizontal_sum(bb) + tail_bb,
        )
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::index::Scorer;

    fn vector(dim: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..dim).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    }

    /// usearch's distance from `Scorer`'s exact score, as `Hnsw::score` inverts it.
    fn expected(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
        let score = Scorer::new(metric, a).score(b);
        match metric {
            Metric::Cosine | Metric::Dot => 1.0 - score,
            Metric::L2 => score * score,
        }
    }

    /// The distance as the kernel `kernel` would measure it between `a` and `b`, 16 lanes
    /// wide when `wide`.
    fn kernel_distance(wide: bool, half: bool, metric: Metric, a: &[f32], b: &[f32]) -> f32 {
        let dim = a.len();
        let bits = |v: &[f32]| -> Vec<u16> {
            v.iter()
                .map(|x| half::f16::from_f32(*x).to_bits())
                .collect()
        };
        let (a_bits, b_bits) = (bits(a), bits(b));
        let (a, b): (*const u8, *const u8) = if half {
            (a_bits.as_ptr().cast(), b_bits.as_ptr().cast())
        } else {
            (a.as_ptr().cast(), b.as_ptr().cast())
        };
        // SAFETY: both vectors hold `dim` components of the element type `half` names;
        // the callers run a kernel only where its `available` says the instructions
        // exist. No QueryScope is armed, so `measure` widens nothing.
        unsafe {
            match (wide, half, metric) {
                (false, false, Metric::Cosine) => measure::<false, false, COSINE>(a, b, dim),
                (false, false, Metric::Dot) => measure::<false, false, DOT>(a, b, dim),
                (false, false, Metric::L2) => measure::<false, false, L2>(a, b, dim),
                (false, true, Metric::Cosine) => measure::<false, true, COSINE>(a, b, dim),
                (false, true, Metric::Dot) => measure::<false, true, DOT>(a, b, dim),
                (false, true, Metric::L2) => measure::<false, true, L2>(a, b, dim),
                (true, false, Metric::Cosine) => measure::<true, false, COSINE>(a, b, dim),
                (true, false, Metric::Dot) => measure::<true, false, DOT>(a, b, dim),
                (true, false, Metric::L2) => measure::<true, false, L2>(a, b, dim),
                (true, true, Metric::Cosine) => measure::<true, true, COSINE>(a, b, dim),
                (true, true, Metric::Dot) => measure::<true, true, DOT>(a, b, dim),
                (true, true, Metric::L2) => measure::<true, true, L2>(a, b, dim),
            }
        }
    }

    /// The kernel widths this CPU runs: 8 lanes, and 16 with AVX-512.
    fn widths_here() -> Vec<bool> {
        [false, true]
            .into_iter()
            .filter(|&wide| {
                if wide {
                    avx512::available()
                } else {
                    avx2::available()
                }
            })
            .collect()
    }

    #[test]
    fn every_kernel_matches_the_exact_score_at_every_tail_length() {
        if !avx2::available() {
            eprintln!("no AVX2/FMA/F16C here: usearch's kernels stay, nothing to compare");
            return;
        }
        // Whole chains, whole registers and scalar tails, alone and together, for both
        // widths (16-lane chains are 64 components).
        for wide in widths_here() {
            for dim in [
                1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 63, 64, 65, 80, 100, 384, 1536,
            ] {
                for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
                    let (a, b) = (vector(dim, dim as u64), vector(dim, dim as u64 + 1));
                    let exact = expected(metric, &a, &b);
                    let f32_kernel = kernel_distance(wide, false, metric, &a, &b);
                    let tolerance = 1e-4 * (1.0 + exact.abs());
                    assert!(
                        (f32_kernel - exact).abs() <= tolerance,
                        "f32 {metric:?} dim {dim} wide {wide}: {f32_kernel} vs {exact}"
                    );
                    // f16 rounds each component by up to 2^-11 of itself.
                    let f16_kernel = kernel_distance(wide, true, metric, &a, &b);
                    let tolerance = 2e-3 * (1.0 + exact.abs()) * (dim as f32).sqrt();
                    assert!(
                        (f16_kernel - exact).abs() <= tolerance,
                        "f16 {metric:?} dim {dim} wide {wide}: {f16_kernel} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_zero_vector_is_similar_to_nothing_under_cosine() {
        let zero = vec![0f32; 40];
        let other = vector(40, 7);
        for wide in widths_here() {
            assert_eq!(
                kernel_distance(wide, false, Metric::Cosine, &zero, &other),
                1.0
            );
            assert_eq!(
                kernel_distance(wide, true, Metric::Cosine, &other, &zero),
                1.0
            );
        }
    }
}

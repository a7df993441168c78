//! Statistics of one traced tensor (docs/TRACE_FORMAT.md): computed in f64 over
//! all elements and again over the last token's slice; NaN and Inf are
//! counted apart and left out of every other figure.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: u64,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub abs_max: Option<f64>,
    pub l2: Option<f64>,
    pub nan: u64,
    pub inf: u64,
}

/// Stats of a whole tensor plus its last token's slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorStats {
    pub shape: Vec<usize>,
    #[serde(flatten)]
    pub all: Stats,
    pub last: Stats,
}

impl Stats {
    /// Over an iterator of values. `count` is every element, NaN/Inf included.
    pub fn of<'a>(values: impl Iterator<Item = &'a f32>) -> Stats {
        let mut acc = Accumulator::default();
        acc.add_each(values);
        acc.finish()
    }
}

/// Statistics gathered over a tensor that comes in pieces (a long prompt's
/// stage, block by block), in order: each piece adds its sums. One piece
/// gives exactly [`Stats::of_slice`]'s figures; several differ from one
/// whole pass only by the rounding of their sums (f64).
#[derive(Debug, Clone)]
pub struct Accumulator {
    count: u64,
    finite: u64,
    nan: u64,
    inf: u64,
    sum: f64,
    sumsq: f64,
    /// Σ(x − shift)², shifted by the first finite value: a single pass that
    /// keeps the variance accurate in f64 for f32 data.
    ssum: f64,
    shift: Option<f64>,
    min: f64,
    max: f64,
    abs_max: f64,
}

impl Default for Accumulator {
    fn default() -> Accumulator {
        Accumulator {
            count: 0,
            finite: 0,
            nan: 0,
            inf: 0,
            sum: 0.0,
            sumsq: 0.0,
            ssum: 0.0,
            shift: None,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            abs_max: 0.0,
        }
    }
}

impl Accumulator {
    /// Adds the values one at a time (NaN and infinities counted apart).
    pub fn add_each<'a>(&mut self, values: impl Iterator<Item = &'a f32>) {
        for &v in values {
            self.count += 1;
            if v.is_nan() {
                self.nan += 1;
                continue;
            }
            if v.is_infinite() {
                self.inf += 1;
                continue;
            }
            let x = v as f64;
            self.finite += 1;
            self.sum += x;
            self.sumsq += x * x;
            let k = *self.shift.get_or_insert(x);
            self.ssum += (x - k) * (x - k);
            self.extremes(x, x);
        }
    }

    /// Adds a slice: a branch-free pass in fixed-size chunks when every
    /// value is finite (large slices use every core; the figures do not
    /// depend on the thread count), else one value at a time.
    pub fn add_slice(&mut self, x: &[f32]) {
        let k = match self.shift {
            Some(k) => k,
            None if x.first().is_some_and(|v| v.is_finite()) => x[0] as f64,
            None => return self.add_each(x.iter()),
        };
        let part = |c: &[f32]| partial(c, k);
        use rayon::prelude::*;
        let parts: Vec<Partial> = if x.len() >= 4 * CHUNK {
            x.par_chunks(CHUNK).map(part).collect()
        } else {
            x.chunks(CHUNK).map(part).collect()
        };
        let (mut sum, mut sumsq, mut ssum) = (self.sum, self.sumsq, self.ssum);
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        for (a, b, c, lo, hi) in parts {
            sum += a;
            sumsq += b;
            ssum += c;
            min = min.min(lo);
            max = max.max(hi);
        }
        // A NaN or an infinity anywhere makes the sums non-finite (finite f32
        // values cannot overflow an f64 sum): then count them apart, slowly.
        if !(sum.is_finite() && sumsq.is_finite() && ssum.is_finite()) {
            return self.add_each(x.iter());
        }
        self.count += x.len() as u64;
        self.finite += x.len() as u64;
        self.shift = Some(k);
        (self.sum, self.sumsq, self.ssum) = (sum, sumsq, ssum);
        self.extremes(min as f64, max as f64);
    }

    fn extremes(&mut self, min: f64, max: f64) {
        self.min = self.min.min(min);
        self.max = self.max.max(max);
        self.abs_max = self.abs_max.max(min.abs()).max(max.abs());
    }

    pub fn finish(&self) -> Stats {
        let (count, nan, inf) = (self.count, self.nan, self.inf);
        if self.finite == 0 {
            return Stats { count, mean: None, std: None, min: None, max: None, abs_max: None, l2: None, nan, inf };
        }
        let f = self.finite as f64;
        let mean = self.sum / f;
        let k = self.shift.unwrap_or(0.0);
        let var = (self.ssum / f - (mean - k) * (mean - k)).max(0.0);
        Stats {
            count,
            mean: Some(mean),
            std: Some(var.sqrt()),
            min: Some(self.min),
            max: Some(self.max),
            abs_max: Some(self.abs_max),
            l2: Some(self.sumsq.sqrt()),
            nan,
            inf,
        }
    }
}

/// Elements of `data` (row-major, `shape`) whose index on `axis` is the last.
pub fn last_slice<'a>(data: &'a [f32], shape: &[usize], axis: usize) -> impl Iterator<Item = &'a f32> + 'a {
    let axis = axis.min(shape.len().saturating_sub(1));
    let outer: usize = shape[..axis].iter().product();
    let len = shape.get(axis).copied().unwrap_or(1);
    let inner: usize = shape[axis + 1..].iter().product();
    (0..outer).flat_map(move |o| {
        let start = (o * len + len.saturating_sub(1)) * inner;
        data[start..start + inner].iter()
    })
}

/// Elements per partial sum in [`Stats::of_slice`].
const CHUNK: usize = 16384;

impl Stats {
    /// As [`Stats::of`] over a slice, with a branch-free pass when every
    /// value is finite (the usual case; same figures either way).
    pub fn of_slice(x: &[f32]) -> Stats {
        let mut acc = Accumulator::default();
        acc.add_slice(x);
        acc.finish()
    }
}

/// Lanes of the partial sums: sixteen, two AVX registers of f32 (so the
/// additions of two registers overlap instead of waiting on each other).
const L: usize = 16;

/// Per-lane running sums: Σx, Σx², Σ(x−k)², min, max.
struct Lanes {
    sum: [f64; L],
    sumsq: [f64; L],
    ssum: [f64; L],
    min: [f32; L],
    max: [f32; L],
}

type Partial = (f64, f64, f64, f32, f32);

impl Lanes {
    fn new() -> Lanes {
        Lanes { sum: [0.0; L], sumsq: [0.0; L], ssum: [0.0; L], min: [f32::INFINITY; L], max: [f32::NEG_INFINITY; L] }
    }

    /// Adds values lane by lane, from lane 0 (the scalar reference, and the tail).
    fn add(&mut self, v: &[f32], k: f64) {
        for (l, &x) in v.iter().enumerate() {
            let d = x as f64;
            self.sum[l] += d;
            self.sumsq[l] = d.mul_add(d, self.sumsq[l]);
            self.ssum[l] = (d - k).mul_add(d - k, self.ssum[l]);
            self.min[l] = if x < self.min[l] { x } else { self.min[l] };
            self.max[l] = if x > self.max[l] { x } else { self.max[l] };
        }
    }

    fn total(&self) -> Partial {
        let t = |a: &[f64; L]| a.iter().sum::<f64>();
        let lo = self.min.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        let hi = self.max.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        (t(&self.sum), t(&self.sumsq), t(&self.ssum), lo, hi)
    }
}

/// The partial sums of a chunk of finite values. The AVX2 path keeps the
/// same sixteen lanes with the same operations (squares fused into their
/// sums) as the scalar one, so both give the same bits.
fn partial(c: &[f32], k: f64) -> Partial {
    let mut lanes = Lanes::new();
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut rest = c;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        let whole = c.len() / L * L;
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above); `whole` ≤ c.len().
            unsafe { partial_avx512(&c[..whole], k, &mut lanes) };
        } else {
            // SAFETY: the CPU has AVX2 and FMA (checked above); `whole` ≤ c.len().
            unsafe { partial_avx2(&c[..whole], k, &mut lanes) };
        }
        rest = &c[whole..];
    }
    for v in rest.chunks(L) {
        lanes.add(v, k);
    }
    lanes.total()
}

/// The partial sums of `c` (whole groups of sixteen) into `out`, sixteen
/// lanes as four registers of f64 and two of f32.
///
/// # Safety
/// The CPU has AVX2 and FMA (loads and stores stay inside `c`'s chunks and
/// `out`'s sixteen-lane arrays).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn partial_avx2(c: &[f32], k: f64, out: &mut Lanes) {
    use std::arch::x86_64::*;
    let kk = _mm256_set1_pd(k);
    // Lanes 4i..4i+4 in register i of each sum.
    let mut s = [_mm256_setzero_pd(); 4];
    let mut q = [_mm256_setzero_pd(); 4];
    let mut r = [_mm256_setzero_pd(); 4];
    let mut lo = [_mm256_set1_ps(f32::INFINITY); 2];
    let mut hi = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
    for v in c.chunks_exact(L) {
        for h in 0..2 {
            let x = _mm256_loadu_ps(v.as_ptr().add(8 * h));
            let d = [_mm256_cvtps_pd(_mm256_castps256_ps128(x)), _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1))];
            for (j, d) in d.into_iter().enumerate() {
                let i = 2 * h + j;
                s[i] = _mm256_add_pd(s[i], d);
                q[i] = _mm256_fmadd_pd(d, d, q[i]);
                let dk = _mm256_sub_pd(d, kk);
                r[i] = _mm256_fmadd_pd(dk, dk, r[i]);
            }
            lo[h] = _mm256_min_ps(x, lo[h]);
            hi[h] = _mm256_max_ps(x, hi[h]);
        }
    }
    for i in 0..4 {
        _mm256_storeu_pd(out.sum.as_mut_ptr().add(4 * i), s[i]);
        _mm256_storeu_pd(out.sumsq.as_mut_ptr().add(4 * i), q[i]);
        _mm256_storeu_pd(out.ssum.as_mut_ptr().add(4 * i), r[i]);
    }
    for h in 0..2 {
        _mm256_storeu_ps(out.min.as_mut_ptr().add(8 * h), lo[h]);
        _mm256_storeu_ps(out.max.as_mut_ptr().add(8 * h), hi[h]);
    }
}

/// [`partial_avx2`] on 512-bit registers: the sixteen lanes in one
/// register of f32 and two of f64, the same operations lane by lane.
///
/// # Safety
/// The CPU has AVX512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn partial_avx512(c: &[f32], k: f64, out: &mut Lanes) {
    use std::arch::x86_64::*;
    let kk = _mm512_set1_pd(k);
    let (mut s0, mut s1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    let (mut q0, mut q1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    let (mut r0, mut r1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    let mut lo = _mm512_set1_ps(f32::INFINITY);
    let mut hi = _mm512_set1_ps(f32::NEG_INFINITY);
    for v in c.chunks_exact(L) {
        let x = _mm512_loadu_ps(v.as_ptr());
        let a = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
        let b = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))));
        s0 = _mm512_add_pd(s0, a);
        s1 = _mm512_add_pd(s1, b);
        q0 = _mm512_fmadd_pd(a, a, q0);
        q1 = _mm512_fmadd_pd(b, b, q1);
        let (da, db) = (_mm512_sub_pd(a, kk), _mm512_sub_pd(b, kk));
        r0 = _mm512_fmadd_pd(da, da, r0);
        r1 = _mm512_fmadd_pd(db, db, r1);
        lo = _mm512_min_ps(x, lo);
        hi = _mm512_max_ps(x, hi);
    }
    _mm512_storeu_pd(out.sum.as_mut_ptr(), s0);
    _mm512_storeu_pd(out.sum.as_mut_ptr().add(8), s1);
    _mm512_storeu_pd(out.sumsq.as_mut_ptr(), q0);
    _mm512_storeu_pd(out.sumsq.as_mut_ptr().add(8), q1);
    _mm512_storeu_pd(out.ssum.as_mut_ptr(), r0);
    _mm512_storeu_pd(out.ssum.as_mut_ptr().add(8), r1);
    _mm512_storeu_ps(out.min.as_mut_ptr(), lo);
    _mm512_storeu_ps(out.max.as_mut_ptr(), hi);
}

impl TensorStats {
    pub fn compute(data: &[f32], shape: &[usize], token_axis: usize) -> TensorStats {
        let all = Stats::of_slice(data);
        // One token: the last token's slice is the whole tensor.
        let last = if shape.get(token_axis) == Some(&1) { all } else { Stats::of(last_slice(data, shape, token_axis)) };
        TensorStats { shape: shape.to_vec(), all, last }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_exclude_nan_and_inf() {
        let s = Stats::of([1.0f32, 2.0, 3.0, f32::NAN, f32::INFINITY, -4.0].iter());
        assert_eq!(s.count, 6);
        assert_eq!((s.nan, s.inf), (1, 1));
        assert_eq!(s.mean, Some(0.5));
        assert_eq!(s.min, Some(-4.0));
        assert_eq!(s.abs_max, Some(4.0));
        let var: f64 = [1.0f64, 2.0, 3.0, -4.0].iter().map(|x| (x - 0.5).powi(2)).sum::<f64>() / 4.0;
        assert!((s.std.unwrap() - var.sqrt()).abs() < 1e-12);
        assert!((s.l2.unwrap() - 30f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn last_slice_follows_the_token_axis() {
        // [2, 3, 2]: axis 1 picks rows [0,2,:] and [1,2,:].
        let d: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let v: Vec<f32> = last_slice(&d, &[2, 3, 2], 1).copied().collect();
        assert_eq!(v, vec![4.0, 5.0, 10.0, 11.0]);
        let v: Vec<f32> = last_slice(&d, &[3, 4], 0).copied().collect();
        assert_eq!(v, vec![8.0, 9.0, 10.0, 11.0]);
    }

    #[test]
    fn slice_fast_path_agrees_with_the_general_one() {
        let x: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37).collect();
        let (a, b) = (Stats::of_slice(&x), Stats::of(x.iter()));
        assert_eq!((a.count, a.min, a.max, a.abs_max), (b.count, b.min, b.max, b.abs_max));
        for (p, q) in [(a.mean, b.mean), (a.std, b.std), (a.l2, b.l2)] {
            assert!((p.unwrap() - q.unwrap()).abs() <= 1e-12 * q.unwrap().abs().max(1.0));
        }
    }

    #[test]
    fn simd_lanes_equal_the_scalar_lanes_bit_for_bit() {
        for n in [1usize, 7, 8, 9, 15, 16, 17, 640, 1003] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 613) as f32 - 300.0) * 1.7e-3).collect();
            let k = x[0] as f64;
            let mut scalar = Lanes::new();
            for v in x.chunks(L) {
                scalar.add(v, k);
            }
            let (a, b) = (partial(&x, k), scalar.total());
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "n = {n}");
            // Each SIMD version on its own, whichever `partial` picked.
            #[cfg(target_arch = "x86_64")]
            {
                let whole = n / L * L;
                let mut want = Lanes::new();
                for v in x[..whole].chunks(L) {
                    want.add(v, k);
                }
                let want = format!("{:?}", want.total());
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    let mut got = Lanes::new();
                    // SAFETY: AVX2 and FMA, checked just above.
                    unsafe { partial_avx2(&x[..whole], k, &mut got) };
                    assert_eq!(format!("{:?}", got.total()), want, "avx2, n = {n}");
                }
                if std::is_x86_feature_detected!("avx512f") {
                    let mut got = Lanes::new();
                    // SAFETY: AVX-512F, checked just above.
                    unsafe { partial_avx512(&x[..whole], k, &mut got) };
                    assert_eq!(format!("{:?}", got.total()), want, "avx512, n = {n}");
                }
            }
        }
    }

    #[test]
    fn a_nan_or_inf_anywhere_takes_the_counting_path() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x: Vec<f32> = (0..100).map(|i| i as f32).collect();
            x[57] = bad;
            let s = Stats::of_slice(&x);
            assert_eq!(s.nan + s.inf, 1);
            assert_eq!(s.max, Some(99.0));
        }
    }

    #[test]
    fn all_nan_gives_no_figures() {
        let s = Stats::of([f32::NAN; 3].iter());
        assert_eq!(s.mean, None);
        assert_eq!(s.nan, 3);
    }
}

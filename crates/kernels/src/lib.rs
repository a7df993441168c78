//! The narrow interface between the model and its arithmetic: a linear layer
//! `y[t] = W · x[t]` over quantized weights, chosen per precision.
//!
//! The model never touches block formats; it hands a [`Weight`] and
//! activations to [`Kernels::linear`]. `exact` dequantizes each weight row
//! with the scalar reference dequantizer and takes f32 dot products with
//! eight independent partial sums, as BLAS kernels do. Each output element
//! is computed by exactly one thread, in a fixed order, so results do not
//! depend on the thread count.

use plumb_formats::Bytes;

pub mod attention;
pub mod dot;
pub mod fast;
pub mod flash;
pub mod mirror;
pub mod ops;
#[cfg(target_arch = "x86_64")]
pub mod x86;
use plumb_quant::GgmlType;
use rayon::prelude::*;

/// A weight matrix [rows, cols] in its stored block format.
#[derive(Debug, Clone)]
pub struct Weight {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: Bytes,
    /// llama.cpp repacks this weight into interleaved rows at load
    /// ([`fast::repacks`]): the fast precision sums its products as the
    /// repacked kernels do.
    pub repacked: bool,
}

impl Weight {
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }

    /// Dequantizes row `r` into `out` (length `cols`), with the SIMD
    /// dequantizer of the active path where there is one (bit-identical to
    /// the scalar reference).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        let src = &self.bytes[r * rb..(r + 1) * rb];
        dequantize_row(self.ty, src, out, active_path());
    }
}

/// Which arithmetic the model runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 activations, weights dequantized to f32: the reference numerics.
    Exact,
    /// Activations quantized per block (Q8_0 / Q8_1 / Q8_K as each weight
    /// format pairs with) and integer dot products: llama.cpp's CPU numerics.
    Fast,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Precision> {
        match s {
            "exact" => Some(Precision::Exact),
            "fast" => Some(Precision::Fast),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Exact => "exact",
            Precision::Fast => "fast",
        }
    }
}

/// The code path the kernels take: the scalar references, or one level of
/// x86-64 SIMD. Each value names exactly the instructions that run, can be
/// forced (`--kernels`, [`set_path`]) where the CPU has them, and is the
/// only thing the kernels look at to choose (see the `uses_*` methods);
/// what the CPU has is asked in [`KernelPath::supported`] alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelPath {
    /// The scalar references (`dot`, `mirror`'s scalar code, `plumb_quant`).
    Scalar,
    /// AVX2, FMA and F16C on 256-bit registers; never an AVX-512
    /// instruction (what an AVX2-only CPU runs).
    Avx2,
    /// [`KernelPath::Avx2`] plus AVX512F: the exact precision's rows and
    /// four-token dots and the fast precision's attention tiles in 512-bit
    /// registers (each result the 256-bit kernel's, bit for bit).
    Avx512,
    /// [`KernelPath::Avx512`] plus AVX512VL and AVX512VNNI: the fast
    /// precision's Q8_0-family and K-quant integer dots by `vpdpbusd`.
    Avx512Vnni,
}

impl KernelPath {
    /// Every path, from the plainest to the widest.
    pub const ALL: [KernelPath; 4] = [KernelPath::Scalar, KernelPath::Avx2, KernelPath::Avx512, KernelPath::Avx512Vnni];

    /// Whether this CPU has every feature the path uses (the one place
    /// plumb's kernels ask the CPU).
    pub fn supported(self) -> bool {
        static SUPPORTED: std::sync::OnceLock<[bool; 4]> = std::sync::OnceLock::new();
        SUPPORTED.get_or_init(|| KernelPath::ALL.map(KernelPath::ask_cpu))[self as usize]
    }

    /// [`KernelPath::supported`], asked of the CPU (once per process).
    fn ask_cpu(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = || {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            };
            match self {
                KernelPath::Scalar => true,
                KernelPath::Avx2 => avx2(),
                KernelPath::Avx512 => avx2() && is_x86_feature_detected!("avx512f"),
                KernelPath::Avx512Vnni => {
                    avx2()
                        && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == KernelPath::Scalar
        }
    }

    /// The widest path this CPU supports.
    pub fn detect() -> KernelPath {
        KernelPath::ALL.into_iter().rev().find(|p| p.supported()).unwrap_or(KernelPath::Scalar)
    }

    /// Every path this CPU supports.
    pub fn available() -> Vec<KernelPath> {
        KernelPath::ALL.into_iter().filter(|p| p.supported()).collect()
    }

    /// A `--kernels` value: `auto` (the widest this CPU has), or a path by
    /// its [`flag`](KernelPath::flag) or [`name`](KernelPath::name); `None`
    /// for an unknown path or one this CPU lacks.
    pub fn parse(s: &str) -> Option<KernelPath> {
        if s == "auto" {
            return Some(KernelPath::detect());
        }
        KernelPath::ALL.into_iter().find(|p| p.flag() == s || p.name() == s).filter(|p| p.supported())
    }

    /// The short name `--kernels` takes.
    pub fn flag(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512 => "avx512",
            KernelPath::Avx512Vnni => "avx512vnni",
        }
    }

    /// What runs: the instruction-set extensions the path uses, for trace
    /// headers, `--version` and the pinned digests.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2+fma+f16c",
            KernelPath::Avx512 => "avx2+fma+f16c+avx512f",
            KernelPath::Avx512Vnni => "avx2+fma+f16c+avx512f+avx512vl+avx512vnni",
        }
    }

    /// `self`, after asserting that this CPU supports it: every safe
    /// function that takes a path from its caller and may run that path's
    /// kernels checks it so (a few cached loads), since running them on a
    /// CPU without the features is undefined behaviour.
    pub fn checked(self) -> KernelPath {
        assert!(self.supported(), "kernel path {} is not supported by this CPU", self.name());
        self
    }

    /// Whether the path runs the AVX2 + FMA + F16C kernels (every SIMD
    /// path does, for what has no wider form).
    pub fn uses_avx2(self) -> bool {
        matches!(self, KernelPath::Avx2 | KernelPath::Avx512 | KernelPath::Avx512Vnni)
    }

    /// Whether the path runs the 512-bit AVX512F kernels.
    pub fn uses_avx512f(self) -> bool {
        matches!(self, KernelPath::Avx512 | KernelPath::Avx512Vnni)
    }

    /// Whether the path runs the AVX512VL + AVX512VNNI kernels.
    pub fn uses_vnni(self) -> bool {
        matches!(self, KernelPath::Avx512Vnni)
    }
}

/// Whether the active path uses AVX-512 VNNI on 256-bit registers
/// ([`KernelPath::uses_vnni`] of [`active_path`]; kept for callers of the
/// old API — kernels match on their own path).
pub fn has_vnni() -> bool {
    active_path().uses_vnni()
}

/// Whether the active path uses 512-bit registers (AVX512F)
/// ([`KernelPath::uses_avx512f`] of [`active_path`]; kept for callers of
/// the old API — kernels match on their own path).
pub fn has_avx512f() -> bool {
    active_path().uses_avx512f()
}

/// A set of kernels for one precision: its linear layers, and through the
/// supertraits its norms, rotary embedding, activations ([`ops::Ops`]) and
/// attention ([`attention::Attention`]).
pub trait Kernels: ops::Ops + attention::Attention + Sync {
    /// `x` is [t, w.cols] row-major; `y` is [t, w.rows].
    fn linear(&self, w: &Weight, x: &[f32], t: usize, y: &mut [f32]);
    /// Several weights against the same input (q, k and v; gate and up):
    /// `ys[i]` = x·ws[i]ᵀ, each exactly as [`Kernels::linear`] gives it.
    /// The fast kernels quantize `x` once for all of them.
    fn linears(&self, ws: &[&Weight], x: &[f32], t: usize, ys: &mut [&mut [f32]]) {
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            self.linear(w, x, t, y);
        }
    }
    /// A description of the code path, for headers and `--version`.
    fn describe(&self) -> String;
    /// The arithmetic these kernels do; the forward pass picks its
    /// element-wise functions to match (the fast precision mirrors
    /// llama.cpp's CPU backend there too).
    fn precision(&self) -> Precision;
}

static PATH: std::sync::OnceLock<KernelPath> = std::sync::OnceLock::new();

/// Forces the code path for the whole process (`--kernels scalar`). Must
/// be called before the first kernel is made; later calls are ignored.
/// Panics if this CPU lacks the path (see [`KernelPath::parse`]).
pub fn set_path(p: KernelPath) {
    let _ = PATH.set(p.checked());
}

/// The code path in use: forced by [`set_path`], else detected.
pub fn active_path() -> KernelPath {
    *PATH.get_or_init(KernelPath::detect)
}

pub fn kernels_for(p: Precision) -> Box<dyn Kernels> {
    kernels_with(p, active_path())
}

/// The kernels of precision `p` on `path` (which this CPU must support).
pub fn kernels_with(p: Precision, path: KernelPath) -> Box<dyn Kernels> {
    let path = path.checked();
    match p {
        Precision::Exact => Box::new(ExactKernels { path }),
        Precision::Fast => Box::new(fast::FastKernels { path }),
    }
}

/// Dequantizes one row of whole blocks on `path`. Types and lengths were
/// checked at load; the lengths the SIMD dequantizers write within are
/// asserted again here.
pub fn dequantize_row(ty: GgmlType, src: &[u8], out: &mut [f32], path: KernelPath) {
    #[cfg(target_arch = "x86_64")]
    if path.checked().uses_avx2() {
        use x86::dequant;
        type Dequant = unsafe fn(&[u8], &mut [f32]);
        let f: Option<Dequant> = match ty {
            GgmlType::Q8_0 => Some(dequant::dequant_q8_0),
            GgmlType::Q4_0 => Some(dequant::dequant_q4_0),
            GgmlType::Q5_0 => Some(dequant::dequant_q5_0),
            GgmlType::Q4_K => Some(dequant::dequant_q4_k),
            GgmlType::Q6_K => Some(dequant::dequant_q6_k),
            _ => None,
        };
        if let Some(f) = f {
            assert!(src.len() / ty.block_bytes() * ty.block_elems() <= out.len(), "dequantize_row: short output");
            // SAFETY: the path was checked against this CPU just above (AVX2,
            // FMA, F16C); `out` holds every element of `src`'s blocks.
            return unsafe { f(src, out) };
        }
    }
    let _ = path;
    plumb_quant::dequantize(ty, src, out).expect("weight row checked at load");
}

/// The f32 dot product of the active path (for attention).
pub fn f32_dot_fn() -> fn(&[f32], &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if active_path().uses_avx2() {
        return simd_dot_f32;
    }
    dot_f32
}

/// [`dot_f32`]'s sum on AVX2 (four accumulators of eight lanes, not one
/// of eight: the exact precision's order on the SIMD paths).
#[cfg(target_arch = "x86_64")]
fn simd_dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert!(b.len() >= a.len(), "f32 dot: short second operand");
    debug_assert!(active_path().uses_avx2());
    // SAFETY: reached only on a path with AVX2, FMA and F16C (checked when
    // the path was set or detected); the kernel reads a.len() floats of each.
    unsafe { x86::dot::f32_f32(a.len(), bytemuck::cast_slice(a), bytemuck::cast_slice(b)) }
}

/// f32 dot product with eight partial sums, combined pairwise.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

pub struct ExactKernels {
    pub path: KernelPath,
}

/// Rows handed to one task at a time.
const ROWS_PER_TASK: usize = 16;

/// The format number of a Q8_0-paired weight type in the SIMD kernels
/// (0 Q8_0, 1 Q4_0, 2 Q5_0, 3 IQ4_NL). Kept for callers of the old API:
/// the kernels themselves take `x86::Q8Family`.
pub fn q8_family_kind(ty: GgmlType) -> Option<u8> {
    match ty {
        GgmlType::Q8_0 => Some(0),
        GgmlType::Q4_0 => Some(1),
        GgmlType::Q5_0 => Some(2),
        GgmlType::IQ4_NL => Some(3),
        _ => None,
    }
}

impl ExactKernels {
    #[inline]
    fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if self.path.uses_avx2() {
            assert!(b.len() >= a.len());
            // SAFETY: `linear` checked self.path against this CPU (AVX2, FMA,
            // F16C); the kernel reads a.len() floats of each.
            return unsafe { x86::dot::f32_f32(a.len(), bytemuck::cast_slice(a), bytemuck::cast_slice(b)) };
        }
        dot_f32(a, b)
    }

    /// One token against every row by the fused SIMD row kernels, where the
    /// path and `w`'s format have them; false where they do not.
    #[cfg(target_arch = "x86_64")]
    fn linear_one_fused(&self, w: &Weight, x: &[f32], y: &mut [f32]) -> bool {
        use x86::{KQuant, Q8Family};
        let path = self.path;
        let (q8, k) = (Q8Family::of(w.ty), KQuant::of(w.ty));
        if !path.uses_avx2() || (q8.is_none() && k.is_none()) {
            return false;
        }
        let rb = w.row_bytes();
        x86::exact::check_rows_exact(&w.bytes, rb, w.cols, x, y.len());
        y.par_chunks_mut(256).enumerate().for_each(|(c, out)| {
            let (r0, rows) = (c * 256, out.len());
            let wr = &w.bytes[r0 * rb..(r0 + rows) * rb];
            // SAFETY: `linear` checked the path against this CPU: AVX2, FMA,
            // F16C, and AVX512F where `uses_avx512f`; `wr` holds `rows`
            // rows and `x` a row's elements (checked above).
            unsafe {
                match (q8, k) {
                    (Some(f), _) if path.uses_avx512f() => x86::avx512::rows_exact(f, wr, rb, x, out),
                    (Some(f), _) => x86::exact::rows_exact(f, wr, rb, x, out),
                    (None, Some(f)) => x86::exact::rows_exact_k(f, wr, rb, x, out),
                    (None, None) => unreachable!(),
                }
            }
        });
        true
    }
}

impl Kernels for ExactKernels {
    fn precision(&self) -> Precision {
        Precision::Exact
    }

    fn linear(&self, w: &Weight, x: &[f32], t: usize, y: &mut [f32]) {
        self.path.checked();
        assert_eq!(x.len(), t * w.cols);
        assert_eq!(y.len(), t * w.rows);
        let (rows, cols) = (w.rows, w.cols);
        if t == 1 {
            #[cfg(target_arch = "x86_64")]
            if self.linear_one_fused(w, x, y) {
                return;
            }
            y.par_chunks_mut(256).enumerate().for_each(|(c, out)| {
                let mut row = vec![0f32; cols];
                for (k, o) in out.iter_mut().enumerate() {
                    w.row_into(c * 256 + k, &mut row);
                    *o = self.dot(&row, x);
                }
            });
            return;
        }
        // Output laid out [row-chunk][t][row] so each task owns one chunk, then
        // scattered into y[t, row].
        let n_chunks = rows.div_ceil(ROWS_PER_TASK);
        let mut tmp = vec![0f32; n_chunks * ROWS_PER_TASK * t];
        tmp.par_chunks_mut(ROWS_PER_TASK * t).enumerate().for_each(|(c, out)| {
            let mut row = vec![0f32; cols];
            let r0 = c * ROWS_PER_TASK;
            #[cfg(target_arch = "x86_64")]
            let x4 = self.path.uses_avx512f();
            for r in r0..(r0 + ROWS_PER_TASK).min(rows) {
                w.row_into(r, &mut row);
                #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
                let mut ti = 0;
                // Four tokens at a time where the path has AVX-512 (each
                // result the one-token dot's, bit for bit).
                #[cfg(target_arch = "x86_64")]
                while x4 && ti + 4 <= t {
                    // Whole rows of x (its length was asserted above).
                    let xs: [&[f32]; 4] = [0, 1, 2, 3].map(|k| &x[(ti + k) * cols..(ti + k + 1) * cols]);
                    // SAFETY: the path (checked above) has AVX512F, AVX2 and
                    // FMA; each xs[k] is as long as `row`.
                    let v = unsafe { x86::avx512::f32_f32_x4(&row, xs) };
                    out[(r - r0) * t + ti..(r - r0) * t + ti + 4].copy_from_slice(&v);
                    ti += 4;
                }
                for ti in ti..t {
                    out[(r - r0) * t + ti] = self.dot(&row, &x[ti * cols..(ti + 1) * cols]);
                }
            }
        });
        y.par_chunks_mut(rows).enumerate().for_each(|(ti, yrow)| {
            for (r, v) in yrow.iter_mut().enumerate() {
                *v = tmp[(r / ROWS_PER_TASK) * ROWS_PER_TASK * t + (r % ROWS_PER_TASK) * t + ti];
            }
        });
    }

    fn describe(&self) -> String {
        format!("exact: dequantized f32 rows, f32 dot ({})", self.path.name())
    }
}

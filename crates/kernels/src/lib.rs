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
#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod dot;
pub mod fast;
pub mod mirror;
pub mod ops;
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

/// The code path the kernels take: the scalar references, or SIMD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
}

impl KernelPath {
    /// The best path this CPU supports (decided here, and only here).
    pub fn detect() -> KernelPath {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                return KernelPath::Avx2;
            }
        }
        KernelPath::Scalar
    }

    pub fn parse(s: &str) -> Option<KernelPath> {
        match s {
            "scalar" => Some(KernelPath::Scalar),
            "auto" => Some(KernelPath::detect()),
            "avx2" if KernelPath::detect() == KernelPath::Avx2 => Some(KernelPath::Avx2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 if has_vnni() => "avx2+fma+f16c+avx512vnni",
            KernelPath::Avx2 => "avx2+fma+f16c",
        }
    }
}

/// Whether the Avx2 path may also use AVX-512 VNNI on 256-bit registers
/// (AVX512VL): the Q8_0-family kernels then take `vpdpbusd`, with the same
/// results. Decided here, with [`KernelPath::detect`].
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the Avx2 path may also use 512-bit registers (AVX512F) where
/// that keeps every lane's arithmetic: the fast precision's attention tiles.
/// Decided here, with [`KernelPath::detect`].
pub fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *F.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
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
pub fn set_path(p: KernelPath) {
    let _ = PATH.set(p);
}

/// The code path in use: forced by [`set_path`], else detected.
pub fn active_path() -> KernelPath {
    *PATH.get_or_init(KernelPath::detect)
}

pub fn kernels_for(p: Precision) -> Box<dyn Kernels> {
    kernels_with(p, active_path())
}

pub fn kernels_with(p: Precision, path: KernelPath) -> Box<dyn Kernels> {
    match p {
        Precision::Exact => Box::new(ExactKernels { path }),
        Precision::Fast => Box::new(fast::FastKernels { path }),
    }
}

/// Dequantizes one row of whole blocks on `path`. Types and lengths were
/// checked at load.
pub fn dequantize_row(ty: GgmlType, src: &[u8], out: &mut [f32], path: KernelPath) {
    #[cfg(target_arch = "x86_64")]
    if path == KernelPath::Avx2 {
        // SAFETY: Avx2 is only active after runtime detection; src holds
        // whole blocks for out.len() elements.
        unsafe {
            match ty {
                GgmlType::Q8_0 => return avx2::dequant_q8_0(src, out),
                GgmlType::Q4_0 => return avx2::dequant_q4_0(src, out),
                GgmlType::Q5_0 => return avx2::dequant_q5_0(src, out),
                GgmlType::Q4_K => return avx2::dequant_q4_k(src, out),
                GgmlType::Q6_K => return avx2::dequant_q6_k(src, out),
                _ => {}
            }
        }
    }
    let _ = path;
    plumb_quant::dequantize(ty, src, out).expect("weight row checked at load");
}

/// The f32 dot product of the active path (for attention).
pub fn f32_dot_fn() -> fn(&[f32], &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if active_path() == KernelPath::Avx2 {
        // SAFETY: Avx2 is only active after runtime detection.
        return |a, b| unsafe { avx2::f32_f32(a.len(), bytemuck::cast_slice(a), bytemuck::cast_slice(b)) };
    }
    dot_f32
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
/// (0 Q8_0, 1 Q4_0, 2 Q5_0, 3 IQ4_NL).
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
        if self.path == KernelPath::Avx2 {
            // SAFETY: Avx2 is only chosen after runtime detection of avx2+fma.
            return unsafe { avx2::f32_f32(a.len(), bytemuck::cast_slice(a), bytemuck::cast_slice(b)) };
        }
        dot_f32(a, b)
    }
}

impl Kernels for ExactKernels {
    fn precision(&self) -> Precision {
        Precision::Exact
    }

    fn linear(&self, w: &Weight, x: &[f32], t: usize, y: &mut [f32]) {
        debug_assert_eq!(x.len(), t * w.cols);
        debug_assert_eq!(y.len(), t * w.rows);
        let (rows, cols) = (w.rows, w.cols);
        if t == 1 {
            #[cfg(target_arch = "x86_64")]
            if self.path == KernelPath::Avx2
                && (q8_family_kind(w.ty).is_some() || matches!(w.ty, GgmlType::Q4_K | GgmlType::Q6_K))
            {
                let rb = w.row_bytes();
                y.par_chunks_mut(256).enumerate().for_each(|(c, out)| {
                    let (r0, rows) = (c * 256, out.len());
                    let wr = &w.bytes[r0 * rb..(r0 + rows) * rb];
                    // SAFETY: the Avx2 path is only active after runtime detection;
                    // whole rows of whole blocks, checked at load.
                    unsafe {
                        match q8_family_kind(w.ty) {
                            Some(kind) => avx2::rows_exact(kind, wr, rb, x, out),
                            None => avx2::rows_exact_k(w.ty == GgmlType::Q6_K, wr, rb, x, out),
                        }
                    }
                });
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
            let x4 = self.path == KernelPath::Avx2 && has_avx512f();
            for r in r0..(r0 + ROWS_PER_TASK).min(rows) {
                w.row_into(r, &mut row);
                #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
                let mut ti = 0;
                // Four tokens at a time where the CPU has AVX-512 (each
                // result the one-token dot's, bit for bit).
                #[cfg(target_arch = "x86_64")]
                while x4 && ti + 4 <= t {
                    let xs: [&[f32]; 4] = [0, 1, 2, 3].map(|k| &x[(ti + k) * cols..(ti + k + 1) * cols]);
                    // SAFETY: avx512f, avx2 and fma detected (the Avx2 path).
                    let v = unsafe { avx2::f32_f32_x4_512(&row, xs) };
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

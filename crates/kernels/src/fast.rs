//! The fast precision: activations quantized once per linear call into the
//! block format each weight format pairs with, then one integer dot product
//! per (weight row, token). For T > 1 the loop runs row-outer, token-inner,
//! so each weight row is read from memory once per call and reused from
//! cache for every token.

use plumb_quant::blocks::{f32_to_f16, BlockQ8K};
use plumb_quant::quantize::{quantize_q8_0_act, quantize_q8_1_act, quantize_q8_k};
use plumb_quant::GgmlType;
use rayon::prelude::*;

use crate::dot::{act_type, scalar_dot, DotFn};
use crate::{KernelPath, Kernels, Precision, Weight};

pub struct FastKernels {
    pub path: KernelPath,
}

/// Quantized activations, T rows, in an 8-byte-aligned buffer (Q8_K blocks
/// need 4).
pub struct Activations {
    buf: Vec<u64>,
    /// Bytes between rows (row_bytes rounded up to 8, for alignment).
    stride: usize,
    pub row_bytes: usize,
    pub ty: GgmlType,
    /// Elements per row.
    pub cols: usize,
}

impl Activations {
    pub fn row(&self, t: usize) -> &[u8] {
        let all: &[u8] = bytemuck::cast_slice(&self.buf);
        &all[t * self.stride..t * self.stride + self.row_bytes]
    }
}

/// Quantizes T rows of `cols` floats into `ty` (ggml's reference quantizers).
pub fn quantize_activations(x: &[f32], t: usize, cols: usize, ty: GgmlType) -> Activations {
    let row_bytes = ty.bytes_for(cols as u64).expect("row length checked at load") as usize;
    // Rows start at multiples of 8 bytes so Q8_K blocks (align 4) stay aligned.
    let stride = row_bytes.div_ceil(8) * 8;
    let mut buf = vec![0u64; stride * t / 8 + 1];
    {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        #[cfg(target_arch = "x86_64")]
        let simd = crate::active_path().uses_avx2();
        let one = |(out, xr): (&mut [u8], &[f32])| {
            let out = &mut out[..row_bytes];
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: the active path has AVX2, FMA and F16C (checked
                // when it was set or detected); the quantizers stay inside
                // `xr` and `out` (whole blocks of each, by chunks).
                unsafe { crate::x86::quantize::quantize_row(xr, out, ty) };
                return;
            }
            quantize_row(xr, out, ty);
        };
        // Rows are independent: split across threads, the bytes are the same
        // (a few rows, as in decoding, stay on this thread).
        if t < 16 {
            bytes.chunks_mut(stride).zip(x.chunks(cols)).take(t).for_each(one);
        } else {
            bytes.par_chunks_mut(stride).zip(x.par_chunks(cols)).take(t).with_min_len(16).for_each(one);
        }
    }
    Activations { buf, stride, row_bytes, ty, cols }
}

/// One activation row into `out` (the same code compiled twice: here and,
/// for the SIMD paths, in `x86::quantize` with AVX2 enabled; the roundings
/// are IEEE operations, so both builds give the same bytes).
#[inline(always)]
pub(crate) fn quantize_row(xr: &[f32], out: &mut [u8], ty: GgmlType) {
    match ty {
        GgmlType::Q8_0 => {
            for (b, o) in xr.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
                o.copy_from_slice(bytemuck::bytes_of(&quantize_q8_0_act(b)));
            }
        }
        GgmlType::Q8_1 => {
            for (b, o) in xr.chunks_exact(32).zip(out.chunks_exact_mut(36)) {
                o.copy_from_slice(bytemuck::bytes_of(&quantize_q8_1_act(b)));
            }
        }
        GgmlType::Q8_K => {
            for (b, o) in xr.chunks_exact(256).zip(out.chunks_exact_mut(std::mem::size_of::<BlockQ8K>())) {
                o.copy_from_slice(bytemuck::bytes_of(&quantize_q8_k(b)));
            }
        }
        GgmlType::F16 => {
            for (v, o) in xr.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&f32_to_f16(*v));
            }
        }
        GgmlType::BF16 => {
            for (v, o) in xr.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
            }
        }
        _ => {
            for (v, o) in xr.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// The dot product llama.cpp takes for a product with one activation row,
/// where it sums in another order than with several (its `vec_dot`, not
/// its tiled kernels): IQ4_NL on AVX2 (two accumulators). None elsewhere:
/// the other formats' one-row order is their many-row one.
pub fn one_token_dot_for(w: GgmlType, path: KernelPath) -> Option<DotFn> {
    #[cfg(target_arch = "x86_64")]
    if path.checked().uses_avx2() && w == GgmlType::IQ4_NL {
        // SAFETY: the path has AVX2, FMA and F16C (checked just above); the
        // kernel loads only inside the whole blocks it zips.
        return Some(|n, a, b| unsafe { crate::x86::dot::iq4_nl_q8_0_one(n, a, b) });
    }
    let _ = (w, path);
    None
}

/// The dot product for weight type `w` on `path`: SIMD where plumb has it,
/// else the scalar reference.
pub fn dot_for(w: GgmlType, path: KernelPath) -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if path.checked().uses_avx2() {
        if let Some(f) = avx2_dot(w) {
            return f;
        }
    }
    let _ = path;
    scalar_dot(w).expect("weight types checked at load")
}

/// The slice lengths a one-row SIMD kernel reads within, for `n` elements
/// of `w` against `a`: asserted once per call by the safe wrappers below.
/// (The block kernels iterate over whole blocks of both slices and need
/// only that; the f32 and f16 ones read `n` elements of each.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn check_elems(n: usize, elem_bytes: usize, w: &[u8], a: &[u8]) {
    assert!(w.len() >= n * elem_bytes && a.len() >= n * elem_bytes, "dot: short operands");
}

/// The AVX2 one-row kernels as safe `fn`s. Reached only through
/// [`dot_for`], which checked that the path (so this CPU) has AVX2, FMA and
/// F16C.
#[cfg(target_arch = "x86_64")]
fn avx2_dot(w: GgmlType) -> Option<DotFn> {
    use crate::x86::dot as k;
    Some(match w {
        GgmlType::F32 => |n, a, b| {
            check_elems(n, 4, a, b);
            // SAFETY: AVX2, FMA, F16C (see above); n floats in each.
            unsafe { k::f32_f32(n, a, b) }
        },
        GgmlType::F16 => |n, a, b| {
            check_elems(n, 2, a, b);
            // SAFETY: AVX2, FMA, F16C (see above); n halves in each.
            unsafe { k::f16_f16(n, a, b) }
        },
        // SAFETY: AVX2, FMA, F16C (see above); this kernel and the ones
        // below load only inside the whole blocks they iterate over.
        GgmlType::Q8_0 => |n, a, b| unsafe { k::q8_0_q8_0(n, a, b) },
        // SAFETY: as above.
        GgmlType::Q4_0 => |n, a, b| unsafe { k::q4_0_q8_0(n, a, b) },
        // SAFETY: as above.
        GgmlType::Q5_0 => |n, a, b| unsafe { k::q5_0_q8_0(n, a, b) },
        // SAFETY: as above.
        GgmlType::IQ4_NL => |n, a, b| unsafe { k::iq4_nl_q8_0(n, a, b) },
        // The order of llama.cpp's AVX2 kernels, in scalar code.
        GgmlType::Q2_K => crate::mirror::kquant_lanes::q2_k_q8_k,
        GgmlType::Q3_K => crate::mirror::kquant_lanes::q3_k_q8_k,
        GgmlType::IQ4_XS => crate::mirror::kquant_lanes::iq4_xs_q8_k,
        // SAFETY: as above.
        GgmlType::Q4_1 => |n, a, b| unsafe { k::q4_1_q8_1(n, a, b) },
        // SAFETY: as above.
        GgmlType::Q5_1 => |n, a, b| unsafe { k::q5_1_q8_1(n, a, b) },
        // SAFETY: as above.
        GgmlType::Q4_K => |n, a, b| unsafe { k::q4_k_q8_k(n, a, b) },
        // SAFETY: as above.
        GgmlType::Q5_K => |n, a, b| unsafe { k::q5_k_q8_k(n, a, b) },
        // SAFETY: as above.
        GgmlType::Q6_K => |n, a, b| unsafe { k::q6_k_q8_k(n, a, b) },
        _ => return None,
    })
}

/// The fewest tokens for which llama.cpp takes its tiled K-quant matmul.
pub const TILED_MIN_TOKENS: usize = 8;

/// Whether llama.cpp's CPU backend, built for this CPU, repacks a weight of
/// this format and number of rows into interleaved rows: on CPUs with AVX2
/// Q4_0, IQ4_NL and Q4_K, and on CPUs with AVX-512 Q2_K too, in whole
/// eights of rows. (It also repacks MXFP4, which plumb does not read.)
pub fn repacks(ty: GgmlType, rows: usize) -> bool {
    let repacked = match ty {
        GgmlType::Q4_0 | GgmlType::IQ4_NL | GgmlType::Q4_K => true,
        GgmlType::Q2_K => cpu_has_avx512f(),
        _ => false,
    };
    repacked && rows.is_multiple_of(8)
}

/// Whether this CPU has AVX-512F (what llama.cpp built for it tests to
/// repack Q2_K), whatever kernel path plumb runs.
fn cpu_has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The dot products of a repacked weight ([`repacks`]) as llama.cpp's
/// repacked kernels sum them: (one-row kernel, four-row kernel). A step of
/// T tokens takes its first T − T mod 4 through the four-row kernel (none
/// when T < 4) and the rest through the one-row kernel. Q4_0's and
/// IQ4_NL's two kernels sum alike.
pub fn repacked_dots_for(w: GgmlType, path: KernelPath) -> Option<(DotFn, DotFn)> {
    #[cfg(target_arch = "x86_64")]
    if path.checked().uses_avx2() {
        use crate::x86::dot as k;
        let simd: Option<(DotFn, DotFn)> = match w {
            GgmlType::Q4_K => Some((
                // SAFETY: the path has AVX2, FMA and F16C (checked just
                // above); the kernels load only inside the whole blocks
                // they zip.
                |n, a, b| unsafe { k::q4_k_q8_k_repacked(n, a, b) },
                // SAFETY: as above.
                |n, a, b| unsafe { k::q4_k_q8_k_repacked4(n, a, b) },
            )),
            GgmlType::Q4_0 => {
                // SAFETY: as above.
                let both: DotFn = |n, a, b| unsafe { k::q4_0_q8_0_repacked(n, a, b) };
                Some((both, both))
            }
            GgmlType::IQ4_NL => {
                // SAFETY: as above.
                let both: DotFn = |n, a, b| unsafe { k::iq4_nl_q8_0_repacked(n, a, b) };
                Some((both, both))
            }
            // Q2_K: the scalar forms below.
            _ => None,
        };
        if simd.is_some() {
            return simd;
        }
    }
    let _ = path;
    use crate::dot as r;
    match w {
        GgmlType::Q4_K => Some((r::q4_k_q8_k_repacked, r::q4_k_q8_k_repacked4)),
        GgmlType::Q2_K => Some((r::q2_k_q8_k_repacked, r::q2_k_q8_k_repacked4)),
        GgmlType::Q4_0 => Some((r::q4_0_q8_0_repacked, r::q4_0_q8_0_repacked)),
        GgmlType::IQ4_NL => Some((r::iq4_nl_q8_0_repacked, r::iq4_nl_q8_0_repacked)),
        _ => None,
    }
}

/// [`Kernels::linear`] for a repacked weight: rows of the step in whole
/// fours through the four-row kernel's order, the rest through the
/// one-row kernel's ([`repacked_dots_for`]).
fn linear_repacked(
    w: &Weight,
    act: &Activations,
    t: usize,
    y: &mut [f32],
    (one, four): (DotFn, DotFn),
    path: KernelPath,
) {
    let (rows, cols, rb) = (w.rows, w.cols, w.row_bytes());
    let whole = if t > 3 { t - t % 4 } else { 0 };
    let bytes: &[u8] = &w.bytes;
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if whole >= 8 && path.uses_vnni() {
        if let Some(fmt) = crate::x86::KQuant::of(w.ty) {
            linear_k_vnni(fmt, w, act, whole, &mut y[..whole * rows], true);
            done = whole;
        }
    }
    let _ = path;
    if done == t {
        return;
    }
    // The rest, a few rows of weights per task, every remaining token each.
    let chunk = ROWS_PER_TASK;
    let mut tmp = vec![0f32; rows.div_ceil(chunk) * chunk * (t - done)];
    tmp.par_chunks_mut(chunk * (t - done)).enumerate().for_each(|(c, out)| {
        let r0 = c * chunk;
        for r in r0..(r0 + chunk).min(rows) {
            let wr = &bytes[r * rb..(r + 1) * rb];
            for ti in done..t {
                let dot = if ti < whole { four } else { one };
                out[(ti - done) * chunk + r - r0] = dot(cols, wr, act.row(ti));
            }
        }
    });
    copy_out(&tmp, chunk, t - done, rows, &mut y[done * rows..]);
}

/// The dot product in the order of llama.cpp's tiled K-quant matmul, for
/// the formats it covers that plumb has (Q2_K–Q6_K, IQ4_XS).
pub fn tiled_dot_for(w: GgmlType, path: KernelPath) -> Option<DotFn> {
    #[cfg(target_arch = "x86_64")]
    if path.checked().uses_avx2() {
        use crate::x86::dot as k;
        return match w {
            // SAFETY: the path has AVX2, FMA and F16C (checked just above);
            // the kernels load only inside the whole blocks they zip.
            GgmlType::Q4_K => Some(|n, a, b| unsafe { k::q4_k_q8_k_tiled(n, a, b) }),
            // SAFETY: as above.
            GgmlType::Q5_K => Some(|n, a, b| unsafe { k::q5_k_q8_k_tiled(n, a, b) }),
            // SAFETY: as above.
            GgmlType::Q6_K => Some(|n, a, b| unsafe { k::q6_k_q8_k_tiled(n, a, b) }),
            _ => tiled_scalar(w),
        };
    }
    let _ = path;
    match w {
        GgmlType::Q4_K => Some(crate::dot::q4_k_q8_k_tiled),
        GgmlType::Q5_K => Some(crate::dot::q5_k_q8_k_tiled),
        GgmlType::Q6_K => Some(crate::dot::q6_k_q8_k_tiled),
        _ => tiled_scalar(w),
    }
}

/// The tiled order where plumb has it only as scalar code.
fn tiled_scalar(w: GgmlType) -> Option<DotFn> {
    match w {
        GgmlType::Q2_K => Some(crate::dot::q2_k_q8_k_tiled),
        GgmlType::Q3_K => Some(crate::dot::q3_k_q8_k_tiled),
        GgmlType::IQ4_XS => Some(crate::dot::iq4_xs_q8_k_tiled),
        _ => None,
    }
}

/// The four-token kernels' reads: each activation row holds at least as
/// many blocks of `a_block` bytes as the weight row has of `w_block`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn check_dot4(w: &[u8], w_block: usize, a: &[&[u8]; 4], a_block: usize) {
    let nb = w.len() / w_block;
    assert!(a.iter().all(|r| r.len() >= nb * a_block), "dot4: short activation rows");
}

/// Four tokens at once in the tiled K-quant order, where plumb has a kernel
/// (each result equal to [`tiled_dot_for`]'s bit for bit).
pub fn tiled_dot4_for(w: GgmlType, path: KernelPath) -> Option<Dot4Fn> {
    #[cfg(target_arch = "x86_64")]
    if path.checked().uses_avx2() {
        use crate::x86::dot as k;
        const Q8K: usize = std::mem::size_of::<BlockQ8K>();
        return match w {
            GgmlType::Q4_K => Some(|w, a| {
                check_dot4(w, 144, &a, Q8K);
                // SAFETY: the path has AVX2, FMA and F16C (checked above);
                // every activation row covers the weight row's blocks.
                unsafe { k::q4_k_q8_k_tiled_x4(w, a) }
            }),
            GgmlType::Q6_K => Some(|w, a| {
                check_dot4(w, 210, &a, Q8K);
                // SAFETY: as for Q4_K.
                unsafe { k::q6_k_q8_k_tiled_x4(w, a) }
            }),
            _ => None,
        };
    }
    let _ = (w, path);
    None
}

/// Many consecutive weight rows against one activation row.
pub type RowsFn = fn(&[u8], usize, usize, &[u8], &mut [f32]);

/// The multi-row kernel for `w` on `path`: each output equals the
/// single-row kernel's bit for bit.
pub fn rows_for(w: GgmlType, path: KernelPath) -> Option<RowsFn> {
    #[cfg(target_arch = "x86_64")]
    if path.checked().uses_avx2() {
        use crate::x86::dot as k;
        /// A safe multi-row kernel: asserts that `w` holds `out.len()` rows
        /// (and for f32/f16 that both hold `n` elements a row), then runs
        /// `$kernel`.
        macro_rules! rows {
            ($kernel:ident, $elem:expr) => {
                |w, rb, n, a, o| {
                    assert!(w.len() >= o.len() * rb, "rows: short weights");
                    if $elem > 0 {
                        assert!(rb >= n * $elem && a.len() >= n * $elem, "rows: short rows");
                    }
                    // SAFETY: `rows_for` checked that the path (so the CPU)
                    // has AVX2, FMA and F16C; the lengths are asserted above.
                    unsafe { k::$kernel(w, rb, n, a, o) }
                }
            };
        }
        let f: Option<RowsFn> = match w {
            GgmlType::Q8_0 => Some(rows!(rows_q8_0, 0)),
            GgmlType::Q4_0 => Some(rows!(rows_q4_0, 0)),
            GgmlType::Q5_0 => Some(rows!(rows_q5_0, 0)),
            GgmlType::IQ4_NL => Some(rows!(rows_iq4_nl, 0)),
            GgmlType::Q4_K => Some(rows!(rows_q4_k, 0)),
            GgmlType::Q5_K => Some(rows!(rows_q5_k, 0)),
            GgmlType::Q6_K => Some(rows!(rows_q6_k, 0)),
            GgmlType::F32 => Some(rows!(rows_f32, 4)),
            GgmlType::F16 => Some(rows!(rows_f16, 2)),
            _ => None,
        };
        return f;
    }
    let _ = (w, path);
    None
}

/// One weight row against four activation rows.
pub type Dot4Fn = fn(&[u8], [&[u8]; 4]) -> [f32; 4];

/// A four-token kernel for `w`, where plumb has one on `path`. Each of its
/// four results equals the single-token kernel's bit for bit (same per-lane
/// accumulation order), so the tile shape never changes a number.
pub fn dot4_for(w: GgmlType, path: KernelPath) -> Option<Dot4Fn> {
    #[cfg(target_arch = "x86_64")]
    if path.checked().uses_avx2() {
        use crate::x86::dot as k;
        /// A safe four-token kernel: asserts that every activation row
        /// covers the weight row's blocks, then runs `$kernel`.
        macro_rules! dot4 {
            ($kernel:ident, $block:expr) => {
                |w, a| {
                    check_dot4(w, $block, &a, 34);
                    // SAFETY: `dot4_for` checked that the path (so the CPU)
                    // has AVX2, FMA and F16C; the lengths are asserted above.
                    unsafe { k::$kernel(w, a) }
                }
            };
        }
        return Some(match w {
            GgmlType::Q8_0 => dot4!(q8_0_q8_0_x4, 34),
            GgmlType::Q4_0 => dot4!(q4_0_q8_0_x4, 18),
            GgmlType::Q5_0 => dot4!(q5_0_q8_0_x4, 22),
            GgmlType::IQ4_NL => dot4!(iq4_nl_q8_0_x4, 18),
            _ => return None,
        });
    }
    let _ = (w, path);
    None
}

/// The format number of a Q8_0-paired weight type for the VNNI kernels,
/// where `path` uses AVX-512 VNNI (0 Q8_0, 1 Q4_0, 2 Q5_0, 3 IQ4_NL; kept
/// for callers of the old API: the kernels take [`vnni_format`]).
pub fn vnni_kind(w: GgmlType, path: KernelPath) -> Option<u8> {
    #[cfg(target_arch = "x86_64")]
    if path.uses_vnni() {
        return crate::q8_family_kind(w);
    }
    let _ = (w, path);
    None
}

/// The Q8_0-family format of `w` where `path` takes the VNNI kernels for it.
#[cfg(target_arch = "x86_64")]
pub fn vnni_format(w: GgmlType, path: KernelPath) -> Option<crate::x86::Q8Family> {
    crate::x86::Q8Family::of(w).filter(|_| path.uses_vnni())
}

/// Weight rows per task in the VNNI tile path: unpacked once, then taken
/// against every token.
#[cfg(target_arch = "x86_64")]
const VNNI_ROWS_PER_TASK: usize = 64;

/// T > 1 tokens against a Q8_0-family weight (format `fmt`) on the VNNI
/// path: register tiles of four rows × four tokens
/// ([`crate::x86::vnni::tile_vnni`]), each output identical to the
/// one-token kernel's. The caller checked the path against this CPU.
#[cfg(target_arch = "x86_64")]
fn linear_vnni(fmt: crate::x86::Q8Family, w: &Weight, act: &Activations, t: usize, y: &mut [f32]) {
    use crate::x86::vnni::{pack_acts_vnni, pack_weights_vnni, tile_vnni, Chunk, A_CHUNKS, W_CHUNKS};
    let (rows, nb, rb) = (w.rows, w.cols / 32, w.row_bytes());
    let bytes: &[u8] = &w.bytes;
    let mut apack = Vec::new();
    pack_acts_vnni(fmt, t, nb, |ti| act.row(ti), &mut apack);
    let prepare = |r0: usize, r1: usize| {
        let mut wpack: Vec<Chunk> = Vec::new();
        // SAFETY: the caller's path has AVX2, FMA, F16C, AVX512F, AVX512VL
        // and AVX512VNNI (checked against this CPU); the packer asserts its
        // lengths.
        unsafe { pack_weights_vnni(fmt, &bytes[r0 * rb..r1 * rb], rb, nb, &mut wpack) };
        wpack
    };
    let tile = |wpack: &Vec<Chunk>, g: usize, h: usize| {
        // Exactly one group of each, nb blocks long (checked slicing).
        let ag = &apack[g * nb * A_CHUNKS..(g + 1) * nb * A_CHUNKS];
        let wg = &wpack[h * nb * W_CHUNKS..(h + 1) * nb * W_CHUNKS];
        // SAFETY: the features as above; `wg` and `ag` hold nb blocks.
        unsafe { tile_vnni(wg, ag, nb) }
    };
    run_tiles::<_, 4, 4>(rows, t, y, prepare, tile);
}

/// T ≥ [`TILED_MIN_TOKENS`] tokens against a Q4_K or Q6_K weight on the
/// VNNI path: register tiles of eight rows × eight tokens
/// ([`crate::x86::vnni::tile_k_vnni`]), each output identical to
/// [`tiled_dot_for`]'s. The caller checked the path against this CPU.
#[cfg(target_arch = "x86_64")]
fn linear_k_vnni(fmt: crate::x86::KQuant, w: &Weight, act: &Activations, t: usize, y: &mut [f32], repacked: bool) {
    use crate::x86::vnni::{pack_k_acts, pack_k_rows, tile_k_vnni, Chunk, PairQ8K, K_CHUNKS};
    let (rows, nsb, rb) = (w.rows, w.cols / 256, w.row_bytes());
    let bytes: &[u8] = &w.bytes;
    // Every token's row holds nsb blocks, once for all tiles.
    assert!(act.row_bytes >= nsb * std::mem::size_of::<BlockQ8K>(), "linear_k_vnni: short activation rows");
    let mut apack: Vec<PairQ8K> = Vec::new();
    pack_k_acts(t, nsb, |ti| bytemuck::cast_slice::<u8, BlockQ8K>(act.row(ti)), &mut apack);
    let prepare = |r0: usize, r1: usize| {
        let mut wpack: Vec<Chunk> = Vec::new();
        pack_k_rows(fmt, &bytes[r0 * rb..r1 * rb], rb, nsb, &mut wpack);
        wpack
    };
    let tile = |wpack: &Vec<Chunk>, g: usize, h: usize| {
        let ag = &apack[g * nsb * 4..(g + 1) * nsb * 4];
        let wg = &wpack[h * nsb * K_CHUNKS..(h + 1) * nsb * K_CHUNKS];
        // SAFETY: the caller's path has AVX2, FMA, F16C, AVX512F, AVX512VL
        // and AVX512VNNI (checked against this CPU); `ag` and `wg` hold one
        // group's nsb superblocks.
        unsafe { tile_k_vnni(fmt, wg, ag, nsb, repacked) }
    };
    run_tiles::<_, 8, 8>(rows, t, y, prepare, tile);
}

/// Register tiles of R weight rows × T tokens over every row and token of a
/// `[t][rows]` output: tasks of [`VNNI_ROWS_PER_TASK`] rows, each prepared
/// once (`prepare(r0, r1)`: the task's packed weights), then
/// `tile(prepared, token group, row group)` gives `[token][row]`. A short
/// last group's extra outputs are dropped.
#[cfg(target_arch = "x86_64")]
fn run_tiles<P, const R: usize, const T: usize>(
    rows: usize,
    t: usize,
    y: &mut [f32],
    prepare: impl Fn(usize, usize) -> P + Sync,
    tile: impl Fn(&P, usize, usize) -> [[f32; R]; T] + Sync,
) {
    let per = VNNI_ROWS_PER_TASK;
    let out = RowBlocks::new(y, rows);
    (0..rows.div_ceil(per)).into_par_iter().for_each(|c| {
        let (r0, r1) = (c * per, (c * per + per).min(rows));
        let prepared = prepare(r0, r1);
        for g in 0..t.div_ceil(T) {
            for h in 0..(r1 - r0).div_ceil(R) {
                let v = tile(&prepared, g, h);
                let n = (r1 - r0 - R * h).min(R);
                for (k, v) in v.iter().enumerate().take(t - T * g) {
                    // SAFETY: this task owns rows r0..r1.
                    unsafe { out.put(T * g + k, r0 + R * h, &v[..n]) };
                }
            }
        }
    });
}

/// A `[t][rows]` output written by parallel tasks that each own a range of
/// rows: every task writes only inside its own rows, so no two touch the
/// same float.
#[cfg(target_arch = "x86_64")]
struct RowBlocks {
    ptr: *mut f32,
    rows: usize,
    len: usize,
}

// SAFETY: see `put`: writes from different tasks never overlap.
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for RowBlocks {}

#[cfg(target_arch = "x86_64")]
impl RowBlocks {
    fn new(y: &mut [f32], rows: usize) -> RowBlocks {
        RowBlocks { ptr: y.as_mut_ptr(), rows, len: y.len() }
    }

    /// Writes `v` at token `ti`, rows `r..r + v.len()` (bounds asserted).
    ///
    /// # Safety
    /// The caller's task owns those rows: no other thread writes or reads
    /// them while `put` runs.
    unsafe fn put(&self, ti: usize, r: usize, v: &[f32]) {
        let at = ti * self.rows + r;
        assert!(r + v.len() <= self.rows && at + v.len() <= self.len);
        std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.add(at), v.len());
    }
}

/// Task outputs laid out `[task][token][per rows]` into `y` `[token][rows]`,
/// in runs of `per` contiguous floats, one token row per task.
fn copy_out(tmp: &[f32], per: usize, t: usize, rows: usize, y: &mut [f32]) {
    y.par_chunks_mut(rows).enumerate().for_each(|(ti, yrow)| {
        for (c, ys) in yrow.chunks_mut(per).enumerate() {
            let src = c * per * t + ti * per;
            ys.copy_from_slice(&tmp[src..src + ys.len()]);
        }
    });
}

/// Weight rows handed to one task.
const ROWS_PER_TASK: usize = 32;
/// Tokens taken against one tile of weight rows.
const TOKENS_PER_TILE: usize = 16;

impl Kernels for FastKernels {
    fn precision(&self) -> Precision {
        Precision::Fast
    }

    fn linear(&self, w: &Weight, x: &[f32], t: usize, y: &mut [f32]) {
        let act = quantize_activations(x, t, w.cols, act_type(w.ty));
        self.linear_quantized(w, &act, t, y);
    }

    fn linears(&self, ws: &[&Weight], x: &[f32], t: usize, ys: &mut [&mut [f32]]) {
        // Each activation format once, for every weight that pairs with it.
        let mut acts: Vec<Activations> = Vec::new();
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            let ty = act_type(w.ty);
            let i = match acts.iter().position(|a| a.ty == ty && a.cols == w.cols) {
                Some(i) => i,
                None => {
                    acts.push(quantize_activations(x, t, w.cols, ty));
                    acts.len() - 1
                }
            };
            self.linear_quantized(w, &acts[i], t, y);
        }
    }

    fn describe(&self) -> String {
        format!("fast: activations quantized per block, integer dot products ({})", self.path.name())
    }
}

impl FastKernels {
    /// [`Kernels::linear`] on activations already quantized for `w`.
    fn linear_quantized(&self, w: &Weight, act: &Activations, t: usize, y: &mut [f32]) {
        // Every kernel below runs on this path's features.
        let path = self.path.checked();
        let (rows, cols) = (w.rows, w.cols);
        assert_eq!(y.len(), t * rows);
        if w.ty == GgmlType::F32 {
            let lanes = if t >= 2 { f32_tiled_lanes(path, rows, cols) } else { None };
            return linear_f32(w, act, t, y, lanes);
        }
        if w.repacked {
            if let Some(kernels) = repacked_dots_for(w.ty, path) {
                return linear_repacked(w, act, t, y, kernels, path);
            }
        }
        // Batches of eight or more tokens: llama.cpp's tiled K-quant matmul,
        // which rounds in its own order; plumb follows it there.
        let tiled = if t >= TILED_MIN_TOKENS { tiled_dot_for(w.ty, path) } else { None };
        let dot = tiled.unwrap_or_else(|| dot_for(w.ty, path));
        let dot4 = if tiled.is_some() { tiled_dot4_for(w.ty, path) } else { dot4_for(w.ty, path) };
        let rows_fn = if tiled.is_some() { None } else { rows_for(w.ty, path) };
        let rb = w.row_bytes();
        let bytes: &[u8] = &w.bytes;
        if t == 1 {
            // A few large chunks per thread: each row is independent, so the
            // split never changes a number, only the scheduling overhead.
            let chunk = rows.div_ceil(rayon::current_num_threads() * 64).max(ROWS_PER_TASK);
            if let Some(one) = one_token_dot_for(w.ty, path) {
                y.par_chunks_mut(chunk).enumerate().for_each(|(c, out)| {
                    for (k, o) in out.iter_mut().enumerate() {
                        let r = c * chunk + k;
                        *o = one(cols, &bytes[r * rb..(r + 1) * rb], act.row(0));
                    }
                });
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(fmt) = vnni_format(w.ty, path) {
                use crate::x86::vnni::{act_aux, check_rows_vnni, rows_vnni};
                let mut aux = Vec::with_capacity(cols / 32);
                act_aux(act.row(0), fmt.vnni_offset(), &mut aux);
                check_rows_vnni(fmt, bytes, rb, act.row(0), &aux, rows);
                y.par_chunks_mut(chunk).enumerate().for_each(|(c, out)| {
                    let r0 = c * chunk;
                    // SAFETY: the path (checked against this CPU) has AVX2,
                    // FMA, F16C, AVX512VL and AVX512VNNI; the lengths were
                    // asserted for all rows above, and this chunk's rows
                    // are sliced to out.len().
                    unsafe { rows_vnni(fmt, &bytes[r0 * rb..(r0 + out.len()) * rb], rb, act.row(0), &aux, out) };
                });
                return;
            }
            y.par_chunks_mut(chunk).enumerate().for_each(|(c, out)| {
                let a = act.row(0);
                let r0 = c * chunk;
                match rows_fn {
                    Some(f) => f(&bytes[r0 * rb..(r0 + out.len()) * rb], rb, cols, a, out),
                    None => {
                        for (k, o) in out.iter_mut().enumerate() {
                            let r = r0 + k;
                            *o = dot(cols, &bytes[r * rb..(r + 1) * rb], a);
                        }
                    }
                }
            });
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(fmt) = vnni_format(w.ty, path).filter(|_| tiled.is_none()) {
            return linear_vnni(fmt, w, act, t, y);
        }
        #[cfg(target_arch = "x86_64")]
        if tiled.is_some() && path.uses_vnni() {
            if let Some(fmt) = crate::x86::KQuant::of(w.ty) {
                return linear_k_vnni(fmt, w, act, t, y, false);
            }
        }
        let n_chunks = rows.div_ceil(ROWS_PER_TASK);
        let mut tmp = vec![0f32; n_chunks * ROWS_PER_TASK * t];
        // Tiles of ROWS_PER_TASK weight rows × TOKENS_PER_TILE tokens, so
        // both stay in L1/L2 while every pair is taken.
        tmp.par_chunks_mut(ROWS_PER_TASK * t).enumerate().for_each(|(c, out)| {
            let r0 = c * ROWS_PER_TASK;
            let r1 = (r0 + ROWS_PER_TASK).min(rows);
            for t0 in (0..t).step_by(TOKENS_PER_TILE) {
                let t1 = (t0 + TOKENS_PER_TILE).min(t);
                for r in r0..r1 {
                    let wr = &bytes[r * rb..(r + 1) * rb];
                    let mut ti = t0;
                    if let Some(d4) = dot4 {
                        while ti + 4 <= t1 {
                            let v = d4(wr, [act.row(ti), act.row(ti + 1), act.row(ti + 2), act.row(ti + 3)]);
                            for (k, v) in v.into_iter().enumerate() {
                                out[(ti + k) * ROWS_PER_TASK + r - r0] = v;
                            }
                            ti += 4;
                        }
                    }
                    if dot4.is_some() || rows_fn.is_none() {
                        for ti in ti..t1 {
                            out[ti * ROWS_PER_TASK + r - r0] = dot(cols, wr, act.row(ti));
                        }
                    }
                }
                // Formats without a four-token kernel: the multi-row kernel,
                // once per token, over this tile's rows (still in L1).
                if let (None, Some(f)) = (dot4, rows_fn) {
                    for ti in t0..t1 {
                        let col = &mut out[ti * ROWS_PER_TASK..ti * ROWS_PER_TASK + r1 - r0];
                        f(&bytes[r0 * rb..r1 * rb], rb, cols, act.row(ti), col);
                    }
                }
            }
        });
        copy_out(&tmp, ROWS_PER_TASK, t, rows, y);
    }
}

/// The lanes of llama.cpp's matmul of f32 weights by two or more tokens
/// (tinyBLAS: one accumulator of 16 lanes on AVX-512, 8 on AVX2), where
/// it takes that path: rows a whole number of vectors long, and a multiple
/// of 4 of them (else it sums each product as one token's).
fn f32_tiled_lanes(path: KernelPath, rows: usize, cols: usize) -> Option<usize> {
    if !rows.is_multiple_of(4) {
        return None;
    }
    let lanes = if path.uses_avx512f() {
        16
    } else if path.uses_avx2() {
        8
    } else {
        return None;
    };
    cols.is_multiple_of(lanes).then_some(lanes)
}

/// y = x·Wᵀ for f32 weights summed as llama.cpp sums them: with `lanes`,
/// as tinyBLAS does (per output one fused multiply-add accumulator that
/// wide over the row, then folded), else as `ggml_vec_dot_f32` does
/// (crate::mirror).
fn linear_f32(w: &Weight, act: &Activations, t: usize, y: &mut [f32], lanes: Option<usize>) {
    let (rows, cols) = (w.rows, w.cols);
    let owned;
    let wf: &[f32] = match bytemuck::try_cast_slice(&w.bytes) {
        Ok(f) => f,
        Err(_) => {
            owned = w.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect::<Vec<f32>>();
            &owned
        }
    };
    y.par_chunks_mut(rows).enumerate().take(t).for_each(|(i, yr)| {
        let x: &[f32] = bytemuck::cast_slice(&act.row(i)[..cols * 4]);
        match lanes {
            Some(16) => crate::mirror::dot_f32_tiled_rows(x, wf, cols, yr),
            Some(_) => {
                for (r, o) in yr.iter_mut().enumerate() {
                    *o = crate::mirror::scalar_dot_tiled8(x, &wf[r * cols..(r + 1) * cols]);
                }
            }
            None => crate::mirror::dot_f32_rows(x, wf, cols, yr),
        }
    });
}

//! The x86-64 SIMD kernels, one file per instruction set and purpose:
//!
//! | file          | needs                     | what                                          |
//! |---------------|---------------------------|-----------------------------------------------|
//! | [`dot`]       | AVX2, FMA, F16C           | quantized dot products (fast precision)        |
//! | [`exact`]     | AVX2, FMA, F16C           | fused dequantize-and-dot rows (exact precision)|
//! | [`dequant`]   | AVX2, FMA, F16C           | weight-row dequantizers                        |
//! | [`quantize`]  | AVX2, FMA, F16C           | activation quantizers (Q8_0, Q8_K)             |
//! | [`lanes`]     | AVX2, FMA, F16C           | `mirror`'s f32 lanes: dot, exp, GELU, RoPE     |
//! | [`avx512`]    | + AVX512F                 | the same f32 sums in 512-bit register tiles    |
//! | [`vnni`]      | + AVX512VL, AVX512VNNI    | Q8_0-family and K-quant `vpdpbusd` tiles        |
//!
//! Each kernel computes what its scalar reference beside it computes
//! (`crate::dot`, the scalar parts of `crate::mirror`, `plumb_quant`), with
//! the same integer sums and, where a comment says bit-identical, the same
//! float operations in the same order. Nothing here chooses a path: callers
//! match on [`crate::KernelPath`], decided once in `KernelPath::detect`.
//!
//! Every function here is `unsafe` for one reason in common: it is compiled
//! with `#[target_feature]`, and calling it on a CPU without those features
//! is undefined behaviour. The safe callers (in `lib.rs`, `fast.rs`,
//! `mirror.rs`) only reach a kernel on a path that has its features, and
//! assert the slice lengths the kernel's raw-pointer loads rely on.

pub mod avx512;
pub mod dequant;
pub mod dot;
pub mod exact;
pub mod lanes;
pub mod quantize;
pub mod vnni;

use std::arch::x86_64::*;

use plumb_quant::blocks::{F16le, KVALUES_IQ4NL};
use plumb_quant::GgmlType;

/// A weight format that pairs with Q8_0 activations and whose block is a
/// 2-byte f16 scale followed by 32 weights (ggml's `vec_dot_type` Q8_0):
/// the formats sharing the SIMD kernels' one-block unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q8Family {
    Q8_0,
    Q4_0,
    Q5_0,
    IQ4NL,
}

impl Q8Family {
    /// The family member stored as `ty`, if it is one.
    pub fn of(ty: GgmlType) -> Option<Q8Family> {
        match ty {
            GgmlType::Q8_0 => Some(Q8Family::Q8_0),
            GgmlType::Q4_0 => Some(Q8Family::Q4_0),
            GgmlType::Q5_0 => Some(Q8Family::Q5_0),
            GgmlType::IQ4_NL => Some(Q8Family::IQ4NL),
            _ => None,
        }
    }

    /// Bytes per block of 32 weights (plumb_quant::blocks' layouts).
    pub const fn block_bytes(self) -> usize {
        match self {
            Q8Family::Q8_0 => 34,
            Q8Family::Q5_0 => 22,
            Q8Family::Q4_0 | Q8Family::IQ4NL => 18,
        }
    }

    /// What the VNNI kernels add to each weight to make it unsigned for
    /// `vpdpbusd` (the smallest offset that covers the format's range).
    pub const fn vnni_offset(self) -> i32 {
        match self {
            Q8Family::Q4_0 => 8,                     // −8..7
            Q8Family::Q5_0 => 16,                    // −16..15
            Q8Family::Q8_0 | Q8Family::IQ4NL => 128, // any i8
        }
    }
}

/// A K-quant with a fused exact kernel and a VNNI tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KQuant {
    Q4K,
    Q6K,
}

impl KQuant {
    /// The K-quant stored as `ty`, if plumb has these kernels for it.
    pub fn of(ty: GgmlType) -> Option<KQuant> {
        match ty {
            GgmlType::Q4_K => Some(KQuant::Q4K),
            GgmlType::Q6_K => Some(KQuant::Q6K),
            _ => None,
        }
    }
}

/// A [`Q8Family`] member as a type, so that a kernel is compiled once per
/// format with its unpacking inlined (Rust's const generics do not take
/// enums). Kernels are generic over this trait; the public entry points
/// take the enum and dispatch with [`with_q8_format!`].
pub trait Q8Format {
    const FORMAT: Q8Family;
    const BLOCK_BYTES: usize = Self::FORMAT.block_bytes();

    /// The 32 signed weights of one block (`blk` at least
    /// [`Self::BLOCK_BYTES`] long).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C, and `blk.len() >= Self::BLOCK_BYTES`.
    unsafe fn unpack(blk: &[u8]) -> __m256i;
}

pub struct FmtQ8_0;
pub struct FmtQ4_0;
pub struct FmtQ5_0;
pub struct FmtIQ4NL;

impl Q8Format for FmtQ8_0 {
    const FORMAT: Q8Family = Q8Family::Q8_0;
    /// See [`Q8Format::unpack`].
    ///
    /// # Safety
    /// Called only from functions compiled with AVX2, FMA and F16C (its intrinsics need them).
    #[inline(always)]
    unsafe fn unpack(blk: &[u8]) -> __m256i {
        // SAFETY: forwarded from this function's contract.
        unsafe { unpack_q8_0(blk) }
    }
}

impl Q8Format for FmtQ4_0 {
    const FORMAT: Q8Family = Q8Family::Q4_0;
    /// See [`Q8Format::unpack`].
    ///
    /// # Safety
    /// Called only from functions compiled with AVX2, FMA and F16C (its intrinsics need them).
    #[inline(always)]
    unsafe fn unpack(blk: &[u8]) -> __m256i {
        // SAFETY: forwarded from this function's contract.
        unsafe { unpack_q4_0(blk) }
    }
}

impl Q8Format for FmtQ5_0 {
    const FORMAT: Q8Family = Q8Family::Q5_0;
    /// See [`Q8Format::unpack`].
    ///
    /// # Safety
    /// Called only from functions compiled with AVX2, FMA and F16C (its intrinsics need them).
    #[inline(always)]
    unsafe fn unpack(blk: &[u8]) -> __m256i {
        // SAFETY: forwarded from this function's contract.
        unsafe { unpack_q5_0(blk) }
    }
}

impl Q8Format for FmtIQ4NL {
    const FORMAT: Q8Family = Q8Family::IQ4NL;
    /// See [`Q8Format::unpack`].
    ///
    /// # Safety
    /// Called only from functions compiled with AVX2, FMA and F16C (its intrinsics need them).
    #[inline(always)]
    unsafe fn unpack(blk: &[u8]) -> __m256i {
        // SAFETY: forwarded from this function's contract.
        unsafe { unpack_iq4_nl(blk) }
    }
}

/// `with_q8_format!(fmt, F => expr)`: `expr` with the type `F` bound to the
/// [`Q8Format`] of the runtime value `fmt: Q8Family`.
macro_rules! with_q8_format {
    ($fmt:expr, $F:ident => $body:expr) => {
        match $fmt {
            $crate::x86::Q8Family::Q8_0 => {
                type $F = $crate::x86::FmtQ8_0;
                $body
            }
            $crate::x86::Q8Family::Q4_0 => {
                type $F = $crate::x86::FmtQ4_0;
                $body
            }
            $crate::x86::Q8Family::Q5_0 => {
                type $F = $crate::x86::FmtQ5_0;
                $body
            }
            $crate::x86::Q8Family::IQ4NL => {
                type $F = $crate::x86::FmtIQ4NL;
                $body
            }
        }
    };
}
pub(crate) use with_q8_format;

// ---- Helpers shared by the AVX2 kernels.

/// f16 → f32 with the F16C instruction (the `half` crate's portable
/// conversion is several times slower in these loops).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn d16(h: F16le) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes(h) as i32)))
}

/// Horizontal sum of 8 floats: halves, then pairs, then the last two.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn hsum_ps(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of eight i32 lanes (exact).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let mut l = [0i32; 8];
    // SAFETY: `l` is 32 writable bytes; storeu has no alignment need.
    unsafe { _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, v) };
    l.iter().sum()
}

/// 16 bytes of nibbles → 32 bytes: low nibbles first, then high.
///
/// # Safety
/// The CPU has AVX2 and FMA; `p` is readable for 16 bytes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn nibbles_32(p: *const u8) -> __m256i {
    // SAFETY: 16 readable bytes at `p`, by this function's contract.
    let t = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let both = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// 32 bits → 32 bytes of 0xFF where the bit is set.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn bytes_from_bits_32(x: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bit_mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64);
    let bytes = _mm256_or_si256(bytes, bit_mask);
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// The 32 signed weights of one Q8_0 block (34 bytes).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `b.len() >= 34`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn unpack_q8_0(b: &[u8]) -> __m256i {
    debug_assert!(b.len() >= 34);
    // SAFETY: bytes 2..34 of the block, by this function's contract.
    unsafe { _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i) }
}

/// The 32 signed weights of one Q4_0 block (18 bytes).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `b.len() >= 18`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn unpack_q4_0(b: &[u8]) -> __m256i {
    debug_assert!(b.len() >= 18);
    // SAFETY: bytes 2..18 of the block, by this function's contract.
    _mm256_sub_epi8(unsafe { nibbles_32(b.as_ptr().add(2)) }, _mm256_set1_epi8(8))
}

/// The 32 signed weights of one Q5_0 block (22 bytes).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `b.len() >= 22`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn unpack_q5_0(b: &[u8]) -> __m256i {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    debug_assert!(b.len() >= 22);
    // SAFETY: bytes 6..22 of the block, by this function's contract.
    let lo = unsafe { nibbles_32(b.as_ptr().add(6)) };
    // Fifth bit: 0x10 where set; value = (nibble | 0x10·bit) − 16.
    let hi = _mm256_and_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0x10));
    _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(16))
}

/// The 32 signed weights of one IQ4_NL block (18 bytes): nibbles looked up
/// in the format's 16-entry table.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `b.len() >= 18`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn unpack_iq4_nl(b: &[u8]) -> __m256i {
    debug_assert!(b.len() >= 18);
    // SAFETY: the table is 16 bytes; bytes 2..18 of the block, by this
    // function's contract.
    unsafe {
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
        _mm256_shuffle_epi8(table, nibbles_32(b.as_ptr().add(2)))
    }
}

//! `#[repr(C)]` block layouts of the ggml formats, as stored in GGUF files.
//!
//! Every on-disk block has alignment 1 (half-precision fields are kept as
//! `[u8; 2]` little-endian) so that a block slice can be cast from any byte
//! slice of a memory-mapped file with `bytemuck`, whatever its offset.
//! Layouts and sizes follow ggml-common.h; each size is asserted at compile
//! time. `QK` below is elements per block.

use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};

use crate::types::QK_K;

/// A little-endian IEEE half stored unaligned.
pub type F16le = [u8; 2];

#[inline]
pub fn f16_to_f32(h: F16le) -> f32 {
    f16::from_le_bytes(h).to_f32()
}

#[inline]
pub fn f32_to_f16(x: f32) -> F16le {
    f16::from_f32(x).to_le_bytes()
}

/// x rounded to the nearest f16 value (ties to even), as f32.
#[inline]
pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Every element as f16 bits (ties to even), converted a slice at a time
/// (F16C where the CPU has it): the bits of [`round_f16`]'s values.
pub fn f16_bits_slice(xs: &[f32]) -> Vec<u16> {
    use half::slice::HalfFloatSliceExt;
    let mut h = vec![f16::ZERO; xs.len()];
    h.convert_from_f32_slice(xs);
    h.into_iter().map(f16::to_bits).collect()
}

/// [`round_f16`] of every element, converted a slice at a time (F16C where
/// the CPU has it): the same values.
pub fn round_f16_slice(xs: &[f32]) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
    let mut h = vec![f16::ZERO; xs.len()];
    h.convert_from_f32_slice(xs);
    let mut out = vec![0f32; xs.len()];
    h.convert_to_f32_slice(&mut out);
    out
}

#[inline]
pub fn bf16_to_f32(h: [u8; 2]) -> f32 {
    bf16::from_le_bytes(h).to_f32()
}

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(std::mem::size_of::<$t>() == $n);
    };
}

/// Q4_0: 32 weights, one f16 scale, 4-bit quants offset by 8. 4.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ4_0 {
    pub d: F16le,
    /// Low nibbles hold elements 0..16, high nibbles 16..32.
    pub qs: [u8; 16],
}
assert_size!(BlockQ4_0, 18);

/// Q4_1: 32 weights, f16 scale and min, 4-bit quants. 5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ4_1 {
    pub d: F16le,
    pub m: F16le,
    pub qs: [u8; 16],
}
assert_size!(BlockQ4_1, 20);

/// Q5_0: 32 weights, f16 scale, 5-bit quants offset by 16 (fifth bits in `qh`). 5.5 bpw.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ5_0 {
    pub d: F16le,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
assert_size!(BlockQ5_0, 22);

/// Q5_1: 32 weights, f16 scale and min, 5-bit quants. 6 bpw.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ5_1 {
    pub d: F16le,
    pub m: F16le,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
assert_size!(BlockQ5_1, 24);

/// Q8_0: 32 weights, f16 scale, signed 8-bit quants. 8.5 bpw.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ8_0 {
    pub d: F16le,
    pub qs: [i8; 32],
}
assert_size!(BlockQ8_0, 34);

/// Q8_1: 32 activations, f16 scale, f16 `s = d * sum(qs)`, 8-bit quants. 9 bpw.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ8_1 {
    pub d: F16le,
    pub s: F16le,
    pub qs: [i8; 32],
}
assert_size!(BlockQ8_1, 36);

/// Q2_K: 256 weights in 16 groups of 16; 4-bit scale and min per group
/// (`scales`), f16 super-scale `d` and super-min `dmin`. 2.625 bpw.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: F16le,
    pub dmin: F16le,
}
assert_size!(BlockQ2K, 84);

/// Q3_K: 256 weights in 16 groups of 16; 6-bit scales packed in 12 bytes,
/// 2 low bits in `qs`, high bit in `hmask`. 3.4375 bpw.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: F16le,
}
assert_size!(BlockQ3K, 110);

/// Q4_K: 256 weights in 8 groups of 32; 6-bit scale and min per group packed
/// in 12 bytes, f16 super-scale and super-min. 4.5 bpw.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ4K {
    pub d: F16le,
    pub dmin: F16le,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
assert_size!(BlockQ4K, 144);

/// Q5_K: as Q4_K plus a fifth bit per weight in `qh`. 5.5 bpw.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ5K {
    pub d: F16le,
    pub dmin: F16le,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
assert_size!(BlockQ5K, 176);

/// Q6_K: 256 weights in 16 groups of 16; 8-bit signed scales, 4 low bits in
/// `ql`, 2 high bits in `qh`, quants offset by 32. 6.5625 bpw.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: F16le,
}
assert_size!(BlockQ6K, 210);

/// Q8_K: 256 activations, f32 scale, 8-bit quants and the sums of each group
/// of 16 (used by the k-quant dot products). Never stored in model files, so
/// it keeps natural alignment. 9.125 bpw.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}
assert_size!(BlockQ8K, 292);

/// IQ4_NL: 32 weights, f16 scale, 4-bit indices into a non-linear table. 4.5 bpw.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockIQ4NL {
    pub d: F16le,
    pub qs: [u8; 16],
}
assert_size!(BlockIQ4NL, 18);

/// IQ4_XS: 256 weights in 8 groups of 32 with 6-bit scales (`scales_l` low
/// nibbles, `scales_h` high pairs), indices into the IQ4_NL table. 4.25 bpw.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockIQ4XS {
    pub d: F16le,
    pub scales_h: [u8; 2],
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}
assert_size!(BlockIQ4XS, 136);

/// The non-linear 4-bit codebook shared by IQ4_NL and IQ4_XS
/// (ggml-common.h `kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

impl BlockQ6K {
    /// The 256 signed quants (q − 32) in element order; element e takes
    /// scale `scales[e / 16]`. Each half of 128 holds, for l in 0..32, the
    /// low nibbles of ql[l] and ql[l+32] with qh bits 0–1 and 2–3, then
    /// their high nibbles with qh bits 4–5 and 6–7.
    pub fn quants(&self) -> [i8; QK_K] {
        let mut q = [0i8; QK_K];
        for half in 0..2 {
            let ql = &self.ql[half * 64..half * 64 + 64];
            let qh = &self.qh[half * 32..half * 32 + 32];
            let out = &mut q[half * 128..half * 128 + 128];
            for l in 0..32 {
                out[l] = ((ql[l] & 0xF) | (qh[l] & 3) << 4) as i8 - 32;
                out[l + 32] = ((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4) as i8 - 32;
                out[l + 64] = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) as i8 - 32;
                out[l + 96] = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) as i8 - 32;
            }
        }
        q
    }
}

/// Unpacks the 6-bit scale and min of group `j` (0..8) of a Q4_K/Q5_K block
/// (ggml `get_scale_min_k4`).
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Unpacks the sixteen 6-bit scales of a Q3_K block, still offset by 32.
#[inline]
pub fn q3k_scales(packed: &[u8; 12]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let a0 = u32::from_le_bytes([packed[0], packed[1], packed[2], packed[3]]);
    let a1 = u32::from_le_bytes([packed[4], packed[5], packed[6], packed[7]]);
    let tmp = u32::from_le_bytes([packed[8], packed[9], packed[10], packed[11]]);
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0i8; 16];
    for (i, word) in aux.iter().enumerate() {
        for (k, b) in word.to_le_bytes().iter().enumerate() {
            out[i * 4 + k] = *b as i8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slice conversion is the element one, bit for bit, over a spread
    /// of f32 bit patterns: normals, subnormals, overflows, ties, infinities
    /// and NaNs.
    #[test]
    fn slice_rounding_is_element_rounding() {
        let xs: Vec<f32> = (0..=u32::MAX / 4093).map(|i| f32::from_bits(i.wrapping_mul(4093))).collect();
        let ties = [1.0 + 2f32.powi(-11), 65520.0, -65519.0, 2f32.powi(-25), 6.1e-5];
        let xs: Vec<f32> = xs.into_iter().chain(ties).collect();
        let got = round_f16_slice(&xs);
        for (x, g) in xs.iter().zip(&got) {
            let want = round_f16(*x);
            assert!(want.to_bits() == g.to_bits() || (want.is_nan() && g.is_nan()), "{x:e}: {g:e}, want {want:e}");
        }
    }
}

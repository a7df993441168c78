//! Scalar reference dequantizers, one per block format.
//!
//! Each follows ggml's `dequantize_row_*` reference and keeps its order of
//! floating-point operations (scale × sub-scale first, then × quant, then the
//! min), which is also the order of the `gguf` Python package's numpy code:
//! the golden tests require bit-exact agreement.

use bytemuck::Pod;

use crate::blocks::*;
use crate::types::{GgmlType, QK_K};
use crate::QuantError;

/// A block format: its type id and how to expand one block.
pub trait Block: Pod {
    const TYPE: GgmlType;
    /// Elements per block.
    const ELEMS: usize;
    /// Writes the block's `ELEMS` values to `y`.
    fn dequantize(&self, y: &mut [f32]);
}

/// Dequantizes `src` (whole blocks of `ty`) into `dst`, whose length is the
/// element count. Lengths are checked; the bytes may sit at any alignment.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let n = dst.len();
    let (be, _) = ty.geometry();
    if !n.is_multiple_of(be) {
        return Err(QuantError::NotBlockMultiple { ty, n, block: be });
    }
    let expected = ty.bytes_for(n as u64).unwrap_or(u64::MAX);
    if expected != src.len() as u64 {
        return Err(QuantError::ByteLength { ty, n, expected: expected as usize, actual: src.len() });
    }
    match ty {
        GgmlType::F32 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = f16_to_f32([b[0], b[1]]);
            }
        }
        GgmlType::BF16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = bf16_to_f32([b[0], b[1]]);
            }
        }
        GgmlType::Q4_0 => blocks_into::<BlockQ4_0>(src, dst),
        GgmlType::Q4_1 => blocks_into::<BlockQ4_1>(src, dst),
        GgmlType::Q5_0 => blocks_into::<BlockQ5_0>(src, dst),
        GgmlType::Q5_1 => blocks_into::<BlockQ5_1>(src, dst),
        GgmlType::Q8_0 => blocks_into::<BlockQ8_0>(src, dst),
        GgmlType::Q8_1 => blocks_into::<BlockQ8_1>(src, dst),
        GgmlType::Q2_K => blocks_into::<BlockQ2K>(src, dst),
        GgmlType::Q3_K => blocks_into::<BlockQ3K>(src, dst),
        GgmlType::Q4_K => blocks_into::<BlockQ4K>(src, dst),
        GgmlType::Q5_K => blocks_into::<BlockQ5K>(src, dst),
        GgmlType::Q6_K => blocks_into::<BlockQ6K>(src, dst),
        GgmlType::IQ4_NL => blocks_into::<BlockIQ4NL>(src, dst),
        GgmlType::IQ4_XS => blocks_into::<BlockIQ4XS>(src, dst),
        GgmlType::Q8_K => {
            // Q8_K has alignment 4, so copy out block by block.
            let bb = ty.block_bytes();
            for (chunk, y) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(QK_K)) {
                let b: BlockQ8K = bytemuck::pod_read_unaligned(chunk);
                b.dequantize(y);
            }
        }
        _ => return Err(QuantError::Unsupported { ty }),
    }
    Ok(())
}

fn blocks_into<B: Block>(src: &[u8], dst: &mut [f32]) {
    // Alignment-1 blocks: this cast cannot fail once lengths are checked.
    let blocks: &[B] = bytemuck::cast_slice(src);
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(B::ELEMS)) {
        b.dequantize(y);
    }
}

impl Block for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const ELEMS: usize = 32;
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for j in 0..16 {
            y[j] = ((self.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            y[j + 16] = ((self.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

impl Block for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const ELEMS: usize = 32;
    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (f16_to_f32(self.d), f16_to_f32(self.m));
        for j in 0..16 {
            y[j] = (self.qs[j] & 0x0F) as f32 * d + m;
            y[j + 16] = (self.qs[j] >> 4) as f32 * d + m;
        }
    }
}

impl Block for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const ELEMS: usize = 32;
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..16 {
            let xh0 = ((qh >> j) << 4) & 0x10;
            let xh1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((self.qs[j] as u32 & 0x0F) | xh0) as i32 - 16;
            let x1 = ((self.qs[j] as u32 >> 4) | xh1) as i32 - 16;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    }
}

impl Block for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const ELEMS: usize = 32;
    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (f16_to_f32(self.d), f16_to_f32(self.m));
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..16 {
            let xh0 = ((qh >> j) << 4) & 0x10;
            let xh1 = (qh >> (j + 12)) & 0x10;
            let x0 = (self.qs[j] as u32 & 0x0F) | xh0;
            let x1 = (self.qs[j] as u32 >> 4) | xh1;
            y[j] = x0 as f32 * d + m;
            y[j + 16] = x1 as f32 * d + m;
        }
    }
}

impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const ELEMS: usize = 32;
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for (y, q) in y.iter_mut().zip(self.qs) {
            *y = q as f32 * d;
        }
    }
}

impl Block for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const ELEMS: usize = 32;
    /// As Q8_0: the stored sum `s` only serves dot products.
    fn dequantize(&self, y: &mut [f32]) {
        BlockQ8_0 { d: self.d, qs: self.qs }.dequantize(y)
    }
}

impl Block for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, y: &mut [f32]) {
        let (d, min) = (f16_to_f32(self.d), f16_to_f32(self.dmin));
        let mut is = 0;
        let mut out = 0;
        for half in 0..2 {
            let q = &self.qs[half * 32..half * 32 + 32];
            for shift in [0u32, 2, 4, 6] {
                for part in 0..2 {
                    let sc = self.scales[is];
                    is += 1;
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for l in 0..16 {
                        y[out] = dl * ((q[part * 16 + l] >> shift) & 3) as f32 - ml;
                        out += 1;
                    }
                }
            }
        }
    }
}

impl Block for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, y: &mut [f32]) {
        let d_all = f16_to_f32(self.d);
        let scales = q3k_scales(&self.scales);
        let mut m: u8 = 1;
        let mut is = 0;
        let mut out = 0;
        for half in 0..2 {
            let q = &self.qs[half * 32..half * 32 + 32];
            for shift in [0u32, 2, 4, 6] {
                for part in 0..2 {
                    let dl = d_all * (scales[is] as i32 - 32) as f32;
                    is += 1;
                    for l in 0..16 {
                        let i = part * 16 + l;
                        let low = ((q[i] >> shift) & 3) as i32;
                        let high = if self.hmask[i] & m != 0 { 0 } else { 4 };
                        y[out] = dl * (low - high) as f32;
                        out += 1;
                    }
                }
                m <<= 1;
            }
        }
    }
}

impl Block for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, y: &mut [f32]) {
        let (d, min) = (f16_to_f32(self.d), f16_to_f32(self.dmin));
        for chunk in 0..4 {
            let q = &self.qs[chunk * 32..chunk * 32 + 32];
            let (sc1, m1) = scale_min_k4(2 * chunk, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * chunk + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let y = &mut y[chunk * 64..chunk * 64 + 64];
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0xF) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

impl Block for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, y: &mut [f32]) {
        let (d, min) = (f16_to_f32(self.d), f16_to_f32(self.dmin));
        for chunk in 0..4 {
            let ql = &self.qs[chunk * 32..chunk * 32 + 32];
            let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
            let (sc1, m1) = scale_min_k4(2 * chunk, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * chunk + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let y = &mut y[chunk * 64..chunk * 64 + 64];
            for l in 0..32 {
                let h1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

impl Block for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for (e, (y, q)) in y.iter_mut().zip(self.quants()).enumerate() {
            *y = d * self.scales[e / 16] as f32 * q as f32;
        }
    }
}

impl Block for BlockQ8K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, y: &mut [f32]) {
        for (y, q) in y.iter_mut().zip(self.qs) {
            *y = self.d * q as f32;
        }
    }
}

impl Block for BlockIQ4NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const ELEMS: usize = 32;
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for j in 0..16 {
            y[j] = d * KVALUES_IQ4NL[(self.qs[j] & 0xF) as usize] as f32;
            y[j + 16] = d * KVALUES_IQ4NL[(self.qs[j] >> 4) as usize] as f32;
        }
    }
}

impl Block for BlockIQ4XS {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let scales_h = u16::from_le_bytes(self.scales_h);
        for ib in 0..8 {
            let lo = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
            let hi = ((scales_h >> (2 * ib)) & 3) as u8;
            let ls = (lo | (hi << 4)) as i32;
            let dl = d * (ls - 32) as f32;
            let qs = &self.qs[ib * 16..ib * 16 + 16];
            let y = &mut y[ib * 32..ib * 32 + 32];
            for j in 0..16 {
                y[j] = dl * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as f32;
                y[j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

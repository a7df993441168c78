//! Dequantization is bit-exact against the `gguf` Python package's numpy
//! reference. The vectors are made by `scripts/gen_quant_goldens.py` and
//! committed under `testdata/quant/`.

use std::path::PathBuf;

use plumb_quant::{dequantize, GgmlType};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/quant")
}

#[test]
fn every_storage_format_is_bit_exact_against_gguf_numpy() {
    let dir = golden_dir();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest.json")).unwrap();
    let formats = manifest["formats"].as_array().unwrap();
    let mut seen = Vec::new();
    for f in formats {
        let name = f["type"].as_str().unwrap();
        let ty = GgmlType::from_name(name).unwrap_or_else(|| panic!("unknown type {name}"));
        assert_eq!(ty as u64, f["ggml_type"].as_u64().unwrap(), "{name} id");
        assert_eq!(ty.block_elems() as u64, f["block_elems"].as_u64().unwrap(), "{name} block elems");
        assert_eq!(ty.block_bytes() as u64, f["block_bytes"].as_u64().unwrap(), "{name} block bytes");
        let blocks = std::fs::read(dir.join(f["blocks_file"].as_str().unwrap())).unwrap();
        let expect: Vec<f32> = std::fs::read(dir.join(f["f32_file"].as_str().unwrap()))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        // Rows of different lengths (odd block counts), each dequantized alone.
        let (mut byte_at, mut elem_at) = (0usize, 0usize);
        for row in f["rows_elems"].as_array().unwrap() {
            let n = row.as_u64().unwrap() as usize;
            let nb = ty.bytes_for(n as u64).unwrap() as usize;
            let mut out = vec![0f32; n];
            dequantize(ty, &blocks[byte_at..byte_at + nb], &mut out).unwrap();
            for (i, (a, b)) in out.iter().zip(&expect[elem_at..elem_at + n]).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}: row of {n}, element {i}: plumb {a} vs gguf {b}");
            }
            byte_at += nb;
            elem_at += n;
        }
        assert_eq!(byte_at, blocks.len(), "{name}: golden bytes not all consumed");
        assert_eq!(elem_at, expect.len(), "{name}: golden values not all consumed");
        seen.push(ty);
    }
    use GgmlType::*;
    for ty in [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS] {
        assert!(seen.contains(&ty), "no golden vectors for {ty}");
    }
}

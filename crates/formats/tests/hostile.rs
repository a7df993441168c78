//! The GGUF reader against hostile input: every truncation of a small valid
//! file, and headers corrupted field by field. Each must give an error that
//! names the problem — never a panic, never an allocation sized by a lie.

use plumb_formats::gguf::{GgufFile, Value};
use plumb_formats::writer::GgufWriter;
use plumb_formats::GgmlType;

fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("llama.block_count", Value::U32(1));
    w.set("general.tags", Value::Array(vec![Value::String("a".into()), Value::String("bé".into())]));
    w.set("nested", Value::Array(vec![Value::Array(vec![Value::I16(-3), Value::I16(4)])]));
    w.set("flag", Value::Bool(true));
    w.set("pi", Value::F64(3.25));
    let x: Vec<f32> = (0..64).map(|i| i as f32 * 0.25 - 3.0).collect();
    w.add_f32("a.weight", &[2, 32], GgmlType::Q8_0, &x).unwrap();
    w.add_f32("b.weight", &[64], GgmlType::F32, &x).unwrap();
    w.add_f32("c.weight", &[1, 256], GgmlType::Q4_K, &[0.5; 256]).unwrap();
    w.to_bytes()
}

fn open_bytes(bytes: &[u8]) -> Result<GgufFile, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    GgufFile::open(&p).map_err(|e| e.to_string())
}

#[test]
fn valid_file_round_trips() {
    let g = open_bytes(&small_file()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.arch(), Some("llama"));
    assert_eq!(g.u64("llama.block_count").unwrap(), 1);
    assert_eq!(g.get("pi"), Some(&Value::F64(3.25)));
    assert_eq!(g.get("flag"), Some(&Value::Bool(true)));
    let nested = g.get("nested").unwrap().as_array().unwrap();
    assert_eq!(nested[0], Value::Array(vec![Value::I16(-3), Value::I16(4)]));
    let a = g.tensor("a.weight").unwrap();
    assert_eq!(a.shape, &[2, 32]);
    assert_eq!(a.ty, GgmlType::Q8_0);
    let b = g.tensor("b.weight").unwrap().to_f32().unwrap();
    assert_eq!(b[5], 5.0 * 0.25 - 3.0);
    let c = g.tensor("c.weight").unwrap();
    assert_eq!(c.data.len(), 144);
    for t in &g.tensors {
        assert_eq!(t.start % 32, 0, "{} not aligned", t.name);
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = small_file();
    // Padding after the last tensor is optional, so the file is whole once
    // the last tensor's data is.
    let g = open_bytes(&bytes).unwrap();
    let data_end = g.tensors.iter().map(|t| t.start + t.n_bytes).max().unwrap() as usize;
    for len in 0..data_end {
        let err = open_bytes(&bytes[..len]).err().unwrap_or_else(|| panic!("truncated to {len} bytes was accepted"));
        assert!(err.contains("m.gguf"), "error does not name the file: {err}");
        assert!(
            err.contains("truncated")
                || err.contains("exceeds")
                || err.contains("cannot fit")
                || err.contains("past the end"),
            "truncation to {len}: unhelpful message {err}"
        );
    }
}

/// Offset of the first metadata entry's key length (after magic, version, counts).
const KV_START: usize = 24;

fn corrupt(f: impl Fn(&mut Vec<u8>)) -> String {
    let mut b = small_file();
    f(&mut b);
    open_bytes(&b).expect_err("corrupted file was accepted")
}

#[test]
fn corrupted_headers_name_the_problem() {
    let cases: Vec<(&str, String)> = vec![
        ("not a GGUF", corrupt(|b| b[0] = b'X')),
        ("unsupported GGUF version", corrupt(|b| b[4..8].copy_from_slice(&7u32.to_le_bytes()))),
        ("big-endian", corrupt(|b| b[4..8].copy_from_slice(&3u32.to_be_bytes()))),
        ("cannot fit", corrupt(|b| b[8..16].copy_from_slice(&u64::MAX.to_le_bytes()))),
        ("cannot fit", corrupt(|b| b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes()))),
        ("string length", corrupt(|b| b[KV_START..KV_START + 8].copy_from_slice(&(1u64 << 50).to_le_bytes()))),
        ("not valid UTF-8", corrupt(|b| b[KV_START + 8] = 0xFF)),
        (
            "unknown metadata value type",
            corrupt(|b| {
                // First key is "general.architecture" (20 bytes); its type follows.
                let at = KV_START + 8 + 20;
                b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
            }),
        ),
    ];
    for (want, got) in &cases {
        assert!(got.contains(want), "expected {want:?} in {got:?}");
        assert!(got.contains("m.gguf"), "error does not name the file: {got}");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn corrupted_tensor_infos_name_the_tensor() {
    // Tensor info: name, n_dims u32, dims u64…, type u32, offset u64.
    let info_at = |b: &[u8]| find(b, b"a.weight") + 8;
    let unknown = corrupt(|b| {
        let at = info_at(b) + 4 + 16;
        b[at..at + 4].copy_from_slice(&200u32.to_le_bytes());
    });
    assert!(unknown.contains("a.weight") && unknown.contains("unknown ggml type id 200"), "{unknown}");

    let dims = corrupt(|b| {
        let at = info_at(b);
        b[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
    });
    assert!(dims.contains("a.weight") && dims.contains("dimensions"), "{dims}");

    let huge = corrupt(|b| {
        let at = info_at(b) + 4;
        b[at..at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    });
    assert!(huge.contains("a.weight"), "{huge}");

    let past_end = corrupt(|b| {
        let at = info_at(b) + 4 + 16 + 4;
        b[at..at + 8].copy_from_slice(&(1u64 << 30).to_le_bytes());
    });
    assert!(past_end.contains("a.weight") && past_end.contains("past the end"), "{past_end}");

    let misaligned = corrupt(|b| {
        let at = info_at(b) + 4 + 16 + 4;
        b[at..at + 8].copy_from_slice(&3u64.to_le_bytes());
    });
    assert!(misaligned.contains("alignment"), "{misaligned}");

    let overlap = corrupt(|b| {
        // Point b.weight at a.weight's data.
        let at = find(b, b"b.weight") + 8 + 4 + 8 + 4;
        b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    });
    assert!(overlap.contains("overlap"), "{overlap}");

    let row = corrupt(|b| {
        // a.weight's row length 32 → 33: not a whole Q8_0 block.
        let at = info_at(b) + 4;
        b[at..at + 8].copy_from_slice(&33u64.to_le_bytes());
    });
    assert!(row.contains("block size"), "{row}");
}

#[test]
fn huge_array_count_is_refused_before_allocating() {
    // "general.tags" array: type u32 (9), elem type u32, count u64.
    let err = corrupt(|b| {
        let at = find(b, b"general.tags") + 12 + 4 + 4;
        b[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    });
    assert!(err.contains("general.tags") && err.contains("array claims"), "{err}");
}

//! plumb's fast precision against llama.cpp itself on every tiny test model
//! (Q8_0): the stage trace of the golden tokens and the greedy continuation
//! of 32 tokens, from goldens llama.cpp made (scripts/gen_tiny_llamacpp.sh:
//! reference/llamacpp_trace.py in the configuration the fast precision
//! mirrors — no repacking, F32 KV cache, flash attention off).
//!
//! Every stage llama.cpp exposes is bit-identical. Two mirrorings make it
//! so beyond gemma: llama.cpp's vectorized SiLU (its own e^x polynomial, 16
//! or 8 lanes by build, the row's tail by the C library), and, for llama's
//! interleaved q/k rows, Q·Kᵀ summed in llama.cpp's element order. The
//! mixtures of experts add its router softmax, its f32 matmuls (tinyBLAS's
//! 16- or 8-lane sums for two or more tokens and a multiple of 4 rows, its
//! vec_dot otherwise: the shared expert's one-row gate), per-token expert
//! products summed in slot order, and qwen2moe's silu(x)/x sigmoid. The
//! tiny gemma3 is left out: llama.cpp ignores its query_pre_attn_scalar
//! (docs/CONFORMANCE.md).

mod common;
use common::{assert_continues_as_llama_cpp, ids, plumb, root, REFERENCE, REFERENCE_RUN};

use plumb_diff::{diff, Gate};
use plumb_trace::Trace;

/// Every tiny model but gemma3's (see above).
fn archs() -> impl Iterator<Item = &'static str> {
    common::TINY_ARCHS.iter().copied().filter(|a| *a != "gemma3")
}

fn golden() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("testdata/tiny/llamacpp_greedy.json")).unwrap()).unwrap()
}

#[test]
fn fast_precision_traces_every_tiny_model_as_llama_cpp_does() {
    let tokens = ids(&golden()["tokens"]).iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let dir = tempfile::tempdir().unwrap();
    for arch in archs() {
        let t = root().join(format!("testdata/tiny/{arch}"));
        let model = t.join(format!("{arch}-q8_0.gguf"));
        let out = dir.path().join(format!("{arch}.safetensors"));
        let (code, _, err) = plumb(
            &[
                &[
                    "trace",
                    model.to_str().unwrap(),
                    "--precision",
                    "fast",
                    "--tokens",
                    &tokens,
                    "--tensors",
                    "--save",
                    out.to_str().unwrap(),
                    "--force",
                ],
                REFERENCE,
            ]
            .concat(),
        );
        assert_eq!(code, 0, "{err}");
        let (a, b) = (Trace::load(&out).unwrap(), Trace::load(&t.join("llamacpp_trace.safetensors")).unwrap());
        let d = diff(&a, &b, &Gate::default(), 0.01);
        let compared: Vec<_> = d.stages.iter().filter_map(|s| s.nmse.map(|n| (s.key.as_str(), n))).collect();
        // llama.cpp exposes every stage but the fused projections' parts
        // (phi3's q, k, v, gate and up are views of one product).
        let least = if arch.starts_with("phi3") { 30 } else { 50 };
        assert!(compared.len() >= least, "{arch}: only {} stages compared", compared.len());
        for (key, nmse) in compared {
            assert!(nmse == 0.0, "{arch}: {key} differs from llama.cpp (NMSE {nmse:e})");
        }
    }
}

#[test]
fn fast_precision_continues_every_tiny_model_as_llama_cpp_does() {
    let golden = golden();
    let tokens = ids(&golden["tokens"]).iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    for arch in archs() {
        let want = ids(&golden["cases"][arch]["generated"]);
        assert_eq!(want.len(), 32, "{arch}");
        let model = root().join(format!("testdata/tiny/{arch}/{arch}-q8_0.gguf"));
        let head = ["run", model.to_str().unwrap(), "--precision", "fast", "--tokens", &tokens, "-n", "32", "--json"];
        let (code, out, err) = plumb(&[&head[..], REFERENCE_RUN].concat());
        assert_eq!(code, 0, "{err}");
        let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let got = ids(&got["generated"]);
        assert_continues_as_llama_cpp(arch, &got, &want);
    }
}

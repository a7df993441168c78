//! The fast precision against llama.cpp on every ggml block format plumb
//! reads, one small llama per format (`scripts/gen_format_golden.sh`:
//! random blocks of the format in every matrix, the embedding table and
//! the output included; llama.cpp's traces and greedy runs of them, in the
//! reference configuration and, for the formats it repacks on x86, with
//! repacking on: Q4_0, Q4_K and IQ4_NL, and Q2_K on CPUs with AVX-512).
//!
//! Every format: every stage llama.cpp's trace has (12 tokens: its
//! many-row kernels — tinyBLAS for Q8_0, Q4_0, Q5_0 and IQ4_NL, its tiled
//! K-quant matmul for Q2_K–Q6_K and IQ4_XS, `vec_dot` for Q4_1 and Q5_1),
//! the prompt's last logits (its one-row kernels in the last layer) bit for
//! bit, and the greedy 32 tokens (one row at a time).

mod common;
use common::*;

use plumb_diff::{diff, Gate};
use plumb_model::generate::Generator;
use plumb_model::kernels::kernels_for;
use plumb_model::{Model, NoTrace, Precision, RunSettings};
use plumb_trace::Trace;

const FORMATS: [&str; 12] =
    ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs"];

#[test]
fn every_block_format_computes_as_llama_cpp_does() {
    let dir_path = root().join("testdata/tiny/formats");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir_path.join("llamacpp_formats.json")).unwrap()).unwrap();
    let tokens = ids(&golden["tokens"]).iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let ids32: Vec<u32> = ids(&golden["tokens"]).into_iter().map(|t| t as u32).collect();
    let dir = tempfile::tempdir().unwrap();
    let k = kernels_for(Precision::Fast);
    for f in FORMATS {
        let path = dir_path.join(format!("llama256-{f}.gguf"));
        let model = path.to_str().unwrap();
        let out = dir.path().join(format!("{f}.safetensors"));
        let save = ["--tensors", "--save", out.to_str().unwrap(), "--force", "-t", "2"];
        let (code, _, err) =
            plumb(&[&["trace", model, "--precision", "fast", "--tokens", &tokens][..], REFERENCE, &save].concat());
        assert_eq!(code, 0, "{err}");
        let b = Trace::load(&dir_path.join(format!("llamacpp_trace_{f}.safetensors"))).unwrap();
        let d = diff(&Trace::load(&out).unwrap(), &b, &Gate::default(), 0.01);
        let compared: Vec<_> = d.stages.iter().filter_map(|s| s.nmse.map(|n| (s.key.as_str(), n))).collect();
        assert!(compared.len() >= 19, "{f}: only {} stages compared", compared.len());
        for (key, nmse) in compared {
            assert!(nmse == 0.0, "{f}: {key} differs from llama.cpp (NMSE {nmse:e})");
        }
        let mut m = Model::load(&path).unwrap();
        for (case, repack) in [("repack_off", false), ("repack_on", true)] {
            let want = &golden["cases"][f][case];
            if want.is_null() {
                continue;
            }
            // llama.cpp repacks Q2_K only on CPUs with AVX-512 (so does
            // plumb, and the golden was made on one).
            if f == "q2_k" && repack && !plumb_kernels::fast::repacks(plumb_quant::GgmlType::Q2_K, 8) {
                eprintln!("q2_k repacked: this CPU has no AVX-512F, so neither repacks it; not compared");
                continue;
            }
            m.set_run_settings(RunSettings { repack, ..RunSettings::default() });
            let logits = Generator::new(&m, k.as_ref(), ids32.len()).prefill(&ids32, false, &mut NoTrace);
            assert_top_logits_bitwise(&format!("{f} {case}"), &logits, &want["top_logits"]);
            let flag = if repack { "on" } else { "off" };
            let run = ["run", model, "-n", "32", "--json", "--tokens", &tokens, "-t", "2"];
            let conf = ["--kv-type", "f32", "--flash-attn", "off", "--ubatch", "all", "--repack", flag];
            let (code, out, err) = plumb(&[&run[..], &conf].concat());
            assert_eq!(code, 0, "{err}");
            let got = ids(&serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["generated"]);
            assert_eq!(got.len(), 32, "{f} {case}");
            assert_continues_as_llama_cpp(&format!("{f} {case}"), &got, &ids(&want["generated"]));
        }
    }
}

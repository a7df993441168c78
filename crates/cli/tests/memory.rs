//! Memory bounded by design: `plumb trace` and `plumb run` estimate what a
//! run will hold before it starts, print it, and refuse one over the budget
//! with exit 2, naming cheaper ways to run it.

mod common;
use common::*;

fn tiny() -> String {
    root().join("testdata/tiny/gemma3/gemma3-f32.gguf").to_string_lossy().into_owned()
}

const TOKENS: &str = "1,17,255,3,400,511,42,7,99,128,300,5";

#[test]
fn a_trace_over_the_budget_is_refused_before_it_runs_with_the_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("t.safetensors");
    let (code, out, err) = plumb(&[
        "trace",
        &tiny(),
        "--tokens",
        TOKENS,
        "--tensors",
        "--save",
        save.to_str().unwrap(),
        "--max-memory",
        "1M",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("this trace would hold about"), "{err}");
    assert!(err.contains("over the memory budget of 1.0 MiB"), "{err}");
    // The kept tensors go to disk as they come: keeping fewer of them saves
    // no memory, so no such way is offered as cheaper.
    assert!(err.contains("of tensors on disk"), "{err}");
    for not_cheaper in ["--positions last", "statistics only"] {
        assert!(!err.contains(not_cheaper), "{not_cheaper}: {err}");
    }
    assert!(!save.exists(), "nothing is written");
}

#[test]
fn the_json_header_carries_the_estimate_and_a_generous_budget_runs() {
    let (code, out, err) = plumb(&["trace", &tiny(), "--tokens", TOKENS, "--json", "--max-memory", "16G"]);
    assert!(code == 0 || code == 1, "{err}");
    let header: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let m = &header["memory_estimate"];
    let part = |k: &str| m[k].as_u64().unwrap();
    assert!(part("kv_cache") > 0 && part("work") > 0 && part("model_file") > 0);
    assert_eq!(part("trace_tensors"), 0, "statistics only keeps no tensors");
    let sum = ["model_file", "kv_cache", "work", "trace_tensors", "runtime"].iter().map(|k| part(k)).sum::<u64>();
    assert_eq!(part("total"), sum);
    assert_eq!(part("tensors_on_disk"), 0);
    // Keeping the tensors writes them to disk as they come (every stage,
    // every layer, 12 positions), not to memory.
    let (_, out, _) = plumb(&["trace", &tiny(), "--tokens", TOKENS, "--json", "--tensors"]);
    let header: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let kept = &header["memory_estimate"];
    assert_eq!(kept["trace_tensors"].as_u64(), Some(0), "{kept}");
    assert_eq!(kept["work"], m["work"], "{kept}");
    // 12 rows of the stages of every layer at least (the scores 12 × 12 a head).
    assert!(kept["tensors_on_disk"].as_u64().unwrap() > 12 * 4 * 1000, "{kept}");
}

#[test]
fn a_run_over_the_budget_is_refused_too() {
    let (code, _, err) = plumb(&["run", &tiny(), "--tokens", TOKENS, "-n", "2", "--max-memory", "1K"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("this run would hold about"), "{err}");
    let (code, out, err) = plumb(&["run", &tiny(), "--tokens", TOKENS, "-n", "2", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(doc["memory_estimate"]["total"].as_u64().unwrap() > 0, "{doc}");
}

/// The largest resident size of any child this test binary has waited
/// for, in bytes (the other tests here run a tiny model).
#[cfg(target_os = "linux")]
fn children_peak_bytes() -> u64 {
    // SAFETY: getrusage writes the struct it is given, nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut u), 0);
        u
    };
    usage.ru_maxrss as u64 * 1024
}

/// A long prompt traced in ubatches holds no more than its estimate: each
/// part's logits go to the recorder a few rows at a time. (A part of 512
/// rows used to compute all of its [512, V] logits at once, half a
/// gigabyte on this vocabulary that the estimate did not count: a peak of
/// 0.90 GB against an estimate of 0.42 GB.)
#[cfg(target_os = "linux")]
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn a_long_trace_in_ubatches_stays_within_its_estimate() {
    let prompt = root().join("testdata/gemma3-270m/long_prompt.txt");
    let args = ["trace", &real_model_arg(), "-f", prompt.to_str().unwrap(), "--ubatch", "512", "--json"];
    let (code, out, err) = plumb(&args);
    assert_eq!(code, 0, "{err}");
    let header: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(header["meta"]["plumb.ubatch"], "512", "{}", header["meta"]);
    let estimate = header["memory_estimate"]["total"].as_u64().unwrap();
    let peak = children_peak_bytes();
    assert!(peak <= estimate, "peak resident {peak} bytes > the estimate's {estimate}");
}

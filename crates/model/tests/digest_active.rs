//! The forward pass's numbers on the kernel path this CPU selects (see
//! digest/mod.rs).

mod digest;

// Every path is pinned (digest/mod.rs); the test fails, rather than
// passing, on a path with no pin.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_model_traces_the_pinned_numbers_on_the_detected_path() {
    let name = plumb_model::kernels::active_path().name();
    let want = digest::pinned(name)
        .unwrap_or_else(|| panic!("no digests pinned for the {name} path: pin them (PLUMB_DIGEST_PRINT=1)"));
    digest::check(name, want);
}

/// An attention step nobody looks inside of runs in blocks of query rows
/// (bounded memory at long prompts: the long prompt's 700 rows go in two
/// blocks); every number it passes on is the same as the whole step's.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn attention_in_blocks_of_rows_gives_the_whole_steps_numbers() {
    let model = plumb_model::Model::load(&digest::model_path()).unwrap();
    let long = [digest::long_prompt()];
    for p in [plumb_model::Precision::Fast, plumb_model::Precision::Exact] {
        // Wanting the probabilities keeps the step whole; wanting none blocks it.
        let hashed = Some(digest::NO_ATTENTION);
        let whole = digest::run(&model, p, &long, Some(digest::NO_SCORES), hashed);
        let blocked = digest::run(&model, p, &long, Some(digest::NO_ATTENTION), hashed);
        assert_eq!(whole, blocked, "{}: attention in blocks changed a number", p.name());
    }
}

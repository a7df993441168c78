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

/// A prompt nobody looks inside of goes through the layers in batches of
/// rows (the 700-token prompt in 512 + 188); its logits and the greedy
/// steps after it are the same, bit for bit, as the whole prompt's.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn a_prompt_in_batches_gives_the_whole_prompts_numbers() {
    use plumb_model::generate::{Flow, Generator, Pick, Until};
    use plumb_model::{NoTrace, Observer, Stage};

    /// Looks at one stage inside the model, which keeps the prompt whole.
    struct LooksInside;
    impl Observer for LooksInside {
        fn wants(&self, layer: Option<usize>, stage: Stage) -> bool {
            layer == Some(0) && stage == Stage::LayerOut
        }
        fn record(&mut self, _: Option<usize>, _: Stage, _: &[f32], _: &[usize]) {}
    }

    let model = plumb_model::Model::load(&digest::model_path()).unwrap();
    let long = digest::long_prompt();
    for p in [plumb_model::Precision::Fast, plumb_model::Precision::Exact] {
        let k = plumb_model::kernels::kernels_for(p);
        let run = |obs: &mut dyn Observer| {
            let mut g = Generator::new(&model, k.as_ref(), long.len() + 3);
            let first = g.prefill(&long, false, obs);
            let bits: Vec<u32> = first.iter().map(|v| v.to_bits()).collect();
            let out = g.decode(first, Pick::Greedy, &Until::tokens(3), &mut NoTrace, &mut |_| Flow::Continue);
            (bits, out.tokens, out.logits.iter().map(|v| v.to_bits()).collect::<Vec<u32>>())
        };
        let whole = run(&mut LooksInside);
        let batched = run(&mut NoTrace);
        assert!(whole == batched, "{}: the prompt in batches changed a number", p.name());
    }
}

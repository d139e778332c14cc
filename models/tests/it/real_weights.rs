//! Real weights fetched by `scripts/fetch-models` (the README's test command runs it
//! first). These tests never skip: a missing model fails with the command to run.

use std::sync::{Arc, OnceLock};

use candle_core::Device;
use tessera_models::generate::{BeamParams, FinishReason, GenerateParams};
use tessera_models::loader::TextModel;

fn fetched(name: &str) -> TextModel {
    TextModel::load(name, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}\n(real-weight tests need scripts/fetch-models to have run)"))
}

fn qwen() -> &'static TextModel {
    static MODEL: OnceLock<TextModel> = OnceLock::new();
    MODEL.get_or_init(|| fetched("qwen2.5-coder-0.5b"))
}

const FIM: &str = "<|fim_prefix|>def is_even(n):\n    return <|fim_suffix|>\n<|fim_middle|>";

fn greedy(max: usize) -> GenerateParams {
    GenerateParams {
        max_new_tokens: max,
        ..Default::default()
    }
}

#[test]
fn qwen_fim_special_tokens_are_parsed() {
    let ids = qwen().encode(FIM).unwrap();
    assert_eq!(ids[0], 151659, "<|fim_prefix|>");
    assert!(ids.contains(&151661), "<|fim_suffix|>");
    assert_eq!(*ids.last().unwrap(), 151660, "<|fim_middle|>");
}

#[test]
fn qwen_fim_greedy_completes_is_even() {
    let g = qwen().generate(FIM, &greedy(8), None).unwrap();
    let text = &g.completions[0].text;
    assert!(text.starts_with("n % 2 == 0"), "{text:?}");
}

#[test]
fn qwen_fim_four_beams_complete_is_even() {
    let params = GenerateParams {
        max_new_tokens: 8,
        beams: Some(BeamParams {
            num_beams: 4,
            num_return_sequences: 4,
            ..Default::default()
        }),
        ..Default::default()
    };
    let g = qwen().generate(FIM, &params, None).unwrap();
    assert_eq!(g.completions.len(), 4);
    let best = &g.completions[0].text;
    assert!(best.starts_with("n % 2 == 0"), "{best:?}");
    assert!(g.completions.windows(2).all(|w| w[0].score >= w[1].score));
}

#[test]
fn stop_strings_and_predicates_cut_the_text() {
    let mut params = greedy(32);
    params.stop_strings = vec!["\n".into()];
    let g = qwen().generate(FIM, &params, None).unwrap();
    assert_eq!(g.completions[0].text, "n % 2 == 0");
    assert_eq!(g.completions[0].finish_reason, FinishReason::Stop);

    let mut params = greedy(32);
    params.stop_predicate = Some(Arc::new(|text: &str| text.find("==").map(|i| i + 2)));
    let g = qwen().generate(FIM, &params, None).unwrap();
    assert_eq!(g.completions[0].text, "n % 2 ==");
    assert_eq!(g.completions[0].finish_reason, FinishReason::Stop);
}

#[test]
fn a_stop_string_spanning_several_tokens_cuts_the_text() {
    const STOP: &str = "% 2 =";
    let m = qwen();
    let g = m.generate(FIM, &greedy(8), None).unwrap();
    let tokens = &g.completions[0].tokens;
    // Where the stop string starts and ends in the unstopped completion, token by token:
    // it must start in an earlier token than the one that completes it.
    let decoded = |n: usize| m.tokenizer.decode(&tokens[..n], true).unwrap();
    let start = decoded(tokens.len())
        .find(STOP)
        .expect("the completion contains the stop");
    let first = (1..=tokens.len()).find(|&n| decoded(n).len() > start).unwrap();
    let last = (1..=tokens.len()).find(|&n| decoded(n).contains(STOP)).unwrap();
    assert!(last > first, "{STOP:?} lies within one token of {tokens:?}");

    let mut params = greedy(8);
    params.stop_strings = vec![STOP.into()];
    let g = m.generate(FIM, &params, None).unwrap();
    assert_eq!(g.completions[0].text, "n ");
    assert_eq!(g.completions[0].finish_reason, FinishReason::Stop);
    assert_eq!(
        g.completions[0].tokens,
        tokens[..last],
        "stopped on the token completing it"
    );
}

#[test]
fn streamed_deltas_add_up_to_the_text() {
    let mut streamed = String::new();
    let mut on_text = |_: usize, d: &str| streamed.push_str(d);
    let prompt = "<|fim_prefix|>// Greet in three languages\nconst greetings = {\n  en: \"Hello\",\n<|fim_suffix|>\n};\n<|fim_middle|>";
    let g = qwen().generate(prompt, &greedy(24), Some(&mut on_text)).unwrap();
    assert!(!g.completions[0].text.is_empty());
    assert_eq!(streamed, g.completions[0].text);
}

#[test]
fn a_one_character_edit_reuses_the_cached_prefix() {
    let m = qwen();
    let before = "<|fim_prefix|>import math\n\ndef area(r):\n    return math.<|fim_suffix|>\n<|fim_middle|>";
    let after = "<|fim_prefix|>import math\n\ndef area(r):\n    return math.p<|fim_suffix|>\n<|fim_middle|>";
    m.generate(before, &greedy(4), None).unwrap();
    let warm = m.generate(after, &greedy(6), None).unwrap();
    let n = m.encode(after).unwrap().len();
    assert!(warm.reused_tokens >= n - 6, "reused {} of {n}", warm.reused_tokens);
    m.engine.clear_prefix_cache();
    let cold = m.generate(after, &greedy(6), None).unwrap();
    assert_eq!(cold.reused_tokens, 0);
    assert_eq!(warm.completions[0].tokens, cold.completions[0].tokens);
}

#[test]
fn smollm2_answers_a_question() {
    let m = fetched("smollm2-135m");
    let prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let g = m.generate(prompt, &greedy(24), None).unwrap();
    let text = &g.completions[0].text;
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(g.completions[0].finish_reason, FinishReason::Eos, "{text:?}");
}

//! The RAPID engine on the real model and the demo corpus: greedy RAPID and SD reproduce greedy
//! AR token for token (up to near-tie rounding), streaming and cancellation, rollback on a
//! sliding-window model, and clear errors.

mod common;

use std::sync::{Mutex, OnceLock};

use rapid_chat::config::{Config, CtxSize, EngineConfig, KvType};
use rapid_chat::corpus::CorpusIndex;
use rapid_chat::llm::context::sliding_window;
use rapid_chat::llm::{Context, ContextSettings, Models, fetch};
use rapid_chat::session::Engine;
use rapid_chat::session::sizing::{Bound, CPU_MAX};
use rapid_chat::speculative::adaptive::DraftSource;
use rapid_chat::speculative::{Event, Flow, GenToken, Mode, TokenKind};

/// One engine for the file: the model loads once, and tests take turns (2 cores).
fn engine() -> std::sync::MutexGuard<'static, Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let models = Models::load(&common::model_path(), None, 0).expect("load the model");
            Mutex::new(Engine::new(models, &engine_config()).expect("contexts"))
        })
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        // With the conversation's reserve (an eighth) the documents and the question still take
        // over 4K tokens.
        ctx: 5120.into(),
        draft_ctx: 1536.into(),
        retrieval_budget: 1024,
        max_tokens: 64,
        threads: 2,
        ..EngineConfig::default()
    }
}

/// The demo corpus indexed once into a temporary cache.
fn demo_index() -> &'static CorpusIndex {
    static INDEX: OnceLock<(common::Sandbox, CorpusIndex)> = OnceLock::new();
    &INDEX
        .get_or_init(|| {
            let sb = common::Sandbox::demo();
            let mut ix = sb.indexer();
            ix.update(&mut |_| {}).unwrap();
            let reader = ix.reader().unwrap();
            (sb, reader)
        })
        .1
}

fn settings(mode: Mode, gamma: usize) -> EngineConfig {
    let mut s = engine_config();
    s.mode = mode;
    s.gamma = gamma;
    s
}

fn questions() -> Vec<String> {
    let v: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(common::demo_dir().join("../questions.json")).unwrap(),
    )
    .unwrap();
    v.iter()
        .map(|q| q["question"].as_str().unwrap().to_owned())
        .collect()
}

/// The first position where two outputs differ, if any.
fn first_difference(a: &[GenToken], b: &[GenToken]) -> Option<usize> {
    let n = a.len().min(b.len());
    (0..n)
        .find(|&i| a[i].id != b[i].id)
        .or((a.len() != b.len()).then_some(n))
}

/// Below this top-1/top-2 logit gap, llama.cpp's batch-shape rounding may flip the argmax.
const NEAR_TIE: f32 = 0.25;

/// Asserts that two greedy answers are the same token for token, or differ first where either
/// was near a tie.
fn same_up_to_near_ties(
    a: &rapid_chat::speculative::decode::Output,
    b: &rapid_chat::speculative::decode::Output,
    what: &str,
) {
    let Some(i) = first_difference(&a.tokens, &b.tokens) else {
        return;
    };
    let at = |o: &rapid_chat::speculative::decode::Output| {
        o.tokens.get(i).map(|t| t.margin).or(o.end_margin)
    };
    let margin = at(a).into_iter().chain(at(b)).fold(f32::INFINITY, f32::min);
    assert!(
        margin < NEAR_TIE,
        "{what}: differs at token {i} with a clear margin {margin:.3}\n{:?}\n{:?}",
        a.text,
        b.text
    );
}

#[test]
fn greedy_rapid_and_sd_reproduce_greedy_ar_for_every_demo_question() {
    let mut engine = engine();
    let index = demo_index();
    let mut compared = 0;
    let mut lookup_accepted = 0;
    let mut differences = Vec::new();
    for q in questions() {
        let ar = engine
            .answer(index, &q, &[], &settings(Mode::Ar, 0), &mut |_| {
                Flow::Continue
            })
            .unwrap();
        assert!(
            ar.output.stats.target_ctx_tokens >= 4096,
            "target context under 4K: {:?}",
            ar.output.stats
        );
        assert!(
            ar.view.chunks_in_view < ar.view.chunks_total,
            "the demo corpus exceeds the context"
        );
        assert!(ar.output.tokens.iter().all(|t| t.kind == TokenKind::Target));
        // One token a round, whether the answer ends at end-of-generation (a hidden token), at
        // a turn marker the answer drops, or at the limit.
        assert!(
            (ar.output.stats.mean_accepted_len - 1.0).abs() < 1e-9,
            "{q}: {:?}",
            ar.output.stats
        );
        assert!(
            ar.output.tokens.len() >= 4,
            "{q}: a real answer: {:?}",
            ar.output.text
        );
        // RAPID as shipped (lookups + adaptive drafts), lookups verified in a fixed batch of 8
        // (padded), lookups with fixed lengths (up to 16 tokens, else the drafter's γ), the
        // paper's RAPID (drafter only, fixed γ), vanilla SD.
        for (mode, gamma, lookup, adaptive, verify_batch, verify_shapes) in [
            (Mode::Rapid, 4, true, true, 0, 0),
            (Mode::Rapid, 4, true, true, 8, 0),
            (Mode::Rapid, 4, true, true, 0, 16),
            (Mode::Rapid, 4, true, false, 0, 0),
            (Mode::Rapid, 8, false, false, 0, 0),
            (Mode::Sd, 4, false, false, 0, 0),
        ] {
            let mut settings = settings(mode, gamma);
            settings.lookup = lookup;
            settings.adaptive = adaptive;
            settings.verify_batch = verify_batch;
            settings.verify_shapes = verify_shapes;
            let spec = engine
                .answer(index, &q, &[], &settings, &mut |_| Flow::Continue)
                .unwrap();
            let s = &spec.output.stats;
            if verify_batch > 0 {
                // Every round decodes the batch, drafting a lookup whenever there is one.
                assert_eq!(s.drafted, s.lookup_drafted, "{s:?}");
                // A padded round is no plain step: the speed-up is over the timed one-token
                // step (the shapes' curve), not over a batch of 8.
                assert_eq!(s.plain_step_s, 0.0, "{s:?}");
                assert!(s.verify_curve.iter().any(|&(g, _)| g == 1), "{s:?}");
                assert!(s.speedup > 0.0, "{s:?}");
            }
            // The fixed batch the statistics name: the one asked for (on a CPU, none by default).
            assert_eq!(s.verify_shape as usize, verify_batch, "{s:?}");
            if verify_shapes > 0 {
                // Only lookups are drafted, and the policy's curve is the shapes' steady times.
                assert_eq!(s.drafted, s.lookup_drafted, "{s:?}");
                let sizes: Vec<usize> = s.verify_curve.iter().map(|p| p.0).collect();
                assert_eq!(sizes, [1, 2, 4, 8, 16], "{s:?}");
            }
            if !adaptive {
                // (The adaptive policy may rightly draft little on this CPU.)
                assert!(
                    s.drafted > 0 && s.accepted > 0,
                    "{mode} γ={gamma} drafted nothing: {s:?}"
                );
                assert!(
                    spec.output
                        .tokens
                        .iter()
                        .any(|t| t.kind == TokenKind::Accepted)
                );
            }
            if !lookup {
                assert_eq!(s.lookup_drafted, 0);
            }
            lookup_accepted += s.lookup_accepted;
            let gamma = format!(
                "{gamma} lookup={lookup} adaptive={adaptive} batch={verify_batch} shapes={verify_shapes}"
            );
            compared += 1;
            if let Some(i) = first_difference(&ar.output.tokens, &spec.output.tokens) {
                // Identical up to here; at the first difference the target must be near a tie.
                let at = |o: &rapid_chat::speculative::decode::Output| {
                    o.tokens.get(i).map(|t| t.margin).or(o.end_margin)
                };
                let margin = at(&ar.output)
                    .into_iter()
                    .chain(at(&spec.output))
                    .fold(f32::INFINITY, f32::min);
                assert!(
                    margin < NEAR_TIE,
                    "{mode} γ={gamma} differs from AR at token {i} with a clear margin {margin:.3}: {q}\nAR:   {:?}\nspec: {:?}",
                    ar.output.text,
                    spec.output.text
                );
                differences.push(format!(
                    "{mode} γ={gamma} at token {i}/{} (margin {margin:.3}): {q}",
                    ar.output.tokens.len()
                ));
            }
        }
    }
    assert!(lookup_accepted > 0, "no lookup draft was ever accepted");
    eprintln!(
        "greedy comparisons: {compared}, identical: {}, near-tie differences: {}",
        compared - differences.len(),
        differences.len()
    );
    for d in &differences {
        eprintln!("  {d}");
    }
}

#[test]
fn ignore_eos_runs_to_max_tokens_extending_the_answer_and_rapid_still_matches_ar() {
    let mut engine = engine();
    let index = demo_index();
    let mut ar = settings(Mode::Ar, 0);
    // A question whose answer ends well before the limit (the short ones are last).
    let (q, normal) = questions()
        .into_iter()
        .rev()
        .find_map(|q| {
            let a = engine
                .answer(index, &q, &[], &ar, &mut |_| Flow::Continue)
                .unwrap();
            (a.output.end_margin.is_some() && a.output.tokens.len() < 48).then_some((q, a.output))
        })
        .expect("a demo answer that ends before 48 tokens");
    assert!(normal.stats.plain_step_s > 0.0, "{:?}", normal.stats);
    ar.ignore_eos = true;
    ar.max_tokens = 56;
    let long = engine
        .answer(index, &q, &[], &ar, &mut |_| Flow::Continue)
        .unwrap()
        .output;
    assert_eq!(long.tokens.len(), 56, "{:?}", long.text);
    assert_eq!(long.end_margin, None);
    // Masking the end changes nothing before it.
    assert_eq!(
        first_difference(&normal.tokens, &long.tokens[..normal.tokens.len()]),
        None
    );
    let mut rapid = ar.clone();
    rapid.mode = Mode::Rapid;
    let fast = engine
        .answer(index, &q, &[], &rapid, &mut |_| Flow::Continue)
        .unwrap()
        .output;
    assert_eq!(fast.tokens.len(), 56);
    if let Some(i) = first_difference(&long.tokens, &fast.tokens) {
        let margin = long.tokens[i].margin.min(fast.tokens[i].margin);
        assert!(margin < NEAR_TIE, "rapid differs at {i} (margin {margin})");
    }
}

#[test]
fn a_follow_up_decodes_only_its_new_tokens_into_the_target() {
    use rapid_chat::session::Turn;
    let mut engine = engine();
    let index = demo_index();
    let mut s = settings(Mode::Ar, 4);
    s.max_tokens = 24;
    let q1 = "On which port does llama-server listen by default?";
    let a1 = engine
        .answer(index, q1, &[], &s, &mut |_| Flow::Continue)
        .unwrap();
    assert!(!a1.view.whole_corpus(), "the test needs a partial view");
    let cached = engine.target_tokens().to_vec();
    let history = [Turn {
        question: q1.into(),
        answer: a1.output.text.clone(),
    }];
    let q2 = "And on which host address does it listen?";
    for mode in [Mode::Ar, Mode::Rapid] {
        s.mode = mode;
        let before = engine.target_tokens().to_vec();
        let prompts = engine.prepare(index, q2, &history, &s).unwrap();
        let p = &prompts.target[..prompts.target.len() - 1];
        let common = p.iter().zip(&before).take_while(|(a, b)| a == b).count();
        let a2 = engine
            .run(prompts.clone(), &s, &mut |_| Flow::Continue)
            .unwrap();
        let st = &a2.output.stats;
        assert_eq!(
            a2.view, a1.view,
            "the follow-up keeps the documents in view"
        );
        // The documents and the first turn are reused: only what follows is decoded.
        assert_eq!(st.target_prefill_tokens, p.len() - common, "{mode}");
        if mode == Mode::Ar {
            let shared = p.iter().zip(&cached).take_while(|(a, b)| a == b).count();
            assert!(
                shared >= prompts.docs_end,
                "the documents are a common prefix"
            );
            let q2_tokens = engine
                .models
                .target
                .vocab()
                .tokenize(q2.as_bytes(), false, false);
            assert!(
                st.target_prefill_tokens <= q2_tokens.len() + 24,
                "decoded {} tokens for a {}-token follow-up",
                st.target_prefill_tokens,
                q2_tokens.len()
            );
        } else {
            // The same follow-up again: nothing new for the target.
            assert_eq!(st.target_prefill_tokens, 0, "{mode}");
        }
    }
}

#[test]
fn reopening_restores_the_documents_from_the_kv_cache_with_the_same_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cache = rapid_chat::llm::kvcache::KvCache::new(dir.path().join("kv"), 1 << 30);
    let models = engine().models.clone();
    let mut s = settings(Mode::Ar, 4);
    s.max_tokens = 24;
    let q = "Which encoding rules does libtasn1 implement for encoding and decoding?";
    let answer = |engine: &mut Engine| {
        engine
            .answer(demo_index(), q, &[], &s, &mut |_| Flow::Continue)
            .unwrap()
    };
    // First opening: the documents are decoded and saved.
    let mut first = Engine::new(models.clone(), &engine_config()).unwrap();
    first.set_kv_cache(Some(cache.clone()));
    let a = answer(&mut first);
    drop(first);
    assert_eq!(a.output.stats.restored_tokens, 0);
    assert!(a.output.stats.target_prefill_tokens > 3000);
    let saved: Vec<_> = std::fs::read_dir(dir.path().join("kv"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        saved.iter().filter(|n| n.ends_with(".kv")).count(),
        1,
        "{saved:?}"
    );
    // Reopening (a new engine, as after a restart): restored, only the question decoded, and
    // the same answer token for token up to near ties (the question is decoded in a batch of
    // its own, not after the documents' last tokens, and Gemma's flash attention on a CPU
    // rounds by the batch).
    let mut second = Engine::new(models.clone(), &engine_config()).unwrap();
    second.set_kv_cache(Some(cache.clone()));
    let b = answer(&mut second);
    let st = &b.output.stats;
    assert!(st.restored_tokens > 3000, "{st:?}");
    assert!(st.target_prefill_tokens < 100, "{st:?}");
    same_up_to_near_ties(&a.output, &b.output, "restored");
    // A damaged state file is not loaded: decoded again, same answer.
    let kv = saved.iter().find(|n| n.ends_with(".kv")).unwrap();
    let path = dir.path().join("kv").join(kv);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    drop(second);
    let mut third = Engine::new(models, &engine_config()).unwrap();
    third.set_kv_cache(Some(cache));
    let c = answer(&mut third);
    assert_eq!(c.output.stats.restored_tokens, 0);
    let ids =
        |a: &rapid_chat::session::Answer| a.output.tokens.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&c));
}

#[test]
fn events_stream_every_token_and_cancel_stops_the_answer() {
    let mut engine = engine();
    let q = "Which endpoint of llama-server returns the health check result?";
    let mut seen = Vec::new();
    let mut rounds = 0;
    let mut prefill_events = 0;
    let mut done = None;
    let answer = engine
        .answer(demo_index(), q, &[], &settings(Mode::Rapid, 4), &mut |e| {
            match e {
                Event::Token(t) => seen.push(t),
                Event::Round {
                    drafted, accepted, ..
                } => {
                    assert!(accepted <= drafted);
                    rounds += 1;
                }
                Event::Prefill { done, total, .. } => {
                    assert!(done <= total);
                    prefill_events += 1;
                }
                Event::Done(s) => done = Some(s),
            }
            Flow::Continue
        })
        .unwrap();
    assert_eq!(
        seen, answer.output.tokens,
        "every token is streamed, in order"
    );
    assert_eq!(done.as_ref(), Some(&answer.output.stats));
    assert_eq!(rounds, answer.output.stats.rounds);
    assert!(
        !answer.sources.is_empty() && answer.sources.iter().any(|s| s.path == "llama-server.md")
    );
    // (The small model names it "/health" or "`health`" depending on the chunks around it.)
    assert!(
        answer.output.text.contains("health"),
        "{}",
        answer.output.text
    );
    let s = &answer.output.stats;
    assert_eq!(s.generated_tokens, answer.output.tokens.len());
    if s.drafted > 0 {
        assert!((s.acceptance_rate - s.accepted as f64 / s.drafted as f64).abs() < 1e-9);
    }
    let _ = prefill_events;

    let mut count = 0;
    let cancelled = engine
        .answer(demo_index(), q, &[], &settings(Mode::Rapid, 4), &mut |e| {
            if matches!(e, Event::Token(_)) {
                count += 1;
            }
            if count >= 3 {
                Flow::Cancel
            } else {
                Flow::Continue
            }
        })
        .unwrap();
    assert!(cancelled.output.stats.cancelled);
    assert!(
        cancelled.output.tokens.len() >= 3
            && cancelled.output.tokens.len() < answer.output.tokens.len()
    );
    // The same answer, cut short (the adaptive drafts may differ from run to run, and with them
    // llama.cpp's rounding at a near-tie).
    let n = cancelled.output.tokens.len();
    if let Some(i) = first_difference(&cancelled.output.tokens, &answer.output.tokens[..n]) {
        let margin = cancelled.output.tokens[i]
            .margin
            .min(answer.output.tokens[i].margin);
        assert!(margin < NEAR_TIE, "differs at token {i}, margin {margin}");
    }
}

#[test]
fn cancel_during_prefill_stops_before_any_token() {
    let mut engine = engine();
    let q = "What does the GPL say about patents and patent licenses?";
    let mut prefill_events = 0;
    let answer = engine
        .answer(demo_index(), q, &[], &settings(Mode::Rapid, 4), &mut |e| {
            if matches!(e, Event::Prefill { .. }) {
                prefill_events += 1;
                return Flow::Cancel;
            }
            Flow::Continue
        })
        .unwrap();
    let s = &answer.output.stats;
    assert!(s.cancelled);
    assert_eq!(prefill_events, 1, "stopped at the first prefill piece");
    assert!(answer.output.tokens.is_empty());
    assert!(
        s.prefill_tokens <= 512,
        "{} tokens decoded after cancel",
        s.prefill_tokens
    );
    // The next answer to the same question starts from the partial cache and completes.
    let again = engine
        .answer(demo_index(), q, &[], &settings(Mode::Rapid, 4), &mut |_| {
            Flow::Continue
        })
        .unwrap();
    assert!(!again.output.stats.cancelled && !again.output.tokens.is_empty());
}

#[test]
fn a_question_longer_than_the_context_and_an_empty_corpus_are_clear_errors() {
    let mut engine = engine();
    let long = "Explain the licence terms again and again. ".repeat(1200);
    let err = engine
        .answer(
            demo_index(),
            &long,
            &[],
            &settings(Mode::Rapid, 4),
            &mut |_| Flow::Continue,
        )
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("do not fit the target context"),
        "{err:#}"
    );

    let sb = common::Sandbox::empty();
    let mut ix = sb.indexer();
    ix.update(&mut |_| {}).unwrap();
    let err = engine
        .answer(
            &ix.reader().unwrap(),
            "anything?",
            &[],
            &settings(Mode::Rapid, 4),
            &mut |_| Flow::Continue,
        )
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("no documents are indexed"),
        "{err:#}"
    );
}

fn gemma() -> std::path::PathBuf {
    let dirs = rapid_chat::paths::Dirs::from_env().unwrap();
    fetch::ensure(&fetch::GEMMA3_270M, &dirs.models(), false).expect("fetch Gemma 3 270M")
}

/// The known model that is not the default (another vocabulary).
fn smollm2() -> std::path::PathBuf {
    let dirs = rapid_chat::paths::Dirs::from_env().unwrap();
    fetch::ensure(&fetch::SMOLLM2, &dirs.models(), false).expect("fetch SmolLM2-135M")
}

#[test]
fn a_drafter_with_another_vocabulary_is_refused_naming_both_models() {
    let _serial = engine();
    let err = Models::load(&common::model_path(), Some(&smollm2()), 0)
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("gemma-3-270m") && msg.contains("SmolLM2"),
        "{msg}"
    );
    assert!(msg.contains("vocabulary"), "{msg}");
}

#[test]
fn rollback_on_a_sliding_window_model_matches_a_fresh_context() {
    let _serial = engine();
    let models = Models::load(&gemma(), None, 0).unwrap();
    let tok = |s: &str| models.target.vocab().tokenize(s.as_bytes(), false, false);
    let text = std::fs::read_to_string(common::demo_dir().join("gpl-3.0.txt")).unwrap();
    let mut prompt = tok(&text[..4000]);
    prompt.truncate(800); // beyond Gemma 3's 512-token sliding window
    let detour = tok(" The quick brown fox jumps over the lazy dog many times over and over");
    let ending = tok(" In short, the license says that");
    let spec = ContextSettings {
        n_ctx: 2048,
        threads: 2,
        flash_attention: false,
        kv_type: rapid_chat::config::KvType::F16,
        gpu: false,
        remote: false,
    };

    // Its sliding-window layers turn flash attention on, on a CPU too (SmolLM2 has none): the
    // rollback below goes through it.
    assert_eq!(sliding_window(models.target), Some(512));
    let other = Models::load(&smollm2(), None, 0).unwrap();
    assert_eq!(sliding_window(other.target), None);
    assert!(!Context::new(other.target, spec).unwrap().flash_attention());

    // Decode prompt + detour, roll the detour back, decode the ending.
    let mut rewound = Context::new(models.target, spec).unwrap();
    assert!(rewound.flash_attention());
    rewound.prefill(&prompt, &mut |_, _| true).unwrap();
    rewound
        .prefill(&[prompt.clone(), detour.clone()].concat(), &mut |_, _| true)
        .unwrap();
    rewound.truncate(prompt.len()).unwrap();
    rewound
        .sync(&[prompt.clone(), ending.clone()].concat(), &mut |_, _| true)
        .unwrap();
    let after_rewind = rewound.logits(0).to_vec();

    let mut fresh = Context::new(models.target, spec).unwrap();
    fresh.prefill(&prompt, &mut |_, _| true).unwrap();
    fresh
        .sync(&[prompt.clone(), ending.clone()].concat(), &mut |_, _| true)
        .unwrap();
    let from_fresh = fresh.logits(0).to_vec();

    let (a, margin) = rapid_chat::speculative::sampling::argmax_margin(&from_fresh);
    assert_eq!(
        rapid_chat::speculative::sampling::argmax_margin(&after_rewind).0,
        a,
        "same next token (margin {margin})"
    );
    let max_diff = after_rewind
        .iter()
        .zip(&from_fresh)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_diff < 0.05,
        "logits after a rewind match a fresh context: max diff {max_diff}"
    );
}

#[test]
fn ask_json_has_the_documented_shape_and_bad_models_fail_cleanly() {
    let _serial = engine();
    let cache = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(common::exe())
            .env("RAPID_CHAT_CACHE_DIR", cache.path())
            .args(args)
            .output()
            .unwrap()
    };
    let demo = common::demo_dir();
    let demo = demo.to_str().unwrap();
    let small = [
        "--ctx",
        "1024",
        "--draft-ctx",
        "768",
        "--retrieval-budget",
        "300",
        "--max-tokens",
        "24",
        "--threads",
        "2",
    ];
    let out = run(&[
        &[
            "ask",
            demo,
            "What is the date of version 3 of the GNU General Public License?",
            "--json",
        ][..],
        &small,
    ]
    .concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["answer", "mode", "tokens", "sources", "stats"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    for key in [
        "generated_tokens",
        "drafted",
        "accepted",
        "acceptance_rate",
        "mean_accepted_len",
        "rounds",
        "prefill_tokens",
        "prefill_s",
        "ttft_s",
        "decode_s",
        "decode_tok_s",
        "target_ctx_tokens",
        "draft_ctx_tokens",
    ] {
        assert!(v["stats"].get(key).is_some(), "missing stats.{key}");
    }
    assert_eq!(v["mode"], "rapid");
    let t = &v["tokens"][0];
    assert!(t["text"].is_string() && t["margin"].is_number());
    assert!(["accepted", "corrected", "bonus", "target"].contains(&t["kind"].as_str().unwrap()));
    assert!(v["sources"][0]["path"].is_string() && v["sources"][0]["score"].is_number());
    let joined: String = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined, v["answer"].as_str().unwrap());

    let out = run(&["--model", "/no/such.gguf", "ask", demo, "hello?"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--model PATH") && !err.contains("panicked"),
        "{err}"
    );

    let not_gguf = cache.path().join("x.gguf");
    std::fs::write(&not_gguf, b"GGUF but truncated").unwrap();
    let out = run(&["--model", not_gguf.to_str().unwrap(), "ask", demo, "hello?"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could not load") && !err.contains("panicked"),
        "{err}"
    );

    // A known model's name stands for its file (fetched when missing).
    smollm2();
    let out = run(&["--draft-model", "smollm2-135m", "ask", demo, "hello?"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vocabulary"));

    // An unknown mode cannot be built: it is refused where text becomes a setting.
    assert!(Config::parse("[engine]\nmode = \"warp\"\n").is_err());
    assert!(Config::default().engine.set("mode", "warp").is_err());
}

/// A quantized KV cache perturbs the logits more than batch shapes do: at the first difference
/// from f16 the target's top-1/top-2 gap must still be small.
const Q8_NEAR_TIE: f32 = 1.0;

#[test]
fn a_q8_0_kv_cache_answers_as_f16_up_to_near_ties() {
    let models = Models::load(&common::model_path(), None, 0).expect("load the model");
    let config = |kv_type| EngineConfig {
        ctx: 2048.into(),
        draft_ctx: 512.into(),
        retrieval_budget: 256,
        max_tokens: 32,
        kv_type,
        ..settings(Mode::Ar, 1)
    };
    let (q8, f16) = (config(KvType::Q8_0), config(KvType::F16));
    let mut engines = [
        Engine::new(models.clone(), &f16).expect("f16 contexts"),
        Engine::new(models, &q8).expect("q8_0 contexts"),
    ];
    let mut differences = Vec::new();
    let questions = questions();
    for q in &questions {
        let [a, b] = [(0, &f16), (1, &q8)].map(|(i, c)| {
            engines[i]
                .answer(demo_index(), q, &[], c, &mut |_| Flow::Continue)
                .unwrap()
                .output
        });
        assert!(a.tokens.len() >= 4, "{q}: a real answer: {:?}", a.text);
        if let Some(i) = first_difference(&a.tokens, &b.tokens) {
            let at = |o: &rapid_chat::speculative::decode::Output| {
                o.tokens.get(i).map(|t| t.margin).or(o.end_margin)
            };
            let margin = at(&a)
                .into_iter()
                .chain(at(&b))
                .fold(f32::INFINITY, f32::min);
            assert!(
                margin < Q8_NEAR_TIE,
                "q8_0 differs from f16 at token {i} with a clear margin {margin:.3}: {q}\nf16:  {:?}\nq8_0: {:?}",
                a.text,
                b.text
            );
            differences.push(format!(
                "token {i}/{} (margin {margin:.3}): {q}",
                a.tokens.len()
            ));
        }
    }
    eprintln!(
        "q8_0 against f16: {} questions, identical: {}, near-tie differences: {}",
        questions.len(),
        questions.len() - differences.len(),
        differences.len()
    );
    for d in &differences {
        eprintln!("  {d}");
    }
}

/// `ctx = "auto"`: the target's context holds the whole of a small corpus and little more, and
/// for the demo corpus, which is larger, stops at the model's trained length; what bound it is
/// reported. Before a corpus is seen, a provisional size.
#[test]
fn auto_contexts_fit_the_corpus_and_the_model() {
    let models = Models::load(&common::model_path(), None, 0).expect("load the model");
    let auto = EngineConfig {
        ctx: CtxSize::Auto,
        draft_ctx: CtxSize::Auto,
        ..settings(Mode::Ar, 1)
    };
    let mut engine = Engine::new(models, &auto).expect("contexts");
    assert_eq!(engine.sizes().target_bound, Bound::Provisional);

    // A small corpus: the first part of a real document.
    let sb = common::Sandbox::empty();
    let manual = std::fs::read_to_string(common::demo_dir().join("llama-server.md")).unwrap();
    let cut = manual
        .char_indices()
        .nth(6000)
        .map_or(manual.len(), |(i, _)| i);
    std::fs::write(sb.path("intro.md"), &manual[..cut]).unwrap();
    let mut indexer = sb.indexer();
    indexer.update(&mut |_| {}).unwrap();
    let small = indexer.reader().unwrap();
    let q = "What is llama-server?";
    let prompts = engine.prepare(&small, q, &[], &auto).unwrap();
    let sizes = engine.sizes().clone();
    let Bound::Corpus(need) = sizes.target_bound else {
        panic!("bound by {:?}", sizes.target_bound);
    };
    assert!(prompts.view.whole_corpus(), "{:?}", prompts.view);
    assert!(sizes.target < 4096, "{sizes:?}");
    assert!(
        sizes.target >= need && sizes.target < need + 256,
        "{sizes:?}"
    );
    assert!(prompts.target.len() + auto.max_tokens <= sizes.target as usize);
    assert_eq!(engine.ctx_sizes().0, sizes.target as usize);
    // The whole corpus needs little more than what the prompt holds (its reserve: an eighth).
    assert!(
        (prompts.target.len() as u32) > sizes.target / 2,
        "{} tokens in {sizes:?}",
        prompts.target.len()
    );

    // The demo corpus is larger than the model's trained length, and than what a CPU reads
    // before the first answer in reasonable time.
    let prompts = engine.prepare(demo_index(), q, &[], &auto).unwrap();
    let trained = engine.models.target.n_ctx_train();
    let offload = &engine.models.offload;
    let cpu = offload.gpu_layers == 0 || offload.devices().unwrap().is_empty();
    let (size, bound) = match cpu && CPU_MAX < trained {
        true => (CPU_MAX, Bound::Cpu(CPU_MAX)),
        false => (trained, Bound::Trained(trained)),
    };
    assert!(size <= trained);
    assert_eq!(engine.sizes().target_bound, bound);
    assert_eq!(engine.sizes().target, size);
    assert_eq!(engine.ctx_sizes().0, size as usize);
    assert!(!prompts.view.whole_corpus());
    let Bound::Retrieval(draft_need) = engine.sizes().draft_bound else {
        panic!("drafter bound by {:?}", engine.sizes().draft_bound);
    };
    assert!(engine.sizes().draft >= draft_need);
    assert!(prompts.draft.len() <= engine.sizes().draft as usize);
}

/// A context too large for the memory is refused, with the numbers, before llama.cpp allocates.
#[test]
fn a_context_that_cannot_fit_is_refused_with_its_numbers() {
    let models = Models::load(&common::model_path(), None, 0).expect("load the model");
    let huge = EngineConfig {
        ctx: 100_000_000.into(),
        ..engine_config()
    };
    let Err(e) = Engine::new(models, &huge) else {
        panic!("a 100M-token context was accepted");
    };
    let e = format!("{e:#}");
    for part in [
        "100000000 tokens",
        "GiB of KV cache",
        "free RAM",
        "free)",
        "--kv-type q8_0",
    ] {
        assert!(e.contains(part), "{part:?} missing from: {e}");
    }
}

/// `simulate`'s traces: the answer is the target's greedy answer, and the drafter's continuation
/// recorded at a position (reused from the previous position where the answer confirmed it) is
/// what the drafter decodes greedily from scratch after its prompt and the answer so far.
#[test]
fn a_trace_holds_the_greedy_answer_and_the_drafters_own_continuations() {
    let mut engine = engine();
    let mut s = settings(Mode::Ar, 4);
    s.max_tokens = 24;
    let q = "On which port does llama-server listen by default?";
    let ar = engine
        .answer(demo_index(), q, &[], &s, &mut |_| Flow::Continue)
        .unwrap();
    let trace = rapid_chat::simulate::record(&mut engine, demo_index(), q, &s, 6).unwrap();
    let ar_ids: Vec<i32> = ar.output.tokens.iter().map(|t| t.id).collect();
    assert_eq!(trace.answer, ar_ids);
    // What the target produced: the answer, then the turn marker it was cut at (or its end).
    assert_eq!(trace.produced, ar.output.produced);
    assert!(trace.produced.starts_with(&trace.answer));
    assert_eq!(trace.max_tokens, Some(24));
    assert_eq!(trace.drafts.len(), trace.produced.len());
    assert!(trace.drafts.iter().all(|d| d.len() == 6));

    // From scratch, in a context of its own: greedy steps after the prompt and answer[..i].
    let model = engine.models.drafter;
    let spec = ContextSettings {
        n_ctx: engine.ctx_sizes().1 as u32,
        threads: 2,
        flash_attention: false,
        kv_type: KvType::F16,
        gpu: false,
        remote: false,
    };
    let mut fresh = Context::new(model, spec).unwrap();
    let tok = |v: &[i32]| {
        v.iter()
            .map(|&t| rapid_chat::llm::Token::new(t))
            .collect::<Vec<_>>()
    };
    let mut reused = 0;
    for i in 0..trace.produced.len() {
        if i > 0 && trace.drafts[i - 1][0].0 == trace.produced[i - 1] {
            reused += 1;
        }
        let mut seq = tok(&trace.draft_prompt);
        seq.extend(tok(&trace.produced[..i]));
        let mut greedy = Vec::new();
        for _ in 0..6 {
            fresh.sync(&seq, &mut |_, _| true).unwrap();
            let t = rapid_chat::speculative::sampling::argmax_margin(fresh.logits(0)).0;
            let t = rapid_chat::llm::token::from_index(t);
            greedy.push(t.0);
            seq.push(t);
        }
        let recorded: Vec<i32> = trace.drafts[i].iter().map(|d| d.0).collect();
        assert_eq!(recorded, greedy, "position {i}");
        assert!(trace.drafts[i].iter().all(|d| d.1 > 0.0 && d.1 <= 1.0));
    }
    assert!(reused > 0, "the drafter agrees with the target somewhere");
}

/// One round driver for the live loop and the replay: the live loop answers on the real model,
/// then the replay backend replays that answer (what the target produced, and the drafter's own
/// continuations along it) with the costs the live loop measured round by round, from the costs
/// it started with. They make the same choice in every round (source and draft length) and the
/// target accepts the same drafts: `simulate` projects the policy that runs. Adaptive (the
/// lookups of a repetitive answer) and not (the drafter drafting γ every round).
#[test]
fn the_replay_of_a_live_answer_makes_the_live_loops_choices_round_by_round() {
    use rapid_chat::speculative::replay::{self, Case, Costing, Logged, Replaying, RoundCost};
    let mut engine = engine();
    let q = "What is the date of version 3 of the GNU General Public License?";
    for adaptive in [true, false] {
        let mut s = settings(Mode::Rapid, 4);
        s.adaptive = adaptive;
        // Run to the limit: a long answer repeats, and lookups draft.
        s.ignore_eos = true;
        s.max_tokens = 48;
        // Calibrated by a first answer; the second one is replayed.
        engine
            .answer(demo_index(), q, &[], &s, &mut |_| Flow::Continue)
            .unwrap();
        let start = engine.costs().clone();
        let prompts = engine.prepare(demo_index(), q, &[], &s).unwrap();
        let (mut live, mut costs) = (Vec::new(), Vec::new());
        let answer = engine
            .run(prompts.clone(), &s, &mut |e| {
                if let Event::Round {
                    source,
                    drafted,
                    accepted,
                    t_draft,
                    t_draft_step,
                    t_verify,
                    ..
                } = e
                {
                    live.push(Logged {
                        source,
                        drafted,
                        accepted,
                    });
                    costs.push(RoundCost {
                        t_draft,
                        t_draft_step,
                        t_verify,
                    });
                }
                Flow::Continue
            })
            .unwrap();
        let produced: Vec<_> = (answer.output.produced.iter())
            .map(|&t| rapid_chat::llm::Token::new(t))
            .collect();
        let drafts = engine
            .drafter_continuations(&prompts.draft, &produced, s.gamma)
            .unwrap();
        let case = Case {
            draft_prompt: &prompts.draft,
            prompt: &prompts.target,
            answer: &produced,
            drafts: &drafts,
            eog: answer.output.eog,
            max_tokens: Some(s.max_tokens),
        };
        let costing = Costing::Measured {
            rounds: &costs,
            hint: engine.draft_cost_hint(),
        };
        let mut replayed = Vec::new();
        let (p, _) =
            replay::project_logged(&case, costing, &Replaying::of(&s), start, &mut replayed);
        assert_eq!(replayed, live, "adaptive {adaptive}: round by round");
        assert_eq!(p.tokens, answer.output.tokens.len());
        let drafted = |by: fn(&Logged) -> bool| live.iter().filter(|r| by(r)).count();
        if adaptive {
            assert!(drafted(|r| r.source == DraftSource::Lookup) > 0, "{live:?}");
        } else {
            assert!(drafted(|r| r.source == DraftSource::Model) > 0, "{live:?}");
        }
    }
}

/// `simulate --reference-answers`: the trace follows the reference answer's tokens, with the
/// drafter's own continuation at each of its positions, as if the target had written it.
#[test]
fn a_reference_answer_trace_follows_the_reference() {
    let mut engine = engine();
    let mut s = settings(Mode::Rapid, 4);
    s.max_tokens = 128;
    let q = "Explain what the /health endpoint of llama-server returns.";
    let reference = "The `/health` endpoint returns health check result. It answers with HTTP status \
                     code 503 while the model is still being loaded, and with 200 and \
                     `{\"status\": \"ok\"}` once the model is successfully loaded and the server \
                     is ready.";
    let trace =
        rapid_chat::simulate::record_reference(&mut engine, demo_index(), q, reference, &s, 6)
            .unwrap();
    let ids: Vec<i32> = engine.tokenize(reference).iter().map(|t| t.0).collect();
    assert_eq!(trace.answer, ids);
    assert_eq!(trace.drafts.len(), ids.len());
    assert!(trace.drafts.iter().all(|d| d.len() == 6));
    // The drafter read the retrieved chunks: it continues the reference's quotes of them.
    let agreed = (0..ids.len())
        .filter(|&i| i + 1 < ids.len() && trace.drafts[i][0].0 == ids[i])
        .count();
    assert!(agreed * 3 > ids.len(), "{agreed} of {}", ids.len());
}

//! A long session through the library API with the real model: many questions in a row, each a
//! follow-up of all the earlier ones, in rapid mode. Resident memory must stay flat, and the
//! contexts must never overflow (the conversation is trimmed, oldest turns first, documents
//! kept). `RAPID_CHAT_SOAK_QUESTIONS` sets the count (default 200); the memory curve is printed.
//! Its own test binary, so that no other test's allocations show in the process's memory.

mod common;

use rapid_chat::config::EngineConfig;
use rapid_chat::llm::Models;
use rapid_chat::session::{Engine, Turn};
use rapid_chat::speculative::Flow;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[test]
fn a_long_session_keeps_memory_flat_and_the_contexts_within_their_size() {
    let n: usize = std::env::var("RAPID_CHAT_SOAK_QUESTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    // A corpus that fits both contexts whole (real text: the start of the llama-server manual),
    // so that follow-ups reuse the caches and the session is about the conversation.
    let sb = common::Sandbox::empty();
    let manual = std::fs::read_to_string(common::demo_dir().join("llama-server.md")).unwrap();
    let cut = manual
        .char_indices()
        .nth(3000)
        .map_or(manual.len(), |(i, _)| i);
    std::fs::write(sb.path("llama-server-intro.md"), &manual[..cut]).unwrap();
    let mut indexer = sb.indexer();
    indexer.update(&mut |_| {}).unwrap();
    let index = indexer.reader().unwrap();

    let config = EngineConfig {
        ctx: 2048.into(),
        draft_ctx: 1536.into(),
        retrieval_budget: 1024,
        max_tokens: 12,
        threads: 2,
        ..EngineConfig::default()
    };
    let models = Models::load(&common::model_path(), None, 0).unwrap();
    let mut engine = Engine::new(models, &config).unwrap();
    let settings = config.clone();
    let asks = [
        "What is llama-server?",
        "Which port does it use?",
        "How do I start it?",
        "Does it support embeddings?",
        "What does the health endpoint return?",
        "Can it serve several users at once?",
        "Summarize that in one sentence.",
    ];
    let mut history: Vec<Turn> = Vec::new();
    let mut curve = Vec::new();
    let (mut max_target, mut max_draft) = (0, 0);
    for i in 0..n {
        let q = format!("{} ({})", asks[i % asks.len()], i + 1);
        let answer = engine
            .answer(&index, &q, &history, &settings, &mut |_| Flow::Continue)
            .unwrap_or_else(|e| panic!("question {}: {e:#}", i + 1));
        let s = &answer.output.stats;
        max_target = max_target.max(s.target_ctx_tokens);
        max_draft = max_draft.max(s.draft_ctx_tokens);
        assert!(s.target_ctx_tokens <= 2048);
        assert!(s.draft_ctx_tokens <= 1536);
        history.push(Turn {
            question: q,
            answer: answer.output.text,
        });
        curve.push(rss_mib());
        if (i + 1) % 20 == 0 || i + 1 == n {
            eprintln!(
                "after {:3} questions: RSS {:7.1} MiB, target context {:4} tokens, drafter {:4}",
                i + 1,
                curve[i],
                s.target_ctx_tokens,
                s.draft_ctx_tokens
            );
        }
    }
    eprintln!(
        "largest context use: target {max_target}/{}, drafter {max_draft}/{}",
        config.ctx, config.draft_ctx
    );
    // Flat: after the first tenth (allocations that happen once), memory grows by less than
    // 32 MiB however long the session.
    let warm = curve[(n / 10).max(1).min(n - 1)];
    let peak = curve.iter().skip(n / 10).copied().fold(0.0, f64::max);
    assert!(
        peak - warm < 32.0,
        "resident memory grew from {warm:.1} to {peak:.1} MiB: {curve:?}"
    );
}

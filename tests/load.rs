//! RAPID on a busy machine: with another program spinning on one core beside it (started and
//! stopped here), `bench` on the demo questions keeps every answer within its floor against AR:
//! the policy's measurements of a busy machine (a calibration caught in a burst, rounds slowed by
//! it) must not make it draft where drafting loses. And llama.cpp's threads leave the busy core
//! to its program: one of them sharing it would hold up the others at every step, and two runs
//! of the same plain steps would differ by half. Each question is judged as `bench` reports it:
//! the median over three repeats, with the machine's drift between the paired runs taken out.

mod common;

use rapid_chat::bench::{self, Plan, Question, Task};
use rapid_chat::config::{EngineConfig, Mode};
use rapid_chat::llm::Models;
use rapid_chat::session::Engine;

/// A process spinning on one core until dropped.
struct Hog(std::process::Child);

impl Hog {
    fn start() -> Self {
        Self(
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("start the CPU hog"),
        )
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn with_a_cpu_hog_beside_it_every_demo_answer_keeps_its_floor() {
    let settings = EngineConfig {
        // Short documents keep the prefills short: the floor is about decoding.
        ctx: 2048.into(),
        draft_ctx: 1536.into(),
        retrieval_budget: 1024,
        max_tokens: 64,
        // The cores left free (the default).
        threads: 0,
        ..EngineConfig::default()
    };
    let hog = Hog::start();
    let models = Models::load(&common::model_path(), None, 0).expect("load the model");
    let mut engine = Engine::new(models, &settings).expect("contexts");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 {
        assert!(
            (engine.threads() as usize) < cores,
            "{} threads on {cores} cores, one of them busy",
            engine.threads()
        );
    }
    let sb = common::Sandbox::demo();
    let mut ix = sb.indexer();
    ix.update(&mut |_| {}).unwrap();
    let index = ix.reader().unwrap();
    let questions: Vec<Question> =
        bench::load_questions(&common::demo_dir().join("../questions.json"))
            .expect("the demo questions");
    let tasks: Vec<Task> = questions
        .into_iter()
        .enumerate()
        .map(|(i, question)| Task {
            name: format!("q{}", i + 1),
            index: index.clone(),
            question,
        })
        .collect();
    let plan = Plan {
        modes: vec![Mode::Ar, Mode::Rapid],
        repeat: 3,
        settings,
    };

    let runs = bench::run(&mut engine, &tasks, &plan, &mut |_| {}).unwrap();
    drop(hog);

    let summary = &bench::summarize(&runs, &plan.modes)[1];
    let (held, judged) = summary.floor_held_questions.expect("answers judged");
    let report: Vec<String> = runs
        .iter()
        .filter(|r| r.mode == Mode::Rapid)
        .map(|r| {
            format!(
                "{} rep {}: {:.3} s against AR's {:.3} s (floor {:?}), plain step {:.1} ms, \
                 speed-up {:?} ({:?} at AR's step), {} drafted, {} rounds",
                r.task,
                r.repeat,
                r.stats.decode_s,
                r.ar_decode_s.unwrap_or(0.0),
                r.floor_s,
                r.stats.plain_step_s * 1e3,
                r.speedup,
                r.speedup_same_step,
                r.stats.drafted,
                r.stats.rounds
            )
        })
        .collect();
    assert!(
        judged >= tasks.len() - 2,
        "most answers equal AR's and are judged: {judged} of {}\n{}",
        tasks.len(),
        report.join("\n")
    );
    assert_eq!(
        held,
        judged,
        "every question within its floor (median over 3 repeats)\n{}",
        report.join("\n")
    );
}

//! `rapid-chat bench`: every question in every mode, interleaved, on one engine, with speed-ups
//! measured side by side in the same run. Questions come from a file (with expected answers where
//! it gives them) or are generated: InfiniteBench-style retrieval tasks (`passkey:N`, `kv:N`) plant
//! a fact at a chosen depth of N tokens of text, so quality can be measured at any context length.
//!
//! Each question's prompts are prefilled once before its runs (timed: the cold prefill), so every
//! mode decodes from the same warm caches; the runs' own prefill and time to first token then show
//! only what prefix reuse leaves. Modes rotate their order from question to question and from
//! repeat to repeat (A B, then B A), so drift on a shared machine hits them alike.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::EngineConfig;
use crate::corpus::CorpusIndex;
use crate::session::Engine;
use crate::speculative::{Flow, Mode, Stats, floor_s, median};

/// A question, with the answer expected in the reply where known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub question: String,
    #[serde(default)]
    pub answer: Option<String>,
    /// The answer in prose as a capable model would write it (long questions): `simulate
    /// --reference-answers` traces along it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Reads a questions file: a JSON array of `{"question": ..., "answer": ...}` (other keys ignored).
pub fn load_questions(path: &Path) -> Result<Vec<Question>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the questions file {}", path.display()))?;
    let questions: Vec<Question> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a JSON array of {{\"question\": ..., \"answer\": ...}} objects",
            path.display()
        )
    })?;
    if questions.is_empty() {
        bail!("{} holds no questions", path.display());
    }
    Ok(questions)
}

/// A generated retrieval task kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// A five-digit pass key hidden in filler text.
    Passkey,
    /// The value of one key among many random key-value pairs.
    Kv,
}

/// `passkey:N` or `kv:N`: the kind and the document length in tokens.
pub fn parse_task(task: &str) -> Result<(TaskKind, usize)> {
    let (kind, n) = task
        .split_once(':')
        .with_context(|| format!("task {task:?}: use passkey:N or kv:N (N tokens of text)"))?;
    let kind = match kind {
        "passkey" => TaskKind::Passkey,
        "kv" => TaskKind::Kv,
        other => bail!("unknown task {other:?}: use passkey:N or kv:N"),
    };
    let n: usize = n
        .parse()
        .ok()
        .filter(|&n| n >= 64)
        .with_context(|| format!("task {task:?}: N must be a number of tokens, at least 64"))?;
    Ok((kind, n))
}

/// A generated document: its text, the question about it and the expected answer.
#[derive(Debug, Clone)]
pub struct Generated {
    pub text: String,
    pub question: Question,
}

const FILLER: &str = "The grass is green. The sky is blue. The sun is yellow. Here we go. \
There and back again. ";

/// Generates a task's document of about `tokens` tokens (counted with `count`) with the fact
/// planted at `depth` (0 = start, 1 = end of the text).
pub fn generate(
    kind: TaskKind,
    tokens: usize,
    depth: f64,
    seed: u64,
    count: &dyn Fn(&str) -> usize,
) -> Generated {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match kind {
        TaskKind::Passkey => {
            let key: u32 = rng.random_range(10_000..100_000);
            let needle = format!("The pass key is {key}. Remember it. {key} is the pass key. ");
            let per = count(FILLER).max(1);
            let reps = tokens.saturating_sub(count(&needle)) / per;
            let at = ((reps as f64) * depth.clamp(0.0, 1.0)).round() as usize;
            let mut text = String::with_capacity((reps + 1) * FILLER.len() + needle.len());
            for i in 0..=reps {
                if i == at {
                    text.push_str(&needle);
                }
                if i < reps {
                    text.push_str(FILLER);
                }
            }
            Generated {
                text,
                question: Question {
                    question: "What is the pass key? Answer with the number.".into(),
                    answer: Some(key.to_string()),
                    reference: None,
                },
            }
        }
        TaskKind::Kv => {
            let hex = |rng: &mut ChaCha8Rng| {
                format!("{:08x}-{:04x}", rng.random::<u32>(), rng.random::<u16>())
            };
            let line = |k: &str, v: &str| format!("\"{k}\": \"{v}\",\n");
            let sample = line(&hex(&mut rng), &hex(&mut rng));
            let pairs = (tokens / count(&sample).max(1)).max(1);
            let at = (((pairs - 1) as f64) * depth.clamp(0.0, 1.0)).round() as usize;
            let mut text = String::from("{\n");
            let mut asked = (String::new(), String::new());
            for i in 0..pairs {
                let (k, v) = (hex(&mut rng), hex(&mut rng));
                text.push_str(&line(&k, &v));
                if i == at {
                    asked = (k, v);
                }
            }
            text.push_str("}\n");
            Generated {
                text,
                question: Question {
                    question: format!(
                        "In the JSON object, what is the value of the key \"{}\"?",
                        asked.0
                    ),
                    answer: Some(asked.1),
                    reference: None,
                },
            }
        }
    }
}

/// One question to run: its index and where it came from.
pub struct Task {
    pub name: String,
    pub index: CorpusIndex,
    pub question: Question,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub modes: Vec<Mode>,
    pub repeat: usize,
    pub settings: EngineConfig,
}

/// One answer of the bench.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub task: String,
    pub question: String,
    pub mode: Mode,
    pub repeat: usize,
    pub tok_s: f64,
    /// Tokens/s over the AR answer to the same question in the same repeat.
    pub speedup: Option<f64>,
    /// `speedup` with the drift of the machine between the two runs taken out: times this run's
    /// median plain step over AR's (None when this run took no plain step). On a short answer
    /// a few percent of drift decide the ratio; this keeps what drafting did.
    pub speedup_same_step: Option<f64>,
    pub acceptance: f64,
    pub mean_accepted_len: f64,
    /// The question's prefill of both contexts from cold, before its runs.
    pub cold_prefill_s: f64,
    pub prefill_s: f64,
    pub ttft_s: f64,
    /// Whether the answer contains the expected one (case and spacing ignored).
    pub correct: Option<bool>,
    /// Greedy only: the first token where the answer differs from AR's, with the target's
    /// margin there (`None`: identical).
    pub differs_from_ar_at: Option<(usize, f32)>,
    /// AR's decoding time for the same question in the same repeat.
    pub ar_decode_s: Option<f64>,
    /// The floor (see [`floor_s`]): the most decoding time this answer may take against AR's;
    /// None for AR itself, the drafter alone, or an answer whose text differs from AR's.
    pub floor_s: Option<f64>,
    /// Whether the answer, or AR's to the same question, is mostly repetition
    /// ([`crate::speculative::looping`]): counted apart from the headline figures.
    pub looped: bool,
    pub answer: String,
    pub stats: Stats,
    #[serde(skip)]
    ids: Vec<i32>,
    #[serde(skip)]
    margins: Vec<f32>,
}

/// Runs the plan; `progress` sees each run as it finishes.
pub fn run(
    engine: &mut Engine,
    tasks: &[Task],
    plan: &Plan,
    progress: &mut dyn FnMut(&Run),
) -> Result<Vec<Run>> {
    let mut runs: Vec<Run> = Vec::new();
    for rep in 0..plan.repeat {
        for (t, task) in tasks.iter().enumerate() {
            let q = &task.question.question;
            // Warm both contexts with this question's prompts: the cold prefill, timed once.
            let mut warm = plan.settings.clone();
            warm.mode = Mode::Rapid;
            let prompts = engine.prepare(&task.index, q, &[], &warm)?;
            let cold_prefill_s = engine.prefill(&prompts)?;
            let n = plan.modes.len();
            let order: Vec<Mode> = (0..n).map(|i| plan.modes[(i + t + rep) % n]).collect();
            let first = runs.len();
            for mode in order {
                let mut settings = plan.settings.clone();
                settings.mode = mode;
                let answer =
                    engine.answer(&task.index, q, &[], &settings, &mut |_| Flow::Continue)?;
                let out = answer.output;
                let correct = task
                    .question
                    .answer
                    .as_deref()
                    .map(|a| contains(&out.text, a));
                let ids: Vec<i32> = out.tokens.iter().map(|t| t.id).collect();
                let run = Run {
                    task: task.name.clone(),
                    question: q.clone(),
                    mode,
                    repeat: rep,
                    tok_s: out.stats.decode_tok_s,
                    speedup: None,
                    speedup_same_step: None,
                    acceptance: out.stats.acceptance_rate,
                    mean_accepted_len: out.stats.mean_accepted_len,
                    cold_prefill_s,
                    prefill_s: out.stats.prefill_s,
                    ttft_s: out.stats.ttft_s,
                    correct,
                    differs_from_ar_at: None,
                    ar_decode_s: None,
                    floor_s: None,
                    looped: crate::speculative::looping(&ids),
                    answer: out.text,
                    ids,
                    margins: out.tokens.iter().map(|t| t.margin).collect(),
                    stats: out.stats,
                };
                progress(&run);
                runs.push(run);
            }
            // Compare with AR's answer to the same question.
            let group = &mut runs[first..];
            if let Some(ar) = group.iter().find(|r| r.mode == Mode::Ar).cloned() {
                let greedy = plan.settings.greedy();
                for r in group.iter_mut() {
                    if ar.tok_s > 0.0 {
                        let speedup = r.tok_s / ar.tok_s;
                        r.speedup = Some(speedup);
                        let (own, ar) = (r.stats.plain_step_s, ar.stats.plain_step_s);
                        r.speedup_same_step = (own > 0.0 && ar > 0.0).then(|| speedup * own / ar);
                    }
                    // RAG answers from another context: no reason to equal AR.
                    if greedy && r.mode != Mode::Rag && r.mode != Mode::Ar {
                        r.differs_from_ar_at = first_difference(&ar, r);
                    }
                    r.ar_decode_s = Some(ar.stats.decode_s);
                    r.looped |= ar.looped;
                    let same_text = r.differs_from_ar_at.is_none() && r.answer == ar.answer;
                    if r.mode != Mode::Ar && r.mode != Mode::Rag && same_text {
                        r.floor_s = Some(floor_s(ar.stats.decode_s, ar.stats.plain_step_s));
                    }
                }
            }
        }
    }
    Ok(runs)
}

/// Where two greedy answers first differ, with the smaller of the two target margins there.
fn first_difference(ar: &Run, other: &Run) -> Option<(usize, f32)> {
    let i = ar
        .ids
        .iter()
        .zip(&other.ids)
        .take_while(|(a, b)| a == b)
        .count();
    if i == ar.ids.len() && i == other.ids.len() {
        return None;
    }
    let m = |r: &Run| r.margins.get(i).copied().unwrap_or(f32::INFINITY);
    Some((i, m(ar).min(m(other))))
}

/// Whether `expected` occurs in `text` as whole words (so "No" is not found in "not").
fn contains(text: &str, expected: &str) -> bool {
    let norm = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    let (text, expected) = (norm(text), norm(expected));
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    text.match_indices(&expected).any(|(i, m)| {
        !word(text[..i].chars().next_back()) && !word(text[i + m.len()..].chars().next())
    })
}

/// The summary of one mode over all runs.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub mode: Mode,
    pub runs: usize,
    pub tok_s_median: f64,
    /// The median over questions of a question's median speed-up over the repeats.
    pub speedup_median: Option<f64>,
    /// The lowest speed-up of any single run.
    pub speedup_min: Option<f64>,
    /// The lowest over questions of a question's median speed-up over the repeats (one noisy
    /// run of a short answer does not decide it).
    pub speedup_worst_question: Option<f64>,
    /// The same with `speedup_same_step`.
    pub speedup_same_step_worst_question: Option<f64>,
    /// Time-weighted over the question set: the sum of AR's decoding times over the sum of this
    /// mode's, over the runs paired with an AR run (what a user waits for in total).
    pub speedup_total: Option<f64>,
    /// Answers within the floor, of those whose text equals AR's (see [`floor_s`]).
    pub floor_held: Option<(usize, usize)>,
    /// The largest share of its floor an answer used (above 1: the floor broke).
    pub floor_worst: Option<f64>,
    /// The floor per question, over the repeats, with the machine's drift between the paired
    /// runs taken out (as `speedup_same_step`: this run's decoding time at AR's median plain step):
    /// the median of that within the median floor, of the questions judged. On a busy machine
    /// two runs of the same plain steps differ by half; this keeps what the policy did.
    pub floor_held_questions: Option<(usize, usize)>,
    /// Answers whose text differs from AR's (batch rounding at a near tie), counted apart
    /// from the floor.
    pub differs_from_ar: usize,
    /// Answers that loop (theirs or AR's), left out of the figures above, and their own
    /// time-weighted speed-up.
    pub loops: usize,
    pub loops_speedup_total: Option<f64>,
    pub acceptance: f64,
    pub mean_accepted_len: f64,
    pub cold_prefill_s_median: f64,
    pub ttft_s_median: f64,
    pub correct: Option<(usize, usize)>,
    pub identical_to_ar: Option<(usize, usize)>,
    /// Per round, in milliseconds: drafting, verifying, and outside llama.cpp.
    pub ms_draft: f64,
    pub ms_verify: f64,
    pub ms_other: f64,
    pub lookup_share: f64,
    /// Median over runs of the speed-up free, always-accepted drafts could give (the
    /// verification cost curve measured in the run).
    pub ceiling: Option<f64>,
    /// Median over runs of the median plain target step, in milliseconds (steady state: a
    /// first step's warm-up does not count).
    pub ms_plain_step: Option<f64>,
}

/// Per-mode summaries, in the plan's mode order.
pub fn summarize(runs: &[Run], modes: &[Mode]) -> Vec<Summary> {
    modes
        .iter()
        .map(|&mode| {
            let all: Vec<&Run> = runs.iter().filter(|r| r.mode == mode).collect();
            // The headline figures are over prose: loops are counted apart.
            let rs: Vec<&Run> = all.iter().copied().filter(|r| !r.looped).collect();
            let loops: Vec<&Run> = all.iter().copied().filter(|r| r.looped).collect();
            let sum = |f: &dyn Fn(&Stats) -> f64| rs.iter().map(|r| f(&r.stats)).sum::<f64>();
            let rounds = sum(&|s| s.rounds as f64).max(1.0);
            let drafted = sum(&|s| s.drafted as f64);
            // The median over the runs that have a value.
            let med = |f: &dyn Fn(&Run) -> Option<f64>| {
                median(&mut rs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            let speedups: Vec<f64> = rs.iter().filter_map(|r| r.speedup).collect();
            let correct: Vec<bool> = rs.iter().filter_map(|r| r.correct).collect();
            let compared: Vec<&&Run> = rs
                .iter()
                .filter(|r| r.speedup.is_some() && mode != Mode::Ar && mode != Mode::Rag)
                .collect();
            Summary {
                mode,
                runs: rs.len(),
                tok_s_median: med(&|r| Some(r.tok_s)).unwrap_or(0.0),
                speedup_median: median(&mut per_question(&rs, |r| r.speedup)),
                speedup_min: speedups.iter().copied().reduce(f64::min),
                speedup_worst_question: worst_question(&rs, |r| r.speedup),
                speedup_same_step_worst_question: worst_question(&rs, |r| r.speedup_same_step),
                speedup_total: time_weighted(&rs),
                floor_held: {
                    let judged: Vec<bool> = rs
                        .iter()
                        .filter_map(|r| r.floor_s.map(|f| r.stats.decode_s <= f))
                        .collect();
                    (!judged.is_empty())
                        .then(|| (judged.iter().filter(|&&h| h).count(), judged.len()))
                },
                floor_worst: rs
                    .iter()
                    .filter_map(|r| r.floor_s.map(|f| r.stats.decode_s / f))
                    .reduce(f64::max),
                floor_held_questions: {
                    let own = per_question(&rs, |r| r.floor_s.map(|_| same_step_decode_s(r)));
                    let floors = per_question(&rs, |r| r.floor_s);
                    (!own.is_empty()).then(|| {
                        let held = own.iter().zip(&floors).filter(|(t, f)| t <= f).count();
                        (held, own.len())
                    })
                },
                differs_from_ar: rs.iter().filter(|r| r.differs_from_ar_at.is_some()).count(),
                loops: loops.len(),
                loops_speedup_total: time_weighted(&loops),
                acceptance: if drafted > 0.0 {
                    sum(&|s| s.accepted as f64) / drafted
                } else {
                    0.0
                },
                // The tokens the rounds produced (a dropped turn marker's and a hidden
                // end-of-generation token included), over the rounds.
                mean_accepted_len: sum(&|s| s.mean_accepted_len * s.rounds as f64) / rounds,
                cold_prefill_s_median: med(&|r| Some(r.cold_prefill_s)).unwrap_or(0.0),
                ttft_s_median: med(&|r| Some(r.ttft_s)).unwrap_or(0.0),
                correct: (!correct.is_empty())
                    .then(|| (correct.iter().filter(|&&c| c).count(), correct.len())),
                identical_to_ar: (!compared.is_empty()).then(|| {
                    (
                        compared
                            .iter()
                            .filter(|r| r.differs_from_ar_at.is_none())
                            .count(),
                        compared.len(),
                    )
                }),
                ms_draft: sum(&|s| s.draft_s) * 1e3 / rounds,
                ms_verify: sum(&|s| s.verify_s) * 1e3 / rounds,
                ms_other: sum(&|s| s.overhead_s) * 1e3 / rounds,
                lookup_share: if drafted > 0.0 {
                    sum(&|s| s.lookup_drafted as f64) / drafted
                } else {
                    0.0
                },
                ceiling: med(&|r| Some(r.stats.ceiling).filter(|&c| c > 1.0)),
                ms_plain_step: med(&|r| Some(r.stats.plain_step_s * 1e3).filter(|&t| t > 0.0)),
            }
        })
        .collect()
}

/// The sum of AR's decoding times over the sum of `runs`' (those paired with an AR run).
fn time_weighted(runs: &[&Run]) -> Option<f64> {
    let paired: Vec<&&Run> = runs.iter().filter(|r| r.ar_decode_s.is_some()).collect();
    let ar: f64 = paired.iter().filter_map(|r| r.ar_decode_s).sum();
    let own: f64 = paired.iter().map(|r| r.stats.decode_s).sum();
    (own > 0.0 && !paired.is_empty()).then(|| ar / own)
}

/// A run's decoding time at the pace of AR's plain steps in the paired run: its own time, times
/// AR's median plain step over its own (as measured; its own time where either is missing).
fn same_step_decode_s(r: &Run) -> f64 {
    match (r.speedup, r.speedup_same_step) {
        (Some(s), Some(same)) if same > 0.0 => r.stats.decode_s * s / same,
        _ => r.stats.decode_s,
    }
}

/// Per question (task), the median of `speedup` over its repeats.
fn per_question(runs: &[&Run], speedup: fn(&Run) -> Option<f64>) -> Vec<f64> {
    let mut by_question: Vec<((&str, &str), Vec<f64>)> = Vec::new();
    for r in runs {
        let Some(x) = speedup(r) else { continue };
        let key = (r.task.as_str(), r.question.as_str());
        match by_question.iter_mut().find(|(k, _)| *k == key) {
            Some((_, xs)) => xs.push(x),
            None => by_question.push((key, vec![x])),
        }
    }
    by_question
        .iter_mut()
        .filter_map(|(_, xs)| median(xs))
        .collect()
}

/// The lowest over questions of the median of `speedup` over their repeats.
fn worst_question(runs: &[&Run], speedup: fn(&Run) -> Option<f64>) -> Option<f64> {
    per_question(runs, speedup).into_iter().reduce(f64::min)
}

/// The summary as a Markdown table; `last_curve` is a verification cost curve to print under it.
pub fn markdown(summaries: &[Summary], last_curve: Option<&[(usize, f64)]>) -> String {
    let mut out = String::from(
        "| mode | tok/s (median) | vs AR (time-weighted) | vs AR (median) | vs AR (worst question) \
         | vs AR (worst run) | floor held | acceptance | tokens/round | lookup share of drafts | \
         ms/round draft + verify + other | TTFT s (warm) | correct | greedy = AR |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let x = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}x"));
    let frac = |v: Option<(usize, usize)>| v.map_or("–".into(), |(a, b)| format!("{a}/{b}"));
    for s in summaries {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.1} + {:.1} + {:.2} | {:.2} | {} | {} |",
            s.mode,
            s.tok_s_median,
            x(s.speedup_total),
            x(s.speedup_median),
            x(s.speedup_worst_question),
            x(s.speedup_min),
            match (s.floor_held, s.floor_worst, s.floor_held_questions) {
                (Some((a, b)), Some(w), Some((qa, qb))) => format!(
                    "{a}/{b} answers (worst {:.0}% of it), {qa}/{qb} questions at AR's pace",
                    w * 100.0
                ),
                _ => "–".into(),
            },
            if s.acceptance > 0.0 {
                format!("{:.2}", s.acceptance)
            } else {
                "–".into()
            },
            s.mean_accepted_len,
            if s.acceptance > 0.0 {
                format!("{:.0}%", s.lookup_share * 100.0)
            } else {
                "–".into()
            },
            s.ms_draft,
            s.ms_verify,
            s.ms_other,
            s.ttft_s_median,
            frac(s.correct),
            frac(s.identical_to_ar),
        );
    }
    if let Some(p) = summaries.first() {
        let _ = writeln!(
            out,
            "\nCold prefill of a question (both contexts, median): {:.2} s.",
            p.cold_prefill_s_median
        );
    }
    for s in summaries.iter().filter(|s| s.mode == Mode::Ar) {
        if let Some(t) = s.ms_plain_step {
            let _ = writeln!(out, "AR step (median): {t:.2} ms.");
        }
    }
    for s in summaries.iter().filter(|s| s.loops > 0) {
        let _ = writeln!(
            out,
            "{} answers of {} loop (theirs or AR's: under a third of their 4-grams distinct), \
             left out of the figures above; over them, time-weighted: {}.",
            s.loops,
            s.mode,
            x(s.loops_speedup_total)
        );
    }
    for s in summaries.iter().filter(|s| s.differs_from_ar > 0) {
        let _ = writeln!(
            out,
            "{} answers of {} differ from AR's (llama.cpp's rounding of a batch at a near tie): \
             not judged by the floor.",
            s.differs_from_ar, s.mode
        );
    }
    for s in summaries
        .iter()
        .filter(|s| s.speedup_same_step_worst_question.is_some() && s.mode != Mode::Ar)
    {
        let _ = writeln!(
            out,
            "Worst question of {} with the machine's drift between the paired runs taken out \
             (speed-up times its median plain step over AR's, median over repeats): {}.",
            s.mode,
            x(s.speedup_same_step_worst_question)
        );
    }
    for s in summaries
        .iter()
        .filter(|s| s.mode == Mode::Rapid && s.ceiling.is_some())
    {
        let _ = writeln!(
            out,
            "Ceiling of {} here (free, always-accepted drafts: the best g·t(1)/t(g) measured, \
             median): {}.",
            s.mode,
            x(s.ceiling)
        );
    }
    if let Some(curve) = last_curve {
        let points: Vec<String> = curve
            .iter()
            .map(|(g, t)| format!("{g}:{:.2}", t * 1e3))
            .collect();
        let _ = writeln!(
            out,
            "Verification cost by batch size, tokens:ms (the last rapid answer's estimates; \
             `examples/policy_replay.rs --costs` takes them): {}",
            points.join(",")
        );
    }
    out
}

/// Where generated task documents go: one folder per task under `root`.
pub fn task_folder(root: &Path, kind: TaskKind, tokens: usize, depth: f64) -> PathBuf {
    let kind = match kind {
        TaskKind::Passkey => "passkey",
        TaskKind::Kv => "kv",
    };
    root.join(format!(
        "{kind}-{tokens}-d{:03}",
        (depth * 100.0).round() as u32
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn tasks_parse_and_plant_their_fact_at_the_depth() {
        assert_eq!(
            parse_task("passkey:8000").unwrap(),
            (TaskKind::Passkey, 8000)
        );
        assert!(parse_task("passkey").is_err());
        assert!(parse_task("needle:100").is_err());
        assert!(parse_task("kv:ten").is_err());
        for depth in [0.0, 0.5, 1.0] {
            let g = generate(TaskKind::Passkey, 2000, depth, 7, &words);
            let key = g.question.answer.clone().unwrap();
            let at = g.text.find(&key).unwrap() as f64 / g.text.len() as f64;
            assert!((at - depth).abs() < 0.05, "depth {depth}: at {at}");
            assert!(
                (1900..=2100).contains(&words(&g.text)),
                "{}",
                words(&g.text)
            );
        }
        let g = generate(TaskKind::Kv, 2000, 0.25, 7, &words);
        let v = g.question.answer.clone().unwrap();
        assert_eq!(g.text.matches(&v).count(), 1);
        let k = g.question.question.split('"').nth(1).unwrap();
        assert!(g.text.contains(&format!("\"{k}\": \"{v}\"")));
        // Another seed, another key.
        assert_ne!(
            generate(TaskKind::Passkey, 500, 0.5, 8, &words)
                .question
                .answer,
            generate(TaskKind::Passkey, 500, 0.5, 7, &words)
                .question
                .answer
        );
    }

    #[test]
    fn speed_ups_are_summarized_per_question_over_the_repeats() {
        let run = |question: &str, mode: Mode, speedup: f64| Run {
            task: "demo".into(),
            question: question.into(),
            mode,
            repeat: 0,
            tok_s: 10.0 * speedup,
            speedup: Some(speedup),
            speedup_same_step: Some(speedup),
            acceptance: 0.0,
            mean_accepted_len: 1.0,
            cold_prefill_s: 0.0,
            prefill_s: 0.0,
            ttft_s: 0.0,
            correct: None,
            differs_from_ar_at: None,
            ar_decode_s: None,
            floor_s: None,
            looped: false,
            answer: String::new(),
            stats: Stats::default(),
            ids: Vec::new(),
            margins: Vec::new(),
        };
        let runs = [
            run("a", Mode::Ar, 1.0),
            run("a", Mode::Rapid, 0.90),
            run("a", Mode::Rapid, 1.20),
            run("a", Mode::Rapid, 1.10),
            run("b", Mode::Ar, 1.0),
            run("b", Mode::Rapid, 1.05),
            run("b", Mode::Rapid, 1.01),
        ];
        let summaries = summarize(&runs, &[Mode::Ar, Mode::Rapid]);
        let s = &summaries[1];
        assert_eq!(s.speedup_min, Some(0.90));
        // a: median 1.10; b: median 1.03.
        assert!((s.speedup_worst_question.unwrap() - 1.03).abs() < 1e-12);
        // Over questions, not runs (whose median is 1.05).
        assert!((s.speedup_median.unwrap() - 1.065).abs() < 1e-12);
        assert_eq!(s.speedup_same_step_worst_question, s.speedup_worst_question);
        let table = markdown(&summaries, None);
        assert!(table.contains("| 1.03x | 0.90x | – |"), "{table}");
        assert!(
            table.contains("AR's, median over repeats): 1.03x."),
            "{table}"
        );
    }

    #[test]
    fn the_floor_and_the_time_weighted_speed_up_are_over_paired_answers() {
        // 13 tokens of 10 ms: 8 plain steps (80 ms) are more than 5% (6.5 ms).
        assert!((floor_s(0.13, 0.01) - 0.21).abs() < 1e-12);
        // 500 tokens: 5%.
        assert!((floor_s(5.0, 0.01) - 5.25).abs() < 1e-12);
        let run = |q: &str, mode: Mode, decode_s: f64, ar: f64| Run {
            task: "demo".into(),
            question: q.into(),
            mode,
            repeat: 0,
            tok_s: 1.0 / decode_s,
            speedup: Some(ar / decode_s),
            speedup_same_step: None,
            acceptance: 0.0,
            mean_accepted_len: 1.0,
            cold_prefill_s: 0.0,
            prefill_s: 0.0,
            ttft_s: 0.0,
            correct: None,
            differs_from_ar_at: None,
            ar_decode_s: Some(ar),
            floor_s: (mode == Mode::Rapid).then(|| floor_s(ar, 0.01)),
            looped: false,
            answer: String::new(),
            stats: Stats {
                decode_s,
                ..Stats::default()
            },
            ids: Vec::new(),
            margins: Vec::new(),
        };
        let runs = [
            run("short", Mode::Ar, 0.13, 0.13),
            run("short", Mode::Rapid, 0.20, 0.13),
            run("long", Mode::Ar, 5.0, 5.0),
            run("long", Mode::Rapid, 2.5, 5.0),
        ];
        let s = &summarize(&runs, &[Mode::Ar, Mode::Rapid])[1];
        // (0.13 + 5.0) / (0.20 + 2.5): the long answer weighs by its time.
        assert!((s.speedup_total.unwrap() - 5.13 / 2.7).abs() < 1e-12);
        assert_eq!(s.floor_held, Some((2, 2)));
        assert_eq!(s.floor_held_questions, Some((2, 2)));
        assert!((s.floor_worst.unwrap() - 0.20 / 0.21).abs() < 1e-12);
        let broke = [run("short", Mode::Rapid, 0.25, 0.13)];
        let s = &summarize(&broke, &[Mode::Rapid])[0];
        assert_eq!(s.floor_held, Some((0, 1)));
        // Over repeats, the median decides: one slowed answer of three does not.
        let repeats = [
            run("short", Mode::Rapid, 0.25, 0.13),
            run("short", Mode::Rapid, 0.14, 0.13),
            run("short", Mode::Rapid, 0.15, 0.14),
        ];
        let s = &summarize(&repeats, &[Mode::Rapid])[0];
        assert_eq!(s.floor_held, Some((2, 3)));
        assert_eq!(s.floor_held_questions, Some((1, 1)));
    }

    #[test]
    fn correctness_ignores_case_and_spacing() {
        assert!(contains("It is  29 june\n2007.", "29 June 2007"));
        assert!(!contains("It is 2007.", "29 June 2007"));
        assert!(contains("No, it does not.", "no"));
        assert!(!contains("It is not known.", "no"));
        assert!(contains("the /health endpoint", "/health"));
    }
}

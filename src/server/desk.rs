//! The engine's desk: one answer at a time, in the order asked. A thread owns the runtime (the
//! corpus kept current, the engine thread), takes jobs from a bounded queue, asks the engine and
//! hands each reply to the job's client; a client that is gone (or that asks to stop, at a stop
//! string) cancels its answer, which the engine sees within a round. Between jobs it follows the
//! engine's state for `/health`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crossbeam_channel::{Receiver, Sender, TrySendError, select};

use crate::runtime::{Reply, Request, Runtime};

use super::openai::Asked;

/// A request for an answer, and where its replies go.
pub struct Job {
    pub asked: Asked,
    pub replies: tokio::sync::mpsc::Sender<Reply>,
    /// Set by the client to stop the answer (a stop string met).
    pub stop: Arc<AtomicBool>,
}

/// The engine as `/health` tells it.
#[derive(Debug, Clone, PartialEq)]
pub enum Engine {
    Loading,
    Ready { model: String },
    Failed(String),
}

/// What `/metrics` counts (llama-server's names where it has one).
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub processing: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub prompt_ms: AtomicU64,
    pub predicted_tokens: AtomicU64,
    pub predicted_ms: AtomicU64,
    pub drafted: AtomicU64,
    pub accepted: AtomicU64,
    /// The last answer's speed-up over plain target steps, in thousandths.
    pub speedup_milli: AtomicU64,
}

/// The desk as the HTTP handlers see it.
pub struct Desk {
    jobs: Sender<Job>,
    pub engine: Arc<RwLock<Engine>>,
    pub counters: Arc<Counters>,
}

/// Why a job was not taken.
pub enum Refused {
    /// The queue is full: try again later.
    Busy,
    /// The desk is gone (the engine stopped).
    Closed,
}

impl Desk {
    /// Starts the desk's thread on `runtime`, with room for `queue` jobs waiting.
    pub fn start(runtime: Runtime, queue: usize) -> anyhow::Result<Self> {
        let (jobs, rx) = crossbeam_channel::bounded(queue);
        let engine = Arc::new(RwLock::new(Engine::Loading));
        let counters = Arc::new(Counters::default());
        let (e, c) = (Arc::clone(&engine), Arc::clone(&counters));
        std::thread::Builder::new()
            .name("desk".into())
            .spawn(move || serve(&runtime, &rx, &e, &c))?;
        Ok(Self {
            jobs,
            engine,
            counters,
        })
    }

    /// Queues `job`, or says why not.
    pub fn take(&self, job: Job) -> Result<(), Refused> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Busy,
            TrySendError::Disconnected(_) => Refused::Closed,
        })
    }

    /// Jobs waiting.
    pub fn waiting(&self) -> usize {
        self.jobs.len()
    }
}

fn serve(runtime: &Runtime, jobs: &Receiver<Job>, engine: &RwLock<Engine>, counters: &Counters) {
    // Indexing goes on by itself (its progress is the UI's business); once it is over, or never
    // started (another instance keeps the index), its closed channel must not wake the loop.
    let mut updates = runtime.updates.clone();
    loop {
        select! {
            recv(jobs) -> job => match job {
                Ok(job) => answer(runtime, job, engine, counters),
                Err(_) => return,
            },
            recv(runtime.replies) -> reply => match reply {
                Ok(reply) => note(&reply, engine),
                Err(_) => {
                    set(engine, Engine::Failed("the engine stopped (see the log file)".into()));
                    return;
                }
            },
            recv(updates) -> update => if update.is_err() {
                updates = crossbeam_channel::never();
            },
        }
    }
}

/// Follows the engine's state through a reply.
fn note(reply: &Reply, engine: &RwLock<Engine>) {
    match reply {
        Reply::Loaded(info) => set(
            engine,
            Engine::Ready {
                model: info.target.clone(),
            },
        ),
        Reply::LoadFailed(e) => set(engine, Engine::Failed(e.clone())),
        Reply::WorkerLost(_) => set(engine, Engine::Loading),
        _ => {}
    }
}

fn set(engine: &RwLock<Engine>, state: Engine) {
    *engine.write().unwrap_or_else(|e| e.into_inner()) = state;
}

/// Asks the engine for `job`'s answer and hands over every reply until the last.
fn answer(runtime: &Runtime, job: Job, engine: &RwLock<Engine>, counters: &Counters) {
    // A client that left while queued costs nothing.
    if job.replies.is_closed() {
        return;
    }
    counters.processing.fetch_add(1, Ordering::SeqCst);
    let Asked {
        question,
        history,
        settings,
        ..
    } = job.asked;
    runtime.ask(Request::Ask {
        question,
        history,
        settings,
    });
    let mut cancelled = false;
    while let Ok(reply) = runtime.replies.recv() {
        note(&reply, engine);
        let last = matches!(
            reply,
            Reply::Finished(_) | Reply::Failed(_) | Reply::LoadFailed(_) | Reply::WorkerLost(_)
        );
        if let Reply::Finished(answer) = &reply {
            count(counters, answer);
        }
        let gone = job.replies.blocking_send(reply).is_err();
        if (gone || job.stop.load(Ordering::SeqCst)) && !cancelled {
            runtime.cancel();
            cancelled = true;
            tracing::info!(client_gone = gone, "answer cancelled");
        }
        if last {
            break;
        }
    }
    counters.processing.fetch_sub(1, Ordering::SeqCst);
}

fn count(c: &Counters, answer: &crate::runtime::Answer) {
    let s = &answer.output.stats;
    let add = |a: &AtomicU64, n: f64| {
        a.fetch_add(n.max(0.0).round() as u64, Ordering::Relaxed);
    };
    add(&c.prompt_tokens, s.target_prefill_tokens as f64);
    add(&c.prompt_ms, s.prefill_s * 1e3);
    add(&c.predicted_tokens, s.generated_tokens as f64);
    add(&c.predicted_ms, s.decode_s * 1e3);
    add(&c.drafted, s.drafted as f64);
    add(&c.accepted, s.accepted as f64);
    c.speedup_milli
        .store((s.speedup * 1e3).round() as u64, Ordering::Relaxed);
}

/// `/metrics` in Prometheus's text format.
pub fn metrics(c: &Counters, waiting: usize) -> String {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let per_second = |tokens: u64, ms: u64| {
        if ms == 0 {
            0.0
        } else {
            tokens as f64 * 1e3 / ms as f64
        }
    };
    let rows: [(&str, &str, &str, String); 12] = [
        (
            "llamacpp:prompt_tokens_total",
            "counter",
            "Number of prompt tokens processed.",
            get(&c.prompt_tokens).to_string(),
        ),
        (
            "llamacpp:prompt_seconds_total",
            "counter",
            "Prompt process time.",
            format!("{:.3}", get(&c.prompt_ms) as f64 / 1e3),
        ),
        (
            "llamacpp:tokens_predicted_total",
            "counter",
            "Number of generation tokens processed.",
            get(&c.predicted_tokens).to_string(),
        ),
        (
            "llamacpp:tokens_predicted_seconds_total",
            "counter",
            "Predict process time.",
            format!("{:.3}", get(&c.predicted_ms) as f64 / 1e3),
        ),
        (
            "llamacpp:prompt_tokens_seconds",
            "gauge",
            "Average prompt throughput in tokens/s.",
            format!(
                "{:.3}",
                per_second(get(&c.prompt_tokens), get(&c.prompt_ms))
            ),
        ),
        (
            "llamacpp:predicted_tokens_seconds",
            "gauge",
            "Average generation throughput in tokens/s.",
            format!(
                "{:.3}",
                per_second(get(&c.predicted_tokens), get(&c.predicted_ms))
            ),
        ),
        (
            "llamacpp:requests_processing",
            "gauge",
            "Number of requests processing.",
            get(&c.processing).to_string(),
        ),
        (
            "llamacpp:requests_deferred",
            "gauge",
            "Number of requests deferred.",
            waiting.to_string(),
        ),
        (
            "rapidchat:requests_total",
            "counter",
            "Chat completion requests received.",
            get(&c.requests).to_string(),
        ),
        (
            "rapidchat:requests_refused_total",
            "counter",
            "Requests refused with 503 (the queue was full).",
            get(&c.refused).to_string(),
        ),
        (
            "rapidchat:draft_tokens_total",
            "counter",
            "Drafted tokens verified (lookups and the drafter).",
            get(&c.drafted).to_string(),
        ),
        (
            "rapidchat:draft_tokens_accepted_total",
            "counter",
            "Drafted tokens the target accepted.",
            get(&c.accepted).to_string(),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    let name = "rapidchat:speedup";
    out.push_str(&format!(
        "# HELP {name} The last answer's speed over plain target steps.\n# TYPE {name} gauge\n{name} {:.3}\n",
        get(&c.speedup_milli) as f64 / 1e3
    ));
    out
}

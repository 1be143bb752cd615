//! The engine thread: owns the models and contexts, takes questions, streams events back. The UI
//! never calls llama.cpp; it sends [`Request`]s and receives [`Reply`]s, and cancels through a
//! flag the decode loop checks at every event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use crossbeam_channel::{Receiver, Sender};

use crate::config::EngineConfig;
use crate::corpus::CorpusIndex;
use crate::session::{Answer, Engine, Source, Turn, View};
use crate::speculative::{Event, Flow};

/// What the UI asks of the engine.
#[derive(Debug, Clone)]
pub enum Request {
    Ask {
        question: String,
        history: Vec<Turn>,
        settings: EngineConfig,
    },
}

/// Facts about the loaded engine, for the sidebar.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineInfo {
    pub target: String,
    pub drafter: String,
    pub self_speculation: bool,
    /// Where the models run ("CPU, 8 threads (this build has no CUDA)", or the GPU and layers).
    pub device: String,
    pub target_ctx: usize,
    pub draft_ctx: usize,
    /// What bound the target's context, in a word or two ("corpus", "memory", "set").
    pub ctx_bound: String,
}

impl EngineInfo {
    fn of(engine: &Engine) -> Self {
        let name = |p: &std::path::Path| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        };
        let sizes = engine.sizes();
        Self {
            target: name(&engine.models.target_path),
            drafter: name(&engine.models.drafter_path),
            self_speculation: engine.models.same,
            device: engine.device(),
            target_ctx: sizes.target as usize,
            draft_ctx: sizes.draft as usize,
            ctx_bound: sizes.target_bound.short().to_owned(),
        }
    }
}

/// What the engine tells the UI.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The engine is ready; sent again when its contexts are resized for the corpus.
    Loaded(EngineInfo),
    /// The engine could not start; questions cannot be answered.
    LoadFailed(String),
    /// Retrieval is done: what the drafter reads and how much of the corpus the target sees.
    Started {
        sources: Vec<Source>,
        view: View,
    },
    Event(Event),
    Finished(Box<Answer>),
    Failed(String),
    /// A worker (llama.cpp RPC) stopped answering: the answer in progress, if any, is lost, and
    /// the engine loads again on this machine alone (a `Loaded` follows).
    WorkerLost(String),
}

/// How the engine thread loads the engine: with the configured workers (true), or on this
/// machine alone after a worker failed (false).
pub type Load = dyn Fn(bool) -> Result<Engine> + Send + Sync;

/// The UI's handle on the engine thread.
pub struct EngineThread {
    requests: Arc<std::sync::Mutex<Sender<Request>>>,
    cancel: Arc<AtomicBool>,
}

impl EngineThread {
    /// Starts the thread: it builds the engine with `load` (slow: models), then serves requests
    /// against `index` until the handle is dropped. When one of `workers` fails, the failure is
    /// reported and a new engine thread, loaded without workers, takes the requests.
    pub fn spawn(
        load: Arc<Load>,
        workers: Vec<String>,
        index: CorpusIndex,
        replies: Sender<Reply>,
    ) -> Result<Self> {
        let cancel = Arc::new(AtomicBool::new(false));
        // The failure handler is in place before any worker is used.
        let failed = (!workers.is_empty()).then(|| {
            let (failures, failed) = crossbeam_channel::unbounded();
            crate::llm::rpc::on_failure(move |f| {
                let _ = failures.send(f);
            });
            failed
        });
        let requests = Arc::new(std::sync::Mutex::new(start(
            Arc::clone(&load),
            true,
            index.clone(),
            replies.clone(),
            Arc::clone(&cancel),
        )?));
        if let Some(failed) = failed {
            let requests = Arc::clone(&requests);
            let cancel = Arc::clone(&cancel);
            std::thread::Builder::new()
                .name("workers".into())
                .spawn(move || {
                    // Only the first failure matters: the next engine has no workers.
                    let Ok(failure) = failed.recv() else {
                        return;
                    };
                    let message = lost(&workers, &failure);
                    tracing::error!(%message, "worker lost");
                    // The new engine takes requests before the UI hears of the loss, so that no
                    // question goes to the engine that waits on the dead worker.
                    match start(load, false, index, replies.clone(), cancel) {
                        Ok(next) => {
                            *requests.lock().unwrap_or_else(|e| e.into_inner()) = next;
                            let _ = replies.send(Reply::WorkerLost(message));
                        }
                        Err(e) => {
                            let _ = replies.send(Reply::WorkerLost(message));
                            let _ = replies.send(Reply::LoadFailed(format!("{e:#}")));
                        }
                    }
                })?;
        }
        Ok(Self { requests, cancel })
    }

    /// Asks a question; events follow on the replies channel.
    pub fn ask(&self, request: Request) {
        self.cancel.store(false, Ordering::SeqCst);
        let _ = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(request);
    }

    /// Stops the answer in progress (prefill or generation) as soon as the loop sees it.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

/// Starts an engine thread; returns where to send it requests.
fn start(
    load: Arc<Load>,
    with_workers: bool,
    index: CorpusIndex,
    replies: Sender<Reply>,
    cancel: Arc<AtomicBool>,
) -> Result<Sender<Request>> {
    let (requests, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || serve(move || load(with_workers), index, rx, replies, cancel))?;
    Ok(requests)
}

/// What to tell the user when a worker failed, and what happens next.
fn lost(workers: &[String], failure: &crate::llm::rpc::Failure) -> String {
    // The engine that waits on the dead worker keeps what it holds on this machine.
    let gpu = if crate::llm::memory::gpus().is_empty() {
        ""
    } else {
        " (what the lost engine holds on this machine's GPU stays taken until rapid-chat restarts)"
    };
    format!(
        "{}. Continuing without workers: the model is loading on this machine{gpu}; ask again \
         once it is loaded.",
        crate::llm::rpc::describe_failure(workers, failure)
    )
}

fn serve(
    load: impl FnOnce() -> Result<Engine>,
    index: CorpusIndex,
    requests: Receiver<Request>,
    replies: Sender<Reply>,
    cancel: Arc<AtomicBool>,
) {
    let mut engine = match load() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "engine failed to start");
            let _ = replies.send(Reply::LoadFailed(format!("{e:#}")));
            return;
        }
    };
    let mut info = EngineInfo::of(&engine);
    if replies.send(Reply::Loaded(info.clone())).is_err() {
        return;
    }
    for request in requests {
        let Request::Ask {
            question,
            history,
            settings,
        } = request;
        let result = (|| {
            index.reload()?;
            let prompts = engine.prepare(&index, &question, &history, &settings)?;
            let now = EngineInfo::of(&engine);
            if now != info {
                info = now;
                let _ = replies.send(Reply::Loaded(info.clone()));
            }
            let _ = replies.send(Reply::Started {
                sources: prompts.sources.clone(),
                view: prompts.view.clone(),
            });
            let mut sink = |event: Event| {
                let _ = replies.send(Reply::Event(event));
                if cancel.load(Ordering::SeqCst) {
                    Flow::Cancel
                } else {
                    Flow::Continue
                }
            };
            engine.run(prompts, &settings, &mut sink)
        })();
        let reply = match result {
            Ok(answer) => Reply::Finished(Box::new(answer)),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "answer failed");
                Reply::Failed(format!("{e:#}"))
            }
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

//! A chat turn: build the target and drafter prompts, run the decode loop in the chosen mode on
//! contexts that live across turns (so each turn decodes only what its prompt does not share with
//! the previous one), and report what the user sees.

pub mod measure;
pub mod prompt;
pub mod sizing;

use anyhow::Result;

use crate::config::{Config, CtxSize, EngineConfig};
use crate::corpus::CorpusIndex;
use crate::llm::context::common_prefix;
use crate::llm::kvcache::{self, KvCache};
use crate::llm::memory;
use crate::llm::{Context, ContextSettings, Model, Models, Token};
use crate::paths::Dirs;
use crate::speculative::decode::{self, Drafter, Output};
use crate::speculative::{Event, Flow, Mode};
pub use prompt::{Prompts, Source, Turn, View};

/// The loaded models and their two contexts.
pub struct Engine {
    pub models: Models,
    target: Context,
    drafter: Context,
    contexts: ContextSettings,
    /// The contexts' sizes as last chosen, with what bound them.
    sizes: sizing::Sizes,
    /// Whether llama.cpp offloads to a GPU.
    pub gpu: bool,
    /// Where the target's state after the documents is saved (None: not saved).
    kv: Option<KvCache>,
    /// Identifies the target model in cache keys.
    model_id: String,
    /// The target's documents in the last answer (kept for follow-ups while they fit).
    last_view: Vec<prompt::ChunkId>,
    /// Verification and drafting costs measured so far (the adaptive policy's input).
    costs: crate::speculative::adaptive::Costs,
    /// Where the policy's acceptance rates are kept across runs for this pair of models (None:
    /// not kept).
    learned: Option<std::path::PathBuf>,
}

/// Target prefill done outside the decode loop, before its clock started.
#[derive(Debug, Clone, Copy, Default)]
struct Shared {
    prefill: usize,
    restored: usize,
    seconds: f64,
}

impl Shared {
    fn add_to(&self, s: &mut crate::speculative::Stats) {
        s.prefill_tokens += self.prefill;
        s.target_prefill_tokens += self.prefill;
        s.restored_tokens = self.restored;
        s.prefill_s += self.seconds;
        s.ttft_s += self.seconds;
    }
}

/// A prefill's progress as `Prefill` events to `sink`, timed from now; false once it cancels.
fn timed_progress(sink: &mut dyn FnMut(Event) -> Flow) -> impl FnMut(usize, usize) -> bool + '_ {
    let started = std::time::Instant::now();
    move |done, total| {
        let seconds = started.elapsed().as_secs_f64();
        sink(Event::Prefill {
            done,
            total,
            seconds,
        }) == Flow::Continue
    }
}

/// The corpus KV cache the configuration asks for, in `dir`.
pub fn kv_cache(config: &EngineConfig, dir: std::path::PathBuf) -> Option<KvCache> {
    config
        .kv_cache
        .then(|| KvCache::new(dir, config.kv_cache_max_mib.saturating_mul(1 << 20)))
}

/// Chooses the contexts' sizes for `config` (see [`sizing`]); `held` bytes of KV cache are
/// about to be freed and count as free.
fn choose_sizes(
    models: &Models,
    config: &EngineConfig,
    corpus_needs: Option<u32>,
    held: u64,
) -> Result<sizing::Sizes> {
    let facts = |m: &Model| sizing::ModelFacts {
        trained: m.n_ctx_train(),
        bytes_per_token: memory::kv_bytes_per_token(m, config.kv_type),
    };
    let draft_needs =
        prompt::draft_needs(models.target, config.retrieval_budget, config.max_tokens)?;
    let remote = !models.offload.rpc.is_empty();
    let room = memory::room_now(models.target, config.gpu_layers, remote, held);
    sizing::choose(&sizing::Inputs {
        ctx: config.ctx,
        draft_ctx: config.draft_ctx,
        target: facts(models.target),
        drafter: facts(models.drafter),
        corpus_needs,
        draft_needs: u32::try_from(draft_needs).unwrap_or(u32::MAX),
        room,
        // Vanilla SD's drafter reads the target's prompt: its cache is as large.
        draft_as_large: config.mode == Mode::Sd,
        cpu_only: config.gpu_layers == 0 || models.offload.devices()?.is_empty(),
    })
}

/// Bytes of `model`'s KV cache for `n_ctx` tokens with `config`'s cache type.
fn kv_bytes(model: &Model, config: &EngineConfig, n_ctx: usize) -> u64 {
    memory::kv_bytes_per_token(model, config.kv_type).saturating_mul(n_ctx as u64)
}

/// Replaces `slot` with a new context of `model`, freeing the old cache first (a placeholder of
/// the smallest size holds the slot meanwhile).
fn replace(slot: &mut Context, model: &'static Model, settings: ContextSettings) -> Result<()> {
    *slot = Context::new(
        model,
        ContextSettings {
            n_ctx: 256,
            ..settings
        },
    )?;
    *slot = Context::new(model, settings)?;
    Ok(())
}

/// Documents shorter than this are decoded rather than restored from disk.
const MIN_CACHED_TOKENS: usize = 1024;

/// An answer with what it was built from.
#[derive(Debug, Clone)]
pub struct Answer {
    pub mode: Mode,
    pub output: Output,
    pub sources: Vec<Source>,
    pub view: View,
}

impl Engine {
    /// Loads the configured models (fetching the default model when none is configured) and
    /// makes their contexts, with the corpus KV cache as configured.
    pub fn load(config: &Config, dirs: &Dirs) -> Result<Self> {
        let target = crate::llm::fetch::model_path(config.model.as_deref(), &dirs.models())?;
        let drafter = (config.draft_model.as_deref())
            .map(|d| crate::llm::fetch::resolve(d, &dirs.models()))
            .transpose()?;
        let models = Models::load_on(
            &target,
            drafter.as_deref(),
            &crate::llm::model::Offload::of(config.engine.gpu_layers, &config.gpu),
        )?;
        let mut engine = Self::new(models, &config.engine)?;
        engine.set_kv_cache(kv_cache(&config.engine, dirs.kv_cache()));
        engine.keep_learned(&dirs.cache.join("policy"));
        Ok(engine)
    }

    /// Creates the target and drafter contexts for `models` (an auto-sized target gets
    /// [`sizing::BEFORE_THE_CORPUS`] tokens, if they fit, until [`Engine::prepare`] sees the
    /// corpus).
    pub fn new(models: Models, config: &EngineConfig) -> Result<Self> {
        crate::llm::backend()?;
        let devices = models.offload.devices()?;
        let gpu = !devices.is_empty() && config.gpu_layers != 0;
        let threads = if config.threads > 0 {
            config.threads
        } else if gpu {
            std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(2))
        } else {
            let (threads, why) = crate::llm::cores::free_threads();
            tracing::info!(threads, cores = %why, "CPU threads for llama.cpp");
            threads
        };
        let sizes = choose_sizes(&models, config, None, 0)?;
        tracing::info!(sizes = %sizes.describe(), "context sizes");
        let contexts = ContextSettings {
            n_ctx: sizes.target,
            threads,
            // Flash attention where a GPU of this machine computes; workers serving a CPU
            // compute as this CPU would.
            flash_attention: gpu && devices.iter().any(|d| !d.remote),
            kv_type: config.kv_type,
            gpu,
            remote: devices.iter().any(|d| d.remote),
        };
        let target = Context::new(models.target, contexts)?;
        let drafter = Context::new(
            models.drafter,
            ContextSettings {
                n_ctx: sizes.draft,
                ..contexts
            },
        )?;
        let model_id = crate::llm::model::model_fingerprint(&models.target_path);
        Ok(Self {
            models,
            target,
            drafter,
            contexts,
            sizes,
            gpu,
            kv: None,
            model_id,
            last_view: Vec::new(),
            costs: Default::default(),
            learned: None,
        })
    }

    /// The contexts' sizes with what bound them.
    pub fn sizes(&self) -> &sizing::Sizes {
        &self.sizes
    }

    /// Sizes the contexts for `settings` and the corpus in `index`, re-creating a context whose
    /// size changes: an auto-sized target grows when the corpus outgrows it and shrinks when it
    /// would take at most three quarters (its cache is lost either way); a set size is taken as
    /// it is. Vanilla SD's drafter reads the target's prompt: it gets the target's size.
    fn fit(&mut self, index: &CorpusIndex, settings: &EngineConfig) -> Result<()> {
        let held = kv_bytes(self.models.target, settings, self.target.n_ctx())
            + kv_bytes(self.models.drafter, settings, self.drafter.n_ctx());
        let corpus = match settings.ctx {
            CtxSize::Auto => {
                // The reserve depends on the drafter's size: chosen first.
                let draft = choose_sizes(&self.models, settings, None, held)?.draft;
                let need = prompt::corpus_needs(
                    self.models.target,
                    index,
                    settings.max_tokens,
                    draft as usize,
                )?;
                Some(u32::try_from(need).unwrap_or(u32::MAX))
            }
            CtxSize::Tokens(_) => None,
        };
        let sizes = choose_sizes(&self.models, settings, corpus, held)?;
        let (old, new) = (self.sizes.target, sizes.target);
        let resize_target = match settings.ctx {
            // Growing costs the cached documents: only for the whole corpus, or an eighth more.
            CtxSize::Auto if new > old => {
                matches!(sizes.target_bound, sizing::Bound::Corpus(_)) || (new - old) * 8 >= old
            }
            CtxSize::Auto => u64::from(new) * 4 <= u64::from(old) * 3,
            CtxSize::Tokens(_) => new != old,
        };
        let target_n_ctx = if resize_target { new } else { old };
        let draft_n_ctx = if settings.mode == Mode::Sd {
            target_n_ctx
        } else {
            sizes.draft
        };
        let resize_drafter = draft_n_ctx > self.drafter_size()
            || (settings.draft_ctx != CtxSize::Auto && sizes.draft != self.sizes.draft);
        if resize_target {
            tracing::info!(from = old, to = new, why = %sizes.target_bound, "resizing the target context");
            self.contexts.n_ctx = new;
            // A new context takes the cores free now.
            if settings.threads == 0 && !self.gpu {
                let (threads, why) = crate::llm::cores::free_threads();
                tracing::info!(threads, cores = %why, "CPU threads for llama.cpp");
                self.contexts.threads = threads;
            }
            // Until the new one exists the slot holds a placeholder: a failure retries next time.
            self.sizes.target = 256;
            replace(&mut self.target, self.models.target, self.contexts)?;
            self.sizes.target = new;
        }
        // A size kept a little larger than needed was still decided by the same limit.
        self.sizes.target_bound = sizes.target_bound.clone();
        if resize_drafter {
            tracing::info!(to = draft_n_ctx, why = %sizes.draft_bound, "resizing the drafter context");
            let settings = ContextSettings {
                n_ctx: draft_n_ctx,
                ..self.contexts
            };
            replace(&mut self.drafter, self.models.drafter, settings)?;
        }
        if settings.mode != Mode::Sd {
            self.sizes.draft = sizes.draft;
            self.sizes.draft_bound = sizes.draft_bound;
        }
        Ok(())
    }

    fn drafter_size(&self) -> u32 {
        u32::try_from(self.drafter.n_ctx()).unwrap_or(u32::MAX)
    }

    /// Saves and restores the target's state after the documents in `cache` (None: never).
    pub fn set_kv_cache(&mut self, cache: Option<KvCache>) {
        self.kv = cache;
    }

    /// Brings the target's cache to `docs` (instructions and documents) from the corpus KV cache
    /// on disk when it holds them and memory does not; else decodes them and saves the state
    /// there. Returns the tokens decoded and the tokens restored.
    fn documents(
        &mut self,
        docs: &[Token],
        sink: &mut dyn FnMut(Event) -> Flow,
    ) -> Result<(usize, usize)> {
        let Some(cache) = self.kv.clone() else {
            return Ok((0, 0));
        };
        let common = common_prefix(self.target.tokens(), docs);
        if docs.len() < MIN_CACHED_TOKENS || docs.len() - common < MIN_CACHED_TOKENS / 2 {
            // Decoding the little that memory lacks is cheaper (the decode loop does it).
            return Ok((0, 0));
        }
        let settings = format!(
            "n_ctx={} flash={} swa_full=1 kv_type={}",
            self.target.n_ctx(),
            self.target.flash_attention(),
            self.contexts.kv_type
        );
        let key = kvcache::key(&self.model_id, &settings, docs);
        if let Some(path) = cache.find(&key) {
            match self.target.load_state(&path, docs) {
                Ok(true) => {
                    tracing::info!(tokens = docs.len(), "documents restored from the KV cache");
                    sink(Event::Prefill {
                        done: docs.len(),
                        total: docs.len(),
                        seconds: 0.0,
                    });
                    return Ok((0, docs.len()));
                }
                Ok(false) => tracing::warn!("a KV cache entry held other tokens: decoding"),
                Err(e) => tracing::warn!("the KV cache entry did not load ({e:#}): decoding"),
            }
        }
        let decoded = self.target.prefill(docs, &mut timed_progress(sink))?;
        if self.target.tokens() == docs {
            let size = self.target.state_size() as u64;
            if size > cache.max_bytes() {
                tracing::info!(
                    size,
                    "the documents' state exceeds the KV cache cap: not saved"
                );
            } else {
                let target = &self.target;
                let started = std::time::Instant::now();
                match cache.store(&key, docs.len(), |p| target.save_state(p)) {
                    Ok(bytes) => tracing::info!(
                        bytes,
                        seconds = started.elapsed().as_secs_f64(),
                        "documents saved to the KV cache"
                    ),
                    // Not saving costs the next start time, not this answer.
                    Err(e) => tracing::warn!("{e:#}"),
                }
            }
        }
        Ok((decoded, 0))
    }

    /// The tokens in the target's KV cache.
    pub fn target_tokens(&self) -> &[Token] {
        self.target.tokens()
    }

    /// Where the target runs, in words for the user ("CPU, 2 threads (this build has no CUDA)").
    pub fn device(&self) -> String {
        crate::llm::model::placement(
            self.models.target.n_layer(),
            &self.models.offload,
            self.contexts.threads,
        )
    }

    /// What the drafting policy has measured so far (it carries from answer to answer).
    pub fn costs(&self) -> &crate::speculative::adaptive::Costs {
        &self.costs
    }

    /// A drafter step's cost relative to a target step, as the policy guesses it until one is
    /// measured: the ratio of the models' sizes.
    pub fn draft_cost_hint(&self) -> f64 {
        self.models.drafter.size() as f64 / self.models.target.size().max(1) as f64
    }

    /// CPU threads llama.cpp uses.
    pub fn threads(&self) -> u32 {
        self.contexts.threads
    }

    /// Target and drafter context sizes.
    pub fn ctx_sizes(&self) -> (usize, usize) {
        (self.target.n_ctx(), self.drafter.n_ctx())
    }

    /// Answers `question` (after `history`) from `index`, streaming events to `sink`.
    pub fn answer(
        &mut self,
        index: &CorpusIndex,
        question: &str,
        history: &[Turn],
        settings: &EngineConfig,
        sink: &mut dyn FnMut(Event) -> Flow,
    ) -> Result<Answer> {
        let prompts = self.prepare(index, question, history, settings)?;
        self.run(prompts, settings, sink)
    }

    /// Builds the turn's prompts (retrieval included), sizing the drafter's context for the mode.
    pub fn prepare(
        &mut self,
        index: &CorpusIndex,
        question: &str,
        history: &[Turn],
        settings: &EngineConfig,
    ) -> Result<prompt::Prompts> {
        self.fit(index, settings)?;
        let budgets = prompt::Budgets {
            target_ctx: self.target.n_ctx(),
            draft_ctx: (self.sizes.draft as usize).min(self.drafter.n_ctx()),
            retrieval: settings.retrieval_budget,
            max_tokens: settings.max_tokens,
        };
        prompt::build_after(
            self.models.target,
            index,
            question,
            history,
            budgets,
            &self.last_view,
        )
    }

    /// Prefills both contexts with a turn's prompts (all but their last tokens, which the answer
    /// decodes), reusing what the caches hold; returns the seconds it took.
    pub fn prefill(&mut self, prompts: &prompt::Prompts) -> Result<f64> {
        let started = std::time::Instant::now();
        for (ctx, p) in [
            (&mut self.target, &prompts.target),
            (&mut self.drafter, &prompts.draft),
        ] {
            if !p.is_empty() && p.len() < ctx.n_ctx() {
                ctx.prefill(&p[..p.len() - 1], &mut |_, _| true)?;
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Keeps the policy's acceptance rates in `dir` across runs, for this pair of models, and
    /// starts from what an earlier run learned there (an unreadable file is started afresh).
    pub fn keep_learned(&mut self, dir: &std::path::Path) {
        let pair = format!(
            "{}\n{}",
            self.model_id,
            crate::llm::model::model_fingerprint(&self.models.drafter_path)
        );
        let key = crate::corpus::extract::content_hash(pair.as_bytes());
        let path = dir.join(format!("{}.json", &key[..16]));
        if let Some(learned) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            tracing::info!(path = %path.display(), "the policy starts from an earlier run's rates");
            self.costs = std::mem::take(&mut self.costs).with_learned(learned);
        }
        self.learned = Some(path);
    }

    /// Writes the policy's acceptance rates where they are kept (atomically; a failure is only
    /// logged: they are an optimisation).
    fn save_learned(&self) {
        let Some(path) = &self.learned else {
            return;
        };
        let write = || -> Result<()> {
            let dir = path.parent().ok_or_else(|| anyhow::anyhow!("no folder"))?;
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            serde_json::to_writer(&mut tmp, &self.costs.learned())?;
            tmp.persist(path)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(error = %format!("{e:#}"), "cannot keep the policy's rates");
        }
    }

    /// The tokens of `text` for the target, as plain text.
    pub fn tokenize(&self, text: &str) -> Vec<Token> {
        crate::llm::token::tokenize(self.models.target, text, crate::llm::token::Tokenize::Plain)
    }

    /// Decodes the answer to prepared prompts in the chosen mode.
    pub fn run(
        &mut self,
        prompts: prompt::Prompts,
        settings: &EngineConfig,
        sink: &mut dyn FnMut(Event) -> Flow,
    ) -> Result<Answer> {
        let model = self.models.target;
        // What happens here before the decode loop (the documents, SD's shared prefill) is added
        // to the loop's statistics, in the Done and Round events too.
        let mut shared = Shared::default();
        // Lookups and adaptation belong to rapid mode; the other modes are the baselines it is
        // measured against (vanilla SD drafts a fixed γ with the drafter model). Knowledge
        // transfer (η > 0) needs the drafter's distribution at every position, which lookups and
        // plain steps do not have: then the drafter drafts every round.
        let speed_only = settings.mode == Mode::Rapid && settings.eta <= 0.0;
        let params = &EngineConfig {
            lookup: settings.lookup && speed_only,
            adaptive: settings.adaptive && speed_only,
            ..settings.clone()
        };
        if settings.mode != Mode::Rag {
            self.last_view = prompts.target_chunks.clone();
            let started = std::time::Instant::now();
            let (decoded, restored) = self.documents(&prompts.target[..prompts.docs_end], sink)?;
            if decoded + restored > 0 {
                shared.prefill += decoded;
                shared.restored = restored;
                shared.seconds += started.elapsed().as_secs_f64();
            }
        }
        if settings.mode == Mode::Sd && self.models.same {
            // Self-speculation over the same prompt: prefill once, copy the cache.
            let p = &prompts.target;
            let started = std::time::Instant::now();
            shared.prefill += self
                .target
                .prefill(&p[..p.len() - 1], &mut timed_progress(sink))?;
            if common_prefix(self.drafter.tokens(), p) + 1 < p.len() {
                self.drafter.copy_from(&self.target)?;
            }
            shared.seconds += started.elapsed().as_secs_f64();
        }
        let sink = &mut |mut event: Event| {
            match &mut event {
                Event::Done(s) => shared.add_to(s),
                Event::Round { stats, .. } => shared.add_to(stats),
                _ => {}
            }
            sink(event)
        };
        let mut output = match settings.mode {
            Mode::Ar => decode::generate(
                model,
                &mut self.target,
                &prompts.target,
                None,
                params,
                &mut self.costs,
                sink,
            )?,
            Mode::Rag => decode::generate(
                model,
                &mut self.drafter,
                &prompts.draft,
                None,
                params,
                &mut self.costs,
                sink,
            )?,
            Mode::Rapid | Mode::Sd => {
                // Vanilla SD's drafter reads the target's own prompt.
                let draft_prompt = if settings.mode == Mode::Sd {
                    &prompts.target
                } else {
                    &prompts.draft
                };
                let drafter = Drafter {
                    cost_hint: self.draft_cost_hint(),
                    ctx: &mut self.drafter,
                    prompt: draft_prompt,
                    same_model: self.models.same,
                };
                decode::generate(
                    model,
                    &mut self.target,
                    &prompts.target,
                    Some(drafter),
                    params,
                    &mut self.costs,
                    sink,
                )?
            }
        };
        shared.add_to(&mut output.stats);
        if settings.mode == Mode::Rapid {
            self.save_learned();
        }
        Ok(Answer {
            mode: settings.mode,
            output,
            sources: prompts.sources,
            view: prompts.view,
        })
    }
}

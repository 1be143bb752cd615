//! A chat turn: build the target and drafter prompts, run the decode loop in the chosen mode on
//! contexts that live across turns (so each turn decodes only what its prompt does not share with
//! the previous one), and report what the user sees.

pub mod prompt;

use anyhow::Result;

use crate::config::EngineConfig;
use crate::corpus::CorpusIndex;
use crate::llm::{Context, ContextSpec, Models};
use crate::spec::decode::{self, Drafter, Output, Params};
use crate::spec::{Event, Flow, Mode};
pub use prompt::{Prompts, Source, Turn, View};

pub mod worker;

/// The loaded models and their two contexts.
pub struct Engine {
    pub models: Models,
    target: Context,
    drafter: Context,
    spec: ContextSpec,
    draft_ctx: u32,
    /// Whether llama.cpp offloads to a GPU.
    pub gpu: bool,
}

/// An answer with what it was built from.
#[derive(Debug, Clone)]
pub struct Answer {
    pub mode: Mode,
    pub output: Output,
    pub sources: Vec<Source>,
    pub view: View,
}

/// Per-turn settings, from config and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnSettings {
    pub mode: Mode,
    pub params: Params,
    pub retrieval_budget: usize,
}

impl TurnSettings {
    pub fn from_config(c: &EngineConfig) -> Result<Self> {
        Ok(Self {
            mode: c.mode.parse()?,
            params: Params {
                gamma: c.gamma,
                draft_confidence: c.draft_confidence,
                eta: c.eta,
                temp: c.temp,
                top_p: c.top_p,
                seed: c.seed,
                max_tokens: c.max_tokens,
            },
            retrieval_budget: c.retrieval_budget,
        })
    }
}

impl Engine {
    /// Creates the target and drafter contexts for `models`.
    pub fn new(models: Models, config: &EngineConfig) -> Result<Self> {
        let gpu = crate::llm::backend()?.supports_gpu_offload() && config.gpu_layers != 0;
        let threads = if config.threads > 0 {
            config.threads
        } else {
            std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(2))
        };
        let spec = ContextSpec {
            n_ctx: config.ctx,
            threads,
            flash_attention: gpu,
        };
        let target = Context::new(models.target, spec)?;
        let drafter = Context::new(
            models.drafter,
            ContextSpec {
                n_ctx: config.draft_ctx,
                ..spec
            },
        )?;
        Ok(Self {
            models,
            target,
            drafter,
            spec,
            draft_ctx: config.draft_ctx,
            gpu,
        })
    }

    /// CPU threads llama.cpp uses.
    pub fn threads(&self) -> u32 {
        self.spec.threads
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
        settings: &TurnSettings,
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
        settings: &TurnSettings,
    ) -> Result<prompt::Prompts> {
        // Vanilla SD gives the drafter the target's whole context: it needs as much room (and
        // keeps it for later turns rather than reallocating).
        let draft_n_ctx = if settings.mode == Mode::Sd {
            self.spec.n_ctx
        } else {
            self.draft_ctx
        };
        if self.drafter.n_ctx() < draft_n_ctx as usize {
            self.drafter = Context::new(
                self.models.drafter,
                ContextSpec {
                    n_ctx: draft_n_ctx,
                    ..self.spec
                },
            )?;
        }
        let budgets = prompt::Budgets {
            target_ctx: self.target.n_ctx(),
            draft_ctx: (self.draft_ctx as usize).min(self.drafter.n_ctx()),
            retrieval: settings.retrieval_budget,
            max_tokens: settings.params.max_tokens,
        };
        prompt::build(self.models.target, index, question, history, budgets)
    }

    /// Decodes the answer to prepared prompts in the chosen mode.
    pub fn run(
        &mut self,
        prompts: prompt::Prompts,
        settings: &TurnSettings,
        sink: &mut dyn FnMut(Event) -> Flow,
    ) -> Result<Answer> {
        let model = self.models.target;
        let params = &settings.params;
        let (mut shared_prefill, mut shared_s) = (0, 0.0);
        let mut output = match settings.mode {
            Mode::Ar => {
                decode::generate(model, &mut self.target, &prompts.target, None, params, sink)?
            }
            Mode::Rag => {
                decode::generate(model, &mut self.drafter, &prompts.draft, None, params, sink)?
            }
            Mode::Rapid | Mode::Sd => {
                // Vanilla SD's drafter reads the target's own prompt.
                let draft_prompt = if settings.mode == Mode::Sd {
                    &prompts.target
                } else {
                    &prompts.draft
                };
                if settings.mode == Mode::Sd && self.models.same {
                    // Self-speculation over the same prompt: prefill once, copy the cache.
                    let p = &prompts.target;
                    let mut progress = |done: usize, total: usize| {
                        sink(Event::Prefill { done, total }) == Flow::Continue
                    };
                    let started = std::time::Instant::now();
                    shared_prefill = self.target.prefill(&p[..p.len() - 1], &mut progress)?;
                    if crate::llm::context::common_prefix(self.drafter.tokens(), p) + 1 < p.len() {
                        self.drafter.copy_from(&self.target)?;
                    }
                    shared_s = started.elapsed().as_secs_f64();
                }
                let drafter = Drafter {
                    ctx: &mut self.drafter,
                    prompt: draft_prompt,
                };
                decode::generate(
                    model,
                    &mut self.target,
                    &prompts.target,
                    Some(drafter),
                    params,
                    sink,
                )?
            }
        };
        // Count the shared prefill done above, before the decode loop started its clock.
        let s = &mut output.stats;
        s.prefill_tokens += shared_prefill;
        s.prefill_s += shared_s;
        s.ttft_s += shared_s;
        Ok(Answer {
            mode: settings.mode,
            output,
            sources: prompts.sources,
            view: prompts.view,
        })
    }
}

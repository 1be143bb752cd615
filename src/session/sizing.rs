//! The two contexts' sizes: the configured ones, checked against the memory where their caches
//! live before llama.cpp is asked; or, for `auto`, the largest that the model's trained length,
//! that memory and what the corpus needs allow, with the limit that bound each, in words.

use anyhow::{Result, bail};

use crate::config::CtxSize;
use crate::llm::memory::{Room, gib};

/// Context sizes are multiples of this.
const STEP: u32 = 256;

/// The smallest context either model gets.
const MIN: u32 = 256;

/// The target's size while the corpus is not known yet (the engine loads while it is read).
pub const BEFORE_THE_CORPUS: u32 = 8192;

/// The largest auto-sized target on a CPU: reading the documents runs at a few hundred tokens a
/// second there, so more would keep the first answer waiting for minutes. A larger context can
/// still be set.
pub const CPU_MAX: u32 = 8192;

/// What one model brings to the choice.
#[derive(Debug, Clone, Copy)]
pub struct ModelFacts {
    /// The context length the model was trained for.
    pub trained: u32,
    /// KV cache bytes per token of context.
    pub bytes_per_token: u64,
}

/// What the choice is made from.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub ctx: CtxSize,
    pub draft_ctx: CtxSize,
    pub target: ModelFacts,
    pub drafter: ModelFacts,
    /// The target context that holds the whole corpus, the conversation's reserve and the answer
    /// (None: the corpus is not known yet).
    pub corpus_needs: Option<u32>,
    /// The drafter context that holds the retrieved chunks, the conversation and the answer.
    pub draft_needs: u32,
    /// Where the caches live and how much they may take (None: unknown, not checked).
    pub room: Option<Room>,
    /// Whether the drafter's context is as large as the target's (vanilla SD).
    pub draft_as_large: bool,
    /// Whether the target runs on the CPU (no layer offloaded).
    pub cpu_only: bool,
}

/// What bound a context's size.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// Set in the configuration or a flag.
    Set,
    /// Auto: the whole corpus with the conversation's reserve and the answer, in tokens.
    Corpus(u32),
    /// Auto: the retrieved chunks, the conversation and the answer, in tokens.
    Retrieval(u32),
    /// Auto: the model's trained context length.
    Trained(u32),
    /// Auto: the memory where the caches live ("free RAM"), and the bytes they may take.
    Memory { place: String, bytes: u64 },
    /// Auto, before the corpus is read.
    Provisional,
    /// Auto on a CPU: the first answer's wait ([`CPU_MAX`]).
    Cpu(u32),
}

impl Bound {
    /// A few words, for the sidebar.
    pub fn short(&self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Corpus(_) => "corpus",
            Self::Retrieval(_) => "retrieval",
            Self::Trained(_) => "trained length",
            Self::Memory { .. } => "memory",
            Self::Provisional => "until read",
            Self::Cpu(_) => "CPU speed",
        }
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Set => f.write_str("set"),
            Self::Corpus(n) => write!(
                f,
                "auto: the whole corpus with the conversation's reserve, {n} tokens"
            ),
            Self::Retrieval(n) => write!(
                f,
                "auto: the retrieved chunks and the conversation, {n} tokens"
            ),
            Self::Trained(n) => write!(f, "auto: the model's trained length, {n}"),
            Self::Memory { place, bytes } => write!(f, "auto: {} of {place}", gib(*bytes)),
            Self::Provisional => f.write_str("auto: until the corpus is read"),
            Self::Cpu(n) => write!(
                f,
                "auto: at most {n} on a CPU, where reading more documents keeps the first answer \
                 waiting for minutes"
            ),
        }
    }
}

/// The chosen sizes with what bound each.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sizes {
    pub target: u32,
    pub draft: u32,
    pub target_bound: Bound,
    pub draft_bound: Bound,
}

impl Sizes {
    /// One line for the log and `ask`.
    pub fn describe(&self) -> String {
        format!(
            "target {} ({}), drafter {} ({})",
            self.target, self.target_bound, self.draft, self.draft_bound
        )
    }
}

fn round_up(n: u64) -> u32 {
    let n = n.div_ceil(u64::from(STEP)) * u64::from(STEP);
    u32::try_from(n).unwrap_or(u32::MAX - STEP + 1).max(MIN)
}

fn round_down(n: u64) -> u32 {
    u32::try_from(n / u64::from(STEP) * u64::from(STEP)).unwrap_or(u32::MAX - STEP + 1)
}

/// The smallest of the candidate limits, with its reason.
fn tightest(limits: Vec<(u32, Bound)>) -> (u32, Bound) {
    limits
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .unwrap_or((MIN, Bound::Set))
}

/// Chooses the sizes, or says with numbers why the configured ones cannot fit.
pub fn choose(i: &Inputs) -> Result<Sizes> {
    let kv = |t: u32, d: u32| {
        u64::from(t) * i.target.bytes_per_token + u64::from(d) * i.drafter.bytes_per_token
    };
    let memory = |room: &Room, bytes: u64| Bound::Memory {
        place: room.place.clone(),
        bytes,
    };
    let (draft, draft_bound) = match i.draft_ctx {
        CtxSize::Tokens(n) => (n, Bound::Set),
        CtxSize::Auto => {
            let mut limits = vec![
                (
                    round_up(u64::from(i.draft_needs)),
                    Bound::Retrieval(i.draft_needs),
                ),
                (
                    round_down(u64::from(i.drafter.trained)).max(MIN),
                    Bound::Trained(i.drafter.trained),
                ),
            ];
            if let Some(room) = &i.room {
                // At most half the room: the target needs the rest.
                let fits = room.bytes / 2 / i.drafter.bytes_per_token.max(1);
                limits.push((round_down(fits).max(MIN), memory(room, room.bytes / 2)));
            }
            tightest(limits)
        }
    };
    let (target, target_bound) = match i.ctx {
        CtxSize::Tokens(n) => (n, Bound::Set),
        CtxSize::Auto => {
            // On a tie the first named binds: the corpus before the trained length.
            let mut limits = vec![
                match i.corpus_needs {
                    Some(n) => (round_up(u64::from(n)), Bound::Corpus(n)),
                    None => (BEFORE_THE_CORPUS, Bound::Provisional),
                },
                (
                    round_down(u64::from(i.target.trained)).max(MIN),
                    Bound::Trained(i.target.trained),
                ),
            ];
            if i.cpu_only {
                limits.push((CPU_MAX, Bound::Cpu(CPU_MAX)));
            }
            if let Some(room) = &i.room {
                let (left, per_token) = if i.draft_as_large {
                    (
                        room.bytes,
                        i.target.bytes_per_token + i.drafter.bytes_per_token,
                    )
                } else {
                    (
                        room.bytes.saturating_sub(kv(0, draft)),
                        i.target.bytes_per_token,
                    )
                };
                let fits = left / per_token.max(1);
                limits.push((round_down(fits), memory(room, left)));
            }
            tightest(limits)
        }
    };
    if let Some(room) = &i.room {
        let need = kv(target, if i.draft_as_large { target } else { draft });
        if target < MIN || need > room.bytes {
            bail!(
                "a target context of {target} tokens and a drafter context of {draft} need \
                 about {} of KV cache, more than the {} that {} allows ({} free): use a \
                 smaller --ctx / --draft-ctx, --kv-type q8_0 (half the memory), or --ctx auto",
                gib(need),
                gib(room.bytes),
                room.place,
                gib(room.free)
            );
        }
    }
    Ok(Sizes {
        target,
        draft,
        target_bound,
        draft_bound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// SmolLM2-135M's shape: 30 layers, 3 KV heads of 64, f16.
    const SMOL: ModelFacts = ModelFacts {
        trained: 8192,
        bytes_per_token: 2 * 30 * 3 * 64 * 2,
    };

    fn inputs(ctx: CtxSize, draft_ctx: CtxSize, corpus: Option<u32>, room: Option<u64>) -> Inputs {
        Inputs {
            ctx,
            draft_ctx,
            target: SMOL,
            drafter: SMOL,
            corpus_needs: corpus,
            draft_needs: 2900,
            room: room.map(|bytes| Room {
                bytes,
                place: "free RAM".into(),
                free: bytes * 2,
            }),
            draft_as_large: false,
            cpu_only: false,
        }
    }

    #[test]
    fn auto_fits_a_small_corpus_and_the_retrieved_chunks() {
        let s = choose(&inputs(
            CtxSize::Auto,
            CtxSize::Auto,
            Some(3000),
            Some(8 << 30),
        ))
        .unwrap();
        assert_eq!((s.target, s.draft), (3072, 3072));
        assert_eq!(s.target_bound, Bound::Corpus(3000));
        assert_eq!(s.draft_bound, Bound::Retrieval(2900));
        assert!(s.describe().contains("whole corpus"), "{}", s.describe());
    }

    #[test]
    fn auto_stops_at_the_trained_length() {
        let s = choose(&inputs(CtxSize::Auto, CtxSize::Auto, Some(50_000), None)).unwrap();
        assert_eq!(s.target, 8192);
        assert_eq!(s.target_bound, Bound::Trained(8192));
    }

    #[test]
    fn auto_stops_at_the_memory_left_beside_the_drafter() {
        // 64 MiB of room: the drafter takes at most half, the target what is left.
        let room = 64 * MIB;
        let s = choose(&inputs(
            CtxSize::Auto,
            CtxSize::Auto,
            Some(50_000),
            Some(room),
        ))
        .unwrap();
        let used = u64::from(s.target + s.draft) * SMOL.bytes_per_token;
        assert!(used <= room, "{used} > {room}");
        assert!(room - used < u64::from(STEP) * SMOL.bytes_per_token);
        assert!(s.target < 8192);
        assert!(matches!(&s.target_bound, Bound::Memory { place, .. } if place == "free RAM"));
        assert!(s.describe().contains("free RAM"), "{}", s.describe());
    }

    #[test]
    fn vanilla_sd_counts_a_drafter_as_large_as_the_target() {
        let room = 64 * MIB;
        let i = Inputs {
            draft_as_large: true,
            ..inputs(CtxSize::Auto, CtxSize::Auto, Some(50_000), Some(room))
        };
        let s = choose(&i).unwrap();
        let used = 2 * u64::from(s.target) * SMOL.bytes_per_token;
        assert!(used <= room && room - used < 2 * u64::from(STEP) * SMOL.bytes_per_token);
        let set = Inputs {
            draft_as_large: true,
            ..inputs(2048.into(), 512.into(), None, Some(room))
        };
        // 2048 + 2048 tokens take 90 MiB: more than the room, though 2048 + 512 would fit.
        assert!(choose(&set).is_err());
        assert!(
            choose(&Inputs {
                draft_as_large: false,
                ..set
            })
            .is_ok()
        );
    }

    #[test]
    fn on_a_cpu_auto_stops_where_the_first_answer_would_wait_for_minutes() {
        let long = ModelFacts {
            trained: 32_768,
            ..SMOL
        };
        let i = Inputs {
            target: long,
            cpu_only: true,
            ..inputs(CtxSize::Auto, CtxSize::Auto, Some(50_000), None)
        };
        let s = choose(&i).unwrap();
        assert_eq!((s.target, s.target_bound), (CPU_MAX, Bound::Cpu(CPU_MAX)));
        // A small corpus still binds first; a GPU lifts the cap; a set size is taken.
        let small = choose(&Inputs {
            corpus_needs: Some(3000),
            ..i.clone()
        })
        .unwrap();
        assert_eq!(small.target_bound, Bound::Corpus(3000));
        let gpu = choose(&Inputs {
            cpu_only: false,
            ..i.clone()
        })
        .unwrap();
        assert_eq!(
            (gpu.target, gpu.target_bound),
            (32_768, Bound::Trained(32_768))
        );
        let set = choose(&Inputs {
            ctx: 16_384.into(),
            ..i
        })
        .unwrap();
        assert_eq!(set.target, 16_384);
    }

    #[test]
    fn before_the_corpus_is_read_auto_takes_a_default() {
        let s = choose(&inputs(CtxSize::Auto, CtxSize::Auto, None, None)).unwrap();
        assert_eq!(
            (s.target, s.target_bound),
            (BEFORE_THE_CORPUS, Bound::Provisional)
        );
    }

    #[test]
    fn a_set_size_is_kept_when_it_fits_and_refused_with_its_numbers_when_not() {
        let s = choose(&inputs(
            4096.into(),
            1024.into(),
            Some(50_000),
            Some(1 << 30),
        ))
        .unwrap();
        assert_eq!(
            (s.target, s.draft, s.target_bound),
            (4096, 1024, Bound::Set)
        );
        let e = choose(&inputs(1_000_000.into(), 1024.into(), None, Some(1 << 30)))
            .unwrap_err()
            .to_string();
        for part in [
            "1000000 tokens",
            "21.5 GiB",
            "1.0 GiB",
            "free RAM",
            "2.0 GiB free",
            "--kv-type q8_0",
        ] {
            assert!(e.contains(part), "{part:?} missing from: {e}");
        }
    }
}

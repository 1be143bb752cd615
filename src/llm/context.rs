//! One llama.cpp context and the tokens in its KV cache, kept in step: decoding with logits where
//! asked, prefill split into `n_batch` pieces, rollback (checked), and prefix reuse (a new token
//! sequence decodes only what follows the longest common prefix with what is cached).

use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::{backend, memory};
use crate::config::KvType;

/// Settings of a context.
#[derive(Debug, Clone, Copy)]
pub struct ContextSettings {
    pub n_ctx: u32,
    pub threads: u32,
    /// Flash attention, left to llama.cpp (GPUs). Without it, a CPU still gets it for a model
    /// with sliding-window layers ([`Context::new`]).
    pub flash_attention: bool,
    /// Whether the cache lives in GPU memory (else its size is checked against free RAM).
    pub gpu: bool,
    /// Whether workers (llama.cpp RPC) hold layers, and so part of the cache.
    pub remote: bool,
    /// The cache's element type (a quantized one needs flash attention: [`Context::new`] turns
    /// it on).
    pub kv_type: KvType,
}

/// The attention window of `model`'s sliding-window layers, if it has any (from its GGUF
/// metadata, `<architecture>.attention.sliding_window`).
pub fn sliding_window(model: &LlamaModel) -> Option<u32> {
    let arch = model.meta_val_str("general.architecture").ok()?;
    model
        .meta_val_str(&format!("{arch}.attention.sliding_window"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&w| w > 0)
}

/// A context with the tokens its KV cache holds (positions `0..tokens.len()`).
pub struct Context {
    ctx: LlamaContext<'static>,
    tokens: Vec<LlamaToken>,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    n_vocab: usize,
    /// Batch indices whose logits the last decode produced, in order.
    logit_rows: Vec<i32>,
    /// Time spent inside llama.cpp's decode since the context was made.
    busy: Duration,
    gpu: bool,
    /// Whether flash attention was asked for (enabled, or left to llama.cpp).
    flash: bool,
}

impl Context {
    /// A fresh context of `model`. Sliding-window models get `swa_full`, without which rolling
    /// back silently changes later tokens.
    pub fn new(model: &'static LlamaModel, spec: ContextSettings) -> Result<Self> {
        check_memory(model, spec)?;
        let n_batch = 512u32.min(spec.n_ctx);
        let threads = i32::try_from(spec.threads).unwrap_or(i32::MAX).max(1);
        let flash = if spec.kv_type != KvType::F16 {
            // llama.cpp refuses a quantized V cache without flash attention.
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED
        } else if spec.flash_attention || sliding_window(model).is_some() {
            // On a CPU, flash attention skips the positions a mask hides, which the sliding
            // window layers' full cache (`swa_full`) is mostly made of: such a model steps and
            // reads faster with it; a model without such layers is slower with it
            // (docs/benchmarks.md, "Flash attention on a CPU").
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO
        } else {
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED
        };
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(spec.n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_flash_attention_policy(flash)
            .with_type_k(cache_type(spec.kv_type))
            .with_type_v(cache_type(spec.kv_type))
            .with_swa_full(true);
        let ctx = model.new_context(backend()?, params).with_context(|| {
            format!(
                "llama.cpp could not create a context of {} tokens: not enough memory? Try a \
                 smaller --ctx / --draft-ctx",
                spec.n_ctx
            )
        })?;
        Ok(Self {
            ctx,
            tokens: Vec::new(),
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_batch: n_batch as usize,
            n_vocab: usize::try_from(model.n_vocab()).unwrap_or(0),
            logit_rows: Vec::new(),
            busy: Duration::ZERO,
            gpu: spec.gpu,
            flash: flash != llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        })
    }

    /// Whether flash attention was asked for (it changes the cache's layout: part of the corpus
    /// KV cache's key).
    pub fn flash_attention(&self) -> bool {
        self.flash
    }

    /// Whether its cache lives in GPU memory.
    pub fn on_gpu(&self) -> bool {
        self.gpu
    }

    /// Size of the context in tokens.
    pub fn n_ctx(&self) -> usize {
        self.ctx.n_ctx() as usize
    }

    /// Tokens in the KV cache.
    pub fn tokens(&self) -> &[LlamaToken] {
        &self.tokens
    }

    /// Drops every cached position from `len` on. Fails loudly when llama.cpp cannot remove a
    /// partial range (it returns false then).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.tokens.len() {
            return Ok(());
        }
        let p0 = u32::try_from(len).context("position out of range")?;
        let removed = self
            .ctx
            .clear_kv_cache_seq(Some(0), Some(p0), None)
            .context("KV rollback failed")?;
        if !removed {
            bail!("llama.cpp cannot roll this context back to position {len}");
        }
        self.tokens.truncate(len);
        Ok(())
    }

    /// Makes the cache hold exactly `seq`, decoding only what follows the longest common prefix
    /// with what is cached (and rolling back the rest); no logits. `progress` sees (done, total)
    /// of the tokens decoded and stops the prefill early by returning false. Returns how many
    /// tokens were decoded.
    pub fn prefill(
        &mut self,
        seq: &[LlamaToken],
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<usize> {
        self.fill(
            seq,
            common_prefix(&self.tokens, seq),
            Logits::None,
            progress,
        )
    }

    /// Like [`Self::prefill`], then [`Self::logits`]`(0)` is the distribution after `seq` (the
    /// last token is decoded again when it was cached already).
    pub fn sync(
        &mut self,
        seq: &[LlamaToken],
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<usize> {
        anyhow::ensure!(!seq.is_empty(), "nothing to decode");
        let common = common_prefix(&self.tokens, seq).min(seq.len() - 1);
        self.fill(seq, common, Logits::Last, progress)
    }

    fn fill(
        &mut self,
        seq: &[LlamaToken],
        common: usize,
        last: Logits,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<usize> {
        self.truncate(common)?;
        let todo = &seq[common..];
        let total = todo.len();
        let mut done = 0;
        for piece in todo.chunks(self.n_batch) {
            let last_piece = done + piece.len() == total;
            self.decode_inner(piece, if last_piece { last } else { Logits::None })?;
            done += piece.len();
            if !progress(done, total) {
                break;
            }
        }
        Ok(done)
    }

    /// Decodes `tokens` after the cache in one batch with logits at the last position only.
    pub fn decode_last(&mut self, tokens: &[LlamaToken]) -> Result<()> {
        self.decode_inner(tokens, Logits::Last)
    }

    /// Makes this context's cache a copy of `other`'s (same model, or one with the same
    /// architecture and shapes): the prefill of a shared prompt is done once.
    pub fn copy_from(&mut self, other: &Context) -> Result<()> {
        let state = other
            .ctx
            .state_seq_get(0, LlamaStateSeqFlags::empty())
            .map_err(|e| anyhow::anyhow!("cannot read the context state: {e}"))?;
        self.ctx.clear_kv_cache();
        self.tokens.clear();
        self.ctx
            .state_seq_set(&state, 0)
            .map_err(|e| anyhow::anyhow!("cannot copy the context state: {e}"))?;
        self.tokens = other.tokens.clone();
        Ok(())
    }

    /// Size in bytes of the cache's state (what [`Self::save_state`] writes, about).
    pub fn state_size(&self) -> usize {
        self.ctx
            .state_seq_get_size_ext(0, LlamaStateSeqFlags::empty())
    }

    /// Writes the cache and its tokens to a llama.cpp state file.
    pub fn save_state(&self, path: &Path) -> Result<()> {
        self.ctx
            .state_seq_save_file(path, 0, &self.tokens)
            .map_err(|e| anyhow::anyhow!("cannot save the context state: {e}"))?;
        Ok(())
    }

    /// Replaces the cache with a state file's; it must hold exactly `expected` (else the cache is
    /// left empty and the answer is false).
    pub fn load_state(&mut self, path: &Path, expected: &[LlamaToken]) -> Result<bool> {
        self.ctx.clear_kv_cache();
        self.tokens.clear();
        if expected.len() > self.n_ctx() {
            return Ok(false);
        }
        let (tokens, _) = self
            .ctx
            .state_seq_load_file(path, 0, expected.len())
            .map_err(|e| anyhow::anyhow!("cannot load the context state: {e}"))?;
        if tokens != expected {
            self.ctx.clear_kv_cache();
            return Ok(false);
        }
        self.tokens = tokens;
        Ok(true)
    }

    /// Time spent inside llama.cpp's decode since the context was made.
    pub fn busy(&self) -> Duration {
        self.busy
    }

    /// Decodes `tokens` after the cache in one batch, with logits at every position (for
    /// verification): [`Self::logits`]`(i)` is the distribution after `tokens[i]`.
    pub fn decode_all(&mut self, tokens: &[LlamaToken]) -> Result<()> {
        self.decode_inner(tokens, Logits::All)
    }

    fn decode_inner(&mut self, tokens: &[LlamaToken], logits: Logits) -> Result<()> {
        anyhow::ensure!(
            tokens.len() <= self.n_batch,
            "batch of {} tokens exceeds n_batch",
            tokens.len()
        );
        if self.tokens.len() + tokens.len() > self.n_ctx() {
            bail!(
                "the context is full ({} tokens): ask a shorter question, use fewer tokens \
                 (--max-tokens), or a larger context (--ctx / --draft-ctx)",
                self.n_ctx()
            );
        }
        self.batch.clear();
        self.logit_rows.clear();
        let start = self.tokens.len();
        for (i, &t) in tokens.iter().enumerate() {
            let want = match logits {
                Logits::All => true,
                Logits::Last => i + 1 == tokens.len(),
                Logits::None => false,
            };
            let pos = i32::try_from(start + i).context("position out of range")?;
            self.batch.add(t, pos, &[0], want)?;
            if want {
                self.logit_rows
                    .push(i32::try_from(i).context("batch index")?);
            }
        }
        let started = Instant::now();
        let result = self.ctx.decode(&mut self.batch);
        // On a GPU decode returns before the work is done: wait here, so that the time is
        // counted as llama.cpp's and not as ours (the logits are read right after anyway).
        self.ctx.synchronize();
        self.busy += started.elapsed();
        if let Err(e) = result {
            // A failed decode may leave part of the batch in the cache: drop it.
            let _ = self
                .ctx
                .clear_kv_cache_seq(Some(0), u32::try_from(start).ok(), None);
            self.logit_rows.clear();
            bail!("llama.cpp decode failed: {e}");
        }
        self.tokens.extend_from_slice(tokens);
        Ok(())
    }

    /// Logits of the `i`-th position that asked for them in the last decode.
    pub fn logits(&self, i: usize) -> &[f32] {
        match self.logit_rows.get(i) {
            Some(&row) => self.ctx.get_logits_ith(row),
            None => &[],
        }
    }

    /// Number of positions with logits from the last decode.
    pub fn n_logits(&self) -> usize {
        self.logit_rows.len()
    }

    /// The vocabulary size.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }
}

/// Refuses a context whose KV cache would not fit where it lives (llama.cpp would fail deep in
/// its allocator, or the system would kill the process while the cache fills).
fn check_memory(model: &LlamaModel, spec: ContextSettings) -> Result<()> {
    let layers = if spec.gpu { -1 } else { 0 };
    let Some(room) = memory::room_now(model, layers, spec.remote, 0) else {
        return Ok(());
    };
    let need =
        memory::kv_bytes_per_token(model, spec.kv_type).saturating_mul(u64::from(spec.n_ctx));
    if need > room.bytes {
        bail!(
            "a context of {} tokens needs about {} for its {} KV cache, more than the {} that \
             {} allows ({} free): use a smaller --ctx / --draft-ctx, --kv-type q8_0, or --ctx auto",
            spec.n_ctx,
            memory::gib(need),
            spec.kv_type,
            memory::gib(room.bytes),
            room.place,
            memory::gib(room.free),
        );
    }
    Ok(())
}

fn cache_type(t: KvType) -> KvCacheType {
    match t {
        KvType::F16 => KvCacheType::F16,
        KvType::Q8_0 => KvCacheType::Q8_0,
        KvType::Q4_0 => KvCacheType::Q4_0,
    }
}

#[derive(Clone, Copy)]
enum Logits {
    None,
    Last,
    All,
}

/// Length of the longest common prefix.
pub fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

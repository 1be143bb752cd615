//! The two prompts of a turn. Target: instructions + the documents (the whole corpus in document
//! order when it fits the context, else the best-ranked chunks for the question, in document
//! order) + the conversation. Drafter: instructions + the top chunks retrieved for the question,
//! up to the retrieval budget, in document order + the same conversation. Budgets are filled to
//! the token: the documents are tokenized as they will be decoded.
//!
//! A follow-up keeps the target's documents of the previous turn while they hold the best chunks
//! for it (when the corpus does not fit, the view would otherwise move with every question), so
//! that the target decodes only the new turn's tokens.

use crate::llm::token::{Tokenize, tokenize};
use crate::llm::{Model, Token};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::corpus::{CorpusIndex, Hit};
use crate::llm::chat::{self, Message, Role};

const SYSTEM: &str = "You answer questions about the documents below. Answer briefly and only \
from the documents; quote them where you can. If they do not hold the answer, say so.";

/// Stand-ins for the documents and the question while the chat template is applied: the text
/// around them is tokenized with special tokens, they are tokenized as plain text (so a document
/// cannot inject a control token).
const DOCS_MARK: &str = "\u{E000}";
const QUESTION_MARK: &str = "\u{E001}";

/// A chunk shown to a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub path: String,
    pub page: Option<u32>,
    pub score: f32,
    #[serde(skip_serializing, default)]
    pub start: usize,
    #[serde(skip_serializing, default)]
    pub end: usize,
    #[serde(skip_serializing, default)]
    pub text: String,
}

/// How much of the corpus the target sees.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub chunks_in_view: usize,
    pub chunks_total: usize,
    pub doc_tokens_in_view: usize,
    pub doc_tokens_total: usize,
}

impl View {
    pub fn whole_corpus(&self) -> bool {
        self.chunks_in_view == self.chunks_total
    }
}

/// The token sequences of one turn.
#[derive(Debug, Clone)]
pub struct Prompts {
    pub target: Vec<Token>,
    /// Where the target's documents end: `target[..docs_end]` (instructions and documents) is
    /// the part saved in the corpus KV cache.
    pub docs_end: usize,
    pub draft: Vec<Token>,
    /// The chunks the drafter sees, best first.
    pub sources: Vec<Source>,
    pub view: View,
    /// The chunks in the target's view, as (path, order).
    pub target_chunks: Vec<ChunkId>,
}

/// A chunk's identity: its file and its position in it.
pub type ChunkId = (String, usize);

/// Chunks of a follow-up's ranking that must be in the previous view for it to be kept.
const KEEP_VIEW_TOP: usize = 1;

/// An earlier question and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub question: String,
    pub answer: String,
}

/// Sizes that bound the prompts.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    pub target_ctx: usize,
    pub draft_ctx: usize,
    pub retrieval: usize,
    pub max_tokens: usize,
}

/// Builds both prompts for `question` after `history`.
pub fn build(
    model: &Model,
    index: &CorpusIndex,
    question: &str,
    history: &[Turn],
    budgets: Budgets,
) -> Result<Prompts> {
    build_after(model, index, question, history, budgets, &[])
}

/// Like [`build`]; `previous` is the target's view of the previous turn, kept for a follow-up
/// when it holds the best chunks for it.
pub fn build_after(
    model: &Model,
    index: &CorpusIndex,
    question: &str,
    history: &[Turn],
    budgets: Budgets,
    previous: &[ChunkId],
) -> Result<Prompts> {
    let question = clean(question);
    if question.trim().is_empty() {
        bail!("the question is empty");
    }
    let all = index.all_chunks()?;
    if all.is_empty() {
        bail!("no documents are indexed in this folder: add PDF, Markdown or text files to it");
    }
    // Long conversations are trimmed, oldest turns first, so that the conversation takes at most
    // half of the drafter's context (the smaller one): the documents keep their room. Turns are
    // dropped in blocks of about a quarter of the context from fixed cut points, so consecutive
    // questions keep the same beginning (and the caches their prefix) between two drops.
    let limit = budgets.draft_ctx.min(budgets.target_ctx) / 2;
    let mut cuts = vec![0];
    let mut block = 0;
    for (i, turn) in history.iter().enumerate() {
        block += tokenize_plain(model, &turn.question).len()
            + tokenize_plain(model, &turn.answer).len()
            + 8;
        if block >= limit / 2 {
            cuts.push(i + 1);
            block = 0;
        }
    }
    cuts.extend(cuts.last().copied().unwrap_or(0) + 1..=history.len());
    let mut first = 0;
    let mut frame = Frame::new(model, &question, history)?;
    for &cut in &cuts[1..] {
        if frame.fixed_tokens() + budgets.max_tokens <= limit {
            break;
        }
        first = cut;
        frame = Frame::new(model, &question, &history[first..])?;
    }
    if first > 0 {
        tracing::info!(dropped = first, "oldest turns left out of the prompt");
    }
    let history = &history[first..];
    let fixed = frame.fixed_tokens();
    let room = |ctx: usize| ctx.checked_sub(fixed + budgets.max_tokens + 1);
    let Some(target_room) = room(budgets.target_ctx) else {
        bail!(
            "the question and conversation take {fixed} tokens, which with room for a {}-token \
             answer do not fit the target context of {} tokens: shorten the question, lower \
             --max-tokens, raise --ctx, or /clear the conversation",
            budgets.max_tokens,
            budgets.target_ctx
        );
    };
    let draft_room = room(budgets.draft_ctx).unwrap_or(0).min(budgets.retrieval);
    // The target keeps a reserve for the question and the conversation (an eighth of its
    // context, at most the conversation's cap), so that follow-ups fit beside the same documents
    // and the cache's prefix holds until the conversation outgrows it.
    let reserve = reserve(budgets.target_ctx, limit);
    let base = Frame::new(model, "", &[])?.fixed_tokens();
    let target_room = target_room.min(
        budgets
            .target_ctx
            .saturating_sub(base + reserve + budgets.max_tokens + 1),
    );

    let query = match history.last() {
        Some(turn) => format!("{question} {}", turn.question),
        None => question.clone(),
    };
    let ranked = index.rank(&query, all.len())?;
    let doc_tokens_total: usize = all.iter().map(|c| c.tokens).sum();

    // Target: everything when it fits, else best-ranked first then the rest in document order;
    // for a follow-up, the previous view when it holds this question's best chunks.
    let previous: std::collections::HashSet<(&str, usize)> =
        previous.iter().map(|(p, o)| (p.as_str(), *o)).collect();
    let keep = !history.is_empty()
        && !previous.is_empty()
        && ranked
            .iter()
            .take(KEEP_VIEW_TOP)
            .all(|r| previous.contains(&(r.path.as_str(), r.order)));
    let candidates: Vec<&Hit> = if keep {
        all.iter()
            .filter(|c| previous.contains(&(c.path.as_str(), c.order)))
            .collect()
    } else {
        let mut candidates: Vec<&Hit> = ranked.iter().collect();
        let ranked_ids: std::collections::HashSet<(&str, usize)> =
            ranked.iter().map(|r| (r.path.as_str(), r.order)).collect();
        candidates.extend(
            all.iter()
                .filter(|c| !ranked_ids.contains(&(c.path.as_str(), c.order))),
        );
        candidates
    };
    let (target_docs, target_chunks) = fill(model, &candidates, target_room);
    let (draft_docs, draft_chunks) = fill(model, &ranked.iter().collect::<Vec<_>>(), draft_room);

    let sources = {
        let mut s: Vec<Source> = draft_chunks
            .iter()
            .map(|c| Source {
                path: c.path.clone(),
                page: c.page,
                score: c.score,
                start: c.start,
                end: c.end,
                text: c.text.clone(),
            })
            .collect();
        s.sort_by(|a, b| b.score.total_cmp(&a.score));
        s
    };
    Ok(Prompts {
        docs_end: frame.before_docs.len() + target_docs.len(),
        target: frame.tokens(&target_docs),
        draft: frame.tokens(&draft_docs),
        sources,
        target_chunks: target_chunks
            .iter()
            .map(|c| (c.path.clone(), c.order))
            .collect(),
        view: View {
            chunks_in_view: target_chunks.len(),
            chunks_total: all.len(),
            doc_tokens_in_view: target_chunks.iter().map(|c| c.tokens).sum(),
            doc_tokens_total,
        },
    })
}

/// The target's reserve for the question and the conversation in a context of `target_ctx`
/// tokens: an eighth, at most the conversation's cap `limit`.
fn reserve(target_ctx: usize, limit: usize) -> usize {
    (target_ctx / 8).min(limit)
}

/// Tokens a chunk costs in a prompt besides its own: headers and separators (an estimate,
/// checked against the rendered text).
const CHUNK_OVERHEAD: usize = 8;

/// The smallest target context that holds the whole corpus of `index` with the conversation's
/// reserve and a `max_tokens` answer, beside a drafter context of `draft_ctx` (a multiple of 256;
/// rendering may take a few tokens more than the chunks' counts: 2% are added).
pub fn corpus_needs(
    model: &Model,
    index: &CorpusIndex,
    max_tokens: usize,
    draft_ctx: usize,
) -> Result<usize> {
    let docs: usize = index
        .all_chunks()?
        .iter()
        .map(|c| c.tokens + CHUNK_OVERHEAD)
        .sum();
    let base = Frame::new(model, "", &[])?.fixed_tokens();
    let need = base + docs + docs / 50 + max_tokens + 1;
    let mut ctx = need.div_ceil(256) * 256;
    while ctx - reserve(ctx, draft_ctx.min(ctx) / 2) < need {
        ctx += 256;
    }
    Ok(ctx)
}

/// The drafter context that holds `retrieval` tokens of chunks, a `max_tokens` answer and a
/// conversation of up to half as much again as the chunks (at least 512 tokens).
pub fn draft_needs(model: &Model, retrieval: usize, max_tokens: usize) -> Result<usize> {
    let base = Frame::new(model, "", &[])?.fixed_tokens();
    Ok(base + retrieval + retrieval / 50 + max_tokens + 1 + (retrieval / 2).max(512))
}

/// Takes candidates in order while they fit `room` tokens, renders them in document order, and
/// gives back the last taken until the rendered text really fits.
fn fill<'a>(model: &Model, candidates: &[&'a Hit], room: usize) -> (Vec<Token>, Vec<&'a Hit>) {
    let mut taken: Vec<&Hit> = Vec::new();
    let mut estimate = 0;
    for &c in candidates {
        let cost = c.tokens + CHUNK_OVERHEAD;
        if estimate + cost <= room {
            taken.push(c);
            estimate += cost;
        }
    }
    loop {
        if taken.is_empty() {
            // Not even one chunk fits: the best one, cut to the room, beats nothing.
            let Some(&best) = candidates.first() else {
                return (Vec::new(), Vec::new());
            };
            let mut tokens = tokenize_plain(model, &render(&[best]));
            tokens.truncate(room);
            return (tokens, vec![best]);
        }
        let mut ordered = taken.clone();
        ordered.sort_by(|a, b| (a.path.as_str(), a.order).cmp(&(b.path.as_str(), b.order)));
        let tokens = tokenize_plain(model, &render(&ordered));
        if tokens.len() <= room {
            return (tokens, ordered);
        }
        taken.pop();
    }
}

/// The documents as the models read them: a header per file, page marks for PDFs, `[...]` where
/// chunks are not adjacent.
fn render(chunks: &[&Hit]) -> String {
    let mut out = String::new();
    let mut prev: Option<&Hit> = None;
    for c in chunks {
        let same_file = prev.is_some_and(|p| p.path == c.path);
        if !same_file {
            out.push_str(&format!("\n### {}\n\n", c.path));
        } else if prev.is_some_and(|p| p.order + 1 != c.order) {
            out.push_str("[...]\n\n");
        }
        if let Some(page) = c.page
            && prev.is_none_or(|p| p.page != c.page || !same_file)
        {
            out.push_str(&format!("[page {page}]\n"));
        }
        out.push_str(&clean(&c.text));
        out.push_str("\n\n");
        prev = Some(c);
    }
    out
}

/// Text without our marks or NULs.
fn clean(text: &str) -> String {
    text.replace(
        [
            DOCS_MARK.chars().next().unwrap_or(' '),
            QUESTION_MARK.chars().next().unwrap_or(' '),
            '\0',
        ],
        " ",
    )
}

fn tokenize_plain(model: &Model, text: &str) -> Vec<Token> {
    tokenize(model, text, Tokenize::Plain)
}

/// The chat-template text around the documents and the question, tokenized once.
struct Frame {
    before_docs: Vec<Token>,
    between: Vec<Token>,
    question: Vec<Token>,
    after: Vec<Token>,
}

impl Frame {
    fn new(model: &Model, question: &str, history: &[Turn]) -> Result<Self> {
        let mut messages = vec![Message::new(
            Role::System,
            format!("{SYSTEM}\n\n# Documents\n{DOCS_MARK}"),
        )];
        for turn in history {
            messages.push(Message::new(Role::User, clean(&turn.question)));
            messages.push(Message::new(Role::Assistant, clean(&turn.answer)));
        }
        messages.push(Message::new(Role::User, QUESTION_MARK));
        let text = chat::format(model, &messages)?;
        let (before, rest) = text
            .split_once(DOCS_MARK)
            .ok_or_else(|| anyhow::anyhow!("chat template lost the documents"))?;
        let (between, after) = rest
            .split_once(QUESTION_MARK)
            .ok_or_else(|| anyhow::anyhow!("chat template lost the question"))?;
        Ok(Self {
            before_docs: tokenize(model, before, Tokenize::Markup { bos: true }),
            between: tokenize(model, between, Tokenize::Markup { bos: false }),
            question: tokenize_plain(model, question),
            after: tokenize(model, after, Tokenize::Markup { bos: false }),
        })
    }

    fn fixed_tokens(&self) -> usize {
        self.before_docs.len() + self.between.len() + self.question.len() + self.after.len()
    }

    fn tokens(&self, docs: &[Token]) -> Vec<Token> {
        let mut out = Vec::with_capacity(self.fixed_tokens() + docs.len());
        out.extend_from_slice(&self.before_docs);
        out.extend_from_slice(docs);
        out.extend_from_slice(&self.between);
        out.extend_from_slice(&self.question);
        out.extend_from_slice(&self.after);
        out
    }
}

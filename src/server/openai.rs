//! The OpenAI chat-completions API as rapid-chat speaks it: the request it reads (fields it does
//! not know are ignored, as OpenAI servers do), the answer and the stream chunks it writes, with
//! llama-server's `timings` and a `rapid` object of its own, and errors in OpenAI's shape.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::EngineConfig;
use crate::runtime::{Answer, Turn};

/// A message's content: text, or parts of which the text ones count.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    fn text(&self) -> String {
        match self {
            Self::Text(t) => t.clone(),
            Self::Parts(parts) => parts
                .iter()
                .filter(|p| p.kind == "text")
                .filter_map(|p| p.text.clone())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions`'s body.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    /// llama-server's extension: run to `max_tokens`, whatever the model would end with.
    #[serde(default)]
    pub ignore_eos: bool,
}

/// What a request asks the engine: the question, the conversation before it, the settings, and
/// where the answer stops.
#[derive(Debug, Clone)]
pub struct Asked {
    pub question: String,
    pub history: Vec<Turn>,
    pub settings: EngineConfig,
    pub stops: Vec<String>,
}

impl ChatRequest {
    /// The question (the last message, a user's), the earlier user and assistant messages as
    /// turns (system messages are left out: the documents come with rapid-chat's own), and
    /// `base` with the request's sampling settings; or what is wrong with the request.
    pub fn asked(&self, base: &EngineConfig) -> Result<Asked, String> {
        let last = self
            .messages
            .last()
            .ok_or("`messages` is empty: send at least one message, the last a user's question")?;
        if last.role != "user" {
            return Err(format!(
                "the last message is the question and must be a user's, not a {:?} message",
                last.role
            ));
        }
        let question = last.content.as_ref().map(Content::text).unwrap_or_default();
        if question.trim().is_empty() {
            return Err("the last message (the question) has no text".into());
        }
        let mut history = Vec::new();
        let mut pending: Option<String> = None;
        for m in &self.messages[..self.messages.len() - 1] {
            let text = m.content.as_ref().map(Content::text).unwrap_or_default();
            match m.role.as_str() {
                "user" => pending = Some(text),
                "assistant" => history.push(Turn {
                    question: pending.take().unwrap_or_default(),
                    answer: text,
                }),
                _ => {}
            }
        }
        let mut settings = base.clone();
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(format!("`temperature` is {t}: use 0 to 2 (0: greedy)"));
            }
            settings.temp = t;
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(format!("`top_p` is {p}: use more than 0, at most 1"));
            }
            settings.top_p = p;
        }
        if let Some(n) = self.max_tokens {
            if n == 0 {
                return Err("`max_tokens` is 0: ask for at least one token".into());
            }
            settings.max_tokens = n;
        }
        if let Some(seed) = self.seed {
            settings.seed = seed;
        }
        settings.ignore_eos = self.ignore_eos;
        let stops = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        Ok(Asked {
            question,
            history,
            settings,
            stops,
        })
    }
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "code"}}`.
pub fn error(message: &str, kind: &str, code: &str) -> Value {
    json!({ "error": { "message": message, "type": kind, "code": code } })
}

/// Why an answer ended, as OpenAI says it: at the token limit (`length`), or at its end or a
/// stop string (`stop`).
pub fn finish_reason(answer: &Answer, settings: &EngineConfig, stopped: bool) -> &'static str {
    let s = &answer.output.stats;
    if !stopped && s.generated_tokens >= settings.max_tokens {
        "length"
    } else {
        "stop"
    }
}

/// `usage`: the target's prompt, and the answer's tokens.
pub fn usage(answer: &Answer) -> Value {
    let s = &answer.output.stats;
    let prompt = s.target_ctx_tokens.saturating_sub(s.generated_tokens);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": s.generated_tokens,
        "total_tokens": prompt + s.generated_tokens,
    })
}

/// llama-server's `timings`: the prompt decoded and reused, the answer's decoding, and the drafts.
pub fn timings(answer: &Answer) -> Value {
    let s = &answer.output.stats;
    let prompt = s.target_ctx_tokens.saturating_sub(s.generated_tokens);
    json!({
        "prompt_n": s.target_prefill_tokens,
        "prompt_ms": s.prefill_s * 1e3,
        "cache_n": prompt.saturating_sub(s.target_prefill_tokens),
        "predicted_n": s.generated_tokens,
        "predicted_ms": s.decode_s * 1e3,
        "predicted_per_second": s.decode_tok_s,
        "draft_n": s.drafted,
        "draft_n_accepted": s.accepted,
    })
}

/// The `rapid` object: the mode, the speed-up over plain target steps, where the answer's tokens
/// came from, and the sources the drafter read (for citing).
pub fn rapid(answer: &Answer) -> Value {
    let s = &answer.output.stats;
    let sources: Vec<Value> = answer
        .sources
        .iter()
        .map(|src| json!({ "path": src.path, "page": src.page, "score": src.score }))
        .collect();
    json!({
        "mode": answer.mode,
        "speedup": s.speedup,
        "tokens": {
            "lookup": s.lookup_accepted,
            "drafter": s.accepted.saturating_sub(s.lookup_accepted),
            "target": s.generated_tokens.saturating_sub(s.accepted),
        },
        "acceptance": s.acceptance_rate,
        "sources": sources,
    })
}

/// A whole answer: `chat.completion`.
pub fn completion(id: &str, created: u64, model: &str, text: &str, done: &Done<'_>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "finish_reason": done.reason,
        }],
        "usage": usage(done.answer),
        "timings": timings(done.answer),
        "rapid": rapid(done.answer),
    })
}

/// A finished answer and why it ended.
pub struct Done<'a> {
    pub answer: &'a Answer,
    pub reason: &'static str,
}

/// One `chat.completion.chunk` carrying `delta`, and `finish_reason` on the last.
pub fn chunk(id: &str, created: u64, model: &str, delta: Value, reason: Option<&str>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": reason }],
    })
}

#[derive(Debug, Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

/// `GET /v1/models`: the one model that answers.
pub fn models(name: &str, created: u64) -> Value {
    json!({
        "object": "list",
        "data": [Model { id: name, object: "model", created, owned_by: "rapid-chat" }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> ChatRequest {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn the_last_user_message_is_the_question_and_earlier_pairs_are_turns() {
        let r = request(
            r#"{"model": "x", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "Which port?"},
                {"role": "assistant", "content": "8080"},
                {"role": "user", "content": [{"type": "text", "text": "And the host?"}]}
            ], "temperature": 0, "max_tokens": 32, "seed": 7, "stop": "\n\n",
            "unknown": {"ignored": true}}"#,
        );
        let a = r.asked(&EngineConfig::default()).unwrap();
        assert_eq!(a.question, "And the host?");
        assert_eq!(
            a.history,
            [Turn {
                question: "Which port?".into(),
                answer: "8080".into()
            }]
        );
        assert_eq!(a.settings.max_tokens, 32);
        assert_eq!(a.settings.seed, 7);
        assert_eq!(a.settings.temp, 0.0);
        assert_eq!(a.stops, ["\n\n"]);
    }

    #[test]
    fn bad_requests_say_what_to_change() {
        let base = EngineConfig::default();
        let e = request(r#"{"messages": []}"#).asked(&base).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = request(r#"{"messages": [{"role": "assistant", "content": "hi"}]}"#)
            .asked(&base)
            .unwrap_err();
        assert!(e.contains("user"), "{e}");
        let e = request(r#"{"messages": [{"role": "user", "content": "q"}], "temperature": 9}"#)
            .asked(&base)
            .unwrap_err();
        assert!(e.contains("temperature"), "{e}");
        assert!(serde_json::from_str::<ChatRequest>(r#"{"messages": "hi"}"#).is_err());
    }
}

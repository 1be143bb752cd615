//! Prompts in the model's own chat template, with a plain fallback for models without one.

use anyhow::Result;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};

/// A message of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// The prompt text for `messages`, ending where the assistant's answer starts. Uses the GGUF's
/// chat template; a model without one (a base model) gets a plain "Role: text" layout.
pub fn format(model: &LlamaModel, messages: &[Message]) -> Result<String> {
    if let Ok(template) = model.chat_template(None) {
        let chat: Result<Vec<LlamaChatMessage>, _> = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.as_str().to_owned(), m.content.replace('\0', "")))
            .collect();
        if let Ok(text) = model.apply_chat_template(&template, &chat?, true) {
            return Ok(text);
        }
        tracing::warn!("the model's chat template failed; using the plain layout");
    }
    Ok(plain(messages))
}

/// "System:/User:/Assistant:" paragraphs, for models without a chat template.
pub fn plain(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        let label = match m.role {
            Role::System => "",
            Role::User => "Question: ",
            Role::Assistant => "Answer: ",
        };
        out.push_str(label);
        out.push_str(&m.content);
        out.push_str("\n\n");
    }
    out.push_str("Answer:");
    out
}

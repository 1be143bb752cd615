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

/// Where a model answering in the plain layout starts a new turn of its own making: a base model
/// does not end its answer, it goes on with "Question: ..." and answers that too.
pub const PLAIN_NEXT_TURN: &str = "\nQuestion:";

/// The text that ends an answer besides end-of-generation: the plain layout's next turn, for a
/// model whose chat template is missing or fails (as [`format`] decides).
pub fn turn_marker(model: &LlamaModel) -> Option<&'static str> {
    let templated = model.chat_template(None).is_ok_and(|template| {
        LlamaChatMessage::new("user".into(), "?".into())
            .is_ok_and(|m| model.apply_chat_template(&template, &[m], true).is_ok())
    });
    (!templated).then_some(PLAIN_NEXT_TURN)
}

/// "Question:/Answer:" paragraphs after the system text, for models without a chat template. An
/// earlier answer follows its "Answer:" exactly as it was generated after the prompt's "Answer:"
/// (its own leading space, if any), so that a follow-up's prompt repeats the cached tokens of the
/// previous turn and only its new tokens are decoded.
pub fn plain(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        match m.role {
            Role::System => {}
            // On a line of its own: the question's tokens are the same whether it is the last
            // (tokenized apart from the layout) or an earlier turn's.
            Role::User => out.push_str("Question:\n"),
            Role::Assistant => {
                out.push_str("Answer:");
                if !m.content.starts_with(char::is_whitespace) {
                    out.push(' ');
                }
            }
        }
        out.push_str(&m.content);
        out.push_str("\n\n");
    }
    out.push_str("Answer:");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_prompt_continues_as_the_answer_was_generated() {
        let turn = |answer: &str| {
            plain(&[
                Message::new(Role::System, "Docs."),
                Message::new(Role::User, "Q1?"),
                Message::new(Role::Assistant, answer),
                Message::new(Role::User, "Q2?"),
            ])
        };
        let first = plain(&[
            Message::new(Role::System, "Docs."),
            Message::new(Role::User, "Q1?"),
        ]);
        assert_eq!(first, "Docs.\n\nQuestion:\nQ1?\n\nAnswer:");
        // What the model generated after "Answer:" comes back verbatim.
        assert!(turn(" Port 8080.").starts_with(&format!("{first} Port 8080.\n\n")));
        assert!(turn("Port 8080.").starts_with(&format!("{first} Port 8080.\n\n")));
        assert!(turn(" Port 8080.").ends_with("Question:\nQ2?\n\nAnswer:"));
    }
}

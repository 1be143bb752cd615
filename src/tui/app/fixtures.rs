//! What the app's tests share: settings, an app, and the engine's replies made by hand.

use super::{App, Keymap};
use crate::config::EngineConfig;
use crate::runtime::{Answer, Reply, View};
use crate::speculative::decode::Output;
use crate::speculative::{Event, GenToken, Mode, Stats, TokenKind};

pub fn settings() -> EngineConfig {
    EngineConfig {
        gamma: 4,
        seed: 1,
        max_tokens: 64,
        retrieval_budget: 1024,
        ..EngineConfig::default()
    }
}

pub fn app() -> App {
    App::new("docs".into(), Keymap::default(), settings(), Vec::new())
}

pub fn gen_token(text: &str, kind: TokenKind) -> GenToken {
    GenToken {
        id: 1,
        text: text.into(),
        kind,
        margin: 1.0,
    }
}

pub fn token(text: &str, kind: TokenKind) -> Reply {
    Reply::Event(Event::Token(GenToken {
        margin: 2.0,
        ..gen_token(text, kind)
    }))
}

pub fn prefill(done: usize, total: usize) -> Reply {
    Reply::Event(Event::Prefill {
        done,
        total,
        seconds: 0.0,
    })
}

pub fn finished(tokens: Vec<GenToken>, cancelled: bool) -> Reply {
    let stats = Stats {
        generated_tokens: tokens.len(),
        cancelled,
        ..Stats::default()
    };
    Reply::Finished(Box::new(Answer {
        mode: Mode::Rapid,
        output: Output {
            produced: Vec::new(),
            eog: false,
            text: tokens.iter().map(|t| t.text.clone()).collect(),
            tokens,
            end_margin: None,
            stats,
        },
        sources: Vec::new(),
        view: View::default(),
    }))
}

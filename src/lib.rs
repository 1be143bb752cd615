//! rapid-chat: ask questions about a folder of long documents with a local LLM, decoded with
//! Retrieval-Augmented Speculative Decoding (RAPID). Data flows one way:
//! files -> corpus -> index -> session -> speculative engine -> events -> UI.

pub mod bench;
pub mod cli;
pub mod config;
pub mod corpus;
pub mod fuzzing;
pub mod llm;
pub mod logging;
pub mod paths;
pub mod runtime;
pub mod safe_text;
pub mod server;
pub mod session;
pub mod simulate;
pub mod speculative;
pub mod tui;

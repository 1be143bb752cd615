//! Everything that talks to llama.cpp: the backend, model loading, contexts, tokenization, the
//! chat template, the KV cache on disk, fetching known models. The rest of the crate speaks in our own types.

pub mod chat;
pub mod context;
pub mod cores;
pub mod fetch;
pub mod kvcache;
pub mod memory;
pub mod model;
pub mod rpc;
pub mod token;

pub use context::{Context, ContextSettings};
pub use model::{Model, Models, Tokenizer, backend};
pub use token::{Detokenizer, Token};

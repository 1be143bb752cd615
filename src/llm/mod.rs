//! Everything that talks to llama.cpp: the backend, model loading, tokenization, fetching the
//! default model. The rest of the crate speaks in our own types.

pub mod fetch;
pub mod model;

pub use model::{Tokenizer, backend};

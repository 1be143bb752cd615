//! Tokens as the rest of the crate sees them: the token type, its place in a row of logits, the
//! one question about the vocabulary the decode loop asks (does this token end generation), and
//! turning generated tokens back into text.

use super::Model;

/// A token of the models' shared vocabulary. llama.cpp's own type: it is plain data, and the
/// contexts take and return it, so a wrapper would only add conversions.
pub type Token = llama_cpp_2::token::LlamaToken;

/// The token whose logit is at `index` of a row (logits are indexed by token id).
pub fn from_index(index: usize) -> Token {
    Token::new(i32::try_from(index).unwrap_or(0))
}

/// The index of `token`'s logit in a row.
pub fn index(token: Token) -> usize {
    usize::try_from(token.0).unwrap_or(0)
}

/// How text becomes tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenize {
    /// As plain text: the text of a special token stays text, and no BOS. Documents, questions
    /// and answers, which anyone may have written, are tokenized so: a document cannot end the
    /// system turn.
    Plain,
    /// The chat template's own markup: its special tokens are parsed, and the model's BOS goes
    /// first where `bos`.
    Markup { bos: bool },
}

/// The tokens of `text`, tokenized as `how` says.
pub fn tokenize(model: &Model, text: &str, how: Tokenize) -> Vec<Token> {
    let (bos, special) = match how {
        Tokenize::Plain => (false, false),
        Tokenize::Markup { bos } => (bos, true),
    };
    model.vocab().tokenize(text.as_bytes(), bos, special)
}

/// Whether `token` ends generation (end of sequence, end of turn...).
pub fn is_eog(model: &Model, token: Token) -> bool {
    model.vocab().is_eog(token)
}

/// Turns generated tokens into text, holding back the bytes of a character split across tokens
/// (a token's piece need not be valid UTF-8 on its own).
pub struct Detokenizer<'m> {
    model: &'m Model,
    bytes: Vec<u8>,
}

impl<'m> Detokenizer<'m> {
    pub fn new(model: &'m Model) -> Self {
        Self {
            model,
            bytes: Vec::new(),
        }
    }

    /// The text `token` completes (empty while a character is incomplete).
    pub fn push(&mut self, token: Token) -> String {
        self.bytes
            .extend(self.model.vocab().token_to_piece(token, false, None));
        take_complete(&mut self.bytes)
    }

    /// What is still held back, at the end of the text (an incomplete character is replaced).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.bytes).into_owned();
        self.bytes.clear();
        out
    }
}

/// Takes the text of `bytes` up to an incomplete character at their end, which stays, or up to
/// and including an invalid byte, which is replaced (more bytes would not make it valid); what
/// follows it is taken by the next call.
fn take_complete(bytes: &mut Vec<u8>) -> String {
    let valid = match std::str::from_utf8(bytes) {
        Ok(s) => s.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(e) => e.valid_up_to() + e.error_len().unwrap_or(1),
    };
    let out = String::from_utf8_lossy(&bytes[..valid]).into_owned();
    bytes.drain(..valid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_tokens_comes_out_whole() {
        let mut bytes = Vec::new();
        let e = "é".as_bytes();
        bytes.extend_from_slice(b"caf");
        bytes.push(e[0]);
        assert_eq!(take_complete(&mut bytes), "caf");
        assert_eq!(bytes, [e[0]]);
        bytes.push(e[1]);
        assert_eq!(take_complete(&mut bytes), "é");
        assert!(bytes.is_empty());
    }

    #[test]
    fn an_invalid_byte_is_replaced_not_held_back() {
        let mut bytes = vec![b'a', 0xFF, b'b'];
        assert_eq!(take_complete(&mut bytes), "a\u{FFFD}");
        assert_eq!(take_complete(&mut bytes), "b");
        assert!(bytes.is_empty());
    }

    #[test]
    fn index_and_token_convert_both_ways() {
        assert_eq!(index(from_index(42)), 42);
        assert_eq!(from_index(7), Token::new(7));
    }
}

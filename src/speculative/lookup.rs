//! Lookup drafts: answers about documents quote them, and small models repeat themselves, so the
//! tokens that followed the longest earlier occurrence of the sequence's recent tokens are a good
//! guess at no model cost. The haystack is the drafter's retrieved chunks followed by the target's
//! sequence (documents, conversation, the answer so far), indexed by token pairs.

use rustc_hash::FxHashMap;

use crate::llm::Token;

/// Candidates examined per lookup (the most recent occurrences of the last two tokens).
const MAX_CANDIDATES: usize = 64;
/// Matches are measured up to this many tokens back.
const MAX_MATCH: usize = 32;

/// The key of the token pair at the start of `t`.
fn pair(t: &[Token]) -> u64 {
    (u64::from(t[0].0 as u32) << 32) | u64::from(t[1].0 as u32)
}

/// A proposal: the continuation of the best earlier match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// How many recent tokens the match covers (at least 2).
    pub match_len: usize,
    /// Whether the match is in the answer itself (a repetition) rather than the prompt.
    pub in_answer: bool,
    pub tokens: Vec<Token>,
}

impl Proposal {
    /// How many of its first tokens `produced` confirms.
    pub fn agreement(&self, produced: &[Token]) -> usize {
        self.tokens
            .iter()
            .zip(produced)
            .take_while(|(a, b)| a == b)
            .count()
    }
}

/// The haystack and an index from each token pair to the positions that follow it: the latest
/// in a map, each earlier one chained from the next (an answer's lookup indexes the whole prompt
/// before its first token, so the index takes no allocation per pair and a fast hash: a vector
/// per pair and SipHash cost about a GPU step's worth on a long prompt).
pub struct Lookup {
    hay: Vec<Token>,
    /// Where the live sequence starts in `hay` (before it: the retrieved chunks).
    live: usize,
    /// Where the answer starts (after the prompt).
    answer: usize,
    /// The position after each pair's latest occurrence.
    pairs: FxHashMap<u64, u32>,
    /// By position after a pair: the position after the pair's previous occurrence (0: none).
    earlier: Vec<u32>,
    /// The position after each token's latest occurrence.
    singles: FxHashMap<i32, u32>,
    /// The position after the previous occurrence of the last token, if any.
    previous_single: Option<u32>,
}

impl Lookup {
    /// A haystack of `extra` (text only looked in) followed by `seq`, the sequence being
    /// extended with [`Self::push`].
    pub fn new(extra: &[Token], seq: &[Token]) -> Self {
        let mut me = Self {
            hay: Vec::with_capacity(extra.len() + seq.len() + 1024),
            live: 0,
            answer: 0,
            pairs: FxHashMap::with_capacity_and_hasher(extra.len() + seq.len(), Default::default()),
            earlier: Vec::with_capacity(extra.len() + seq.len() + 1024),
            singles: FxHashMap::default(),
            previous_single: None,
        };
        for &t in extra {
            me.push(t);
        }
        me.live = me.hay.len();
        for &t in seq {
            me.push(t);
        }
        me.answer = me.hay.len();
        me
    }

    /// Appends a token of the live sequence.
    pub fn push(&mut self, t: Token) {
        self.hay.push(t);
        let n = self.hay.len();
        let at = u32::try_from(n).unwrap_or(u32::MAX);
        self.previous_single = self.singles.insert(t.0, at);
        // By position after a pair (0 and 1 follow none).
        self.earlier.resize(n + 1, 0);
        if n >= 2 {
            // The position after the pair: where its continuation starts.
            let before = self.pairs.insert(pair(&self.hay[n - 2..]), at);
            self.earlier[n] = before.unwrap_or(0);
        }
    }

    /// The positions after the earlier occurrences of the pair that ends at `n`, latest first.
    fn occurrences(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        let latest = self.pairs.get(&pair(&self.hay[n - 2..n])).copied();
        std::iter::successors(latest.filter(|&p| p > 0), |&p| {
            Some(self.earlier[p as usize]).filter(|&e| e > 0)
        })
        .map(|p| p as usize)
    }

    /// The continuation (up to `max` tokens) of the longest earlier match of the live
    /// sequence's end; the most recent one among equally long matches. A continuation that runs
    /// into the end of the sequence repeats its period (a loop goes on looping).
    pub fn propose(&self, max: usize) -> Option<Proposal> {
        let n = self.hay.len();
        if max == 0 || n < 3 || n - self.live < 2 {
            return None;
        }
        let mut best: Option<(usize, usize)> = None; // (match_len, position)
        for p in self.occurrences(n).take(MAX_CANDIDATES + 1) {
            if p >= n || p == self.live {
                // The end itself; or the extra text's end, which is followed by the live
                // sequence's start, not by a continuation (the drafter's prompt ends with the
                // question, as the target's does).
                continue;
            }
            // Tokens before p equal to the tokens before n (the pair is known to match).
            let mut len = 2;
            while len < MAX_MATCH && len < p && self.hay[p - 1 - len] == self.hay[n - 1 - len] {
                len += 1;
            }
            if best.is_none_or(|(l, _)| len > l) {
                best = Some((len, p));
            }
        }
        let (match_len, p) = best?;
        Some(self.continuation(p, match_len, max))
    }

    /// [`Self::propose`], or where no pair matches, what followed the last token's previous
    /// occurrence (a match of one token). For a batch whose size is fixed, where any guess in
    /// the padding is free: it is confirmed often enough (a word's usual next piece, a loop's
    /// next turn) to be worth verifying there, though not at a cost of its own.
    pub fn propose_filled(&self, max: usize) -> Option<Proposal> {
        self.propose(max).or_else(|| {
            let n = self.hay.len();
            let p = self.previous_single? as usize;
            (max > 0 && n > self.live && p < n && p != self.live)
                .then(|| self.continuation(p, 1, max))
        })
    }

    /// The `max` tokens from position `p`, of a match `match_len` long; in the extra text, at
    /// most up to its end.
    fn continuation(&self, p: usize, match_len: usize, max: usize) -> Proposal {
        let n = self.hay.len();
        let max = if p < self.live {
            max.min(self.live - p)
        } else {
            max
        };
        let period = n - p;
        let tokens = (0..max)
            .map(|i| {
                let j = p + i;
                if j < n {
                    self.hay[j]
                } else {
                    // Past the end: the sequence from p repeats with this period.
                    self.hay[p + (j - p) % period]
                }
            })
            .collect();
        Proposal {
            match_len,
            in_answer: p >= self.answer + 2,
            tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(v: &[i32]) -> Vec<Token> {
        v.iter().map(|&t| Token::new(t)).collect()
    }

    #[test]
    fn proposes_what_followed_the_longest_match() {
        // "1 2 3 4 5 ... 9 2 3 7 ... 1 2 3": the end (1 2 3) matched longest at the start.
        let seq = toks(&[1, 2, 3, 4, 5, 6, 9, 2, 3, 7, 8, 0, 1, 2, 3]);
        let l = Lookup::new(&[], &seq);
        let p = l.propose(3).unwrap();
        assert_eq!(p.match_len, 3);
        assert_eq!(p.tokens, toks(&[4, 5, 6]));
    }

    #[test]
    fn prefers_the_most_recent_of_equal_matches() {
        // The end "9 5 6" occurs twice before, followed by 1 and then by 2.
        let seq = toks(&[9, 5, 6, 1, 9, 5, 6, 2, 9, 5, 6]);
        let p = Lookup::new(&[], &seq).propose(1).unwrap();
        assert_eq!(p.tokens, toks(&[2]));
    }

    #[test]
    fn no_match_no_proposal() {
        let l = Lookup::new(&[], &toks(&[1, 2, 3, 4, 5]));
        assert_eq!(l.propose(4), None);
        assert_eq!(Lookup::new(&[], &toks(&[1])).propose(4), None);
    }

    #[test]
    fn looks_in_the_extra_text_and_follows_pushes() {
        let extra = toks(&[10, 11, 12, 13, 14]);
        let mut l = Lookup::new(&extra, &toks(&[1, 2]));
        assert_eq!(l.propose(2), None);
        l.push(Token::new(10));
        l.push(Token::new(11));
        assert_eq!(l.propose(2).unwrap().tokens, toks(&[12, 13]));
        // The extra text alone never proposes for its own end.
        let only = Lookup::new(&toks(&[1, 2, 3, 1, 2]), &[]);
        assert_eq!(only.propose(2), None);
    }

    #[test]
    fn says_whether_the_match_is_in_the_answer() {
        let mut l = Lookup::new(&[], &toks(&[7, 8, 9, 1]));
        for t in [7, 8] {
            l.push(Token::new(t));
        }
        assert!(!l.propose(1).unwrap().in_answer, "7 8 is in the prompt");
        let mut l = Lookup::new(&[], &toks(&[1, 2, 3]));
        for t in [5, 6, 9, 5, 6] {
            l.push(Token::new(t));
        }
        let p = l.propose(1).unwrap();
        assert!(p.in_answer, "5 6 repeats the answer");
        assert_eq!(p.tokens, toks(&[9]));
    }

    #[test]
    fn a_loop_keeps_looping() {
        // "7 8 9 7 8 9 7 8": period 3, continuation past the end repeats it.
        let l = Lookup::new(&[], &toks(&[7, 8, 9, 7, 8, 9, 7, 8]));
        let p = l.propose(7).unwrap();
        assert_eq!(p.tokens, toks(&[9, 7, 8, 9, 7, 8, 9]));
        assert!(p.match_len >= 5);
    }

    #[test]
    fn filled_falls_back_to_the_last_token() {
        // No pair "5 9" before the end, but 9 occurred: what followed it (then its loop).
        let l = Lookup::new(&[], &toks(&[9, 4, 1, 2, 5, 9]));
        assert_eq!(l.propose(3), None);
        let p = l.propose_filled(3).unwrap();
        assert_eq!(p.match_len, 1);
        assert_eq!(p.tokens, toks(&[4, 1, 2]));
        // A pair match wins; a token never seen before proposes nothing.
        let seq = toks(&[1, 2, 3, 7, 2, 8, 1, 2]);
        assert_eq!(
            Lookup::new(&[], &seq).propose_filled(1).unwrap().tokens,
            toks(&[3])
        );
        assert_eq!(Lookup::new(&[], &toks(&[1, 2, 3])).propose_filled(2), None);
        assert_eq!(Lookup::new(&[], &toks(&[1, 2, 1])).propose_filled(0), None);
    }

    #[test]
    fn the_extra_texts_end_continues_nothing() {
        // The extra text ends as the sequence does (the drafter's prompt ends with the question,
        // as the target's): what follows it in the haystack is the sequence's start, no
        // continuation. A match inside the extra text stops at its end.
        let l = Lookup::new(&toks(&[4, 5, 6, 7, 8, 9]), &toks(&[1, 2, 3, 8, 9]));
        assert_eq!(l.propose(3), None);
        assert_eq!(l.propose_filled(3), None);
        let l = Lookup::new(&toks(&[4, 5, 6, 7, 8, 9]), &toks(&[1, 2, 3, 5, 6]));
        assert_eq!(l.propose(5).unwrap().tokens, toks(&[7, 8, 9]));
    }
}

//! Emitting a round's verified tokens: they go out in order until end-of-generation, the
//! answer's token limit or a cancellation, and the round's statistics count only the drafts
//! considered up to there (an accepted end-of-generation draft included: the target did accept
//! it). Pure: the caller says which tokens end generation and delivers each token.

use super::Flow;
use super::verify::Verified;
use super::{GenToken, TokenKind};
use crate::llm::Token;

/// Why a round ended the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// The target chose end-of-generation (not emitted), with this margin.
    EndOfGeneration { margin: f32 },
    /// The answer reached its token limit.
    Limit,
    /// The sink cancelled.
    Cancelled,
}

/// What a round emitted and what its statistics count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Emitted {
    /// Tokens delivered.
    pub emitted: usize,
    /// Why the answer ends here, if it does.
    pub stop: Option<Stop>,
    /// Drafts counted as verified: all of the round's, unless the answer ended inside them.
    pub drafted: usize,
    /// Of those, the accepted ones.
    pub accepted: usize,
}

/// Delivers `verified` in order while the answer has `room` tokens left, stopping at a token
/// for which `is_eog` holds (not delivered) or when `deliver` cancels. `drafted` is the number
/// of drafts the round verified.
pub fn emit(
    verified: &[Verified],
    drafted: usize,
    room: usize,
    is_eog: impl Fn(Token) -> bool,
    mut deliver: impl FnMut(&Verified) -> Flow,
) -> Emitted {
    let mut emitted = 0;
    let mut stop = None;
    let mut considered = 0;
    let mut accepted = 0;
    for v in verified {
        considered += 1;
        if v.kind == TokenKind::Accepted {
            accepted += 1;
        }
        if is_eog(v.token) {
            stop = Some(Stop::EndOfGeneration { margin: v.margin });
            break;
        }
        if emitted >= room {
            stop = Some(Stop::Limit);
            break;
        }
        emitted += 1;
        if deliver(v) == Flow::Cancel {
            stop = Some(Stop::Cancelled);
            break;
        }
    }
    Emitted {
        emitted,
        stop,
        drafted: if stop.is_some() {
            drafted.min(considered)
        } else {
            drafted
        },
        accepted,
    }
}

/// Holds back the answer's last tokens while their text may be the start of `marker` (a turn
/// the model begins on its own), so that it never reaches the screen; once the marker is
/// complete the answer ends before it.
#[derive(Debug)]
pub struct TurnGuard {
    marker: &'static str,
    held: Vec<GenToken>,
}

/// What to do with a token given to [`TurnGuard::push`].
#[derive(Debug, PartialEq)]
pub enum Guarded {
    /// Deliver these tokens now (possibly none: held back).
    Deliver(Vec<GenToken>),
    /// The marker is complete: the answer ends after delivering `deliver`; its last `dropped`
    /// tokens (the one just pushed included) are the marker's and are dropped.
    End {
        deliver: Vec<GenToken>,
        dropped: usize,
    },
}

impl TurnGuard {
    pub fn new(marker: &'static str) -> Self {
        Self {
            marker,
            held: Vec::new(),
        }
    }

    pub fn push(&mut self, token: GenToken) -> Guarded {
        self.held.push(token);
        let text: String = self.held.iter().map(|t| t.text.as_str()).collect();
        if let Some(m) = text.find(self.marker) {
            // Tokens that start before the marker keep their text (a token may hold the end of
            // the answer and the marker's line break); the rest is the marker.
            let mut start = 0;
            let kept = self
                .held
                .iter()
                .take_while(|t| {
                    let before = start < m;
                    start += t.text.len();
                    before
                })
                .count();
            // Line breaks before the marker end nothing.
            let kept = self.held[..kept]
                .iter()
                .rposition(|t| !t.text.trim().is_empty())
                .map_or(0, |i| i + 1);
            let mut held = std::mem::take(&mut self.held);
            let dropped = held.len() - kept;
            held.truncate(kept);
            return Guarded::End {
                deliver: held,
                dropped,
            };
        }
        // The earliest offset from which the text may still become the marker.
        let from = (0..text.len())
            .filter(|&i| text.is_char_boundary(i))
            .find(|&i| self.marker.starts_with(&text[i..]))
            .unwrap_or(text.len());
        let mut end = 0;
        let keep_from = self
            .held
            .iter()
            .position(|t| {
                end += t.text.len();
                end > from
            })
            .unwrap_or(self.held.len());
        Guarded::Deliver(self.held.drain(..keep_from).collect())
    }

    /// The tokens still held back, at the end of the answer.
    pub fn flush(&mut self) -> Vec<GenToken> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOG: i32 = 0;

    fn tokens(kinds: &[(i32, TokenKind)]) -> Vec<Verified> {
        kinds
            .iter()
            .enumerate()
            .map(|(i, &(t, kind))| Verified {
                token: Token::new(t),
                kind,
                margin: i as f32,
            })
            .collect()
    }

    fn run(verified: &[Verified], drafted: usize, room: usize) -> (Emitted, Vec<i32>) {
        let mut out = Vec::new();
        let e = emit(
            verified,
            drafted,
            room,
            |t| t.0 == EOG,
            |v| {
                out.push(v.token.0);
                Flow::Continue
            },
        );
        (e, out)
    }

    use TokenKind::{Accepted, Bonus, Corrected};

    fn gen_token(text: &str) -> GenToken {
        GenToken {
            id: 1,
            text: text.into(),
            kind: Accepted,
            margin: 1.0,
        }
    }

    fn texts(g: &Guarded) -> Vec<String> {
        match g {
            Guarded::Deliver(v) => v.iter().map(|t| t.text.clone()).collect(),
            Guarded::End { .. } => panic!("ended: {g:?}"),
        }
    }

    #[test]
    fn a_turn_the_model_starts_itself_never_reaches_the_screen() {
        let mut g = TurnGuard::new("\nQuestion:");
        assert_eq!(texts(&g.push(gen_token(" 8080"))), [" 8080"]);
        // A line break may start the marker: held back.
        assert!(texts(&g.push(gen_token("\n\n"))).is_empty());
        assert!(texts(&g.push(gen_token("Question"))).is_empty());
        assert_eq!(
            g.push(gen_token(":")),
            Guarded::End {
                deliver: vec![],
                dropped: 3
            }
        );
        assert!(g.flush().is_empty());

        // A line break followed by something else goes out, in order.
        let mut g = TurnGuard::new("\nQuestion:");
        assert!(texts(&g.push(gen_token(".\n"))).is_empty());
        assert_eq!(texts(&g.push(gen_token("Quest"))), Vec::<String>::new());
        assert_eq!(
            texts(&g.push(gen_token("ions remain"))),
            [".\n", "Quest", "ions remain"]
        );
        // Held at the end of the answer: flushed.
        assert!(texts(&g.push(gen_token("\n"))).is_empty());
        assert_eq!(g.flush().len(), 1);
        // A token whose end may start the marker is held whole, and kept when the marker
        // completes: its text before the marker is the answer's.
        let mut g = TurnGuard::new("\nQuestion:");
        assert_eq!(texts(&g.push(gen_token("end.\nQ"))), Vec::<String>::new());
        assert_eq!(texts(&g.push(gen_token("x"))), ["end.\nQ", "x"]);
        assert!(texts(&g.push(gen_token(" 42.\n"))).is_empty());
        assert_eq!(
            g.push(gen_token("Question:")),
            Guarded::End {
                deliver: vec![gen_token(" 42.\n")],
                dropped: 1
            }
        );
    }

    #[test]
    fn a_round_that_does_not_end_the_answer_counts_all_its_drafts() {
        // 4 drafts, the third rejected: 2 accepted, then the correction.
        let v = tokens(&[(5, Accepted), (6, Accepted), (7, Corrected)]);
        let (e, out) = run(&v, 4, 10);
        assert_eq!(out, [5, 6, 7]);
        assert_eq!(
            e,
            Emitted {
                emitted: 3,
                stop: None,
                drafted: 4,
                accepted: 2
            }
        );
    }

    #[test]
    fn end_of_generation_inside_a_draft_stops_there_and_counts_the_drafts_up_to_it() {
        // 4 drafts all accepted, the second is end-of-generation: only the first goes out; the
        // accepted end-of-generation draft counts, the drafts after it do not.
        let v = tokens(&[
            (5, Accepted),
            (EOG, Accepted),
            (7, Accepted),
            (8, Accepted),
            (9, Bonus),
        ]);
        let (e, out) = run(&v, 4, 10);
        assert_eq!(out, [5]);
        assert_eq!(
            e,
            Emitted {
                emitted: 1,
                stop: Some(Stop::EndOfGeneration { margin: 1.0 }),
                drafted: 2,
                accepted: 2
            }
        );
    }

    #[test]
    fn a_correction_to_end_of_generation_counts_every_draft_verified() {
        let v = tokens(&[(5, Accepted), (EOG, Corrected)]);
        let (e, out) = run(&v, 3, 10);
        assert_eq!(out, [5]);
        assert_eq!(e.stop, Some(Stop::EndOfGeneration { margin: 1.0 }));
        assert_eq!((e.drafted, e.accepted), (2, 1));
    }

    #[test]
    fn the_token_limit_inside_a_draft_stops_there() {
        // Room for 2 more tokens: the third token is considered (and counted) but not emitted.
        let v = tokens(&[
            (5, Accepted),
            (6, Accepted),
            (7, Accepted),
            (8, Accepted),
            (9, Bonus),
        ]);
        let (e, out) = run(&v, 4, 2);
        assert_eq!(out, [5, 6]);
        assert_eq!(
            e,
            Emitted {
                emitted: 2,
                stop: Some(Stop::Limit),
                drafted: 3,
                accepted: 3
            }
        );
    }

    #[test]
    fn the_token_limit_on_the_bonus_token_counts_every_draft() {
        let v = tokens(&[(5, Accepted), (6, Accepted), (9, Bonus)]);
        let (e, out) = run(&v, 2, 2);
        assert_eq!(out, [5, 6]);
        assert_eq!(e.stop, Some(Stop::Limit));
        assert_eq!((e.drafted, e.accepted), (2, 2));
    }

    #[test]
    fn a_cancelling_sink_stops_after_the_token_it_was_given() {
        let v = tokens(&[(5, Accepted), (6, Accepted), (7, Accepted), (9, Bonus)]);
        let mut seen = Vec::new();
        let e = emit(
            &v,
            3,
            10,
            |t| t.0 == EOG,
            |v| {
                seen.push(v.token.0);
                if v.token.0 == 6 {
                    Flow::Cancel
                } else {
                    Flow::Continue
                }
            },
        );
        assert_eq!(seen, [5, 6]);
        assert_eq!(
            e,
            Emitted {
                emitted: 2,
                stop: Some(Stop::Cancelled),
                drafted: 2,
                accepted: 2
            }
        );
    }
}

//! The chat turn as a state machine: the conversation's entries, where the current turn is
//! (idle, retrieving, prefilling, generating, cancelling) and whether the model is there.
//! [`Conversation::handle`] matches on (state, event) and returns the effects as data, so every
//! transition is tested here without an engine; a question it cannot take is refused with a
//! [`Refusal`], which the app words with the user's own keys.

use super::effect::Effect;
use crate::config::EngineConfig;
use crate::runtime::{EngineInfo, Reply, Source, Turn, View, history};
use crate::speculative::{Event, GenToken, Mode, Stats};

/// Where a chat turn is.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum TurnState {
    #[default]
    Idle,
    /// Sent; the engine is retrieving and building prompts.
    Retrieving,
    Prefilling {
        done: usize,
        total: usize,
        seconds: f64,
    },
    Generating,
    /// Cancel asked; waiting for the engine to stop.
    Cancelling,
}

/// How an answer ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerStatus {
    Streaming,
    Done,
    Cancelled,
    Failed(String),
}

/// One question and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub question: String,
    pub tokens: Vec<GenToken>,
    pub status: AnswerStatus,
    pub mode: Mode,
    pub stats: Option<Stats>,
    pub sources: Vec<Source>,
    pub view: Option<View>,
    /// Accepted drafts per round that drafted, for the sparkline.
    pub rounds: Vec<u64>,
    /// Files re-indexed while this answer was being written.
    pub index_changed: bool,
    /// Asked before the folder was all indexed: how much of it was searchable then.
    pub partial_index: Option<String>,
    /// Answered in an earlier run (loaded with the saved conversation): its speed is not this
    /// run's.
    pub earlier: bool,
}

impl From<&history::Entry> for Entry {
    fn from(e: &history::Entry) -> Self {
        Self {
            question: e.question.clone(),
            tokens: e.tokens.clone(),
            status: match &e.status {
                history::Status::Streaming => AnswerStatus::Streaming,
                history::Status::Done => AnswerStatus::Done,
                history::Status::Cancelled => AnswerStatus::Cancelled,
                history::Status::Failed(why) => AnswerStatus::Failed(why.clone()),
            },
            mode: e.mode,
            stats: e.stats.clone(),
            sources: e.sources.iter().map(Source::from).collect(),
            view: e.view.clone(),
            rounds: e.rounds.clone(),
            index_changed: e.index_changed,
            partial_index: e.partial_index.clone(),
            earlier: true,
        }
    }
}

impl From<&Entry> for history::Entry {
    fn from(e: &Entry) -> Self {
        Self {
            question: e.question.clone(),
            tokens: e.tokens.clone(),
            status: match &e.status {
                AnswerStatus::Streaming => history::Status::Streaming,
                AnswerStatus::Done => history::Status::Done,
                AnswerStatus::Cancelled => history::Status::Cancelled,
                AnswerStatus::Failed(why) => history::Status::Failed(why.clone()),
            },
            mode: e.mode,
            stats: e.stats.clone(),
            sources: e.sources.iter().map(history::SavedSource::from).collect(),
            view: e.view.clone(),
            rounds: e.rounds.clone(),
            index_changed: e.index_changed,
            partial_index: e.partial_index.clone(),
        }
    }
}

impl Entry {
    /// A question just sent, its answer still to come.
    fn asked(question: String, mode: Mode) -> Self {
        Self {
            question,
            tokens: Vec::new(),
            status: AnswerStatus::Streaming,
            mode,
            stats: None,
            sources: Vec::new(),
            view: None,
            rounds: Vec::new(),
            index_changed: false,
            partial_index: None,
            earlier: false,
        }
    }

    pub fn answer(&self) -> String {
        self.tokens.iter().map(|t| t.text.as_str()).collect()
    }
}

/// What can happen to the conversation.
#[derive(Debug, Clone)]
pub enum ChatEvent {
    /// The user asks a question.
    Ask {
        question: String,
        settings: EngineConfig,
    },
    /// The user wants the answer stopped.
    Cancel,
    /// The user wants the conversation forgotten.
    Clear,
    Engine(Reply),
    /// A file was re-indexed (or removed) while the conversation went on.
    IndexChanged,
}

/// Why the conversation did not take an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// An answer is being written: it must end or be stopped first.
    Busy,
    /// The model failed to load, for this reason: nothing can be answered.
    NoModel(String),
}

/// The questions, their answers and the turn in progress.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub entries: Vec<Entry>,
    pub turn: TurnState,
    pub engine: Option<EngineInfo>,
    pub engine_error: Option<String>,
}

impl Conversation {
    /// A conversation going on from `entries` (a saved one, or none).
    pub fn new(entries: Vec<Entry>) -> Self {
        Self {
            entries,
            ..Self::default()
        }
    }

    /// Whether an answer is being produced.
    pub fn busy(&self) -> bool {
        self.turn != TurnState::Idle
    }

    /// The earlier turns a new question sees (failed ones left out).
    pub fn history(&self) -> Vec<Turn> {
        self.entries
            .iter()
            .filter(|e| matches!(e.status, AnswerStatus::Done | AnswerStatus::Cancelled))
            .map(|e| Turn {
                question: e.question.clone(),
                answer: e.answer(),
            })
            .collect()
    }

    /// The sources of the latest answer.
    pub fn current_sources(&self) -> &[Source] {
        self.entries.last().map_or(&[], |e| e.sources.as_slice())
    }

    /// The transition function: what `event` does in the current state.
    pub fn handle(&mut self, event: ChatEvent) -> Result<Vec<Effect>, Refusal> {
        use ChatEvent as E;
        use TurnState as S;
        match (self.turn, event) {
            (S::Idle, E::Ask { question, settings }) => match &self.engine_error {
                Some(e) => Err(Refusal::NoModel(e.clone())),
                None => Ok(self.ask(question, settings)),
            },
            (S::Idle, E::Clear) => {
                self.entries.clear();
                Ok(vec![Effect::Persist])
            }
            (_, E::Ask { .. } | E::Clear) => Err(Refusal::Busy),
            (S::Idle | S::Cancelling, E::Cancel) => Ok(vec![]),
            (_, E::Cancel) => {
                self.turn = S::Cancelling;
                Ok(vec![Effect::Cancel])
            }
            (S::Idle, E::IndexChanged) => Ok(vec![]),
            (_, E::IndexChanged) => {
                if let Some(last) = self.entries.last_mut() {
                    last.index_changed = true;
                }
                Ok(vec![])
            }
            (state, E::Engine(reply)) => Ok(self.on_reply(state, reply)),
        }
    }

    fn ask(&mut self, question: String, settings: EngineConfig) -> Vec<Effect> {
        let history = self.history();
        self.entries
            .push(Entry::asked(question.clone(), settings.mode));
        self.turn = TurnState::Retrieving;
        vec![Effect::Ask {
            question,
            history,
            settings,
        }]
    }

    fn on_reply(&mut self, state: TurnState, reply: Reply) -> Vec<Effect> {
        use TurnState as S;
        match (state, reply) {
            (_, Reply::Loaded(info)) => {
                self.engine = Some(info);
                vec![]
            }
            (_, Reply::LoadFailed(e)) => {
                // A question sent while the model was loading, or an engine that died
                // mid-answer: no answer will come.
                if let Some(last) = self.streaming() {
                    last.status = AnswerStatus::Failed(e.clone());
                }
                self.turn = S::Idle;
                self.engine_error = Some(e);
                vec![]
            }
            (_, Reply::WorkerLost(e)) => {
                // The answer in progress will not come; the engine reloads on this machine (a
                // Loaded follows), meanwhile questions wait as while loading.
                let failed = self.streaming().map(|last| {
                    last.status = AnswerStatus::Failed(e);
                });
                self.turn = S::Idle;
                self.engine = None;
                if failed.is_some() {
                    vec![Effect::Persist]
                } else {
                    vec![]
                }
            }
            // Nothing of a turn comes after its end: a stray reply must not start a turn that
            // would then never finish.
            (S::Idle, _) => vec![],
            (_, Reply::Started { sources, view }) => {
                if let Some(last) = self.streaming() {
                    last.sources = sources;
                    last.view = Some(view);
                }
                vec![]
            }
            (state, Reply::Event(event)) => {
                self.on_decode_event(state, event);
                vec![]
            }
            (_, Reply::Finished(answer)) => {
                let cancelled = answer.output.stats.cancelled;
                if let Some(last) = self.streaming() {
                    // The tokens streamed are the answer: the end brings its statistics and how
                    // it ended, not the tokens again.
                    last.stats = Some(answer.output.stats);
                    last.status = if cancelled {
                        AnswerStatus::Cancelled
                    } else {
                        AnswerStatus::Done
                    };
                }
                self.turn = S::Idle;
                vec![Effect::Persist]
            }
            (_, Reply::Failed(e)) => {
                if let Some(last) = self.streaming() {
                    last.status = AnswerStatus::Failed(e);
                }
                self.turn = S::Idle;
                vec![Effect::Persist]
            }
        }
    }

    fn on_decode_event(&mut self, state: TurnState, event: Event) {
        use TurnState as S;
        match (state, event) {
            // Late progress must not undo a cancel.
            (S::Cancelling, Event::Prefill { .. }) => {}
            (
                _,
                Event::Prefill {
                    done,
                    total,
                    seconds,
                },
            ) => {
                self.turn = S::Prefilling {
                    done,
                    total,
                    seconds,
                }
            }
            (state, Event::Token(t)) => {
                if state != S::Cancelling {
                    self.turn = S::Generating;
                }
                if let Some(last) = self.streaming() {
                    last.tokens.push(t);
                }
            }
            (
                _,
                Event::Round {
                    drafted,
                    accepted,
                    stats,
                    ..
                },
            ) => {
                if let Some(last) = self.streaming() {
                    // The sparkline shows drafts; plain target steps have none.
                    if drafted > 0 {
                        last.rounds.push(accepted as u64);
                    }
                    last.stats = Some(*stats);
                }
            }
            (_, Event::Done(stats)) => {
                if let Some(last) = self.streaming() {
                    last.stats = Some(stats);
                }
            }
        }
    }

    fn streaming(&mut self) -> Option<&mut Entry> {
        self.entries
            .last_mut()
            .filter(|e| e.status == AnswerStatus::Streaming)
    }

    /// The conversation as Markdown, with sources.
    pub fn markdown(&self, folder: &str) -> String {
        let mut out = format!("# rapid-chat: {folder}\n\n");
        for e in &self.entries {
            out.push_str(&format!("## {}\n\n{}\n\n", e.question, e.answer().trim()));
            match &e.status {
                AnswerStatus::Cancelled => out.push_str("_(cancelled)_\n\n"),
                AnswerStatus::Failed(err) => out.push_str(&format!("_(failed: {err})_\n\n")),
                _ => {}
            }
            if !e.sources.is_empty() {
                out.push_str("Sources:\n");
                for s in &e.sources {
                    let page = s.page.map(|p| format!(", page {p}")).unwrap_or_default();
                    out.push_str(&format!("- {}{page} (score {:.2})\n", s.path, s.score));
                }
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{finished, gen_token, prefill, settings, token};
    use super::*;
    use crate::speculative::TokenKind;

    fn ask(c: &mut Conversation, question: &str) -> Result<Vec<Effect>, Refusal> {
        c.handle(ChatEvent::Ask {
            question: question.into(),
            settings: settings(),
        })
    }

    fn reply(c: &mut Conversation, reply: Reply) -> Vec<Effect> {
        c.handle(ChatEvent::Engine(reply))
            .unwrap_or_else(|r| panic!("a reply was refused: {r:?}"))
    }

    fn cancel(c: &mut Conversation) -> Vec<Effect> {
        c.handle(ChatEvent::Cancel)
            .unwrap_or_else(|r| panic!("cancel was refused: {r:?}"))
    }

    #[test]
    fn a_turn_goes_idle_retrieving_prefilling_generating_done() {
        let mut c = Conversation::default();
        assert_eq!(
            ask(&mut c, "What port?"),
            Ok(vec![Effect::Ask {
                question: "What port?".into(),
                history: vec![],
                settings: settings()
            }])
        );
        assert_eq!(c.turn, TurnState::Retrieving);
        reply(
            &mut c,
            Reply::Started {
                sources: vec![],
                view: View::default(),
            },
        );
        reply(&mut c, prefill(10, 100));
        assert_eq!(
            c.turn,
            TurnState::Prefilling {
                done: 10,
                total: 100,
                seconds: 0.0
            }
        );
        reply(&mut c, token("80", TokenKind::Accepted));
        reply(&mut c, token("80", TokenKind::Corrected));
        assert_eq!(c.turn, TurnState::Generating);
        assert_eq!(c.entries[0].answer(), "8080");
        let t = gen_token("8080", TokenKind::Bonus);
        assert_eq!(
            reply(&mut c, finished(vec![t], false)),
            vec![Effect::Persist]
        );
        assert_eq!(c.turn, TurnState::Idle);
        assert_eq!(c.entries[0].status, AnswerStatus::Done);
        // A follow-up sees the earlier turn.
        let effects = ask(&mut c, "And the host?").unwrap_or_else(|r| panic!("{r:?}"));
        let Effect::Ask { history, .. } = &effects[0] else {
            panic!("{effects:?}")
        };
        assert_eq!(
            history,
            &vec![Turn {
                question: "What port?".into(),
                answer: "8080".into()
            }]
        );
    }

    #[test]
    fn cancel_during_prefill_and_during_generation() {
        let mut c = Conversation::default();
        assert!(cancel(&mut c).is_empty(), "nothing to cancel when idle");
        let _ = ask(&mut c, "q1");
        reply(&mut c, prefill(1, 9));
        assert_eq!(cancel(&mut c), vec![Effect::Cancel]);
        assert_eq!(c.turn, TurnState::Cancelling);
        // A second cancel does not cancel twice; late prefill events do not undo the cancel.
        assert!(cancel(&mut c).is_empty());
        reply(&mut c, prefill(2, 9));
        assert_eq!(c.turn, TurnState::Cancelling);
        reply(&mut c, finished(vec![], true));
        assert_eq!(c.entries[0].status, AnswerStatus::Cancelled);
        assert_eq!(c.turn, TurnState::Idle);

        let _ = ask(&mut c, "q2");
        reply(&mut c, token("partial", TokenKind::Accepted));
        assert_eq!(cancel(&mut c), vec![Effect::Cancel]);
        reply(&mut c, token(" answer", TokenKind::Accepted));
        assert_eq!(c.turn, TurnState::Cancelling, "late tokens do not undo it");
        let kept = vec![
            gen_token("partial", TokenKind::Accepted),
            GenToken {
                id: 2,
                ..gen_token(" answer", TokenKind::Accepted)
            },
        ];
        reply(&mut c, finished(kept, true));
        assert_eq!(c.entries[1].status, AnswerStatus::Cancelled);
        assert_eq!(
            c.entries[1].answer(),
            "partial answer",
            "the partial answer stays"
        );
        assert!(c.markdown("docs").contains("_(cancelled)_"));
    }

    #[test]
    fn a_lost_worker_fails_the_turn_and_the_next_question_waits_for_the_reload() {
        let info = EngineInfo {
            target: "m.gguf".into(),
            drafter: "m.gguf".into(),
            self_speculation: true,
            device: "RPC0 worker 127.0.0.1:50053, 30/30 layers, KV with the layers".into(),
            target_ctx: 2048,
            draft_ctx: 1024,
            ctx_bound: "set".into(),
        };
        let mut c = Conversation::default();
        reply(&mut c, Reply::Loaded(info.clone()));
        ask(&mut c, "q").unwrap();
        let effects = reply(
            &mut c,
            Reply::WorkerLost("worker 127.0.0.1:50053 stopped".into()),
        );
        assert_eq!(effects, vec![Effect::Persist]);
        assert_eq!(c.turn, TurnState::Idle);
        assert!(
            c.engine.is_none(),
            "the sidebar shows the model loading again"
        );
        assert!(matches!(
            &c.entries[0].status,
            AnswerStatus::Failed(e) if e.contains("50053")
        ));
        // While idle, the loss fails nothing; the reloaded engine takes the next question.
        assert!(reply(&mut c, Reply::WorkerLost("again".into())).is_empty());
        reply(&mut c, Reply::Loaded(info));
        assert!(ask(&mut c, "q2").is_ok());
    }

    #[test]
    fn an_engine_error_fails_the_turn_and_the_next_question_goes_through() {
        let mut c = Conversation::default();
        let _ = ask(&mut c, "q");
        assert_eq!(
            reply(&mut c, Reply::Failed("context full".into())),
            vec![Effect::Persist]
        );
        assert_eq!(
            c.entries[0].status,
            AnswerStatus::Failed("context full".into())
        );
        assert_eq!(c.turn, TurnState::Idle);
        assert!(
            c.history().is_empty(),
            "failed turns are not sent as history"
        );
        assert!(ask(&mut c, "again").is_ok_and(|e| e.len() == 1));
        assert!(c.markdown("docs").contains("_(failed: context full)_"));
    }

    #[test]
    fn a_model_that_failed_to_load_blocks_questions_with_a_reason() {
        let mut c = Conversation::default();
        reply(&mut c, Reply::LoadFailed("not a GGUF".into()));
        assert_eq!(ask(&mut c, "q"), Err(Refusal::NoModel("not a GGUF".into())));
        assert!(c.entries.is_empty());
    }

    #[test]
    fn an_engine_that_dies_mid_answer_fails_the_turn_instead_of_hanging() {
        let mut c = Conversation::default();
        let _ = ask(&mut c, "q");
        reply(&mut c, token("par", TokenKind::Target));
        reply(
            &mut c,
            Reply::LoadFailed("the engine stopped unexpectedly".into()),
        );
        assert_eq!(c.turn, TurnState::Idle);
        assert!(matches!(&c.entries[0].status, AnswerStatus::Failed(e) if e.contains("stopped")));
        assert!(
            matches!(ask(&mut c, "again"), Err(Refusal::NoModel(_))),
            "no engine: refused with a reason"
        );
    }

    #[test]
    fn a_file_change_mid_answer_marks_it_and_does_not_disturb_it() {
        let mut c = Conversation::default();
        assert_eq!(c.handle(ChatEvent::IndexChanged), Ok(vec![]));
        let _ = ask(&mut c, "q");
        reply(&mut c, token("a", TokenKind::Target));
        assert_eq!(c.handle(ChatEvent::IndexChanged), Ok(vec![]));
        assert_eq!(c.turn, TurnState::Generating);
        reply(&mut c, token("b", TokenKind::Target));
        assert!(c.entries[0].index_changed);
        assert_eq!(c.entries[0].answer(), "ab");
        reply(&mut c, finished(vec![], false));
        let _ = ask(&mut c, "next");
        assert!(
            !c.entries[1].index_changed,
            "a change before it is not marked"
        );
    }

    #[test]
    fn asking_or_clearing_while_busy_is_refused() {
        let mut c = Conversation::default();
        let _ = ask(&mut c, "q");
        assert_eq!(ask(&mut c, "another"), Err(Refusal::Busy));
        assert_eq!(c.handle(ChatEvent::Clear), Err(Refusal::Busy));
        assert_eq!(c.entries.len(), 1);
        reply(&mut c, finished(vec![], false));
        assert_eq!(c.handle(ChatEvent::Clear), Ok(vec![Effect::Persist]));
        assert!(c.entries.is_empty());
    }

    #[test]
    fn rounds_and_stats_are_kept_on_the_answer_being_written() {
        let mut c = Conversation::default();
        let _ = ask(&mut c, "q");
        let round = |drafted, accepted, rounds| {
            Reply::Event(Event::Round {
                source: crate::speculative::adaptive::DraftSource::Model,
                drafted,
                accepted,
                t_draft: std::time::Duration::from_millis(30),
                t_draft_step: None,
                t_verify: std::time::Duration::from_millis(70),
                stats: Box::new(Stats {
                    rounds,
                    decode_s: 0.1 * rounds as f64,
                    ..Stats::default()
                }),
            })
        };
        reply(&mut c, round(4, 3, 1));
        reply(&mut c, round(0, 0, 2));
        let e = &c.entries[0];
        assert_eq!(e.rounds, [3], "plain target steps are not in the sparkline");
        let running = e.stats.as_ref().expect("the running statistics");
        assert_eq!(running.rounds, 2);
        assert!((running.decode_s - 0.2).abs() < 1e-9);
        let stats = Stats {
            generated_tokens: 5,
            ..Stats::default()
        };
        reply(&mut c, Reply::Event(Event::Done(stats.clone())));
        assert_eq!(c.entries[0].stats, Some(stats));
    }

    #[test]
    fn replies_after_a_turn_ended_start_nothing() {
        let mut c = Conversation::default();
        let _ = ask(&mut c, "q");
        reply(&mut c, finished(vec![], false));
        let done = c.entries.clone();
        assert!(reply(&mut c, prefill(1, 2)).is_empty());
        assert!(reply(&mut c, token("late", TokenKind::Target)).is_empty());
        assert!(reply(&mut c, Reply::Failed("late".into())).is_empty());
        assert_eq!(c.turn, TurnState::Idle, "no turn is stuck busy");
        assert_eq!(c.entries, done);
    }
}

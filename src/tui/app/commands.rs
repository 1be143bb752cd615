//! The slash commands, in one table: each command's name, argument, description and handler.
//! The parser, the "unknown command" message and the help popup's list are all made from
//! [`COMMANDS`], so adding a command is adding a row. The value commands (`/mode`, `/gamma`,
//! `/eta`, `/temp`) all go through [`set_setting`], the one place a setting typed in the UI is
//! checked.

use std::path::PathBuf;

use super::App;
use super::conversation::ChatEvent;
use super::effect::Effect;
use crate::config::EngineConfig;

/// What a command takes after its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    None,
    /// Must be given; named as in the syntax ("N").
    Required(&'static str),
    /// May be given ("FILE"); shown in brackets.
    Optional(&'static str),
}

/// What a command did: a message for the status line (empty for none) and work for the runtime;
/// or what went wrong.
type Outcome = Result<(String, Vec<Effect>), String>;

/// One slash command.
pub struct Command {
    pub name: &'static str,
    pub arg: Arg,
    pub description: &'static str,
    /// Called with the command's name and argument, once the argument is known to fit `arg`.
    run: fn(&mut App, &str, Option<&str>) -> Outcome,
}

impl Command {
    /// How it is typed: "/gamma N", "/save [FILE]", "/clear".
    pub fn syntax(&self) -> String {
        match self.arg {
            Arg::None => format!("/{}", self.name),
            Arg::Required(a) => format!("/{} {a}", self.name),
            Arg::Optional(a) => format!("/{} [{a}]", self.name),
        }
    }
}

/// Every slash command.
pub const COMMANDS: [Command; 8] = [
    Command {
        name: "mode",
        arg: Arg::Required("rapid|ar|sd|rag"),
        description: "decoding mode",
        run: setting,
    },
    Command {
        name: "gamma",
        arg: Arg::Required("N"),
        description: "draft length, 1 to 64",
        run: setting,
    },
    Command {
        name: "eta",
        arg: Arg::Required("X"),
        description: "knowledge transfer, 0 (off) or more",
        run: setting,
    },
    Command {
        name: "temp",
        arg: Arg::Required("X"),
        description: "temperature, 0 (greedy) or more",
        run: setting,
    },
    Command {
        name: "sources",
        arg: Arg::None,
        description: "show/hide sources",
        run: sources,
    },
    Command {
        name: "clear",
        arg: Arg::None,
        description: "forget the conversation",
        run: clear,
    },
    Command {
        name: "save",
        arg: Arg::Optional("FILE"),
        description: "save as Markdown with sources",
        run: save,
    },
    Command {
        name: "help",
        arg: Arg::None,
        description: "the keys and these commands",
        run: show_help,
    },
];

/// (syntax, description) for every command, for the help popup.
pub fn help() -> Vec<(String, &'static str)> {
    COMMANDS
        .iter()
        .map(|c| (c.syntax(), c.description))
        .collect()
}

/// Finds the command `line` names ("/gamma 8") and its argument (the first word after the name),
/// or says what is wrong: an unknown name lists every command.
pub fn parse(line: &str) -> Result<(&'static Command, Option<&str>), String> {
    let mut words = line.strip_prefix('/').unwrap_or(line).split_whitespace();
    let name = words.next().unwrap_or("");
    let arg = words.next();
    let Some(command) = COMMANDS.iter().find(|c| c.name == name) else {
        let all: Vec<String> = COMMANDS.iter().map(Command::syntax).collect();
        return Err(format!("unknown command {line}: {}", all.join(", ")));
    };
    match (command.arg, arg) {
        (Arg::None, Some(_)) | (Arg::Required(_), None) => Err(format!(
            "usage: {} ({})",
            command.syntax(),
            command.description
        )),
        _ => Ok((command, arg)),
    }
}

/// Runs the command typed as `line`; its message, or what went wrong, goes to the status line.
pub fn run(app: &mut App, line: &str) -> Vec<Effect> {
    match parse(line).and_then(|(command, arg)| (command.run)(app, command.name, arg)) {
        Ok((message, effects)) => {
            app.notice = Some(message).filter(|m| !m.is_empty());
            effects
        }
        Err(e) => {
            app.notice = Some(e);
            vec![]
        }
    }
}

/// Sets the turn setting `name` ("mode", "gamma", "eta", "temp") from the text typed, through
/// the settings' own parsing and validation (the config file's and the flags'). On success, the
/// message for the status line.
pub fn set_setting(settings: &mut EngineConfig, name: &str, value: &str) -> Result<String, String> {
    if !["mode", "gamma", "eta", "temp"].contains(&name) {
        return Err(format!("no setting named {name}"));
    }
    settings
        .set(name, value)
        .map_err(|e| format!("/{name}: {e:#}"))?;
    Ok(match name {
        "mode" => format!("mode: {}", settings.mode),
        "gamma" => format!("γ = {}", settings.gamma),
        "eta" => format!("η = {}", settings.eta),
        _ => format!("temperature = {}", settings.temp),
    })
}

fn setting(app: &mut App, name: &str, value: Option<&str>) -> Outcome {
    // `parse` made sure the value is there.
    let message = set_setting(&mut app.settings, name, value.unwrap_or_default())?;
    Ok((message, vec![]))
}

fn sources(app: &mut App, _: &str, _: Option<&str>) -> Outcome {
    app.toggle_sources();
    let message = if app.show_sources {
        "sources shown"
    } else {
        "sources hidden"
    };
    Ok((message.into(), vec![]))
}

fn clear(app: &mut App, _: &str, _: Option<&str>) -> Outcome {
    let effects = app
        .conversation
        .handle(ChatEvent::Clear)
        .map_err(|r| app.refusal(&r))?;
    app.scroll = 0;
    Ok(("conversation cleared".into(), effects))
}

fn save(app: &mut App, _: &str, file: Option<&str>) -> Outcome {
    let path = PathBuf::from(file.unwrap_or("rapid-chat-conversation.md"));
    let markdown = app.conversation.markdown(&app.folder);
    Ok((String::new(), vec![Effect::Save { path, markdown }]))
}

fn show_help(app: &mut App, _: &str, _: Option<&str>) -> Outcome {
    app.show_help = true;
    Ok((String::new(), vec![]))
}

#[cfg(test)]
mod tests {
    use super::super::AppEvent;
    use super::super::fixtures::{app, finished, settings};
    use super::*;
    use crate::config::Mode;

    /// A line that calls `c` with an argument of the right kind.
    fn example(c: &Command) -> String {
        match c.arg {
            Arg::None | Arg::Optional(_) => format!("/{}", c.name),
            Arg::Required(_) => format!("/{} 1", c.name),
        }
    }

    #[test]
    fn every_command_in_the_table_parses_with_its_argument() {
        for c in &COMMANDS {
            let line = example(c);
            let (found, _) = parse(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(found.name, c.name);
        }
        let (save, file) = parse("/save notes.md").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((save.name, file), ("save", Some("notes.md")));
        assert!(parse("/save").is_ok(), "the file is optional");
    }

    #[test]
    fn a_missing_or_extra_argument_shows_the_usage() {
        assert_eq!(
            parse("/gamma").err().as_deref(),
            Some("usage: /gamma N (draft length, 1 to 64)")
        );
        assert!(parse("/clear all").is_err_and(|e| e.starts_with("usage: /clear")));
    }

    #[test]
    fn an_unknown_command_lists_every_command_of_the_table() {
        let Err(e) = parse("/bogus x") else {
            panic!("/bogus parsed")
        };
        assert!(e.starts_with("unknown command /bogus x: "), "{e}");
        for c in &COMMANDS {
            assert!(e.contains(&c.syntax()), "{} missing from {e}", c.name);
        }
        assert!(e.contains("/mode rapid|ar|sd|rag") && e.contains("/save [FILE]"));
    }

    #[test]
    fn the_help_lists_every_command_with_its_description() {
        let help = help();
        assert_eq!(help.len(), COMMANDS.len());
        for c in &COMMANDS {
            assert!(
                help.iter()
                    .any(|(syntax, what)| *syntax == c.syntax() && *what == c.description),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn set_setting_sets_each_value_and_refuses_bad_ones_unchanged() {
        let mut s = settings();
        assert_eq!(set_setting(&mut s, "mode", "sd").as_deref(), Ok("mode: sd"));
        assert_eq!(s.mode, Mode::Sd);
        assert!(set_setting(&mut s, "gamma", "8").is_ok());
        assert!(set_setting(&mut s, "eta", "0.5").is_ok());
        assert!(set_setting(&mut s, "temp", "0.7").is_ok());
        assert_eq!((s.gamma, s.eta, s.temp), (8, 0.5, 0.7));
        let before = s.clone();
        for (name, bad) in [
            ("mode", "warp"),
            ("gamma", "0"),
            ("gamma", "65"),
            ("eta", "-1"),
            ("temp", "NaN"),
            ("top_p", "1"),
        ] {
            assert!(set_setting(&mut s, name, bad).is_err(), "{name} {bad}");
        }
        assert_eq!(s, before);
    }

    #[test]
    fn slash_commands_change_settings_and_save() {
        let mut app = app();
        run(&mut app, "/mode sd");
        assert_eq!(app.settings.mode, Mode::Sd);
        run(&mut app, "/gamma 8");
        run(&mut app, "/eta 0.5");
        run(&mut app, "/temp 0.7");
        assert_eq!(
            (app.settings.gamma, app.settings.eta, app.settings.temp),
            (8, 0.5, 0.7)
        );
        run(&mut app, "/gamma 0");
        assert!(app.notice.as_deref().is_some_and(|n| n.contains("1 to 64")));
        assert_eq!(app.settings.gamma, 8);
        run(&mut app, "/mode warp");
        assert!(
            app.notice
                .as_deref()
                .is_some_and(|n| n.contains("unknown mode"))
        );
        run(&mut app, "/sources");
        assert!(app.show_sources);
        run(&mut app, "/bogus");
        assert!(
            app.notice
                .as_deref()
                .is_some_and(|n| n.contains("/save [FILE]"))
        );
        let effects = run(&mut app, "/save out.md");
        assert!(
            matches!(&effects[..], [Effect::Save { path, .. }] if path == &PathBuf::from("out.md"))
        );
        run(&mut app, "/help");
        assert!(app.show_help);
        assert_eq!(
            app.notice, None,
            "/help has nothing to say on the status line"
        );
    }

    #[test]
    fn clear_forgets_the_conversation_but_not_while_an_answer_runs() {
        let mut app = app();
        let ask = ChatEvent::Ask {
            question: "q".into(),
            settings: settings(),
        };
        app.conversation
            .handle(ask)
            .unwrap_or_else(|r| panic!("{r:?}"));
        assert!(run(&mut app, "/clear").is_empty());
        assert!(app.notice.as_deref().is_some_and(|n| n.contains("Esc")));
        assert_eq!(app.conversation.entries.len(), 1);
        app.handle(AppEvent::Engine(finished(vec![], false)));
        assert_eq!(run(&mut app, "/clear"), vec![Effect::Persist]);
        assert!(app.conversation.entries.is_empty());
        assert_eq!(app.notice.as_deref(), Some("conversation cleared"));
    }
}

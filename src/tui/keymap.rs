//! Every user intent, named once, and the keys bound to it. The help popup and the key hints are
//! generated from this table, so key help is never written twice.

use anyhow::{Result, bail};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// What the user can ask for with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Send,
    NewLine,
    Cancel,
    Quit,
    Help,
    ScrollUp,
    ScrollDown,
    PageUp,
    PageDown,
    HistoryPrev,
    HistoryNext,
    ToggleSources,
    ToggleColors,
    Focus,
}

impl Action {
    pub const ALL: [Action; 14] = [
        Action::Send,
        Action::NewLine,
        Action::Cancel,
        Action::Quit,
        Action::Help,
        Action::ScrollUp,
        Action::ScrollDown,
        Action::PageUp,
        Action::PageDown,
        Action::HistoryPrev,
        Action::HistoryNext,
        Action::ToggleSources,
        Action::ToggleColors,
        Action::Focus,
    ];

    /// The name used in `config.toml` (`[tui.keys]`).
    pub fn name(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::NewLine => "newline",
            Action::Cancel => "cancel",
            Action::Quit => "quit",
            Action::Help => "help",
            Action::ScrollUp => "scroll_up",
            Action::ScrollDown => "scroll_down",
            Action::PageUp => "page_up",
            Action::PageDown => "page_down",
            Action::HistoryPrev => "history_prev",
            Action::HistoryNext => "history_next",
            Action::ToggleSources => "toggle_sources",
            Action::ToggleColors => "toggle_colors",
            Action::Focus => "focus",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|a| a.name()).collect();
                anyhow::anyhow!("unknown action {name:?} (actions: {})", names.join(", "))
            })
    }

    /// What it does, for the help popup.
    pub fn description(self) -> &'static str {
        match self {
            Action::Send => "send the question",
            Action::NewLine => "new line in the question",
            Action::Cancel => "stop the answer (it stays, marked cancelled)",
            Action::Quit => "quit (q too, outside the input)",
            Action::Help => "this help (? too, on an empty input)",
            Action::ScrollUp => "scroll up (mouse wheel too)",
            Action::ScrollDown => "scroll down",
            Action::PageUp => "page up",
            Action::PageDown => "page down",
            Action::HistoryPrev => "previous question from history",
            Action::HistoryNext => "next question from history",
            Action::ToggleSources => "show/hide the sources the drafter was given",
            Action::ToggleColors => "token colouring on/off",
            Action::Focus => "move focus: input, chat, sources",
        }
    }
}

/// Letters that act only where nothing is being typed (outside the input, or for help on an empty
/// input). They cannot be bindings: bound, they would be taken from every question typed.
pub const HELP_CHAR: char = '?';
pub const QUIT_CHAR: char = 'q';
/// Move the selection in the sources pane, when it has the focus.
pub const SOURCE_NEXT_CHAR: char = 'j';
pub const SOURCE_PREV_CHAR: char = 'k';

/// A key with its modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub mods: KeyModifiers,
}

impl Key {
    pub fn of(event: &KeyEvent) -> Self {
        // Shift is part of the character for printable keys.
        let mods = match event.code {
            KeyCode::Char(_) => event.modifiers - KeyModifiers::SHIFT,
            _ => event.modifiers,
        };
        Self {
            code: event.code,
            mods,
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.mods.contains(KeyModifiers::CONTROL) {
            f.write_str("Ctrl-")?;
        }
        if self.mods.contains(KeyModifiers::ALT) {
            f.write_str("Alt-")?;
        }
        if self.mods.contains(KeyModifiers::SHIFT) {
            f.write_str("Shift-")?;
        }
        match self.code {
            KeyCode::Char(c) => write!(f, "{}", c.to_ascii_uppercase()),
            KeyCode::Enter => f.write_str("Enter"),
            KeyCode::Esc => f.write_str("Esc"),
            KeyCode::Tab => f.write_str("Tab"),
            KeyCode::Up => f.write_str("Up"),
            KeyCode::Down => f.write_str("Down"),
            KeyCode::PageUp => f.write_str("PgUp"),
            KeyCode::PageDown => f.write_str("PgDn"),
            KeyCode::F(n) => write!(f, "F{n}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Parses "ctrl-c", "alt-enter", "f2", "pageup", "x".
pub fn parse_key(text: &str) -> Result<Key> {
    let lower = text.trim().to_ascii_lowercase();
    let mut mods = KeyModifiers::NONE;
    let mut rest = lower.as_str();
    loop {
        if let Some(r) = rest.strip_prefix("ctrl-") {
            mods |= KeyModifiers::CONTROL;
            rest = r;
        } else if let Some(r) = rest.strip_prefix("alt-") {
            mods |= KeyModifiers::ALT;
            rest = r;
        } else if let Some(r) = rest.strip_prefix("shift-") {
            mods |= KeyModifiers::SHIFT;
            rest = r;
        } else {
            break;
        }
    }
    let code = match rest {
        "enter" | "return" => KeyCode::Enter,
        "esc" | "escape" => KeyCode::Esc,
        "tab" => KeyCode::Tab,
        "up" => KeyCode::Up,
        "down" => KeyCode::Down,
        "pageup" | "pgup" => KeyCode::PageUp,
        "pagedown" | "pgdn" => KeyCode::PageDown,
        "home" => KeyCode::Home,
        "end" => KeyCode::End,
        f if f.starts_with('f') && f.len() > 1 && f[1..].parse::<u8>().is_ok() => {
            KeyCode::F(f[1..].parse().unwrap_or(1))
        }
        c if c.chars().count() == 1 => KeyCode::Char(c.chars().next().unwrap_or(' ')),
        _ => bail!("{text:?} is not a key (examples: \"ctrl-c\", \"alt-enter\", \"f2\", \"x\")"),
    };
    Ok(Key { code, mods })
}

/// Keys bound to actions: the defaults plus the user's additions.
#[derive(Debug, Clone)]
pub struct Keymap {
    bindings: Vec<(Key, Action)>,
}

impl Default for Keymap {
    fn default() -> Self {
        let k = |code, mods| Key { code, mods };
        let none = KeyModifiers::NONE;
        let ctrl = KeyModifiers::CONTROL;
        let bindings = vec![
            (k(KeyCode::Enter, none), Action::Send),
            (k(KeyCode::Enter, KeyModifiers::ALT), Action::NewLine),
            (k(KeyCode::Char('j'), ctrl), Action::NewLine),
            (k(KeyCode::Esc, none), Action::Cancel),
            (k(KeyCode::Char('c'), ctrl), Action::Quit),
            (k(KeyCode::F(1), none), Action::Help),
            (k(KeyCode::Up, none), Action::HistoryPrev),
            (k(KeyCode::Down, none), Action::HistoryNext),
            (k(KeyCode::Up, KeyModifiers::SHIFT), Action::ScrollUp),
            (k(KeyCode::Down, KeyModifiers::SHIFT), Action::ScrollDown),
            (k(KeyCode::PageUp, none), Action::PageUp),
            (k(KeyCode::PageDown, none), Action::PageDown),
            (k(KeyCode::Char('o'), ctrl), Action::ToggleSources),
            (k(KeyCode::F(2), none), Action::ToggleSources),
            (k(KeyCode::Char('t'), ctrl), Action::ToggleColors),
            (k(KeyCode::Tab, none), Action::Focus),
        ];
        Self { bindings }
    }
}

impl Keymap {
    /// The defaults with `extra` (action name -> key, the config's `[tui.keys]`) added in
    /// front; errors name the config key.
    pub fn with_overrides(extra: &std::collections::BTreeMap<String, String>) -> Result<Self> {
        let mut map = Self::default();
        for (action, key) in extra {
            let named = |e: anyhow::Error| anyhow::anyhow!("tui.keys.{action}: {e}");
            let binding = (
                parse_key(key).map_err(named)?,
                Action::from_name(action).map_err(named)?,
            );
            map.bindings.insert(0, binding);
        }
        Ok(map)
    }

    pub fn action(&self, key: Key) -> Option<Action> {
        self.bindings
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, a)| *a)
    }

    /// The keys bound to `action`, as the user types them.
    pub fn keys_for(&self, action: Action) -> Vec<String> {
        self.bindings
            .iter()
            .filter(|(_, a)| *a == action)
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// The key to name in a hint for `action`: the first bound, which is the user's own when the
    /// config rebinds it. The defaults bind every action, so it is never empty.
    pub fn hint(&self, action: Action) -> String {
        self.bindings
            .iter()
            .find(|(_, a)| *a == action)
            .map(|(k, _)| k.to_string())
            .unwrap_or_default()
    }

    /// (keys, description) for every action, for the help popup.
    pub fn help(&self) -> Vec<(String, &'static str)> {
        Action::ALL
            .iter()
            .map(|&a| (self.keys_for(a).join(" / "), a.description()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_a_default_key_to_hint() {
        let keys = Keymap::default();
        for action in Action::ALL {
            assert!(!keys.hint(action).is_empty(), "{action:?}");
        }
        assert_eq!(keys.hint(Action::Send), "Enter");
        assert_eq!(keys.hint(Action::NewLine), "Alt-Enter", "the first of two");
    }

    #[test]
    fn a_rebinding_in_the_config_is_the_key_hinted() {
        let extra = [("send".to_owned(), "ctrl-s".to_owned())].into();
        let keys = Keymap::with_overrides(&extra).unwrap();
        assert_eq!(keys.hint(Action::Send), "Ctrl-S");
        assert_eq!(keys.keys_for(Action::Send), ["Ctrl-S", "Enter"]);
    }
}

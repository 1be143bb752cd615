//! The whole application in a real terminal (tmux), with the real model and the demo corpus:
//! start, wait for the index, ask, read the answer and the statistics, cancel a second answer
//! with Esc, quit, and check the terminal is restored.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

struct Tmux {
    session: String,
}

impl Tmux {
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    fn literal(&self, text: &str) {
        let status = Command::new("tmux")
            .args(["send-keys", "-l", "-t", &self.session, text])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    fn format(&self, f: &str) -> String {
        let out = Command::new("tmux")
            .args(["display", "-p", "-t", &self.session, f])
            .output()
            .expect("tmux display");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until `pred` holds for the screen, or fails showing the screen.
    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}

/// The number after `label` on the sidebar line that has it.
fn sidebar_number(screen: &str, label: &str) -> f64 {
    screen
        .lines()
        .filter_map(|l| {
            l.split('│')
                .map(str::trim)
                .find(|cell| cell.starts_with(label))
        })
        .filter_map(|cell| {
            cell[label.len()..]
                .split_whitespace()
                .next()?
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<f64>()
                .ok()
        })
        .next()
        .unwrap_or(0.0)
}

#[test]
fn ask_cancel_and_quit_in_a_real_terminal() {
    let model = common::model_path();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[engine]\nctx = 2048\ndraft_ctx = 1024\nretrieval_budget = 512\nmax_tokens = 300\nthreads = 2\n").unwrap();
    let session = format!("rapid-e2e-{}", std::process::id());
    let command = format!(
        "env RAPID_CHAT_CACHE_DIR={cache} RAPID_CHAT_CONFIG_DIR={cache} RAPID_CHAT_DATA_DIR={cache} {exe} --model {model} --config {config} --new {demo}; echo EXIT=$?; stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon'; sleep 600",
        cache = dir.path().display(),
        exe = common::exe().display(),
        model = model.display(),
        config = config.display(),
        demo = common::demo_dir().display(),
    );
    let status = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "110",
            "-y",
            "32",
            &command,
        ])
        .status()
        .expect("tmux is installed (scripts/install-deps.sh)");
    assert!(status.success());
    let t = Tmux { session };

    let screen = t.wait_for("the index and the model", Duration::from_secs(120), |s| {
        s.contains("indexed 3 files") && s.contains("CPU, 2 threads")
    });
    assert!(screen.contains("rapid-chat"), "{screen}");
    assert_eq!(
        t.format("#{alternate_on}"),
        "1",
        "the UI uses the alternate screen"
    );

    t.literal("On which port does llama-server listen by default?");
    t.keys(&["Enter"]);
    let screen = t.wait_for("the first answer", Duration::from_secs(240), |s| {
        s.contains("[rapid]") && s.contains("tok/s")
    });
    assert!(
        screen.contains("8080"),
        "the answer names the port:\n{screen}"
    );
    assert!(
        sidebar_number(&screen, "tok/s") > 0.0,
        "live tokens/s in the sidebar:\n{screen}"
    );
    // The sidebar counts the answer's drafts as its note does ("accepted A/D"): whether this
    // short answer drafted at all is the policy's choice.
    let drafted_in_note = screen
        .lines()
        .find_map(|l| l.split("accepted ").nth(1)?.split('/').nth(1))
        .and_then(|d| {
            d.trim_end_matches(|c: char| !c.is_ascii_digit())
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("the answer's note counts its drafts:\n{screen}"));
    assert_eq!(
        sidebar_number(&screen, "drafted"),
        drafted_in_note,
        "drafts counted in the sidebar:\n{screen}"
    );
    assert!(
        !screen.contains("llama_") && !screen.contains("load_tensors"),
        "nothing prints over the UI:\n{screen}"
    );

    t.literal("Summarize the terms and conditions of the GNU General Public License in detail.");
    t.keys(&["Enter"]);
    t.wait_for(
        "the second answer to start",
        Duration::from_secs(240),
        |s| s.contains("▍"),
    );
    t.keys(&["Escape"]);
    let screen = t.wait_for("the cancelled marker", Duration::from_secs(60), |s| {
        s.contains("[cancelled]")
    });
    assert!(
        screen.contains("8080"),
        "the first answer is still there:\n{screen}"
    );

    t.keys(&["C-c"]);
    let screen = t.wait_for("the exit", Duration::from_secs(30), |s| s.contains("EXIT="));
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert_eq!(t.format("#{alternate_on}"), "0", "back on the main screen");
    assert_eq!(t.format("#{mouse_any_flag}"), "0", "mouse reporting off");
    assert!(
        screen.lines().any(|l| l.trim() == "icanon"),
        "raw mode off (the shell's icanon is back):\n{screen}"
    );
    assert!(
        !screen.contains("stats"),
        "no UI left on the main screen:\n{screen}"
    );
}

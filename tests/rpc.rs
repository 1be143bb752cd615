//! llama.cpp's RPC workers on one machine: two `rapid-chat worker`s serving this CPU take the
//! model's layers. Greedy answers equal this machine's own; a worker killed mid-answer fails the
//! answer with its name within seconds, and the next question is answered without it; an
//! unreachable worker fails at once.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rapid_chat::config::Config;
use rapid_chat::paths::Dirs;
use rapid_chat::runtime::{Options, Reply, Request, Runtime};
use rapid_chat::speculative::Event;

/// A margin below which two runs may pick different tokens (float sums in another order). The
/// default model's attention runs as flash attention on a CPU, which accumulates in f16, and
/// workers split each batch's work differently from one machine: two such runs' margins were
/// measured up to about half a logit apart (0.53 where one answer ended a token before the
/// other; 0.1 sufficed without flash attention).
const NEAR_TIE: f64 = 0.75;

struct Worker {
    child: Child,
    addr: String,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A worker serving this CPU with one thread, answering the handshake.
fn worker(cache: &std::path::Path) -> Worker {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(common::exe())
        .env("RAPID_CHAT_CACHE_DIR", cache)
        .env("RAPID_CHAT_CONFIG_DIR", cache.join("config"))
        .args(["worker", "--port", &port.to_string(), "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a worker");
    wait_serving(&addr);
    Worker { child, addr }
}

/// What a finished or killed child wrote to stderr.
fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

/// Waits until a worker at `addr` answers the handshake.
fn wait_serving(addr: &str) {
    let started = Instant::now();
    while rapid_chat::llm::rpc::check_worker(addr, Duration::from_secs(1)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker at {addr} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A small real folder: the first part of the demo's llama-server manual.
fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let manual = std::fs::read_to_string(common::demo_dir().join("llama-server.md")).unwrap();
    let cut = manual
        .char_indices()
        .nth(5000)
        .map_or(manual.len(), |(i, _)| i);
    std::fs::write(dir.path().join("llama-server.md"), &manual[..cut]).unwrap();
    dir
}

const SETTINGS: [&str; 14] = [
    "--ctx",
    "2048",
    "--draft-ctx",
    "1024",
    "--retrieval-budget",
    "256",
    "--threads",
    "2",
    "--adaptive",
    "false",
    "--kv-cache",
    "false",
    "--mode",
    "ar",
];

fn ask(cache: &std::path::Path, folder: &std::path::Path, q: &str, extra: &[&str]) -> Output {
    common::model_path();
    Command::new(common::exe())
        .env("RAPID_CHAT_CACHE_DIR", cache)
        .env("RAPID_CHAT_CONFIG_DIR", cache.join("config"))
        .args(["ask", folder.to_str().unwrap(), q, "--json"])
        .args(SETTINGS)
        .args(extra)
        .output()
        .expect("run rapid-chat ask")
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn two_workers_answer_as_this_machine_does() {
    let cache = tempfile::tempdir().unwrap();
    let docs = folder();
    let (a, b) = (worker(cache.path()), worker(cache.path()));
    let rpc = format!("{},{}", a.addr, b.addr);
    for q in [
        "What is llama-server?",
        "Which port does llama-server listen on by default?",
    ] {
        let local = json(&ask(cache.path(), docs.path(), q, &["--max-tokens", "32"]));
        let remote = json(&ask(
            cache.path(),
            docs.path(),
            q,
            &["--max-tokens", "32", "--rpc", &rpc],
        ));
        let device = remote["device"].as_str().unwrap();
        assert!(
            device.contains(&a.addr) && device.contains(&b.addr),
            "the device line names both workers: {device}"
        );
        assert!(local["device"].as_str().unwrap().starts_with("CPU"));
        let (l, r) = (
            local["tokens"].as_array().unwrap(),
            remote["tokens"].as_array().unwrap(),
        );
        match l.iter().zip(r).position(|(x, y)| x["text"] != y["text"]) {
            None if l.len() == r.len() => {}
            None => {
                // One answer ended where the other went on: the going-on token was a near tie
                // with the end.
                let (longer, i) = if l.len() > r.len() {
                    (l, r.len())
                } else {
                    (r, l.len())
                };
                let margin = longer[i]["margin"].as_f64().unwrap();
                assert!(
                    margin < NEAR_TIE,
                    "{q}: one answer ends at token {i}, the other goes on with {} at a margin of \
                     {margin}",
                    longer[i]["text"]
                );
            }
            Some(i) => {
                let margin = l[i]["margin"].as_f64().unwrap();
                assert!(
                    margin < NEAR_TIE,
                    "{q}: token {i} differs ({} vs {}) with a margin of {margin}",
                    l[i]["text"],
                    r[i]["text"]
                );
            }
        }
    }
}

#[test]
fn an_unreachable_worker_fails_at_once_with_its_address() {
    let cache = tempfile::tempdir().unwrap();
    let docs = folder();
    let addr = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = ask(
        cache.path(),
        docs.path(),
        "What is llama-server?",
        &["--rpc", &addr],
    );
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr)
            && err.contains("cannot be reached")
            && err.contains("rapid-chat worker"),
        "{err}"
    );
}

#[test]
fn a_worker_killed_mid_answer_fails_the_ask_command_with_its_name() {
    let cache = tempfile::tempdir().unwrap();
    let docs = folder();
    let (a, mut b) = (worker(cache.path()), worker(cache.path()));
    let rpc = format!("{},{}", a.addr, b.addr);
    common::model_path();
    let mut child = Command::new(common::exe())
        .env("RAPID_CHAT_CACHE_DIR", cache.path())
        .env("RAPID_CHAT_CONFIG_DIR", cache.path().join("config"))
        .args([
            "ask",
            docs.path().to_str().unwrap(),
            "Describe llama-server.",
        ])
        .args(SETTINGS)
        .args(["--max-tokens", "400", "--ignore-eos", "--rpc", &rpc])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The answer is streaming once its first bytes arrive.
    let mut first = [0u8; 8];
    let mut stdout = child.stdout.take().unwrap();
    stdout.read_exact(&mut first).expect("the answer starts");
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    b.child.kill().unwrap();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "still running 30 s after the worker died"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let err = stderr_of(&mut child);
    assert!(
        err.contains(&format!("worker {}", b.addr)) && err.contains("stopped answering"),
        "{err}"
    );
    // The next question, without the dead worker, is answered.
    let out = ask(
        cache.path(),
        docs.path(),
        "What is llama-server?",
        &["--max-tokens", "8", "--rpc", &a.addr],
    );
    assert!(json(&out)["answer"].as_str().is_some());
}

/// In the chat, a worker lost mid-answer fails that answer with its name; the engine reloads on
/// this machine and the next question is answered.
#[test]
fn the_chat_survives_a_lost_worker_and_answers_without_it() {
    let cache = tempfile::tempdir().unwrap();
    let docs = folder();
    let (a, mut b) = (worker(cache.path()), worker(cache.path()));
    let mut config = Config {
        model: Some(common::model_path()),
        ..Config::default()
    };
    config.gpu.rpc = vec![a.addr.clone(), b.addr.clone()];
    let e = &mut config.engine;
    (e.ctx, e.draft_ctx) = (2048.into(), 1024.into());
    (e.retrieval_budget, e.threads, e.kv_cache) = (256, 2, false);
    e.max_tokens = 400;
    e.ignore_eos = true;
    let settings = config.engine.clone();
    let dirs = Dirs {
        config: cache.path().join("config"),
        cache: cache.path().join("cache"),
        data: cache.path().join("data"),
    };
    let rt = Runtime::start(Options {
        folder: docs.path().to_path_buf(),
        config,
        dirs,
        exe: common::exe(),
        new: true,
    })
    .unwrap();
    let next = |what: &str, limit: Duration| -> Reply {
        rt.replies
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("no reply in {limit:?} while waiting for {what}"))
    };
    let loaded = |what: &str| loop {
        match next(what, Duration::from_secs(120)) {
            Reply::Loaded(info) => break info,
            Reply::LoadFailed(e) => panic!("{what}: {e}"),
            _ => {}
        }
    };
    let info = loaded("the engine with workers");
    assert!(info.device.contains(&b.addr), "{}", info.device);
    // Indexing runs beside: wait for the folder's chunks.
    let started = Instant::now();
    while !matches!(
        rt.updates.recv_timeout(Duration::from_secs(60)),
        Ok(rapid_chat::runtime::Update::IndexDone { .. })
    ) {
        assert!(started.elapsed() < Duration::from_secs(120), "indexing");
    }
    let ask = |question: &str| {
        rt.ask(Request::Ask {
            question: question.into(),
            history: vec![],
            settings: settings.clone(),
        })
    };
    ask("Describe llama-server.");
    while !matches!(
        next("the first token", Duration::from_secs(120)),
        Reply::Event(Event::Token(_))
    ) {}
    b.child.kill().unwrap();
    let killed = Instant::now();
    let message = loop {
        match next("the failure", Duration::from_secs(30)) {
            Reply::WorkerLost(m) => break m,
            Reply::Finished(_) => panic!("the answer finished without its worker"),
            _ => {}
        }
    };
    assert!(killed.elapsed() < Duration::from_secs(30));
    assert!(message.contains(&format!("worker {}", b.addr)), "{message}");
    let info = loaded("the engine on this machine");
    assert!(info.device.starts_with("CPU"), "{}", info.device);
    rt.ask(Request::Ask {
        question: "What is llama-server?".into(),
        history: vec![],
        settings: rapid_chat::config::EngineConfig {
            max_tokens: 8,
            ignore_eos: false,
            ..settings.clone()
        },
    });
    loop {
        match next("the answer without workers", Duration::from_secs(120)) {
            Reply::Finished(a) => {
                assert!(!a.output.tokens.is_empty());
                break;
            }
            Reply::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
}

#[test]
fn a_worker_on_an_open_address_warns_and_a_busy_port_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(common::exe())
        .env("RAPID_CHAT_CACHE_DIR", cache.path())
        .env("RAPID_CHAT_CONFIG_DIR", cache.path().join("config"))
        .args(["worker", "--host", "0.0.0.0", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_serving(&format!("127.0.0.1:{port}"));
    // The port is taken now: a second worker on it says so.
    let out = Command::new(common::exe())
        .env("RAPID_CHAT_CACHE_DIR", cache.path())
        .env("RAPID_CHAT_CONFIG_DIR", cache.path().join("config"))
        .args(["worker", "--port", &port.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen") && err.contains(&port.to_string()),
        "{err}"
    );
    child.kill().unwrap();
    let err = stderr_of(&mut child);
    let _ = child.wait();
    assert!(
        err.contains("no authentication") && err.contains("SSH tunnel"),
        "{err}"
    );
}

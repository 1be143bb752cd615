//! `rapid-chat serve` with the real model and the demo corpus, on a free loopback port, talked to
//! by real clients: the official `openai` Python package (installed by the tests' set-up, pinned
//! in tests/requirements.txt) for a streamed and a whole answer, plain HTTP for the rest. Greedy
//! answers through the API equal `ask --json`'s; bad input gets its status and a clear message;
//! eight clients at once are answered or refused with 503 and Retry-After; a client killed
//! mid-stream frees the engine.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The server's settings: small contexts (the tests are about the API, not long documents), the
/// fixed γ policy and no KV cache on disk, so that an answer does not depend on timing or on
/// which process read the documents first.
const CONFIG: &str = "[engine]\nctx = 2048\ndraft_ctx = 1024\nretrieval_budget = 512\n\
                      max_tokens = 48\nthreads = 2\nadaptive = false\nkv_cache = false\n";

struct Server {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rapid_chat(dir: &Path) -> Command {
    let mut cmd = Command::new(common::exe());
    cmd.env("RAPID_CHAT_CACHE_DIR", dir)
        .env("RAPID_CHAT_CONFIG_DIR", dir)
        .env_remove("RAPID_CHAT_API_KEY")
        .arg("--model")
        .arg(common::model_path())
        .arg("--config")
        .arg(dir.join("config.toml"));
    cmd
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// (status, Retry-After, body) of a request.
fn call(
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, Option<String>, String) {
    let agent = agent();
    let auth = key.map(|k| format!("Bearer {k}"));
    let response = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        (_, b) => {
            let mut r = agent.post(url).header("Content-Type", "application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(b.unwrap_or(""))
        }
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, retry, text)
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), CONFIG).unwrap();
        let port = free_port();
        let child = rapid_chat(dir.path())
            .args(["serve"])
            .arg(common::demo_dir())
            .args(["--port", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let started = Instant::now();
        let mut loading = false;
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the server never got ready"
            );
            if let Ok(mut r) = agent().get(&format!("{}/health", s.url)).call() {
                let body = r.body_mut().read_to_string().unwrap_or_default();
                match r.status().as_u16() {
                    200 => {
                        assert_eq!(
                            serde_json::from_str::<Value>(&body).unwrap(),
                            json!({"status": "ok"})
                        );
                        break;
                    }
                    503 => {
                        assert!(body.contains("Loading model"), "{body}");
                        loading = true;
                    }
                    other => panic!("/health said {other}: {body}"),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = loading;
        s
    }

    fn chat(&self, body: &Value, key: Option<&str>) -> (u16, Option<String>, String) {
        call(
            "POST",
            &format!("{}/v1/chat/completions", self.url),
            key,
            Some(&body.to_string()),
        )
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, _, text) = call("GET", &format!("{}/metrics", self.url), None, None);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
}

fn python(args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py"))
        .args(args);
    cmd
}

fn checked(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed (the openai package comes from `pip install -r tests/requirements.txt`, \
         which `make test` runs):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

const QUESTION: &str = "On which port does llama-server listen by default?";

#[test]
fn the_openai_package_gets_greedy_answers_equal_to_ask_whole_and_streamed() {
    let server = Server::start(&[]);
    let out = checked(
        python(&["both", &format!("{}/v1", server.url), QUESTION])
            .output()
            .unwrap(),
        "the openai client",
    );
    let r: Value = serde_json::from_str(&out).unwrap();

    // The same question with `ask --json`, the same settings, in a process of its own.
    let ask = checked(
        rapid_chat(server.dir.path())
            .arg("ask")
            .arg(common::demo_dir())
            .arg(QUESTION)
            .arg("--json")
            .output()
            .unwrap(),
        "ask --json",
    );
    let ask: Value = serde_json::from_str(&ask).unwrap();
    let answer = ask["answer"].as_str().unwrap();
    assert!(!answer.is_empty());
    assert_eq!(r["whole"], answer, "{r}");
    assert_eq!(r["streamed"], answer, "{r}");
    assert!(r["stream_chunks"].as_u64().unwrap() > 2, "{r}");
    assert_eq!(r["whole_finish"], "stop");

    // timings, as llama-server gives them, and the acceptance ask reports.
    let timings = &r["whole_extra"]["timings"];
    let stats = &ask["stats"];
    assert_eq!(timings["predicted_n"], stats["generated_tokens"], "{r}");
    assert_eq!(timings["draft_n"], stats["drafted"], "{r}");
    assert_eq!(timings["draft_n_accepted"], stats["accepted"], "{r}");
    assert!(timings["predicted_ms"].as_f64().unwrap() > 0.0);
    let rapid = &r["whole_extra"]["rapid"];
    assert_eq!(rapid["mode"], "rapid");
    assert_eq!(rapid["acceptance"], stats["acceptance_rate"], "{r}");
    let sources = rapid["sources"].as_array().unwrap();
    assert!(
        sources.iter().any(|s| s["path"] == "llama-server.md"),
        "{r}"
    );
    let tokens = &rapid["tokens"];
    let sum = ["lookup", "drafter", "target"]
        .iter()
        .map(|k| tokens[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(sum, stats["generated_tokens"].as_u64().unwrap());
    assert_eq!(
        r["whole_usage"]["completion_tokens"], stats["generated_tokens"],
        "{r}"
    );
    let usage = &r["stream_usage"];
    assert_eq!(usage["completion_tokens"], stats["generated_tokens"], "{r}");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(
        r["stream_last"]["timings"]["draft_n"], stats["drafted"],
        "{r}"
    );

    // /v1/models and /metrics.
    let (status, _, models) = call("GET", &format!("{}/v1/models", server.url), None, None);
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "gemma-3-270m-q4_k_m.gguf");
    assert!(server.metric("rapidchat:requests_total") >= 2.0);
    assert!(server.metric("llamacpp:tokens_predicted_total") > 0.0);
    assert_eq!(server.metric("llamacpp:requests_processing"), 0.0);
}

/// A raw HTTP/1.1 request; the status line and the body read back, whatever the server did to
/// the connection while the body was sent.
fn raw(url: &str, head: &str, body: &[u8]) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(head.as_bytes());
    for piece in body.chunks(64 << 10) {
        if s.write_all(piece).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn error_message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(
        v["error"]["type"].is_string() && v["error"]["code"].is_string(),
        "{v}"
    );
    v["error"]["message"].as_str().unwrap().to_owned()
}

#[test]
fn bad_input_gets_its_status_and_a_clear_message_and_the_server_goes_on() {
    // A non-loopback address without a key is refused before anything starts.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), CONFIG).unwrap();
    let o = rapid_chat(dir.path())
        .arg("serve")
        .arg(common::demo_dir())
        .args(["--host", "0.0.0.0", "--port", &free_port().to_string()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--api-key") && e.contains("0.0.0.0"), "{e}");

    let server = Server::start(&["--api-key", "s3cret"]);
    let url = format!("{}/v1/chat/completions", server.url);
    let key = Some("s3cret");
    let ok = json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8});

    let (status, _, body) = call("POST", &url, None, Some(&ok.to_string()));
    assert_eq!(status, 401, "{body}");
    assert!(error_message(&body).contains("Bearer"));
    let (status, _, _) = call("POST", &url, Some("wrong"), Some(&ok.to_string()));
    assert_eq!(status, 401);
    let (status, _, _) = call("GET", &format!("{}/v1/models", server.url), None, None);
    assert_eq!(status, 401);
    let (status, _, _) = call("GET", &format!("{}/health", server.url), None, None);
    assert_eq!(status, 200, "health needs no key");

    for (body, status, says) in [
        ("{\"messages\": [", 400, "not valid JSON"),
        ("{\"messages\": \"hi\"}", 400, "invalid type"),
        ("{\"messages\": [], \"max_tokens\": 8}", 400, "empty"),
        ("{\"model\": \"x\"}", 400, "messages"),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"temperature\": \"hot\"}",
            400,
            "temperature",
        ),
        (
            "{\"messages\": [{\"role\": \"assistant\", \"content\": \"q\"}]}",
            400,
            "user",
        ),
    ] {
        let (got, _, text) = call("POST", &url, key, Some(body));
        assert_eq!(got, status, "{body}: {text}");
        let message = error_message(&text);
        assert!(message.contains(says), "{body}: {message}");
    }

    // A question too long for the context: the client's to change.
    let long = "why ".repeat(3000);
    let (status, _, text) = server.chat(
        &json!({"messages": [{"role": "user", "content": long}]}),
        key,
    );
    assert_eq!(status, 400, "{text}");
    assert!(error_message(&text).contains("max_tokens"), "{text}");

    // 10 MB.
    let big = vec![b'x'; 10 << 20];
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    );
    let (status, body) = raw(&server.url, &head, &big);
    assert_eq!(status, 413, "{body}");
    assert!(error_message(&body).contains("KiB"), "{body}");

    // Still serving.
    let (status, _, body) = server.chat(&ok, key);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["choices"][0]["message"]["content"].is_string());
    assert_eq!(
        v["choices"][0]["finish_reason"], "length",
        "8 tokens at most: {v}"
    );

    // A stop string ends the answer before it, and the engine stops there too.
    let stop = json!({"messages": [{"role": "user", "content": QUESTION}], "stop": ["8080"]});
    let (status, _, body) = server.chat(&stop, key);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.contains("8080"), "{text}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[test]
fn eight_clients_at_once_are_answered_or_told_to_retry_and_a_killed_client_frees_the_engine() {
    let server = Server::start(&["--queue", "3"]);
    let url = format!("{}/v1/chat/completions", server.url);
    let questions = [
        "On which port does llama-server listen by default?",
        "Which endpoint of llama-server returns the health check result?",
        "Which encoding rules does libtasn1 implement?",
    ];
    let mut rss = Vec::new();
    for round in 0..3 {
        let started = Instant::now();
        let handles: Vec<_> = (0..8)
            .map(|client| {
                let url = url.clone();
                let q = questions[(client + round) % questions.len()].to_owned();
                std::thread::spawn(move || {
                    let body =
                        json!({"messages": [{"role": "user", "content": q}], "max_tokens": 12});
                    call("POST", &url, None, Some(&body.to_string()))
                })
            })
            .collect();
        let (mut answered, mut refused) = (0, 0);
        for h in handles {
            let (status, retry, body) = h.join().unwrap();
            match status {
                200 => answered += 1,
                503 => {
                    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok()), "{body}");
                    refused += 1;
                }
                other => panic!("status {other}: {body}"),
            }
        }
        assert!(answered >= 1 && answered + refused == 8);
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "no request hangs"
        );
        rss.push(server.rss_kib());
    }
    // The memory of the requests is given back: no round keeps more than the first left.
    assert!(
        rss[2] <= rss[0] + rss[0] / 10 + 16 * 1024,
        "RSS after the rounds (KiB): {rss:?}"
    );
    assert!(server.metric("rapidchat:requests_refused_total") >= 1.0);

    // A client killed mid-stream: the engine is free within 2 s.
    let mut client = python(&["hang", &format!("{}/v1", server.url), questions[1]])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 5];
    client
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert_eq!(&first, b"first");
    assert_eq!(server.metric("llamacpp:requests_processing"), 1.0);
    client.kill().unwrap();
    let _ = client.wait();
    let killed = Instant::now();
    while server.metric("llamacpp:requests_processing") > 0.0 {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "the engine still answers a client that is gone"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _, body) = server.chat(
        &json!({"messages": [{"role": "user", "content": questions[0]}], "max_tokens": 8}),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let _: PathBuf = server.dir.path().to_path_buf();
}

//! `rapid-chat serve`: a folder's answers behind an OpenAI-compatible HTTP API, beside the TUI.
//! axum on tokio at this edge only: the engine keeps its threads (the runtime, as the TUI has
//! it), and one desk thread takes the requests to it in order (see [`desk`]). Loopback unless an
//! API key guards it; bodies, JSON and messages are checked before anything reaches the engine,
//! and errors come in OpenAI's shape. Nothing a document or a request holds is logged.

pub mod desk;
pub mod openai;
pub mod stop;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::config::EngineConfig;
use crate::runtime::{self, Reply, Runtime};
use crate::speculative::Event;
use desk::{Desk, Engine, Job, Refused};
use openai::{ChatRequest, Done};
use stop::StopText;

/// How the server listens and what it takes.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    /// Requests must carry `Authorization: Bearer KEY` (None: no key, loopback only).
    pub api_key: Option<String>,
    /// Requests waiting beyond the one being answered; more are refused with 503.
    pub queue: usize,
    /// The model's name, for `/v1/models` and the answers.
    pub model: String,
}

/// The largest request body taken (a long conversation fits; a runaway client does not).
pub const MAX_BODY: usize = 1 << 20;

/// Seconds a refused client is told to wait.
const RETRY_AFTER_S: u64 = 5;

/// Whether `host` names this machine only.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks `opts` before anything starts: an address others can reach needs a key.
pub fn check(opts: &Options) -> Result<()> {
    if !is_loopback(&opts.host) && opts.api_key.as_deref().is_none_or(str::is_empty) {
        anyhow::bail!(
            "--host {} lets other machines reach the server, and the documents' answers with it: \
             give it an --api-key KEY (clients then send `Authorization: Bearer KEY`), or keep \
             the default 127.0.0.1",
            opts.host
        );
    }
    anyhow::ensure!(opts.queue >= 1, "--queue must be at least 1");
    Ok(())
}

/// What every handler shares.
struct App {
    desk: Desk,
    base: EngineConfig,
    key: Option<String>,
    model: String,
    next_id: AtomicU64,
}

/// Serves the folder of `runtime` with `opts` until the process ends.
pub fn serve(runtime: runtime::Options, opts: Options) -> Result<()> {
    check(&opts)?;
    let base = runtime.config.engine.clone();
    let model = opts.model.clone();
    let folder = runtime.folder.clone();
    let rt = Runtime::start(runtime)?;
    let app = Arc::new(App {
        desk: Desk::start(rt, opts.queue)?,
        base,
        key: opts.api_key.clone(),
        model,
        next_id: AtomicU64::new(1),
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    tokio.block_on(async move {
        let addr: SocketAddr = tokio::net::lookup_host((opts.host.as_str(), opts.port))
            .await
            .with_context(|| format!("cannot resolve --host {}", opts.host))?
            .next()
            .with_context(|| format!("--host {} resolves to no address", opts.host))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (is another server there?)"))?;
        eprintln!(
            "rapid-chat serves {} on http://{addr}/v1 (OpenAI API; /health says when the model \
             is loaded; Ctrl-C stops it)",
            folder.display()
        );
        tracing::info!(%addr, "serving");
        axum::serve(listener, router)
            .await
            .context("the HTTP server stopped")
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body.clone())).into_response()
}

fn refuse(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    json_response(status, &openai::error(message, kind, code))
}

/// Whether the request carries the key (or none is needed).
fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let Some(key) = app.key.as_deref() else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), key.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response {
    refuse(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key: send `Authorization: Bearer KEY` with the server's --api-key",
        "authentication_error",
        "invalid_api_key",
    )
}

async fn health(State(app): State<Arc<App>>) -> Response {
    unavailable(&app).unwrap_or_else(|| json_response(StatusCode::OK, &json!({ "status": "ok" })))
}

/// The 503 while the engine cannot answer: loading, or failed to load (and why).
fn unavailable(app: &App) -> Option<Response> {
    let engine = app.desk.engine.read().map(|e| e.clone());
    Some(match engine.unwrap_or(Engine::Loading) {
        Engine::Ready { .. } => return None,
        Engine::Loading => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Loading model",
            "unavailable_error",
            "503",
        ),
        Engine::Failed(why) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the model could not be loaded: {why}"),
            "unavailable_error",
            "503",
        ),
    })
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !authorized(&app, &headers) {
        return unauthorized();
    }
    json_response(StatusCode::OK, &openai::models(&app.model, now()))
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !authorized(&app, &headers) {
        return unauthorized();
    }
    let text = desk::metrics(&app.desk.counters, app.desk.waiting());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `POST /v1/chat/completions`.
async fn chat(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !authorized(&app, &headers) {
        return unauthorized();
    }
    app.desk.counters.requests.fetch_add(1, Ordering::Relaxed);
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is over {} KiB: send less", MAX_BODY >> 10),
                "invalid_request_error",
                "request_too_large",
            );
        }
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
                "invalid_request_error",
                "invalid_body",
            );
        }
    };
    let request: ChatRequest = match parse(&body) {
        Ok(r) => r,
        Err(message) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &message,
                "invalid_request_error",
                "invalid_json",
            );
        }
    };
    let asked = match request.asked(&app.base) {
        Ok(a) => a,
        Err(why) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &why,
                "invalid_request_error",
                "invalid_messages",
            );
        }
    };
    if let Some(r) = unavailable(&app) {
        return r;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let stop = Arc::new(AtomicBool::new(false));
    let stops = asked.stops.clone();
    let settings = asked.settings.clone();
    match app.desk.take(Job {
        asked,
        replies: tx,
        stop: Arc::clone(&stop),
    }) {
        Ok(()) => {}
        Err(Refused::Busy) => {
            app.desk.counters.refused.fetch_add(1, Ordering::Relaxed);
            let mut r = refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy answering others: try again shortly",
                "unavailable_error",
                "queue_full",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
            return r;
        }
        Err(Refused::Closed) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the engine stopped (see the log file)",
                "unavailable_error",
                "503",
            );
        }
    }
    let id = format!("chatcmpl-{}", app.next_id.fetch_add(1, Ordering::Relaxed));
    let answer = Answering {
        id,
        created: now(),
        model: app.model.clone(),
        replies: rx,
        stop,
        text: StopText::new(stops),
        settings,
    };
    if request.stream {
        let usage = request.stream_options.is_some_and(|o| o.include_usage);
        stream(answer, usage)
    } else {
        whole(answer).await
    }
}

/// The request in `body`, or what is wrong with it, naming the field.
fn parse(body: &[u8]) -> Result<ChatRequest, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let (path, inner) = (e.path().to_string(), e.inner());
        let what = if inner.is_syntax() || inner.is_eof() {
            "the body is not valid JSON".to_owned()
        } else if path == "." {
            "the body is not a chat completion request".to_owned()
        } else {
            format!("`{path}` is wrong")
        };
        format!(
            "{what}: {inner} (send {{\"messages\": [{{\"role\": \"user\", \"content\": \"...\"}}]}})"
        )
    })
}

/// An answer under way, as a handler follows it.
struct Answering {
    id: String,
    created: u64,
    model: String,
    replies: tokio::sync::mpsc::Receiver<Reply>,
    stop: Arc<AtomicBool>,
    text: StopText,
    settings: EngineConfig,
}

/// What the next reply means for the client.
enum Next {
    Text(String),
    Done(Box<crate::runtime::Answer>),
    Failed(String),
    Nothing,
}

impl Answering {
    async fn next(&mut self) -> Option<Next> {
        let reply = self.replies.recv().await?;
        Some(match reply {
            Reply::Event(Event::Token(t)) if !self.text.stopped() => {
                let out = self.text.push(&t.text);
                if self.text.stopped() {
                    // The engine stops at its next round; its statistics still come.
                    self.stop.store(true, Ordering::SeqCst);
                }
                Next::Text(out)
            }
            Reply::Finished(answer) => Next::Done(answer),
            Reply::Failed(why) | Reply::LoadFailed(why) | Reply::WorkerLost(why) => {
                Next::Failed(why)
            }
            _ => Next::Nothing,
        })
    }

    fn done<'a>(&self, answer: &'a crate::runtime::Answer) -> Done<'a> {
        Done {
            answer,
            reason: openai::finish_reason(answer, &self.settings, self.text.stopped()),
        }
    }
}

/// An answer in the log: its id and numbers, nothing of its text.
fn log_answer(id: &str, answer: &crate::runtime::Answer) {
    let s = &answer.output.stats;
    tracing::info!(
        id,
        tokens = s.generated_tokens,
        drafted = s.drafted,
        accepted = s.accepted,
        decode_ms = s.decode_s * 1e3,
        cancelled = s.cancelled,
        "answered"
    );
}

/// An engine failure as an HTTP error: a request too large for the context is the client's to
/// change (400), anything else the server's (500).
fn failed(why: &str) -> Response {
    let why = crate::safe_text::neutralize_line(why).into_owned();
    tracing::warn!(error = %why, "answer failed");
    if why.contains("do not fit the target context") || why.contains("question is empty") {
        refuse(
            StatusCode::BAD_REQUEST,
            &format!(
                "{why} (over the API: shorten the messages or lower max_tokens; the server's \
                 --ctx sets the context)"
            ),
            "invalid_request_error",
            "context_length_exceeded",
        )
    } else {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the answer failed: {why}"),
            "server_error",
            "engine_error",
        )
    }
}

/// A whole answer in one response.
async fn whole(mut a: Answering) -> Response {
    loop {
        match a.next().await {
            Some(Next::Done(answer)) => {
                // What was held back for a stop string that never came is the answer's too.
                a.text.finish();
                let text = a.text.answer().to_owned();
                let body = openai::completion(&a.id, a.created, &a.model, &text, &a.done(&answer));
                log_answer(&a.id, &answer);
                return json_response(StatusCode::OK, &body);
            }
            Some(Next::Failed(why)) => return failed(&why),
            Some(_) => {}
            None => return failed("the engine stopped (see the log file)"),
        }
    }
}

/// A streamed answer: server-sent `chat.completion.chunk`s, then `[DONE]`. A client that goes
/// away drops the stream, and with it the desk's channel: the answer is cancelled.
fn stream(mut a: Answering, usage: bool) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let send = |v: Value| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(SseEvent::default().data(v.to_string())))
                    .await
                    .is_ok()
            }
        };
        let first = openai::chunk(
            &a.id,
            a.created,
            &a.model,
            json!({ "role": "assistant", "content": "" }),
            None,
        );
        if !send(first).await {
            return;
        }
        loop {
            match a.next().await {
                Some(Next::Text(t)) if !t.is_empty() => {
                    let c =
                        openai::chunk(&a.id, a.created, &a.model, json!({ "content": t }), None);
                    if !send(c).await {
                        return;
                    }
                }
                Some(Next::Done(answer)) => {
                    let tail = a.text.finish();
                    if !tail.is_empty() {
                        let c = openai::chunk(
                            &a.id,
                            a.created,
                            &a.model,
                            json!({ "content": tail }),
                            None,
                        );
                        if !send(c).await {
                            return;
                        }
                    }
                    log_answer(&a.id, &answer);
                    let done = a.done(&answer);
                    let mut last =
                        openai::chunk(&a.id, a.created, &a.model, json!({}), Some(done.reason));
                    last["timings"] = openai::timings(&answer);
                    last["rapid"] = openai::rapid(&answer);
                    if !send(last).await {
                        return;
                    }
                    if usage {
                        let mut u = openai::chunk(&a.id, a.created, &a.model, json!({}), None);
                        u["choices"] = json!([]);
                        u["usage"] = openai::usage(&answer);
                        if !send(u).await {
                            return;
                        }
                    }
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
                Some(Next::Failed(why)) => {
                    let why = crate::safe_text::neutralize_line(&why).into_owned();
                    tracing::warn!(error = %why, "answer failed");
                    let e = openai::error(
                        &format!("the answer failed: {why}"),
                        "server_error",
                        "engine_error",
                    );
                    let _ = send(e).await;
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
                // Nothing to send (the documents being read): a client gone meanwhile
                // drops the answer, and the desk cancels it.
                Some(_) if tx.is_closed() => return,
                Some(_) => {}
                None => return,
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_may_go_without_a_key() {
        let opts = |host: &str, key: Option<&str>| Options {
            host: host.into(),
            port: 8080,
            api_key: key.map(String::from),
            queue: 4,
            model: "m".into(),
        };
        assert!(check(&opts("127.0.0.1", None)).is_ok());
        assert!(check(&opts("localhost", None)).is_ok());
        assert!(check(&opts("::1", None)).is_ok());
        let e = check(&opts("0.0.0.0", None)).unwrap_err().to_string();
        assert!(e.contains("--api-key"), "{e}");
        assert!(check(&opts("0.0.0.0", Some(""))).is_err());
        assert!(check(&opts("0.0.0.0", Some("k3y"))).is_ok());
    }

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}

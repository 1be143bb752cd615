//! The headless commands as scripts use them: JSON shapes, exit codes, error messages.

mod common;

use std::process::{Command, Output};

fn run(cache: &std::path::Path, args: &[&str]) -> Output {
    common::model_path(); // fetched once, shared through the data directory
    Command::new(common::exe())
        .env("RAPID_CHAT_CACHE_DIR", cache)
        .env("RAPID_CHAT_CONFIG_DIR", cache.join("config"))
        .args(args)
        .output()
        .expect("run rapid-chat")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn index_and_search_print_the_documented_json() {
    let cache = tempfile::tempdir().unwrap();
    let demo = common::demo_dir();
    let demo = demo.to_str().unwrap();
    let out = run(cache.path(), &["index", demo, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "files_indexed",
        "files_unchanged",
        "files_removed",
        "chunks",
        "files_skipped",
    ] {
        assert!(report.get(key).is_some(), "missing {key} in {report}");
    }
    assert_eq!(report["files_indexed"], 3);
    assert!(
        stderr(&out).is_empty(),
        "nothing but the report: {}",
        stderr(&out)
    );

    let out = run(cache.path(), &["index", demo, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            report["files_indexed"].as_u64(),
            report["files_unchanged"].as_u64()
        ),
        (Some(0), Some(3))
    );

    let out = run(
        cache.path(),
        &[
            "search",
            demo,
            "default port llama-server listens",
            "--top",
            "3",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let hits: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits.len(), 3);
    for key in ["path", "page", "start", "end", "score", "snippet"] {
        assert!(hits[0].get(key).is_some(), "missing {key} in {}", hits[0]);
    }
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );
    assert_eq!(hits[0]["path"], "llama-server.md");

    let out = run(
        cache.path(),
        &["search", demo, "Distinguished Encoding Rules", "--top", "1"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("libtasn1-manual.pdf p."), "{text}");
}

#[test]
fn errors_are_clear_with_a_non_zero_exit() {
    let cache = tempfile::tempdir().unwrap();
    let out = run(cache.path(), &["index", "/definitely/not/here"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));

    let not_gguf = cache.path().join("model.gguf");
    std::fs::write(&not_gguf, "not a model").unwrap();
    let demo = common::demo_dir();
    let out = run(
        cache.path(),
        &[
            "--model",
            not_gguf.to_str().unwrap(),
            "index",
            demo.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a GGUF model file"),
        "{}",
        stderr(&out)
    );

    let out = run(
        cache.path(),
        &[
            "--model",
            "/no/such/model.gguf",
            "index",
            demo.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--model PATH"), "{}", stderr(&out));

    let bad = cache.path().join("bad.toml");
    std::fs::write(&bad, "[engine]\ngama = 3\n").unwrap();
    let out = run(
        cache.path(),
        &[
            "--config",
            bad.to_str().unwrap(),
            "index",
            demo.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("gama"), "{}", stderr(&out));
}

#[test]
fn fetch_model_prints_the_path_of_the_checked_model() {
    let cache = tempfile::tempdir().unwrap();
    let out = run(cache.path(), &["fetch-model"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = String::from_utf8(out.stdout).unwrap();
    assert_eq!(std::path::Path::new(path.trim()), common::model_path());

    let out = run(cache.path(), &["fetch-model", "llama-9000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("smollm2-135m"), "{}", stderr(&out));
}

#[test]
fn fetch_model_lists_what_it_can_fetch_and_what_is_there() {
    let cache = tempfile::tempdir().unwrap();
    common::model_path();
    let out = run(cache.path(), &["fetch-model", "--list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = String::from_utf8(out.stdout).unwrap();
    for m in rapid_chat::llm::fetch::KNOWN_MODELS {
        assert!(
            list.contains(m.name) && list.contains(m.sha256),
            "{m:?}: {list}"
        );
    }
    // The default model comes first, and the tests fetched it.
    let default = list.split("smollm2-135m").next().unwrap();
    assert!(
        default.starts_with("gemma3-270m")
            && default.contains("253 MB")
            && default.contains("(fetched)"),
        "{list}"
    );
}

#[test]
fn fetching_without_python_names_the_way_out() {
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(common::exe())
        .env("RAPID_CHAT_CACHE_DIR", cache.path())
        .env("RAPID_CHAT_DATA_DIR", data.path())
        .env("PATH", "/nonexistent")
        .arg("fetch-model")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--model PATH"), "{}", stderr(&out));
}

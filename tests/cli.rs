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

/// `cost-curve` measures this machine as step_cost.cpp does; `simulate` records a real answer's
/// trace once and projects it under any curve: with the same traces and curve, the same numbers;
/// where verifying more tokens costs nothing, at least plain steps' speed; where every token of a
/// batch costs a step, no draft pays and the projection is plain steps.
#[test]
fn simulate_projects_a_recorded_trace_under_cost_curves() {
    let cache = tempfile::tempdir().unwrap();
    let demo = common::demo_dir();
    let demo = demo.to_str().unwrap();
    let out = run(
        cache.path(),
        &[
            "cost-curve",
            "--depths",
            "64",
            "--sizes",
            "1,2",
            "--repeats",
            "1",
            "--ctx",
            "512",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(csv.lines().next(), Some("depth,prefill_tok_s,G,step_ms"));
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(
        rows[1][2] == 1.0 && rows[1][3] > 0.0 && rows[2][3] > 0.0,
        "{csv}"
    );

    let q = cache.path().join("q.json");
    std::fs::write(
        &q,
        r#"[{"question": "On which port does llama-server listen by default?"}]"#,
    )
    .unwrap();
    let curve = |name: &str, per_token: f64| {
        let path = cache.path().join(name);
        let mut text = String::from("depth,prefill_tok_s,G,step_ms\n");
        for depth in [100, 100_000] {
            for g in 1..=17 {
                text += &format!("{depth},1000,{g},{}\n", 10.0 + per_token * (g - 1) as f64);
            }
        }
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (free, linear) = (curve("free.csv", 0.0), curve("linear.csv", 10.0));
    let traces = cache.path().join("traces.json");
    let sizes = [
        "--ctx",
        "4608",
        "--draft-ctx",
        "1536",
        "--retrieval-budget",
        "1024",
    ];
    let project = |curve: &str, record: bool| {
        let mut args = vec!["simulate", demo, "--questions", q.to_str().unwrap()];
        args.extend(["--target-curve", curve, "--drafter-curve", curve, "--json"]);
        args.extend(["--max-tokens", "48"]);
        args.extend(sizes);
        if record {
            args.extend(["--save-traces", traces.to_str().unwrap()]);
        } else {
            args.extend(["--traces", traces.to_str().unwrap()]);
        }
        let out = run(cache.path(), &args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let recorded = project(&free, true);
    let q0 = &recorded["questions"][0];
    let n = q0["tokens"].as_u64().unwrap();
    assert!(n > 0, "{recorded}");
    let parts: u64 = ["from_lookup", "from_drafter", "from_target"]
        .iter()
        .map(|k| q0[k].as_u64().unwrap())
        .sum();
    assert_eq!(parts, n, "{recorded}");
    for key in [
        "median",
        "worst",
        "lookup_share",
        "drafter_share",
        "target_share",
        "what",
    ] {
        assert!(recorded.get(key).is_some(), "missing {key}: {recorded}");
    }
    assert_eq!(project(&free, false)["questions"], recorded["questions"]);
    assert!(recorded["median"].as_f64().unwrap() >= 1.0, "{recorded}");
    let plain = project(&linear, false);
    let s = plain["median"].as_f64().unwrap();
    assert!((0.9..=1.0 + 1e-9).contains(&s), "{plain}");

    // A depth the curve does not cover is refused with the way out.
    let out = run(
        cache.path(),
        &[
            "simulate",
            demo,
            "--traces",
            traces.to_str().unwrap(),
            "--target-curve",
            &free,
            "--target-depth",
            "200000",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cost-curve --depths 200000"),
        "{}",
        stderr(&out)
    );
}

//! Hostile documents, crashes and resource errors, through the real binary: killed mid-index the
//! next start recovers by itself with index and manifest agreeing; file names and documents
//! with escape sequences never reach the terminal as control characters; a context too large
//! for memory is a clear error.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rapid_chat::corpus::{CorpusIndex, Indexer};

fn rapid_chat(cache: &std::path::Path) -> Command {
    common::model_path(); // fetched once, shared through the data directory
    let mut c = Command::new(common::exe());
    c.env("RAPID_CHAT_CACHE_DIR", cache)
        .env("RAPID_CHAT_CONFIG_DIR", cache.join("config"));
    c
}

/// Chunks per file in the index, and in the manifest.
fn index_and_manifest(
    cache: &std::path::Path,
    folder: &std::path::Path,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let indexer = Indexer::open(
        &cache.join("indexes"),
        folder,
        common::tokenizer(),
        &rapid_chat::config::Config::default(),
        common::exe(),
    )
    .expect("open the index after the crash");
    let manifest: BTreeMap<String, usize> = indexer
        .manifest()
        .files
        .iter()
        .map(|(k, v)| (k.clone(), v.chunks))
        .collect();
    let reader: CorpusIndex = indexer.reader().unwrap();
    let mut index = BTreeMap::new();
    for c in reader.all_chunks().unwrap() {
        *index.entry(c.path).or_insert(0) += 1;
    }
    (index, manifest)
}

/// Runs `index` on `folder` to the end, then checks that index and manifest agree on all
/// `n_files` files.
fn index_completes(cache: &std::path::Path, folder: &std::path::Path, n_files: usize) {
    let out = rapid_chat(cache)
        .args(["index", folder.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (index, manifest) = index_and_manifest(cache, folder);
    assert_eq!(index, manifest);
    assert_eq!(manifest.len(), n_files);
}

#[test]
fn killed_while_indexing_the_next_start_recovers_with_index_and_manifest_agreeing() {
    let folder = tempfile::tempdir().unwrap();
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    ];
    let n_files = 400;
    for i in 0..n_files {
        let mut text = format!("# Note {i}\n\nThe marker of this note is zq{i}x.\n\n");
        for j in 0..300 {
            text.push_str(words[(i * 7 + j) % words.len()]);
            text.push(if j % 12 == 11 { '\n' } else { ' ' });
        }
        std::fs::write(folder.path().join(format!("note-{i:03}.md")), text).unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    // Kill at several points of the first pass (and of the passes that resume it).
    let mut killed_mid_pass = 0;
    for delay_ms in [300u64, 900, 1600, 2600] {
        let mut child = rapid_chat(cache.path())
            .args(["index", folder.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed_mid_pass += 1;
        }
        child.wait().unwrap();
        // Whatever the kill left is consistent: every file the manifest lists has exactly its
        // chunks in the index, and the index holds nothing the manifest does not list.
        let (index, manifest) = index_and_manifest(cache.path(), folder.path());
        assert_eq!(
            index, manifest,
            "index and manifest disagree after a kill at {delay_ms} ms"
        );
    }
    assert!(killed_mid_pass >= 1, "no kill landed during indexing");
    // The next start finishes the job.
    index_completes(cache.path(), folder.path(), n_files);
    let out = rapid_chat(cache.path())
        .args([
            "search",
            folder.path().to_str().unwrap(),
            "zq123x",
            "--json",
        ])
        .output()
        .unwrap();
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits[0]["path"], "note-123.md");
}

#[test]
fn escape_sequences_in_file_names_and_documents_never_reach_the_terminal() {
    let folder = tempfile::tempdir().unwrap();
    let evil = "\x1b]0;pwned\x07\x1b[2J\u{9b}31m";
    std::fs::write(
        folder.path().join(format!("notes{evil}.md")),
        format!(
            "The walrus protocol {evil} uses port 4242. It was designed for slow links between \
             islands, and its messages are short so that they survive noisy radio channels.\n"
        ),
    )
    .unwrap();
    // A file that will be skipped, so that its name is printed in the report.
    std::fs::write(
        folder.path().join(format!("broken{evil}.pdf")),
        b"%PDF-1.4 garbage",
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let f = folder.path().to_str().unwrap();
    for args in [vec!["index", f], vec!["search", f, "walrus protocol"]] {
        let out = rapid_chat(cache.path()).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(
                !text
                    .chars()
                    .any(|c| rapid_chat::safe_text::is_unsafe(c) && c != '\n'),
                "{args:?} printed a control character: {text:?}"
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("pwned"),
            "{args:?}: the name stays readable: {stdout}"
        );
    }
    // The JSON output keeps the exact name, escaped by JSON.
    let out = rapid_chat(cache.path())
        .args(["search", f, "walrus protocol", "--json"])
        .output()
        .unwrap();
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits[0]["path"], format!("notes{evil}.md"));
    assert!(!out.stdout.contains(&0x1b));
}

#[test]
fn a_context_too_large_for_memory_is_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = rapid_chat(cache.path())
        .args([
            "ask",
            common::demo_dir().to_str().unwrap(),
            "What is this?",
            "--ctx",
            "2000000000",
            "--mode",
            "ar",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--ctx"),
        "the error says what to change: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
}

/// A full disk, simulated with a file-size limit on the process (writes past it fail with
/// EFBIG, as they fail with ENOSPC on a full disk): indexing fails with a clear error naming the
/// way out, and the next run, with room again, completes with index and manifest agreeing.
#[test]
fn a_full_disk_while_indexing_is_a_clear_error_and_loses_nothing() {
    use std::os::unix::process::CommandExt;
    let folder = tempfile::tempdir().unwrap();
    for i in 0..60 {
        let text: String = (0..400)
            .map(|j| format!("word{} ", (i * 31 + j) % 997))
            .collect();
        std::fs::write(folder.path().join(format!("doc-{i:02}.txt")), text).unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let f = folder.path().to_str().unwrap();
    let mut full = rapid_chat(cache.path());
    full.args(["index", f]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        full.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 16 * 1024,
                rlim_max: 16 * 1024,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            Ok(())
        });
    }
    let out = full.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("disk full"),
        "the error names the way out: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // Room again: the next run completes and agrees with itself.
    index_completes(cache.path(), folder.path(), 60);
}

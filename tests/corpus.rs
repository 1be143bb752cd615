//! The corpus with the real tokenizer and the real demo documents: incremental indexing, exact
//! token counts, search, bad input, locking, watching.

mod common;

use std::time::{Duration, Instant};

use common::{Sandbox, tokenizer};
use rapid_chat::config::Config;
use rapid_chat::corpus::extract::{self, Kind, Limits, PdfReader};
use rapid_chat::corpus::watch::{WatchEvent, Watcher};

fn skipped_reason(report: &rapid_chat::corpus::Report, path: &str) -> Option<String> {
    report
        .files_skipped
        .iter()
        .find(|s| s.path == path)
        .map(|s| s.reason.clone())
}

#[test]
fn reindexing_is_incremental_unchanged_changed_deleted_added() {
    let sb = Sandbox::demo();
    let mut ix = sb.indexer();
    let first = ix.update(&mut |_| {}).unwrap();
    assert_eq!(first.files_indexed, 3, "{first:?}");
    assert!(first.files_skipped.is_empty(), "{first:?}");
    assert!(first.chunks > 50, "the demo corpus is long: {first:?}");

    let again = ix.update(&mut |_| {}).unwrap();
    assert_eq!(
        (
            again.files_indexed,
            again.files_unchanged,
            again.files_removed
        ),
        (0, 3, 0)
    );
    assert_eq!(
        again.bytes_read, 0,
        "an unchanged folder re-extracts nothing"
    );
    assert_eq!(again.chunks, first.chunks);

    // Touched but identical: read and hashed, not re-chunked.
    let md = sb.path("llama-server.md");
    let text = std::fs::read_to_string(&md).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&md, &text).unwrap();
    let touched = ix.update(&mut |_| {}).unwrap();
    assert_eq!((touched.files_indexed, touched.files_unchanged), (0, 3));

    std::fs::write(
        &md,
        format!("{text}\n\nThe zebracorn flag enables quokka mode.\n"),
    )
    .unwrap();
    let changed = ix.update(&mut |_| {}).unwrap();
    assert_eq!(changed.indexed, vec!["llama-server.md".to_string()]);
    assert_eq!(changed.files_unchanged, 2);
    let reader = ix.reader().unwrap();
    let hits = reader.search("zebracorn quokka", 3).unwrap();
    assert_eq!(hits[0].path, "llama-server.md");
    assert!(
        hits[0].snippet.contains("**zebracorn**"),
        "{}",
        hits[0].snippet
    );

    std::fs::remove_file(sb.path("gpl-3.0.txt")).unwrap();
    let deleted = ix.update(&mut |_| {}).unwrap();
    assert_eq!(deleted.removed, vec!["gpl-3.0.txt".to_string()]);
    reader.reload().unwrap();
    let hits = reader
        .search("GNU General Public License conveying verbatim copies", 20)
        .unwrap();
    assert!(
        hits.iter().all(|h| h.path != "gpl-3.0.txt"),
        "deleted file's chunks are gone"
    );

    std::fs::create_dir(sb.path("notes")).unwrap();
    std::fs::write(
        sb.path("notes/new.txt"),
        "Platypus telemetry arrives every Tuesday.",
    )
    .unwrap();
    let added = ix.update(&mut |_| {}).unwrap();
    assert_eq!(added.indexed, vec!["notes/new.txt".to_string()]);
    reader.reload().unwrap();
    assert_eq!(
        reader.search("platypus telemetry", 1).unwrap()[0].path,
        "notes/new.txt"
    );
    let expected_chunks = ix
        .manifest()
        .files
        .values()
        .map(|f| f.chunks as u64)
        .sum::<u64>();
    assert_eq!(
        reader.num_chunks(),
        expected_chunks,
        "index and manifest agree"
    );
}

#[test]
fn chunk_token_counts_are_exact_and_equal_llama_cpp_full_model_tokenization() {
    use llama_cpp_2::model::LlamaModel;
    let tok = tokenizer();
    // The full model (weights loaded) tokenizes through the same llama.cpp vocabulary code: the
    // vocab-only loader must agree with it token for token.
    let full: LlamaModel =
        rapid_chat::llm::model::load_model(&common::model_path(), 0, false).unwrap();
    let limits = Limits::of(&Config::default().corpus, common::exe());
    let mut checked = 0;
    for (name, kind) in [
        ("libtasn1-manual.pdf", Kind::Pdf),
        ("llama-server.md", Kind::Text),
        ("gpl-3.0.txt", Kind::Text),
    ] {
        let doc = extract::extract(&common::demo_dir().join(name), kind, &limits).unwrap();
        let chunks = rapid_chat::corpus::chunk::chunk_pages(&doc.pages, 512, &|t| tok.count(t));
        assert!(chunks.len() > 5, "{name}");
        for c in &chunks {
            let by_full = full.vocab().tokenize(c.text.as_bytes(), false, false);
            assert_eq!(tok.tokenize(&c.text), by_full, "{name} chunk {}", c.order);
            assert_eq!(c.tokens, by_full.len());
            assert!(
                c.tokens <= 512,
                "{name} chunk {} has {} tokens",
                c.order,
                c.tokens
            );
            checked += 1;
        }
        // Chunks are full: most hold more than half the budget (PDF chunks stay within a page,
        // so a page's remainder makes a small one).
        if kind == Kind::Text {
            let big = chunks.iter().filter(|c| c.tokens > 256).count();
            assert!(big * 2 > chunks.len(), "{name}: chunks too small");
        }
    }
    assert!(checked > 60);
}

#[derive(serde::Deserialize)]
struct Question {
    question: String,
    source: String,
    phrase: String,
}

fn normalize(s: &str) -> String {
    s.replace(['\u{2019}', '\u{2018}'], "'")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn search_finds_the_passage_holding_each_demo_answer() {
    let sb = Sandbox::demo();
    let mut ix = sb.indexer();
    ix.update(&mut |_| {}).unwrap();
    let reader = ix.reader().unwrap();
    let questions: Vec<Question> = serde_json::from_str(
        &std::fs::read_to_string(common::demo_dir().join("../questions.json")).unwrap(),
    )
    .unwrap();
    assert!(questions.len() >= 6);
    for q in &questions {
        let hits = reader.search(&q.question, 5).unwrap();
        let found = hits
            .iter()
            .position(|h| h.path == q.source && normalize(&h.text).contains(&normalize(&q.phrase)));
        assert!(
            found.is_some(),
            "{:?}: no top-5 hit holds {:?}; got {:?}",
            q.question,
            q.phrase,
            hits.iter().map(|h| (&h.path, h.start)).collect::<Vec<_>>()
        );
        let hit = &hits[found.unwrap()];
        assert!(hit.end > hit.start && hit.score > 0.0);
        if q.source.ends_with(".pdf") {
            assert!(
                hit.page.is_some_and(|p| (1..=36).contains(&p)),
                "PDF hits carry their page"
            );
        }
    }
}

/// A minimal valid one-page PDF holding `text`, with an optional extra trailer entry.
fn tiny_pdf(text: &str, trailer_extra: &str) -> Vec<u8> {
    pdf_with_cmap(text.as_bytes(), trailer_extra, None)
}

/// A one-page PDF showing the bytes `text` (a PDF string's content) in Helvetica, with the font's
/// ToUnicode CMap mapping each `(code, UTF-16 hex)` pair of `cmap` when given.
fn pdf_with_cmap(text: &[u8], trailer_extra: &str, cmap: Option<&[(&str, &str)]>) -> Vec<u8> {
    let mut content = b"BT /F1 12 Tf 72 720 Td (".to_vec();
    content.extend_from_slice(text);
    content.extend_from_slice(b") Tj ET");
    let stream = |body: &[u8]| {
        let mut o = format!("<< /Length {} >>\nstream\n", body.len()).into_bytes();
        o.extend_from_slice(body);
        o.extend_from_slice(b"\nendstream");
        o
    };
    let mut objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_vec(),
        stream(&content),
    ];
    match cmap {
        None => objects.push(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec()),
        Some(pairs) => {
            objects.push(
                b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /ToUnicode 6 0 R >>".to_vec(),
            );
            let mut cmap = format!(
                "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n\
                 1 begincodespacerange\n<00> <FF>\nendcodespacerange\n{} beginbfchar\n",
                pairs.len()
            );
            for (code, unicode) in pairs {
                cmap.push_str(&format!("<{code}> <{unicode}>\n"));
            }
            cmap.push_str(
                "endbfchar\nendcmap\nCMapName currentdict /CMap defineresource pop\nend\nend",
            );
            objects.push(stream(cmap.as_bytes()));
        }
    }
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend(o);
        out.extend(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for off in offsets {
        out.extend(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R {trailer_extra} >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

#[test]
fn bad_inputs_are_skipped_with_a_reason_and_everything_else_is_indexed() {
    let sb = Sandbox::empty();
    let w = |rel: &str, bytes: &[u8]| std::fs::write(sb.path(rel), bytes).unwrap();
    w("good.md", b"# Good\n\nThe heron migrates in October.\n");
    w("good.pdf", &tiny_pdf("Marmots hibernate in burrows", ""));
    let mut corrupt = tiny_pdf("x", "");
    corrupt.truncate(60);
    corrupt.extend(b"garbage that is not a PDF object stream");
    w("corrupt.pdf", &corrupt);
    w(
        "encrypted.pdf",
        &tiny_pdf(
            "secret",
            "/Encrypt << /Filter /Standard /V 2 /R 3 /Length 128 /O <00> /U <00> /P -4 >> /ID [<01> <01>]",
        ),
    );
    w("fake.pdf", b"this is plain text named .pdf");
    w(
        "binary.txt",
        &[0u8, 159, 146, 150, 0, 1, 2, 3, 0, 0, 255, 254],
    );
    w(
        "latin1.txt",
        b"caf\xe9 cr\xe8me br\xfbl\xe9e is served at the ocelot bistro\n",
    );
    w("empty.txt", b"");
    w("blank.md", b"  \n\n \t\n");
    w("big.txt", &vec![b'a'; (1 << 20) + 10]);
    std::os::unix::fs::symlink("/etc/hostname", sb.path("outside.txt")).unwrap();
    std::os::unix::fs::symlink(sb.path("loop-b.md"), sb.path("loop-a.md")).unwrap();
    std::os::unix::fs::symlink(sb.path("loop-a.md"), sb.path("loop-b.md")).unwrap();
    std::os::unix::fs::symlink(sb.path("good.md"), sb.path("inside-link.md")).unwrap();
    let fifo = sb.path("pipe.txt");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    w("locked.txt", b"The locked ledger lists seventeen lynxes.\n");
    let locked = sb.path("locked.txt");
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    std::fs::create_dir(sb.path(".hidden")).unwrap();
    w(".hidden/secret.md", b"never indexed");

    let mut config = Config::default();
    config.corpus.max_file_mib = 1;
    let mut ix = sb.indexer_with(&config).unwrap();
    let report = ix.update(&mut |_| {}).unwrap();

    let reason = |p: &str| {
        skipped_reason(&report, p).unwrap_or_else(|| panic!("{p} not skipped: {report:#?}"))
    };
    assert!(
        reason("corrupt.pdf").contains("PDF"),
        "{}",
        reason("corrupt.pdf")
    );
    assert!(
        reason("encrypted.pdf").contains("encrypted"),
        "{}",
        reason("encrypted.pdf")
    );
    assert!(reason("fake.pdf").contains("not a PDF"));
    assert!(reason("binary.txt").contains("binary"));
    assert_eq!(reason("empty.txt"), "empty file");
    assert_eq!(reason("blank.md"), "empty file");
    assert!(reason("big.txt").contains("size cap"));
    assert!(reason("outside.txt").contains("outside the folder"));
    assert!(reason("loop-a.md").contains("looping"));
    assert!(reason("loop-b.md").contains("looping"));
    assert!(reason("pipe.txt").contains("not a regular file"));
    let readable_anyway = std::fs::read(&locked).is_ok(); // root ignores permission bits
    if readable_anyway {
        assert!(report.indexed.contains(&"locked.txt".to_string()));
    } else {
        assert!(reason("locked.txt").contains("permission denied"));
    }
    let mut indexed = report.indexed.clone();
    indexed.retain(|p| p != "locked.txt");
    assert_eq!(
        indexed,
        ["good.md", "good.pdf", "inside-link.md", "latin1.txt"]
    );
    assert!(
        report
            .files_skipped
            .iter()
            .all(|s| !s.path.contains("hidden"))
    );
    assert_eq!(report.warnings.len(), 1);
    assert!(report.warnings[0].reason.contains("Latin-1"));

    let reader = ix.reader().unwrap();
    assert_eq!(
        reader.search("marmots burrows", 1).unwrap()[0].path,
        "good.pdf"
    );
    let latin = &reader.search("ocelot bistro", 1).unwrap()[0];
    assert!(latin.text.contains("café crème brûlée"), "{}", latin.text);
}

#[test]
fn pdf_extraction_is_contained_in_time_and_crashes() {
    let pdf = common::demo_dir().join("libtasn1-manual.pdf");
    let mut limits = Limits {
        max_bytes: 64 << 20,
        pdf_timeout: Duration::from_millis(1),
        exe: common::exe(),
        pdf: vec![PdfReader::Builtin],
    };
    let started = Instant::now();
    let err = extract::extract(&pdf, Kind::Pdf, &limits).unwrap_err();
    assert!(err.0.contains("took longer than"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the worker is killed, not waited for"
    );

    // A worker that dies abnormally (here: killed by a signal) is a skip, not our crash.
    let dir = tempfile::tempdir().unwrap();
    let crasher = dir.path().join("crash.sh");
    std::fs::write(
        &crasher,
        "#!/bin/sh\necho \"thread 'main' panicked at lopdf\" >&2\nkill -SEGV $$\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &crasher,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    limits.exe = crasher;
    limits.pdf_timeout = Duration::from_secs(10);
    let err = extract::extract(&pdf, Kind::Pdf, &limits).unwrap_err();
    assert!(err.0.contains("crashed"), "{err}");

    limits.exe = common::exe();
    let doc = extract::extract(&pdf, Kind::Pdf, &limits).unwrap();
    assert_eq!(doc.pages.len(), 36);
}

#[test]
fn a_file_that_vanishes_or_changes_while_read_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone.txt");
    let err = extract::read_stable(&gone, 1 << 20).unwrap_err();
    assert!(err.0.contains("vanished"), "{err}");

    // A file that keeps growing while we read it is reported as changing.
    let growing = dir.path().join("growing.txt");
    std::fs::write(&growing, vec![b'x'; 4 << 20]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (growing.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&[b'y'; 4096]).unwrap();
            }
        })
    };
    let mut seen = None;
    for _ in 0..200 {
        if let Err(e) = extract::read_stable(&growing, 1 << 30) {
            seen = Some(e);
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        seen.expect("a growing file is detected")
            .0
            .contains("changed while being read")
    );
}

#[test]
fn a_second_indexer_on_the_same_folder_gets_a_clear_error() {
    let sb = Sandbox::demo();
    let _first = sb.indexer();
    let err = sb
        .indexer_with(&Config::default())
        .err()
        .expect("second writer refused");
    assert!(
        format!("{err:#}").contains("held by another running rapid-chat"),
        "{err:#}"
    );
}

#[test]
fn a_missing_folder_is_a_clear_error() {
    let sb = Sandbox::empty();
    let missing = sb.path("nope");
    let err = rapid_chat::corpus::Indexer::open(
        sb.cache.path(),
        &missing,
        tokenizer(),
        &Config::default(),
        common::exe(),
    )
    .err()
    .expect("missing folder refused");
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
}

#[test]
fn a_format_or_settings_change_rebuilds_the_index() {
    let sb = Sandbox::demo();
    {
        let mut ix = sb.indexer();
        assert_eq!(ix.update(&mut |_| {}).unwrap().files_indexed, 3);
    }
    let mut config = Config::default();
    config.corpus.chunk_tokens = 256;
    let mut ix = sb.indexer_with(&config).unwrap();
    let report = ix.update(&mut |_| {}).unwrap();
    assert_eq!(
        report.files_indexed, 3,
        "new chunk size: everything re-chunked"
    );
    let small = ix.reader().unwrap();
    assert!(
        small
            .search("GNU", 50)
            .unwrap()
            .iter()
            .all(|h| h.tokens <= 256)
    );
    drop((ix, small));

    // An index written by another format version is rebuilt by itself.
    let dir = rapid_chat::corpus::index::index_dir(
        sb.cache.path(),
        &std::fs::canonicalize(sb.dir.path()).unwrap(),
    );
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let format = format!(
        "\"format\":{}",
        rapid_chat::corpus::manifest::FORMAT_VERSION
    );
    assert!(text.contains(&format), "{text}");
    std::fs::write(&manifest, text.replacen(&format, "\"format\":0", 1)).unwrap();
    let mut ix = sb.indexer_with(&config).unwrap();
    assert_eq!(ix.update(&mut |_| {}).unwrap().files_indexed, 3);
    drop(ix);

    // An index folder that is gone (or unreadable) is rebuilt, and its files indexed again:
    // the manifest of the lost index must not claim they are there.
    std::fs::remove_dir_all(dir.join("tantivy")).unwrap();
    let mut ix = sb.indexer_with(&config).unwrap();
    let report = ix.update(&mut |_| {}).unwrap();
    assert_eq!(report.files_indexed, 3, "{report:?}");
    assert!(ix.reader().unwrap().num_chunks() > 50);
}

#[test]
fn the_watcher_indexes_a_new_file_and_drops_a_deleted_one() {
    let sb = Sandbox::empty();
    std::fs::write(sb.path("first.md"), "The first note mentions walruses.\n").unwrap();
    let mut ix = sb.indexer();
    ix.update(&mut |_| {}).unwrap();
    let reader = ix.reader().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let _watcher = Watcher::start(ix, Duration::from_millis(200), &[], tx).unwrap();

    std::fs::write(sb.path("second.md"), "The second note mentions narwhals.\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let wait_for = |want: &WatchEvent| loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) if &e == want => return,
            Ok(_) => continue,
            Err(_) => panic!("no {want:?} within 20 s"),
        }
    };
    wait_for(&WatchEvent::Indexed("second.md".into()));
    reader.reload().unwrap();
    assert_eq!(reader.search("narwhals", 1).unwrap()[0].path, "second.md");

    std::fs::remove_file(sb.path("first.md")).unwrap();
    wait_for(&WatchEvent::Removed("first.md".into()));
    reader.reload().unwrap();
    assert!(reader.search("walruses", 1).unwrap().is_empty());
}

/// A config whose PDF readers are `readers`, first choice first.
fn readers(readers: &[&str]) -> Config {
    let mut config = Config::default();
    config.corpus.pdf_readers = readers.iter().map(|r| (*r).to_string()).collect();
    config
}

/// A PDF that crashes pdf-extract (a ToUnicode entry with an odd-length code, as some real
/// PDFs have) and that pdftotext reads.
fn pdf_crashing_pdf_extract() -> Vec<u8> {
    pdf_with_cmap(
        b"Quokkas graze at dusk AB",
        "",
        Some(&[("41", "0041"), ("4", "0042")]),
    )
}

#[test]
fn a_pdf_that_crashes_the_built_in_reader_is_read_by_the_next_one() {
    assert!(
        extract::find_pdftotext().is_some(),
        "pdftotext is installed by the set-up (scripts/install-deps.sh)"
    );
    let sb = Sandbox::empty();
    std::fs::write(sb.path("crash.pdf"), pdf_crashing_pdf_extract()).unwrap();

    // Alone, the built-in reader crashes: the reason is its own error, in one line.
    let mut alone = sb.indexer_with(&readers(&["pdf-extract"])).unwrap();
    let report = alone.update(&mut |_| {}).unwrap();
    let reason = skipped_reason(&report, "crash.pdf").expect("skipped");
    assert!(reason.contains("crashed"), "{reason}");
    assert!(
        !reason.contains('\n') && !reason.contains("RUST_BACKTRACE"),
        "{reason}"
    );
    assert!(reason.contains("pdf-extract: "), "{reason}");
    drop(alone);

    // First the built-in reader, then pdftotext: it is indexed.
    let sb = Sandbox::empty();
    std::fs::write(sb.path("crash.pdf"), pdf_crashing_pdf_extract()).unwrap();
    let mut ix = sb
        .indexer_with(&readers(&["pdf-extract", "pdftotext"]))
        .unwrap();
    let report = ix.update(&mut |_| {}).unwrap();
    assert_eq!(report.indexed, ["crash.pdf"], "{report:?}");
    let hits = ix.reader().unwrap().search("quokkas dusk", 1).unwrap();
    assert_eq!(hits[0].path, "crash.pdf");
    assert_eq!(hits[0].page, Some(1));
}

#[test]
fn ligatures_and_spacing_accents_are_normalised_for_search() {
    let sb = Sandbox::empty();
    // "\xc2" is the acute accent in the font's standard encoding, set apart from its letter as
    // TeX's fonts do; code 0x41 is the ligature fi by the font's map.
    std::fs::write(
        sb.path("fr.pdf"),
        pdf_with_cmap(
            b"le \xc2el\xc2ement du Ale de montagne",
            "",
            Some(&[("41", "FB01")]),
        ),
    )
    .unwrap();
    let mut ix = sb.indexer();
    let report = ix.update(&mut |_| {}).unwrap();
    assert_eq!(report.indexed, ["fr.pdf"], "{report:?}");
    let reader = ix.reader().unwrap();
    let hit = &reader.search("file montagne", 1).unwrap()[0];
    assert!(hit.text.contains("élément"), "{:?}", hit.text);
    assert!(hit.text.contains("file de montagne"), "{:?}", hit.text);
    assert!(!hit.text.contains('\u{FB01}'), "{:?}", hit.text);
}

/// A PDF reader that logs each run to `log` before running the real built-in reader: what a
/// pass extracted shows there.
fn logging_reader(dir: &std::path::Path, log: &std::path::Path) -> std::path::PathBuf {
    let script = dir.join("reader.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$2\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            common::exe().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

#[test]
fn a_touched_or_skipped_file_costs_its_hash_not_an_extraction() {
    let sb = Sandbox::empty();
    let tools = tempfile::tempdir().unwrap();
    let log = tools.path().join("runs.log");
    let reader = logging_reader(tools.path(), &log);
    std::fs::write(
        sb.path("good.pdf"),
        tiny_pdf("Marmots hibernate in burrows", ""),
    )
    .unwrap();
    std::fs::write(sb.path("crash.pdf"), pdf_crashing_pdf_extract()).unwrap();
    let runs = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let open = || {
        rapid_chat::corpus::Indexer::open(
            sb.cache.path(),
            sb.dir.path(),
            tokenizer(),
            &readers(&["pdf-extract"]),
            reader.clone(),
        )
        .unwrap()
    };
    let mut ix = open();
    let first = ix.update(&mut |_| {}).unwrap();
    assert_eq!(first.indexed, ["good.pdf"]);
    assert!(skipped_reason(&first, "crash.pdf").is_some());
    assert_eq!(runs(), 2, "each PDF read once");

    // Nothing changed: nothing read.
    let again = ix.update(&mut |_| {}).unwrap();
    assert_eq!(runs(), 2);
    assert!(
        again.indexed.is_empty() && again.bytes_read == 0,
        "{again:?}"
    );
    assert_eq!(
        skipped_reason(&again, "crash.pdf"),
        skipped_reason(&first, "crash.pdf"),
        "the skip is remembered with its reason"
    );

    // Touched (a new time, the same bytes): hashed, not extracted; also after a restart.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    for name in ["good.pdf", "crash.pdf"] {
        let f = std::fs::File::options()
            .write(true)
            .open(sb.path(name))
            .unwrap();
        f.set_modified(later).unwrap();
    }
    drop(ix);
    let mut ix = open();
    let touched = ix.update(&mut |_| {}).unwrap();
    assert_eq!(runs(), 2, "a touch costs a hash, not an extraction");
    assert!(touched.indexed.is_empty(), "{touched:?}");
    assert!(touched.bytes_read > 0, "the touched files were hashed");
    assert!(skipped_reason(&touched, "crash.pdf").is_some());
    let hits = ix.reader().unwrap().search("marmots", 1).unwrap();
    assert_eq!(hits[0].path, "good.pdf", "its chunks are kept");

    // Changed bytes: extracted again.
    std::fs::write(
        sb.path("good.pdf"),
        tiny_pdf("Marmots whistle at hawks", ""),
    )
    .unwrap();
    let changed = ix.update(&mut |_| {}).unwrap();
    assert_eq!(changed.indexed, ["good.pdf"]);
    assert_eq!(runs(), 3);

    // Other readers (pdftotext, which the set-up installs, first): what the old ones could not
    // read is tried again.
    drop(ix);
    let mut ix = rapid_chat::corpus::Indexer::open(
        sb.cache.path(),
        sb.dir.path(),
        tokenizer(),
        &readers(&["pdftotext", "pdf-extract"]),
        reader.clone(),
    )
    .unwrap();
    let retried = ix.update(&mut |_| {}).unwrap();
    assert_eq!(retried.indexed, ["crash.pdf"], "{retried:?}");
}

/// Events from `rx` until it has been quiet for `quiet`.
fn drain(rx: &crossbeam_channel::Receiver<WatchEvent>, quiet: Duration) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    while let Ok(e) = rx.recv_timeout(quiet) {
        events.push(e);
    }
    events
}

#[test]
fn the_watcher_on_nested_folders_runs_a_pass_only_for_a_change() {
    let sb = Sandbox::empty();
    std::fs::create_dir_all(sb.path("notes/deeper")).unwrap();
    std::fs::write(sb.path("top.md"), "The top note mentions walruses.\n").unwrap();
    std::fs::write(sb.path("notes/a.md"), "Note a mentions narwhals.\n").unwrap();
    std::fs::write(
        sb.path("notes/deeper/b.pdf"),
        tiny_pdf("Marmots hibernate in burrows", ""),
    )
    .unwrap();
    std::fs::write(
        sb.path("notes/deeper/crash.pdf"),
        pdf_crashing_pdf_extract(),
    )
    .unwrap();
    let mut ix = sb.indexer_with(&readers(&["pdf-extract"])).unwrap();
    let report = ix.update(&mut |_| {}).unwrap();
    assert_eq!(report.files_indexed, 3, "{report:?}");
    let (tx, rx) = crossbeam_channel::unbounded();
    let watcher =
        Watcher::start(ix, Duration::from_millis(200), &report.files_skipped, tx).unwrap();

    // Nothing changes: no pass, nothing said (a pass reads the folders it walks; those reads
    // must not start another pass).
    let idle = drain(&rx, Duration::from_secs(3));
    assert!(idle.is_empty(), "{idle:?}");
    assert_eq!(watcher.passes(), 0);
    // Reading the documents, as any program may, is no change either.
    for f in ["top.md", "notes/a.md", "notes/deeper/b.pdf"] {
        std::fs::read(sb.path(f)).unwrap();
    }
    assert!(drain(&rx, Duration::from_secs(2)).is_empty());
    assert_eq!(watcher.passes(), 0);

    // One change deep in the tree: one pass, its file re-indexed, and quiet again after it.
    std::fs::write(
        sb.path("notes/deeper/b.pdf"),
        tiny_pdf("Marmots whistle at hawks", ""),
    )
    .unwrap();
    let events = drain(&rx, Duration::from_secs(3));
    assert_eq!(
        events,
        [
            WatchEvent::Indexed("notes/deeper/b.pdf".into()),
            WatchEvent::Updated { chunks: 3 }
        ]
    );
    assert_eq!(watcher.passes(), 1);
    assert!(drain(&rx, Duration::from_secs(2)).is_empty());
    assert_eq!(watcher.passes(), 1, "the pass's own reads start no other");

    // A new subfolder with a document: one more pass.
    std::fs::create_dir(sb.path("more")).unwrap();
    std::fs::write(sb.path("more/c.md"), "Note c mentions okapis.\n").unwrap();
    let events = drain(&rx, Duration::from_secs(3));
    assert!(
        events.contains(&WatchEvent::Indexed("more/c.md".into())),
        "{events:?}"
    );
    assert!(watcher.passes() <= 2, "{} passes", watcher.passes());
}

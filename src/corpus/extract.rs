//! Text extraction: PDF (by page, in a separate process so that a hostile file can neither crash
//! nor hang us), Markdown and plain text (UTF-8, else decoded as Latin-1 with a warning).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One page of extracted text; text files are a single page without a number.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub number: Option<u32>,
    pub text: String,
}

/// The text of one file, with the bytes it was extracted from.
#[derive(Debug)]
pub struct Extracted {
    pub pages: Vec<Page>,
    /// sha256 of the file's bytes, hex.
    pub hash: String,
    pub size: u64,
    pub mtime_ns: u64,
    /// Something the user should know although the file was indexed (e.g. lossy decoding).
    pub warning: Option<String>,
}

/// Why a file was not indexed, in words for the user.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Skip(pub String);

fn skip(reason: impl Into<String>) -> Skip {
    Skip(reason.into())
}

/// What kind of document a path is, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pdf,
    Text,
}

/// The kind of `path`, or `None` when its extension is not indexed.
pub fn kind_of(path: &Path, text_extensions: &[String]) -> Option<Kind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    if ext == "pdf" {
        Some(Kind::Pdf)
    } else if text_extensions.contains(&ext) {
        Some(Kind::Text)
    } else {
        None
    }
}

/// A way to read a PDF's text, tried in the order of [`Limits::pdf`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PdfReader {
    /// poppler's `pdftotext` at this path (installed by the set-up; the faster and more complete
    /// of the two on real folders).
    Pdftotext(std::path::PathBuf),
    /// pdf-extract, built in, run as `rapid-chat extract-pdf IN OUT` in a child process.
    Builtin,
}

impl PdfReader {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pdftotext(_) => "pdftotext",
            Self::Builtin => "pdf-extract",
        }
    }
}

/// Limits applied to every file.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: u64,
    pub pdf_timeout: Duration,
    /// The `rapid-chat` executable, run as `rapid-chat extract-pdf IN OUT` for the built-in reader.
    pub exe: std::path::PathBuf,
    /// The PDF readers, first choice first: the next is tried where one fails or finds almost no
    /// text.
    pub pdf: Vec<PdfReader>,
}

impl Limits {
    /// The limits of `config`, with pdftotext first when it is installed (see
    /// [`find_pdftotext`]).
    pub fn of(corpus: &crate::config::CorpusConfig, exe: std::path::PathBuf) -> Self {
        let pdf = corpus
            .pdf_readers
            .iter()
            .filter_map(|name| match name.as_str() {
                "pdftotext" => find_pdftotext().map(PdfReader::Pdftotext),
                _ => Some(PdfReader::Builtin),
            })
            .collect();
        Self {
            max_bytes: corpus.max_file_mib << 20,
            pdf_timeout: Duration::from_secs(corpus.pdf_timeout_s),
            exe,
            pdf,
        }
    }
}

/// poppler's `pdftotext` on PATH, if it is there.
pub fn find_pdftotext() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("pdftotext"))
        .find(|p| p.is_file())
}

/// Size and modification time, in nanoseconds since the epoch.
pub fn stat(meta: &std::fs::Metadata) -> (u64, u64) {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    (meta.len(), mtime)
}

/// Reads a regular file whole, refusing files over the cap and files that change or vanish
/// while being read.
pub fn read_stable(path: &Path, max_bytes: u64) -> Result<(Vec<u8>, u64, u64), Skip> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_skip(&e))?;
    let meta = if meta.file_type().is_symlink() {
        std::fs::metadata(path).map_err(|e| io_skip(&e))?
    } else {
        meta
    };
    if !meta.is_file() {
        return Err(skip("not a regular file"));
    }
    let (size, mtime) = stat(&meta);
    if size > max_bytes {
        return Err(skip(format!(
            "larger than the size cap ({} MiB > {} MiB, corpus.max_file_mib)",
            size.div_ceil(1 << 20),
            max_bytes >> 20
        )));
    }
    let mut file = std::fs::File::open(path).map_err(|e| io_skip(&e))?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.by_ref()
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_skip(&e))?;
    let after = std::fs::metadata(path).map_err(|e| io_skip(&e))?;
    if stat(&after) != (size, mtime) || bytes.len() as u64 != size {
        return Err(skip(
            "changed while being read; it is indexed again once it is stable",
        ));
    }
    Ok((bytes, size, mtime))
}

fn io_skip(e: &std::io::Error) -> Skip {
    match e.kind() {
        std::io::ErrorKind::NotFound => skip("vanished before it could be read"),
        std::io::ErrorKind::PermissionDenied => skip("permission denied"),
        _ => skip(format!("cannot read: {e}")),
    }
}

/// Extracts the text of the file at `path`.
pub fn extract(path: &Path, kind: Kind, limits: &Limits) -> Result<Extracted, Skip> {
    let (bytes, size, mtime_ns) = read_stable(path, limits.max_bytes)?;
    let hash = content_hash(&bytes);
    let (pages, warning) = extract_bytes(&bytes, kind, limits)?;
    Ok(Extracted {
        pages,
        hash,
        size,
        mtime_ns,
        warning,
    })
}

/// The pages of a file's `bytes` (already read and hashed), normalised for search where they
/// come from a PDF, and a caveat for the user if there is one.
pub fn extract_bytes(
    bytes: &[u8],
    kind: Kind,
    limits: &Limits,
) -> Result<(Vec<Page>, Option<String>), Skip> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(skip("empty file"));
    }
    match kind {
        Kind::Text => {
            let (text, warning) = decode_text(bytes)?;
            if text.trim().is_empty() {
                return Err(skip("empty file"));
            }
            Ok((vec![Page { number: None, text }], warning))
        }
        Kind::Pdf => {
            let mut pages = extract_pdf(bytes, limits)?;
            super::normalize::normalize_pages(pages.iter_mut().map(|p| &mut p.text));
            Ok((pages, None))
        }
    }
}

/// sha256 of `bytes`, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// UTF-8 text as is (without a BOM); binary content refused; other bytes read as Latin-1, the
/// honest reading of most non-UTF-8 text, with a warning.
pub fn decode_text(bytes: &[u8]) -> Result<(String, Option<String>), Skip> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let head = &bytes[..bytes.len().min(8192)];
    let controls = head
        .iter()
        .filter(|&&b| b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t' | 0x0c))
        .count();
    if head.contains(&0) || controls * 20 > head.len() {
        return Err(skip("binary content, not text"));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok((text.to_owned(), None)),
        Err(_) => Ok((
            bytes.iter().map(|&b| char::from(b)).collect(),
            Some("not valid UTF-8: decoded as Latin-1".to_owned()),
        )),
    }
}

/// A reader's text must average this many non-blank characters a page to be taken without
/// trying the next reader: less is a figure, a scan, or a reader that lost the text.
const MIN_CHARS_PER_PAGE: usize = 16;

/// What one reader made of a PDF.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct PdfText {
    pages: Vec<String>,
    /// Images in the file, where the reader counted them.
    images: Option<usize>,
}

impl PdfText {
    fn chars(&self) -> usize {
        self.pages
            .iter()
            .map(|p| p.chars().filter(|c| !c.is_whitespace()).count())
            .sum()
    }

    fn enough(&self) -> bool {
        self.chars() >= MIN_CHARS_PER_PAGE * self.pages.len().max(1)
    }
}

/// The pages of a PDF: each reader of `limits.pdf` in turn until one finds the text; where none
/// does, the one that found the most, or the reason none could read it.
pub fn extract_pdf(bytes: &[u8], limits: &Limits) -> Result<Vec<Page>, Skip> {
    if !bytes.starts_with(b"%PDF")
        && !bytes[..bytes.len().min(1024)]
            .windows(4)
            .any(|w| w == b"%PDF")
    {
        return Err(skip("not a PDF file (no %PDF header)"));
    }
    if limits.pdf.is_empty() {
        return Err(skip("no PDF reader configured (corpus.pdf_readers)"));
    }
    let dir = tempfile::tempdir().map_err(|e| skip(format!("no temporary folder: {e}")))?;
    let input = dir.path().join("in.pdf");
    std::fs::write(&input, bytes).map_err(|e| skip(format!("no temporary file: {e}")))?;
    let mut failures: Vec<(&'static str, Failure)> = Vec::new();
    let mut best: Option<PdfText> = None;
    for reader in &limits.pdf {
        let output = dir.path().join(format!("{}.out", reader.name()));
        match read_pdf(reader, &input, &output, limits) {
            Ok(text) if text.enough() => return Ok(pages_of(text)),
            Ok(text) => {
                tracing::debug!(reader = reader.name(), chars = text.chars(), "little text");
                if best.as_ref().is_none_or(|b| text.chars() > b.chars()) {
                    // Keep what a reader that found nothing knew of the images.
                    let images = text.images.or(best.as_ref().and_then(|b| b.images));
                    best = Some(PdfText { images, ..text });
                } else if let Some(b) = best.as_mut() {
                    b.images = b.images.or(text.images);
                }
            }
            Err(f) => {
                tracing::debug!(reader = reader.name(), reason = %f.message, "PDF reader failed");
                failures.push((reader.name(), f));
            }
        }
    }
    match best {
        Some(text) if text.chars() > 0 => Ok(pages_of(text)),
        Some(text) => Err(skip(no_text_reason(&text))),
        None => Err(skip(failure_reason(&failures))),
    }
}

fn pages_of(text: PdfText) -> Vec<Page> {
    text.pages
        .into_iter()
        .enumerate()
        .map(|(i, text)| Page {
            number: u32::try_from(i + 1).ok(),
            text,
        })
        .collect()
}

/// Why a PDF without text is skipped: pages of images want OCR; pages without images are
/// drawings (a figure, a diagram).
fn no_text_reason(text: &PdfText) -> String {
    let n = text.pages.len();
    let (pages, hold) = if n == 1 {
        ("its one page".to_owned(), "holds")
    } else {
        (format!("its {n} pages"), "hold")
    };
    match text.images {
        Some(0) => format!("no text to index: {pages} {hold} drawings only (a figure)"),
        Some(_) => format!(
            "no text to index: {pages} {hold} images only (a scan?); run OCR on it first \
             (e.g. ocrmypdf)"
        ),
        None => format!("no text to index on {pages} (a figure, or a scan that needs OCR)"),
    }
}

/// A reader's failure: its message, and whether it ran out of time or crashed.
#[derive(Debug)]
struct Failure {
    message: String,
    timed_out: bool,
    crashed: bool,
}

impl Failure {
    fn plain(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            timed_out: false,
            crashed: false,
        }
    }
}

/// The reason no reader could read a PDF, in one line: the readers' own errors.
fn failure_reason(failures: &[(&str, Failure)]) -> String {
    let each = failures
        .iter()
        .map(|(name, f)| format!("{name}: {}", f.message))
        .collect::<Vec<_>>()
        .join("; ");
    let lower = each.to_ascii_lowercase();
    if lower.contains("encrypt") || lower.contains("password") {
        format!("encrypted PDF (needs a password): {each}")
    } else if failures.iter().all(|(_, f)| f.timed_out) {
        format!("{each} (corpus.pdf_timeout_s)")
    } else if failures.iter().any(|(_, f)| f.crashed) {
        format!("the PDF parser crashed on this file: {each}")
    } else {
        format!("corrupt or unsupported PDF: {each}")
    }
}

/// Runs one reader on `input` (its text goes through `output`).
fn read_pdf(
    reader: &PdfReader,
    input: &Path,
    output: &Path,
    limits: &Limits,
) -> Result<PdfText, Failure> {
    let mut cmd = match reader {
        PdfReader::Pdftotext(exe) => {
            let mut c = Command::new(exe);
            c.args(["-enc", "UTF-8", "-eol", "unix"])
                .arg(input)
                .arg(output);
            c
        }
        PdfReader::Builtin => {
            let mut c = Command::new(&limits.exe);
            c.arg("extract-pdf").arg(input).arg(output);
            c
        }
    };
    let stderr = run_contained(&mut cmd, limits.pdf_timeout, reader.name())?;
    let bytes = std::fs::read(output)
        .map_err(|e| Failure::plain(format!("wrote no text ({e}){}", last_line(&stderr))))?;
    match reader {
        // One page per form feed, which also ends the last page.
        PdfReader::Pdftotext(_) => {
            let text = String::from_utf8_lossy(&bytes);
            let mut pages: Vec<String> = text.split('\x0c').map(str::to_owned).collect();
            if pages.len() > 1 && pages.last().is_some_and(|p| p.trim().is_empty()) {
                pages.pop();
            }
            Ok(PdfText {
                pages,
                images: None,
            })
        }
        PdfReader::Builtin => serde_json::from_slice(&bytes)
            .map_err(|e| Failure::plain(format!("output unreadable: {e}"))),
    }
}

/// `: ` and the last line of a program's messages, or nothing.
fn last_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}

/// Address space a PDF reader may use: a decompression bomb fails there, not on the machine.
const PDF_READER_MAX_BYTES: u64 = 4 << 30;

/// Runs `cmd` with a time and a memory limit; its stderr when it succeeds, else why not.
fn run_contained(cmd: &mut Command, timeout: Duration, name: &str) -> Result<String, Failure> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::plain(format!("cannot start {name}: {e}")))?;
    // Set from here, not between fork and exec: a `pre_exec` hook would make the standard
    // library fork the whole process (its mapped model vocabulary included) instead of spawning.
    let limit = libc::rlimit {
        rlim_cur: PDF_READER_MAX_BYTES,
        rlim_max: PDF_READER_MAX_BYTES,
    };
    let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
    // SAFETY: prlimit reads `limit` and changes the limits of our own child only.
    if unsafe { libc::prlimit(pid, libc::RLIMIT_AS, &limit, std::ptr::null_mut()) } != 0 {
        tracing::debug!(reader = name, "cannot limit the PDF reader's memory");
    }
    let mut child = child;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(64 * 1024).read_to_string(&mut text);
        }
        text
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Failure {
                    message: format!("took longer than {} s", timeout.as_secs_f64().round()),
                    timed_out: true,
                    crashed: false,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(Failure::plain(format!("failed: {e}"))),
        }
    };
    let stderr = reader.join().unwrap_or_default();
    if status.success() {
        return Ok(stderr);
    }
    use std::os::unix::process::ExitStatusExt;
    let panic = panicked_message(&stderr);
    let crashed = panic.is_some() || stderr.contains("panicked") || status.signal().is_some();
    let message = match (panic, status.signal()) {
        (Some(m), _) => m,
        (None, Some(sig)) => format!("killed by signal {sig}{}", last_line(&stderr)),
        (None, None) => {
            let line = last_line(&stderr);
            line.strip_prefix(": ")
                .map_or_else(|| format!("exited with {status}"), str::to_owned)
        }
    };
    Err(Failure {
        message,
        timed_out: false,
        crashed,
    })
}

/// The message of a Rust panic in `stderr` (the line after "panicked at ...:"), if any.
fn panicked_message(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines();
    while let Some(l) = lines.next() {
        if let Some(rest) = l.strip_prefix("panic: ") {
            return Some(rest.trim().to_owned());
        }
        if l.contains("panicked at") {
            // Rust prints "thread 'main' panicked at FILE:LINE:COL:" then the message.
            return lines
                .next()
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty() && !m.starts_with("note:"));
        }
    }
    None
}

/// The worker's side (`rapid-chat extract-pdf IN OUT`): reads IN's pages with pdf-extract and
/// writes them to OUT as JSON `{"pages": [...], "images": N}`. A panic of the parser ends the
/// process non-zero with one line on stderr, `panic: MESSAGE`.
pub fn extract_pdf_main(input: &Path, output: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(input)?;
    let doc = lopdf::Document::load_mem(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let encrypted = doc.was_encrypted() || doc.trailer.has(b"Encrypt");
    let images = doc
        .objects
        .values()
        .filter(|o| {
            o.as_stream().is_ok_and(|s| {
                s.dict
                    .get(b"Subtype")
                    .and_then(|t| t.as_name())
                    .is_ok_and(|n| n == b"Image")
            })
        })
        .count();
    std::panic::set_hook(Box::new(|_| {}));
    let pages = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(&bytes))
        .map_err(|payload| {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "no message".into());
            anyhow::anyhow!("panic: {}", message.lines().next().unwrap_or_default())
        })?
        .map_err(|e| {
            if encrypted {
                anyhow::anyhow!("encrypted PDF: {e}")
            } else {
                anyhow::anyhow!("{e}")
            }
        })?;
    if encrypted && pages.iter().all(|p| p.trim().is_empty()) {
        anyhow::bail!("encrypted PDF: no text could be decrypted without a password");
    }
    let text = PdfText {
        pages,
        images: Some(images),
    };
    std::fs::write(output, serde_json::to_vec(&text)?)?;
    Ok(())
}

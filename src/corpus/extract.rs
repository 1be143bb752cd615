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

/// Limits applied to every file.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: u64,
    pub pdf_timeout: Duration,
    /// The `rapid-chat` executable, run as `rapid-chat extract-pdf IN OUT` for each PDF.
    pub pdf_worker: std::path::PathBuf,
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
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(skip("empty file"));
    }
    let hash = content_hash(&bytes);
    let (pages, warning) = match kind {
        Kind::Text => {
            let (text, warning) = decode_text(&bytes)?;
            (vec![Page { number: None, text }], warning)
        }
        Kind::Pdf => (extract_pdf_contained(&bytes, limits)?, None),
    };
    if pages.iter().all(|p| p.text.trim().is_empty()) {
        return Err(skip(match kind {
            Kind::Pdf => "the PDF has no extractable text (scanned images need OCR first)",
            Kind::Text => "empty file",
        }));
    }
    Ok(Extracted {
        pages,
        hash,
        size,
        mtime_ns,
        warning,
    })
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

/// Runs the PDF worker on `path` with a time limit and reads its pages back.
fn extract_pdf_contained(bytes: &[u8], limits: &Limits) -> Result<Vec<Page>, Skip> {
    if !bytes.starts_with(b"%PDF")
        && !bytes[..bytes.len().min(1024)]
            .windows(4)
            .any(|w| w == b"%PDF")
    {
        return Err(skip("not a PDF file (no %PDF header)"));
    }
    let dir = tempfile::tempdir().map_err(|e| skip(format!("no temporary folder: {e}")))?;
    let input = dir.path().join("in.pdf");
    let output = dir.path().join("out.json");
    std::fs::write(&input, bytes).map_err(|e| skip(format!("no temporary file: {e}")))?;
    let mut child = Command::new(&limits.pdf_worker)
        .arg("extract-pdf")
        .arg(&input)
        .arg(&output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            skip(format!(
                "cannot start the PDF worker {}: {e}",
                limits.pdf_worker.display()
            ))
        })?;
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
            Ok(None) if started.elapsed() > limits.pdf_timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(skip(format!(
                    "PDF text extraction took longer than {} s (corpus.pdf_timeout_s)",
                    limits.pdf_timeout.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(skip(format!("PDF worker failed: {e}"))),
        }
    };
    let stderr = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(skip(pdf_failure_reason(&stderr)));
    }
    let json =
        std::fs::read(&output).map_err(|e| skip(format!("PDF worker wrote nothing: {e}")))?;
    let texts: Vec<String> = serde_json::from_slice(&json)
        .map_err(|e| skip(format!("PDF worker output unreadable: {e}")))?;
    Ok(texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| Page {
            number: u32::try_from(i + 1).ok(),
            text,
        })
        .collect())
}

/// Turns the worker's stderr into a reason a user understands.
fn pdf_failure_reason(stderr: &str) -> String {
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim();
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("encrypt") || lower.contains("password") {
        format!("encrypted PDF (needs a password): {last}")
    } else if lower.contains("panicked") {
        format!("the PDF parser crashed on this file: {last}")
    } else {
        format!("corrupt or unsupported PDF: {last}")
    }
}

/// Address space the PDF worker may use: a decompression bomb fails there, not on the machine.
const PDF_WORKER_MAX_BYTES: u64 = 4 << 30;

/// The worker's side (`rapid-chat extract-pdf IN OUT`): extracts pages of IN, writes them to
/// OUT as a JSON array of strings. Panics are reported on stderr and end the process non-zero;
/// so does running out of its memory limit.
pub fn pdf_worker_main(input: &Path, output: &Path) -> anyhow::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: PDF_WORKER_MAX_BYTES,
        rlim_max: PDF_WORKER_MAX_BYTES,
    };
    // SAFETY: setrlimit reads the struct it is given and only changes this process's limits.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        tracing::warn!("cannot limit the PDF worker's memory");
    }
    let bytes = std::fs::read(input)?;
    let doc = lopdf::Document::load_mem(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let encrypted = doc.was_encrypted() || doc.trailer.has(b"Encrypt");
    let pages = pdf_extract::extract_text_from_mem_by_pages(&bytes).map_err(|e| {
        if encrypted {
            anyhow::anyhow!("encrypted PDF: {e}")
        } else {
            anyhow::anyhow!("{e}")
        }
    })?;
    if encrypted && pages.iter().all(|p| p.trim().is_empty()) {
        anyhow::bail!("encrypted PDF: no text could be decrypted without a password");
    }
    std::fs::write(output, serde_json::to_vec(&pages)?)?;
    Ok(())
}

//! The corpus commands: `index` (and `--watch`), `search` and `extract`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result};

use super::{Ctx, exe, line, progress_bar, show};
use crate::corpus::Report;

pub fn index_command(ctx: &Ctx, folder: &Path, json: bool, watch: bool) -> Result<()> {
    let mut corpus = ctx.corpus(folder)?;
    let started = Instant::now();
    let bar = progress_bar();
    let report = corpus.update(&mut |p| show(&bar, p, started));
    bar.finish_and_clear();
    let report = report?.with_context(|| {
        format!(
            "{}: wait for it to finish or quit it",
            corpus.held.as_deref().unwrap_or("the index is held")
        )
    })?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        files = report.files_indexed,
        bytes = report.bytes_read,
        chunks = report.chunks_made,
        seconds,
        "index pass"
    );
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report, seconds);
    }
    if watch {
        use crate::runtime::WatchEvent;
        let (tx, rx) = crossbeam_channel::unbounded();
        let indexer = corpus.into_indexer().context("the index is held")?;
        let _watcher = crate::corpus::watch::Watcher::start(
            indexer,
            std::time::Duration::from_millis(500),
            &report.files_skipped,
            tx,
        )?;
        eprintln!("Watching {} (Ctrl-C to stop)", folder.display());
        for event in rx {
            // One line per change; the chunk count after a pass is not a change of its own.
            if let WatchEvent::Updated { .. } = event {
                continue;
            }
            println!("{}", line(&event.to_string()));
            std::io::stdout().flush()?;
        }
    }
    Ok(())
}

pub fn extract_command(ctx: &Ctx, file: &Path) -> Result<()> {
    use crate::corpus::extract;
    let kind = extract::kind_of(file, &ctx.config.text_extensions()).with_context(|| {
        format!(
            "{} is not a document rapid-chat indexes (PDF, Markdown, text, or corpus.extra_extensions)",
            file.display()
        )
    })?;
    let limits = extract::Limits::of(&ctx.config.corpus, exe()?);
    let doc = extract::extract(file, kind, &limits)
        .map_err(|s| anyhow::anyhow!("{}: {s}", file.display()))?;
    if let Some(w) = &doc.warning {
        eprintln!("note: {w}");
    }
    let text = doc
        .pages
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join("\x0c");
    let mut stdout = std::io::stdout().lock();
    if stdout.is_terminal() {
        writeln!(stdout, "{}", crate::safe_text::neutralize(&text))?;
    } else {
        writeln!(stdout, "{text}")?;
    }
    Ok(())
}

pub fn search_command(
    ctx: &Ctx,
    folder: &Path,
    query: &str,
    top: usize,
    json: bool,
    update: bool,
) -> Result<()> {
    let index = ctx.current_index(folder, update)?;
    let hits = index.search(query, top)?;
    if json {
        println!("{}", serde_json::to_string(&hits)?);
        return Ok(());
    }
    print_hits(&hits);
    Ok(())
}

fn print_report(report: &Report, seconds: f64) {
    println!(
        "{} files indexed, {} unchanged, {} removed; {} chunks in the index ({seconds:.2} s)",
        report.files_indexed, report.files_unchanged, report.files_removed, report.chunks
    );
    for s in &report.files_skipped {
        println!("  skipped {}: {}", line(&s.path), line(&s.reason));
    }
    for w in &report.warnings {
        println!("  note {}: {}", line(&w.path), line(&w.reason));
    }
}

fn print_hits(hits: &[crate::corpus::Hit]) {
    if hits.is_empty() {
        println!("no matches");
    }
    let tty = std::io::stdout().is_terminal();
    for (i, h) in hits.iter().enumerate() {
        let page = h.page.map(|p| format!(" p.{p}")).unwrap_or_default();
        println!(
            "{}. {}{page} [{}..{}] score {:.2}",
            i + 1,
            line(&h.path),
            h.start,
            h.end,
            h.score
        );
        let snippet = line(&h.snippet);
        let snippet = if tty {
            let mut out = String::new();
            for (k, part) in snippet.split("**").enumerate() {
                if k % 2 == 1 {
                    out.push_str(&format!("\x1b[1m{part}\x1b[0m"));
                } else {
                    out.push_str(part);
                }
            }
            out
        } else {
            snippet.into_owned()
        };
        println!("   {snippet}");
    }
}

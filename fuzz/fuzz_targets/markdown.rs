#![no_main]
//! See rapid_chat::fuzzing::markdown for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| rapid_chat::fuzzing::markdown(data));

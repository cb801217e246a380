//! Fuzzes subject validation, matching and permission decisions (invariants in ck_tests::fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ck_tests::fuzz::subject(data));

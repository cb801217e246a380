//! Fuzzes the manifest reader and the ACL compiler behind it (invariants in ck_tests::fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ck_tests::fuzz::manifest(data));

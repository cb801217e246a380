//! The fuzz targets' bodies on stable Rust: every fixture, mutated fixtures and random input.
//! (The coverage-guided runs are `cargo fuzz run manifest` / `subject`; see docs/FUZZING.md.)

use std::path::Path;

use ck_tests::fuzz;
use proptest::prelude::*;

fn corpus() -> Vec<Vec<u8>> {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut files = vec![root.join("conceptkernel.yaml.example")];
    for dir in ["tests/fixtures/invalid", "tests/fixtures/valid", "kernels"] {
        for path in ck_manifest::discover(&root.join(dir)).unwrap_or_default() {
            files.push(path);
        }
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            files.extend(
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_file()),
            );
        }
    }
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn fixtures_hold_the_invariants() {
    let corpus = corpus();
    assert!(corpus.len() > 50);
    for input in &corpus {
        fuzz::manifest(input);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_fixtures_never_panic(seed in 0usize..1000, cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let corpus = corpus();
        let mut input = corpus[seed % corpus.len()].clone();
        for (at, byte) in cuts {
            if input.is_empty() { break; }
            let i = at.index(input.len());
            input[i] = byte;
        }
        fuzz::manifest(&input);
    }

    #[test]
    fn random_yaml_never_panics(text in "[a-z_:\\-\\[\\]{}., \\n*>&!|#'\"0-9]{0,400}") {
        fuzz::manifest(text.as_bytes());
    }

    #[test]
    fn subjects_never_panic(text in "[ab*>. \\t\\n]{0,60}") {
        fuzz::subject(text.as_bytes());
    }
}

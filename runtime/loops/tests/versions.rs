//! CK and TOOL loops: snapshots, the serving record, promote / canary / rollback, and the
//! events each change journals.

use std::path::Path;

use ck_loops::journal::Journal;
use ck_loops::state::{Loops, STATE_DIR, materialize, serving};

const GUID: &str = "0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d";

fn manifest(extra: &str) -> String {
    format!(
        "apiVersion: conceptkernel/v3\nkernel_class: Demo.V\nkernel_id: {GUID}\n\
         spec:\n  actions:\n    common:\n      - {{name: status, access: anon}}\n  tool:\n    component: tool/k.wasm\n{extra}"
    )
}

fn kernel(dir: &Path) -> ck_manifest::Kernel {
    ck_manifest::load_file(&dir.join("conceptkernel.yaml"), chrono::Utc::now())
        .kernel
        .expect("valid manifest")
}

fn events(dir: &Path) -> Vec<String> {
    Journal::new(&dir.join(STATE_DIR))
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

fn save(dir: &Path, source: &str, component: &[u8]) {
    std::fs::write(dir.join("tool/k.c"), source).unwrap();
    std::fs::write(dir.join("tool/k.wasm"), component).unwrap();
}

#[test]
fn versions_move_by_promote_canary_and_rollback_with_their_events() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("tool/__pycache__")).unwrap();
    std::fs::write(dir.join("conceptkernel.yaml"), manifest("")).unwrap();
    std::fs::write(dir.join("tool/__pycache__/x.pyc"), "junk").unwrap();
    save(dir, "v1", b"component one");

    let loops = Loops::open(&kernel(dir)).unwrap();
    let first = loops
        .record(Some(&dir.join("tool/k.wasm")), "build")
        .unwrap();
    let v1 = first.develop.clone().unwrap();
    assert!(first.ck.is_some() && first.tool.is_some());
    assert_eq!(
        events(dir),
        [
            "ck.commit",
            "ck.ref-update",
            "tool.commit",
            "tool.ref-update"
        ]
    );
    // Nothing changed: no commit, no event.
    let again = loops
        .record(Some(&dir.join("tool/k.wasm")), "build")
        .unwrap();
    assert!(again.ck.is_none() && again.tool.is_none());
    assert_eq!(events(dir).len(), 4);
    // The snapshot holds sources, not build outputs; the version reads back whole.
    let version = loops.materialize(&v1).unwrap();
    assert!(version.manifest.contains("Demo.V"));
    assert_eq!(std::fs::read(&version.component).unwrap(), b"component one");

    // Serving pins stable to what was recorded.
    let record = loops.pin_current().unwrap();
    assert_eq!(record.stable, v1);
    assert_eq!(record.revision, 1);

    // A new build and a schema change land on develop only.
    save(dir, "v2", b"component two");
    std::fs::write(dir.join("ontology.yaml"), "instance_mutability: sealed\n").unwrap();
    let second = loops
        .record(Some(&dir.join("tool/k.wasm")), "build")
        .unwrap();
    let v2 = second.develop.clone().unwrap();
    assert_ne!(v1.tool, v2.tool);
    assert_eq!(serving(dir).unwrap().unwrap().stable, v1);

    // Canary at 20 %, then rollback ends it.
    let record = loops.canary("develop", 20).unwrap();
    assert_eq!(record.canary.as_ref().unwrap().pin, v2);
    assert_eq!(record.canary.as_ref().unwrap().weight, 20);
    let (record, what) = loops.rollback().unwrap();
    assert!(record.canary.is_none(), "{what}");
    assert_eq!(record.stable, v1);

    // Promote develop, then roll back to v1.
    let record = loops.promote("develop").unwrap();
    assert_eq!(record.stable, v2);
    assert!(
        loops.promote("develop").is_err(),
        "promoting the stable version again is refused"
    );
    let (record, _) = loops.rollback().unwrap();
    assert_eq!(record.stable, v1);
    let err = loops.rollback().unwrap_err().to_string();
    assert!(err.contains("no earlier one"), "{err}");
    let err = loops.promote("no-such-branch").unwrap_err().to_string();
    assert!(
        err.contains("`no-such-branch` names no branch or commit"),
        "{err}"
    );

    let all = events(dir);
    let tail: Vec<&str> = all[4..].iter().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "ck.ref-update",
            "tool.ref-update", // stable pinned
            "ck.commit",
            "ck.ref-update",
            "ck.schema-change",
            "tool.commit",
            "tool.ref-update",
            "ck.ref-update",
            "tool.ref-update",
            "ck.canary", // canary branch + event
            "ck.rollback",
            "ck.ref-update",
            "tool.ref-update",
            "ck.promote",
            "tool.promote",
            "ck.ref-update",
            "tool.ref-update",
            "ck.rollback",
        ]
    );
    // Message ids are deterministic per change, so no two entries share one.
    let entries = Journal::new(&dir.join(STATE_DIR)).entries().unwrap();
    let ids: std::collections::HashSet<_> = entries.iter().map(|e| &e.msg_id).collect();
    assert_eq!(ids.len(), entries.len());
    assert!(
        entries
            .iter()
            .all(|e| e.subject == format!("ck.{GUID}.{}", e.event))
    );

    // A tampered artifact is refused by digest.
    drop(loops);
    let artifact = materialize(dir, &v2).unwrap().component;
    std::fs::write(&artifact, b"evil").unwrap();
    let err = materialize(dir, &v2).unwrap_err().to_string();
    assert!(err.contains("does not match the digest"), "{err}");
}

#[test]
fn edges_changes_are_depends_on_events() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("tool")).unwrap();
    std::fs::write(dir.join("conceptkernel.yaml"), manifest("")).unwrap();
    let loops = Loops::open(&kernel(dir)).unwrap();
    loops.record(None, "first").unwrap();
    std::fs::write(
        dir.join("conceptkernel.yaml"),
        manifest("edges:\n  outbound:\n    - {target_kernel: Demo.Other, predicate: COMPOSES}\n"),
    )
    .unwrap();
    loops.record(None, "edge").unwrap();
    assert_eq!(
        events(dir),
        [
            "ck.commit",
            "ck.ref-update",
            "ck.commit",
            "ck.ref-update",
            "ck.depends-on"
        ]
    );
}

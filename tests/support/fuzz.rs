//! Bodies of the fuzz targets in `fuzz/`, kept here so that stable `cargo test` runs them too
//! (over the fixtures and random input) and the fuzzers and the tests check the same invariants.

use std::path::Path;

use ck_acl::{Policy, compile};
use ck_manifest::{KernelSet, ParseOptions, Severity, parse_str};
use ck_subject::{PermissionList, Permissions, matches, validate_literal, validate_pattern};

/// Parses arbitrary bytes as a manifest. Never panics; a manifest that parses without errors
/// has valid literal topics and compiles to permissions that deny by default.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = parse_str(text, Path::new("fuzz.yaml"), &ParseOptions::default());
    let errors = loaded
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Error);
    let Some(kernel) = loaded.kernel else { return };
    assert!(!errors, "a kernel was produced despite errors");
    for topic in [
        &kernel.topics.input,
        &kernel.topics.result,
        &kernel.topics.event,
        &kernel.topics.stream,
    ] {
        assert!(
            validate_literal(topic).is_ok(),
            "accepted topic {topic:?} is not a literal subject"
        );
    }
    let (set, _) = KernelSet::new(vec![kernel.clone()]);
    let acl = compile(&kernel, &set, chrono::Utc::now(), &Policy::default())
        .unwrap_or_else(|e| panic!("a valid manifest must compile: {e}"));
    assert!(acl.permissions.publish.is_deny_by_default());
    assert!(acl.permissions.subscribe.is_deny_by_default());
    assert!(!acl.permissions.can_subscribe("_INBOX.>"));
    assert!(!acl.permissions.can_subscribe(">"));
}

/// Splits arbitrary bytes into a pattern, a subject and a small permission set, and checks the
/// matcher's algebra. Never panics on any input.
pub fn subject(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let pattern = parts.next().unwrap_or_default();
    let subject = parts.next().unwrap_or_default();
    let pattern_ok = validate_pattern(pattern).is_ok();
    let literal_ok = validate_literal(subject).is_ok();
    let hit = matches(pattern, subject);
    if literal_ok {
        assert!(
            matches(subject, subject),
            "a literal must match itself: {subject:?}"
        );
        assert!(
            matches(">", subject),
            "'>' must match every valid subject: {subject:?}"
        );
        if pattern_ok && ck_subject::is_literal(pattern) {
            assert_eq!(
                hit,
                pattern == subject,
                "literal pattern {pattern:?} vs {subject:?}"
            );
        }
    }
    let rest: Vec<String> = parts.map(str::to_owned).collect();
    let (allow, deny) = rest.split_at(rest.len() / 2);
    let list = PermissionList {
        allow: allow.to_vec(),
        deny: deny.to_vec(),
    };
    let perms = Permissions {
        publish: list.clone(),
        subscribe: list,
        allow_responses: None,
    };
    let decision = perms.can_publish(subject);
    if deny.iter().any(|d| matches(d, subject)) {
        assert!(!decision, "a deny match must deny");
    }
    let _ = perms.can_subscribe(pattern);
    let _ = perms.to_nats_config();
}

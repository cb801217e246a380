//! Compiler behaviour on real manifests parsed from text.

use std::path::Path;

use chrono::{TimeZone, Utc};
use ck_acl::{Direction, Policy, compile};
use ck_manifest::{Kernel, KernelSet, ParseOptions, parse_str};

const A: &str = "7f3ea1b2-0000-4000-8000-00000000000a";
const B: &str = "7f3ea1b2-0000-4000-8000-00000000000b";

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap()
}

fn kernel(text: &str) -> Kernel {
    let opts = ParseOptions {
        now: now(),
        ck_guid: None,
    };
    let loaded = parse_str(text, Path::new("test.yaml"), &opts);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    loaded.kernel.unwrap()
}

fn kernel_a() -> Kernel {
    kernel(&format!(
        "kernel_class: Acme.Reader\nkernel_id: {A}\ndomain: example.org\n\
         spec:\n  actions:\n    common:\n      - {{name: status, access: anon}}\n      - {{name: check.identity, access: anon}}\n\
         edges:\n  outbound:\n    - {{target_kernel: Acme.Store, predicate: COMPOSES}}\n"
    ))
}

fn kernel_b(grants: &str) -> Kernel {
    kernel(&format!(
        "kernel_class: Acme.Store\nkernel_id: {B}\ndomain: example.org\n\
         spec:\n  actions:\n    common:\n      - {{name: status, access: anon}}\n      - {{name: check.identity, access: anon}}\n    unique:\n      - {{name: put, access: owner}}\n\
         grants:\n{grants}"
    ))
}

fn set(kernels: Vec<Kernel>) -> KernelSet {
    let (set, problems) = KernelSet::new(kernels);
    assert!(problems.is_empty(), "{problems:#?}");
    set
}

#[test]
fn own_subjects_are_deny_by_default_and_private() {
    let a = kernel_a();
    let acl = compile(&a, &set(vec![a.clone()]), now(), &Policy::default()).unwrap();
    let p = &acl.permissions;
    assert!(p.can_publish(&format!("ck.{A}.data.written")));
    assert!(p.can_publish("result.Acme.Reader"));
    assert!(p.can_publish("event.Acme.Reader"));
    assert!(!p.can_publish("input.Acme.Store"));
    assert!(!p.can_publish("result.Acme.Store"));
    assert!(p.can_subscribe("input.Acme.Reader"));
    assert!(p.can_subscribe(&format!("_INBOX_{A}.>")));
    assert!(!p.can_subscribe("_INBOX.>"));
    assert!(!p.can_subscribe(">"));
    assert!(!p.can_subscribe(&format!("ck.{B}.data.>")));
    assert!(p.publish.allow.contains(&format!("ck.{A}.>")));
    assert!(!p.publish.allow.iter().any(|s| s.ends_with(".*")));
    assert_eq!(acl.inbox_prefix, format!("_INBOX_{A}"));
    assert_eq!(
        acl.spiffe_id.as_deref(),
        Some(format!("spiffe://example.org/ck/Acme.Reader/{A}").as_str())
    );
    // The COMPOSES edge points at a kernel nobody told the compiler about, and it says so.
    assert!(
        acl.notes
            .iter()
            .any(|n| n.contains("COMPOSES → Acme.Store: no such kernel")),
        "{:?}",
        acl.notes
    );
}

#[test]
fn a_grant_opens_exactly_what_it_names() {
    let a = kernel_a();
    let grants = format!(
        "  - identity: spiffe://example.org/ck/Acme.Reader/{A}\n    actions: [read-storage, put, read-results]\n    expires: 2027-01-01T00:00:00Z\n    audit: true\n"
    );
    let b = kernel_b(&grants);
    let acl = compile(&a, &set(vec![a.clone(), b]), now(), &Policy::default()).unwrap();
    let p = &acl.permissions;
    assert!(p.can_subscribe(&format!("ck.{B}.data.>")));
    assert!(p.can_subscribe(&format!("ck.{B}.data.written")));
    assert!(!p.can_subscribe(&format!("ck.{B}.ck.>")));
    assert!(!p.can_subscribe(&format!("ck.{B}.>")));
    assert!(p.can_publish("input.Acme.Store"));
    assert!(p.can_subscribe("result.Acme.Store"));
    assert!(p.can_subscribe("event.Acme.Store"));
    assert_eq!(
        acl.expires_at,
        Some(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap())
    );
    let rule = acl
        .rules
        .iter()
        .find(|r| r.direction == Direction::Subscribe && r.subject == format!("ck.{B}.data.>"))
        .unwrap();
    assert!(
        rule.because[0].contains("read-storage"),
        "{:?}",
        rule.because
    );
    assert!(acl.notes.is_empty(), "{:?}", acl.notes);
}

/// Issue 14 point 7: a grant of actions opens the grantor's input, not its result topic; only
/// `read-results` does (the host broadcasts there only answers to `anon` actions).
#[test]
fn only_read_results_opens_the_result_topic() {
    let a = kernel_a();
    let grant = |actions: &str| {
        format!(
            "  - identity: spiffe://example.org/ck/Acme.Reader/{A}\n    actions: [{actions}]\n    expires: never\n"
        )
    };
    for (actions, readable) in [
        ("put", false),
        ("invoke-tool", false),
        ("status", false),
        ("read-results", true),
    ] {
        let b = kernel_b(&grant(actions));
        let acl = compile(&a, &set(vec![a.clone(), b]), now(), &Policy::default()).unwrap();
        assert_eq!(
            acl.permissions.can_subscribe("result.Acme.Store"),
            readable,
            "a grant of [{actions}]"
        );
    }
}

#[test]
fn a_grant_for_someone_else_or_expired_opens_nothing() {
    let a = kernel_a();
    let other = "spiffe://example.org/ck/Acme.Other/00000000-0000-4000-8000-000000000000";
    let b = kernel_b(&format!(
        "  - identity: {other}\n    actions: [read-storage]\n    expires: never\n"
    ));
    let acl = compile(&a, &set(vec![a.clone(), b]), now(), &Policy::default()).unwrap();
    assert!(!acl.permissions.can_subscribe(&format!("ck.{B}.data.>")));
    // A's COMPOSES edge to B: B's result topic stays closed (no `read-results`), and the edge
    // needs only B's input, which B's `anon` status action opens to everyone, so it is backed
    // (issue 14 point 7: a call's answer comes back to the caller's inbox, not `result.{B}`).
    assert!(!acl.permissions.can_subscribe("result.Acme.Store"));
    assert!(acl.permissions.can_publish("input.Acme.Store"));
    assert!(
        !acl.notes
            .iter()
            .any(|n| n.contains("not backed by a grant from Acme.Store")),
        "{:?}",
        acl.notes
    );

    // Expired by the time of compilation (parsed while still valid).
    let b = kernel_b(&format!(
        "  - identity: spiffe://example.org/ck/Acme.Reader/{A}\n    actions: [read-storage]\n    expires: 2026-12-01T00:00:00Z\n"
    ));
    let later = Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).unwrap();
    let acl = compile(&a, &set(vec![a.clone(), b]), later, &Policy::default()).unwrap();
    assert!(!acl.permissions.can_subscribe(&format!("ck.{B}.data.>")));
    assert!(
        acl.notes.iter().any(|n| n.contains("expired")),
        "{:?}",
        acl.notes
    );
}

#[test]
fn auth_grants_stay_inside_the_trust_domain() {
    let a = kernel(&format!(
        "kernel_class: Acme.Reader\nkernel_id: {A}\ndomain: other.org\n"
    ));
    let b = kernel_b("  - identity: auth\n    actions: [read-index]\n    expires: never\n");
    let acl = compile(
        &a,
        &set(vec![a.clone(), b.clone()]),
        now(),
        &Policy::default(),
    )
    .unwrap();
    assert!(!acl.permissions.can_subscribe(&format!("ck.{B}.data.>")));
    let a_same = kernel_a();
    let acl = compile(
        &a_same,
        &set(vec![a_same.clone(), b]),
        now(),
        &Policy::default(),
    )
    .unwrap();
    assert!(acl.permissions.can_subscribe(&format!("ck.{B}.data.>")));
}

#[test]
fn produces_edge_is_consent_by_the_source() {
    let a = kernel_a();
    let b = kernel(&format!(
        "kernel_class: Acme.Store\nkernel_id: {B}\ndomain: example.org\n\
         edges:\n  outbound:\n    - {{target_kernel: Acme.Reader, predicate: PRODUCES}}\n"
    ));
    let acl = compile(&a, &set(vec![a.clone(), b]), now(), &Policy::default()).unwrap();
    assert!(acl.permissions.can_subscribe("event.Acme.Store"));
    assert!(!acl.permissions.can_subscribe("result.Acme.Store"));
}

#[test]
fn guid_format_topics_are_covered_by_the_namespace() {
    let k = kernel(&format!(
        "kernel_class: Acme.Reader\nkernel_id: {A}\nspec:\n  nats:\n    format: guid\n"
    ));
    let acl = compile(&k, &set(vec![k.clone()]), now(), &Policy::default()).unwrap();
    assert_eq!(acl.permissions.publish.allow, vec![format!("ck.{A}.>")]);
    assert!(acl.permissions.can_subscribe(&format!("ck.{A}.input")));
    assert!(acl.rules.iter().any(|r| r.covered_by.is_some()));
    let json = serde_json::to_value(&acl).unwrap();
    assert_eq!(json["inbox_prefix"], format!("_INBOX_{A}"));
}

#[test]
fn jetstream_is_opened_only_for_a_task_kernels_own_bucket() {
    let k = kernel(&format!(
        "kernel_class: Acme.Tasks\nkernel_id: {A}\nspec:\n  actions:\n    unique:\n      - {{name: task.start, access: anon}}\n"
    ));
    let acl = compile(&k, &set(vec![k.clone()]), now(), &Policy::default()).unwrap();
    for subject in ck_manifest::topics::host_jetstream_subjects(A) {
        assert!(
            acl.permissions.publish.allow.contains(&subject),
            "{subject}"
        );
    }
    let own = format!("ck_tasks_{}", A.replace('-', "_"));
    let other = format!("ck_tasks_{}", B.replace('-', "_"));
    assert!(acl.permissions.can_publish(&format!("$KV.{own}.t-1")));
    assert!(!acl.permissions.can_publish(&format!("$KV.{other}.t-1")));
    assert!(!acl.permissions.can_publish("$JS.API.STREAM.CREATE.ANY"));
    assert!(
        !acl.permissions
            .can_publish(&format!("$JS.API.STREAM.DELETE.KV_{own}"))
    );
    assert!(
        !acl.permissions
            .can_publish(&format!("$JS.API.STREAM.PURGE.KV_{own}"))
    );
}

#[test]
fn nothing_outside_the_declared_subject_families_is_opened() {
    let a = kernel_a();
    let builtin = ck_acl::families::SUBJECT_FAMILIES;
    // The same families without `event.>`: the kernel's own event topic is then noted, not
    // opened; everything else stays as it was.
    let without_events = builtin.replace(
        "  - name: ck.event\n    subject: \"event.>\"\n    description: a kernel's per-answer events\n",
        "",
    );
    assert_ne!(without_events, builtin, "the families file changed shape");
    let policy = Policy {
        families: std::sync::Arc::new(ck_acl::families::Families::parse(&without_events).unwrap()),
        ..Policy::default()
    };
    let acl = compile(&a, &set(vec![a.clone()]), now(), &policy).unwrap();
    assert!(!acl.permissions.can_publish("event.Acme.Reader"));
    assert!(acl.permissions.can_publish("result.Acme.Reader"));
    assert!(acl.permissions.can_subscribe(&format!("_INBOX_{A}.>")));
    assert!(
        acl.notes.iter().any(|n| n.contains("'event.Acme.Reader'")
            && n.contains("outside every declared subject family")),
        "{:#?}",
        acl.notes
    );
    let full = compile(&a, &set(vec![a.clone()]), now(), &Policy::default()).unwrap();
    assert!(full.permissions.can_publish("event.Acme.Reader"));
    assert!(!full.notes.iter().any(|n| n.contains("subject family")));
}

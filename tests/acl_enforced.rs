//! The permissions `ck-acl` compiles for real manifests, loaded into a real nats-server, are
//! enforced exactly as `ck-subject` predicts — and they hold the security properties we promise.

use std::path::Path;

use ck_acl::{CompiledAcl, Policy, compile};
use ck_manifest::topics::{self, LoopEvent, TopicKind};
use ck_manifest::{Kernel, KernelSet};
use ck_tests::{Verdict, connect_when_ready, nats, users_config};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn load(paths: &[&str]) -> Vec<Kernel> {
    let now = chrono::Utc::now();
    let mut kernels = Vec::new();
    for p in paths {
        for file in ck_manifest::discover(&repo().join(p)).unwrap() {
            let loaded = ck_manifest::load_file(&file, now);
            assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
            kernels.push(loaded.kernel.unwrap());
        }
    }
    kernels
}

/// Every subject a kernel might try: all topics, per-loop subjects and namespaces of every kernel,
/// plus the classic taps.
fn probes(kernels: &[Kernel]) -> (Vec<String>, Vec<String>) {
    let mut publishes = Vec::new();
    let mut subscriptions = vec![
        ">".to_owned(),
        "_INBOX.>".to_owned(),
        "ck.>".to_owned(),
        "input.>".to_owned(),
    ];
    for k in kernels {
        for kind in TopicKind::ALL {
            publishes.push(k.topics.get(kind).to_owned());
            subscriptions.push(k.topics.get(kind).to_owned());
        }
        for event in LoopEvent::ALL {
            publishes.push(k.loop_subject(*event));
        }
        subscriptions.push(topics::kernel_namespace(&k.guid));
        subscriptions.push(format!("ck.{}.*", k.guid));
        subscriptions.push(topics::inbox_namespace(&k.guid));
        publishes.push(format!("{}.reply1", topics::inbox_prefix(&k.guid)));
        for lp in [topics::Loop::Ck, topics::Loop::Tool, topics::Loop::Data] {
            subscriptions.push(topics::loop_namespace(&k.guid, lp));
        }
    }
    (publishes, subscriptions)
}

/// The reference kernels with the example, and the manifest shapes, are two registries: the
/// shapes restate `CS.Voting` and `TG.Cymatics` with other grants, which the registry rule
/// refuses in one set (instances of a class must declare the same access).
#[test]
fn compiled_permissions_are_what_the_server_enforces() {
    enforced_as_compiled(&["conceptkernel.yaml.example", "kernels"]);
    enforced_as_compiled(&["tests/fixtures/valid"]);
}

fn enforced_as_compiled(registry: &[&str]) {
    let kernels = load(registry);
    let (set, conflicts) = KernelSet::new(kernels.clone());
    assert!(conflicts.is_empty(), "{conflicts:#?}");
    let acls: Vec<CompiledAcl> = kernels
        .iter()
        .map(|k| compile(k, &set, chrono::Utc::now(), &Policy::default()).unwrap())
        .collect();
    let users: Vec<(String, &CompiledAcl)> = acls.iter().map(|a| (a.guid.clone(), a)).collect();
    let config = users_config(
        &users
            .iter()
            .map(|(u, a)| (u.as_str(), "pw", &a.permissions))
            .collect::<Vec<_>>(),
    );
    let server = nats(&config);
    let (publishes, subscriptions) = probes(&kernels);
    let mut decisions = 0;
    for acl in &acls {
        let mut client = connect_when_ready(&server, &acl.guid, "pw");
        for s in &publishes {
            let real = client.publish(s).unwrap() == Verdict::Allowed;
            assert_eq!(
                acl.permissions.can_publish(s),
                real,
                "{} PUB {s}",
                acl.kernel
            );
            decisions += 1;
        }
        for s in &subscriptions {
            let real = client.subscribe(s).unwrap() == Verdict::Allowed;
            assert_eq!(
                acl.permissions.can_subscribe(s),
                real,
                "{} SUB {s}",
                acl.kernel
            );
            decisions += 1;
            // Security properties that must hold for every kernel, whatever its grants.
            if [">", "_INBOX.>", "ck.>", "input.>"].contains(&s.as_str()) {
                assert!(!real, "{} may subscribe to the tap {s}", acl.kernel);
            }
            if s.starts_with("_INBOX_") && !s.starts_with(&acl.inbox_prefix) {
                assert!(
                    !real,
                    "{} may read another kernel's replies: {s}",
                    acl.kernel
                );
            }
            if s.starts_with("ck.") && s.ends_with(".*") {
                assert!(
                    !real || s.starts_with(&format!("ck.{}.", acl.guid)),
                    "{} SUB {s}",
                    acl.kernel
                );
            }
        }
    }
    println!("{decisions} compiled-permission decisions agreed with nats-server");
}

#[test]
fn a_cross_kernel_grant_opens_data_and_nothing_more() {
    let kernels = load(&["conceptkernel.yaml.example", "kernels/audit"]);
    let (set, _) = KernelSet::new(kernels.clone());
    let employee = &kernels[0];
    let audit = &kernels[1];
    let now = chrono::Utc::now();
    let with_grant = compile(audit, &set, now, &Policy::default()).unwrap();
    let (alone, _) = KernelSet::new(vec![audit.clone()]);
    let without = compile(audit, &alone, now, &Policy::default()).unwrap();
    let server = nats(&users_config(&[
        ("granted", "pw", &with_grant.permissions),
        ("ungranted", "pw", &without.permissions),
    ]));
    let data = topics::loop_namespace(&employee.guid, topics::Loop::Data);
    let written = employee.loop_subject(LoopEvent::DataWritten);

    let mut granted = connect_when_ready(&server, "granted", "pw");
    assert_eq!(granted.subscribe(&data).unwrap(), Verdict::Allowed);
    assert_eq!(granted.subscribe(&written).unwrap(), Verdict::Allowed);
    assert_eq!(
        granted
            .subscribe(&topics::kernel_namespace(&employee.guid))
            .unwrap(),
        Verdict::Denied
    );
    assert_eq!(
        granted.publish(&written).unwrap(),
        Verdict::Denied,
        "reading DATA events is not forging them"
    );
    assert_eq!(
        granted.publish(&employee.topics.input).unwrap(),
        Verdict::Allowed,
        "invoke-tool"
    );

    let mut ungranted = connect_when_ready(&server, "ungranted", "pw");
    assert_eq!(ungranted.subscribe(&data).unwrap(), Verdict::Denied);
    assert_eq!(ungranted.subscribe(&written).unwrap(), Verdict::Denied);
    assert_eq!(
        ungranted.publish(&employee.topics.input).unwrap(),
        Verdict::Denied
    );
}

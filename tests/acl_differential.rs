//! Differential property test: for random permission sets and subjects, `ck-subject`'s allow/deny
//! decision equals what a real nats-server does when a client holding those permissions
//! publishes or subscribes.
//!
//! One server runs for the whole test; each case installs its permission set as a fresh user
//! through a configuration reload, connects as that user and probes publishes and subscriptions.
//! Cases: `CK_DIFF_CASES` (default 500). A failure is shrunk by proptest to a minimal case.

use std::cell::Cell;

use ck_subject::{PermissionList, Permissions, ResponsePermission};
use ck_tests::{RawClient, Verdict, connect_when_ready, nats, users_config};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// A tiny alphabet so that patterns and subjects overlap often.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_owned)
}

fn literal() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 1..=4).prop_map(|t| t.join("."))
}

/// A pattern: tokens or `*`, optionally ending in `>`.
fn pattern() -> impl Strategy<Value = String> {
    let part = prop_oneof![3 => token(), 1 => Just("*".to_owned())];
    (prop::collection::vec(part, 0..=3), any::<bool>()).prop_filter_map(
        "empty",
        |(mut tokens, tail)| {
            if tail {
                tokens.push(">".to_owned());
            }
            (!tokens.is_empty()).then(|| tokens.join("."))
        },
    )
}

fn list() -> impl Strategy<Value = PermissionList> {
    (
        prop::collection::vec(pattern(), 0..=3),
        prop::collection::vec(pattern(), 0..=2),
    )
        .prop_map(|(allow, deny)| PermissionList { allow, deny })
}

#[derive(Debug, Clone)]
struct Case {
    permissions: Permissions,
    publishes: Vec<String>,
    subscriptions: Vec<String>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        list(),
        list(),
        prop::option::weighted(
            0.2,
            Just(ResponsePermission {
                max: 1,
                expires_ms: 60_000,
            }),
        ),
        prop::collection::vec(literal(), 6),
        prop::collection::vec(prop_oneof![literal(), pattern()], 6),
    )
        .prop_map(
            |(publish, subscribe, allow_responses, publishes, subscriptions)| Case {
                permissions: Permissions {
                    publish,
                    subscribe,
                    allow_responses,
                },
                publishes,
                subscriptions,
            },
        )
}

#[test]
fn matcher_agrees_with_nats_server() {
    let cases: u32 = std::env::var("CK_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let server = nats(&users_config(&[("boot", "boot", &Permissions::default())]));
    let counter = Cell::new(0u64);
    let decisions = Cell::new(0u64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        let n = counter.get() + 1;
        counter.set(n);
        let user = format!("u{n}");
        server
            .reload(&users_config(&[(&user, "pw", &case.permissions)]))
            .unwrap_or_else(|e| panic!("{e}"));
        let config = case.permissions.to_nats_config();
        // A connection made while the server is still finishing the reload can be dropped by
        // the reload's re-check of existing clients; that is no permission decision, so the
        // case is probed again on a fresh connection.
        let mut verdicts = Err(String::new());
        for _ in 0..3 {
            let mut client = connect_when_ready(&server, &user, "pw");
            verdicts = probe(&mut client, &case);
            if verdicts.is_ok() {
                break;
            }
        }
        let (publishes, subscriptions) = verdicts.map_err(TestCaseError::fail)?;
        for (subject, real) in case.publishes.iter().zip(publishes) {
            let ours = case.permissions.can_publish(subject);
            prop_assert_eq!(ours, real, "PUB {} under\n{}", subject, config);
            decisions.set(decisions.get() + 1);
        }
        for (subject, real) in case.subscriptions.iter().zip(subscriptions) {
            let ours = case.permissions.can_subscribe(subject);
            prop_assert_eq!(ours, real, "SUB {} under\n{}", subject, config);
            decisions.set(decisions.get() + 1);
        }
        Ok(())
    });
    println!(
        "differential: {} cases, {} decisions compared with nats-server",
        counter.get(),
        decisions.get()
    );
    if let Err(e) = result {
        panic!(
            "{e}\nserver log tail:\n{}",
            server
                .log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        counter.get() >= u64::from(cases),
        "ran {} of {cases} cases",
        counter.get()
    );
}

/// The server's verdicts on every probe of a case, publishes then subscriptions.
fn probe(client: &mut RawClient, case: &Case) -> Result<(Vec<bool>, Vec<bool>), String> {
    let publishes = case
        .publishes
        .iter()
        .map(|s| client.publish(s).map(|v| v == Verdict::Allowed))
        .collect::<Result<_, _>>()?;
    let subscriptions = case
        .subscriptions
        .iter()
        .map(|s| client.subscribe(s).map(|v| v == Verdict::Allowed))
        .collect::<Result<_, _>>()?;
    Ok((publishes, subscriptions))
}

/// Known server behaviours the matcher must reproduce, pinned as fixed cases.
#[test]
fn pinned_server_quirks() {
    let quirks: Vec<(Permissions, &str, &str, bool)> = vec![
        // An allow entry `a.*` admits a subscription to `a.>` (wildcard tokens are matched literally).
        (perms(&[], &["a.*"], &[]), "sub", "a.>", true),
        (perms(&[], &["*"], &[]), "sub", ">", true),
        (perms(&[], &["a.b"], &[]), "sub", "a.*", false),
        // An empty allow list is no restriction at all.
        (perms(&[], &[], &[]), "pub", "anything", true),
        // Deny overrides allow.
        (perms(&["a.>"], &[], &["a.b"]), "pub", "a.b", false),
        // A deny on a literal does not refuse an overlapping wildcard subscription.
        (
            Permissions {
                subscribe: PermissionList {
                    allow: vec![],
                    deny: vec!["a.b".into()],
                },
                ..Default::default()
            },
            "sub",
            "a.*",
            true,
        ),
    ];
    let users: Vec<(String, Permissions)> = quirks
        .iter()
        .enumerate()
        .map(|(i, q)| (format!("q{i}"), q.0.clone()))
        .collect();
    let refs: Vec<(&str, &str, &Permissions)> =
        users.iter().map(|(u, p)| (u.as_str(), "pw", p)).collect();
    let server = nats(&users_config(&refs));
    for (i, (p, op, subject, expected)) in quirks.iter().enumerate() {
        let mut client = connect_when_ready(&server, &format!("q{i}"), "pw");
        let real = match *op {
            "pub" => client.publish(subject),
            _ => client.subscribe(subject),
        }
        .unwrap()
            == Verdict::Allowed;
        let ours = if *op == "pub" {
            p.can_publish(subject)
        } else {
            p.can_subscribe(subject)
        };
        assert_eq!(
            real,
            *expected,
            "server: {op} {subject} under {}",
            p.to_nats_config()
        );
        assert_eq!(
            ours,
            *expected,
            "matcher: {op} {subject} under {}",
            p.to_nats_config()
        );
    }
}

fn perms(publish: &[&str], subscribe: &[&str], publish_deny: &[&str]) -> Permissions {
    Permissions {
        publish: PermissionList {
            allow: publish.iter().map(|s| s.to_string()).collect(),
            deny: publish_deny.iter().map(|s| s.to_string()).collect(),
        },
        subscribe: PermissionList::allow_only(subscribe.iter().copied()),
        allow_responses: None,
    }
}

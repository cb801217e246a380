//! `ck bridge` against a real nats-server and a real HTTP sink (`tests/support/webhook_sink.py`,
//! which checks each delivery with the `standardwebhooks` package and the Python CloudEvents
//! SDK): three subscriptions with different filters and replay policies get exactly what their
//! policies say across a kill -9 of the bridge, a sink answering 500 and then 429 gets its
//! events once it recovers, a sink that never recovers has its event parked, a sink answering
//! 410 stops its subscription, and private sinks and out-of-scope secrets are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ck_acl::families::Families;
use ck_platform::{Platform, PlatformEvent};
use ck_tests::Proc;
use serde_json::{Value, json};

const CK: &str = env!("CARGO_BIN_EXE_ck");

/// Test keys (`whsec_` + base64 of 32 random bytes); A's two are a rotation in progress.
const KEY_OLD: &str = "whsec_FxJ3oYhpe4yjZgqhhFqNHDw3yNzbusDcfKGN089GbcM=";
const KEY_NEW: &str = "whsec_YhwE5sCgu9eZtjfu5YFUWhEeeNkXjM7iDCi8mqSJSYo=";
const KEY_C: &str = "whsec_11mXXGrgWRYBcAIxdAuJxYtannudp/qfIOTdkZB0Jyo=";
const TOKEN_B: &str = "b-team-token-7f3a";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running `webhook_sink.py`.
struct Sink {
    _proc: Proc,
    records: PathBuf,
    port: u16,
}

impl Sink {
    fn start(dir: &Path, paths: Value) -> Sink {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/webhook_sink.py");
        let port_file = dir.join("sink.port");
        let config = dir.join("sink.json");
        std::fs::write(
            &config,
            json!({"port_file": port_file, "paths": paths}).to_string(),
        )
        .unwrap();
        let records = dir.join("sink.jsonl");
        let proc = Proc::spawn(
            "python3",
            &[
                script.display().to_string(),
                config.display().to_string(),
                records.display().to_string(),
            ],
            &dir.join("sink.log"),
        );
        proc.wait_for("sink.ready");
        let port = std::fs::read_to_string(&port_file)
            .unwrap()
            .parse()
            .unwrap();
        Sink {
            _proc: proc,
            records,
            port,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.records)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a sink record"))
            .collect()
    }

    /// The event ids `path` answered 2xx for.
    fn delivered(&self, path: &str) -> Vec<String> {
        self.records()
            .iter()
            .filter(|r| r["path"] == path && r["status"].as_u64().is_some_and(|s| s < 300))
            .filter_map(|r| r["event_id"].as_str().map(str::to_owned))
            .collect()
    }
}

fn contract(dir: &Path, body: Value) {
    let id = body["subscriptionId"].as_str().unwrap().to_owned();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{id}.json")), body.to_string()).unwrap();
}

fn bridge(args: &[&str], log: &Path, env: &[(&str, &OsStr)]) -> Proc {
    Proc::spawn_in_env(CK, args, log, &[], env)
}

async fn publish(platform: &Platform<'_>, subject: &str, ty: &str, id: &str) {
    platform
        .publish(&PlatformEvent {
            subject,
            ty,
            source: "urn:ck:test:publisher",
            about: None,
            id: Some(id),
            time: None,
            data: json!({"id": id}),
        })
        .await
        .unwrap_or_else(|e| panic!("publishing {id} on {subject}: {e}"));
}

/// Event `n` of the run (0..1000): its subject, type and the subscription it is for.
fn event(n: usize) -> (String, &'static str, &'static str) {
    match n {
        0..400 => (
            format!("platform.capability.changed.v1.k{}", n % 10),
            "ck.platform.capability.changed",
            "/a",
        ),
        400..700 => (
            format!("platform.adoption.started.v1.t{}", n % 5),
            "ck.platform.adoption.started",
            "/b",
        ),
        700..900 => (
            format!("platform.security.notice.v1.s{}", n % 3),
            "ck.platform.security.notice",
            "/c",
        ),
        _ => (
            format!("platform.capability.retired.v1.r{}", n % 4),
            "ck.platform.capability.retired",
            "/c",
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_subscriptions_get_what_their_policies_say_across_a_kill_and_a_failing_sink() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ck_tests::nats_jetstream(&tmp.path().join("js"));
    let url = server.url();
    let made = Command::new(CK)
        .args(["platform", "streams", "--nats", &url])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let client = async_nats::connect(&url).await.unwrap();
    let families = Families::builtin();
    let platform = Platform::new(async_nats::jetstream::new(client.clone()), &families);

    // Before the bridge exists: three versions of each of ten capabilities (A wants the
    // latest of each), ten adoption events (B starts at stream sequence 6), five security
    // notices (C, new-only, wants none of them).
    for round in 0..3 {
        for k in 0..10 {
            let subject = format!("platform.capability.changed.v1.k{k}");
            let id = format!("pre-cap-{round}-{k}");
            publish(&platform, &subject, "ck.platform.capability.changed", &id).await;
        }
    }
    for i in 0..10 {
        let subject = format!("platform.adoption.started.v1.t{}", i % 5);
        publish(
            &platform,
            &subject,
            "ck.platform.adoption.started",
            &format!("pre-adopt-{i}"),
        )
        .await;
    }
    for i in 0..5 {
        let subject = "platform.security.notice.v1.s0";
        publish(
            &platform,
            subject,
            "ck.platform.security.notice",
            &format!("pre-sec-{i}"),
        )
        .await;
    }

    let sink = Sink::start(
        tmp.path(),
        json!({
            "/a": {"secrets": [KEY_OLD, KEY_NEW]},
            "/b": {"bearer": TOKEN_B},
            "/c": {"secrets": [KEY_C], "plan": [[500, null, 3], [429, 1, 2]]},
        }),
    );
    let contracts = tmp.path().join("contracts");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("a.keys"), format!("{KEY_OLD} {KEY_NEW}\n")).unwrap();
    std::fs::write(secrets.join("c.keys"), KEY_C).unwrap();
    contract(
        &contracts,
        json!({"version": 1, "subscriptionId": "sub-latest", "owner": "team a",
            "deliveryMode": "webhook", "subjectFilters": ["platform.capability.changed.v1.*"],
            "sink": {"url": sink.url("/a")},
            "auth": {"class": "standard-webhooks", "secretRef": "file:a.keys"},
            "replayPolicy": "latest-per-key"}),
    );
    contract(
        &contracts,
        json!({"version": 1, "subscriptionId": "sub-from-six", "owner": "team b",
            "deliveryMode": "webhook", "subjectFilters": ["platform.adoption.>"],
            "sink": {"url": sink.url("/b"), "timeoutSeconds": 5},
            "auth": {"class": "bearer", "secretRef": "env:CK_BRIDGE_TEST_B_TOKEN"},
            "replayPolicy": "from-sequence", "startSequence": 6}),
    );
    contract(
        &contracts,
        json!({"version": 1, "subscriptionId": "sub-new-only", "owner": "team c",
            "deliveryMode": "webhook",
            "subjectFilters": ["platform.security.>", "platform.capability.retired.v1.*"],
            "sink": {"url": sink.url("/c")},
            "auth": {"class": "standard-webhooks", "secretRef": "file:c.keys"},
            "replayPolicy": "new-only", "maxAttempts": 10}),
    );
    let witness = ck_tests::Witness::start(tmp.path(), &url, ("", ""), &["platform.delivery.>"]);
    let contracts_arg = contracts.display().to_string();
    let secrets_arg = secrets.display().to_string();
    let args = [
        "bridge",
        "--contracts",
        &contracts_arg,
        "--nats",
        &url,
        "--allow-private-sinks",
        "--secret-root",
        &secrets_arg,
        "--secret-env-prefix",
        "CK_BRIDGE_TEST_",
        "--retry-schedule-ms",
        "300,600",
    ];
    let env = [("CK_BRIDGE_TEST_B_TOKEN", OsStr::new(TOKEN_B))];
    let mut first = bridge(&args, &tmp.path().join("bridge-1.log"), &env);
    first.wait_for("bridge.delivering");

    // 1,000 events, the families interleaved; the bridge is killed (SIGKILL) after the sinks
    // have taken some of the first half, and the second half is published while it is down.
    let order: Vec<usize> = (0..1000).map(|i| (i * 7919) % 1000).collect();
    for &n in &order[..500] {
        let (subject, ty, _) = event(n);
        publish(&platform, &subject, ty, &format!("ev-{n}")).await;
    }
    ck_tests::eventually(
        Duration::from_secs(30),
        || sink.delivered("/a").len() + sink.delivered("/b").len() >= 150,
        || format!("the sinks took {} events", sink.records().len()),
    );
    first.kill();
    for &n in &order[500..] {
        let (subject, ty, _) = event(n);
        publish(&platform, &subject, ty, &format!("ev-{n}")).await;
    }
    let second = bridge(&args, &tmp.path().join("bridge-2.log"), &env);
    second.wait_for("bridge.delivering");

    let mut expected: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for n in 0..1000 {
        expected
            .entry(event(n).2)
            .or_default()
            .insert(format!("ev-{n}"));
    }
    for k in 0..10 {
        expected
            .get_mut("/a")
            .unwrap()
            .insert(format!("pre-cap-2-{k}"));
    }
    for i in 5..10 {
        expected
            .get_mut("/b")
            .unwrap()
            .insert(format!("pre-adopt-{i}"));
    }
    let got = |path: &str| sink.delivered(path).into_iter().collect::<BTreeSet<_>>();
    ck_tests::eventually(
        Duration::from_secs(120),
        || {
            expected
                .iter()
                .all(|(path, want)| got(path).is_superset(want))
        },
        || {
            let missing: Vec<String> = expected
                .iter()
                .map(|(path, want)| {
                    format!("{path}: {} missing", want.difference(&got(path)).count())
                })
                .collect();
            format!("{missing:?}\n{}", second.log())
        },
    );
    // Exactly as the policies say: nothing more (no older capability version, no adoption
    // event before sequence 6, no security notice from before the subscription).
    for (path, want) in &expected {
        assert_eq!(&got(path), want, "{path}");
    }

    let records = sink.records();
    let mut webhook_ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &records {
        assert_eq!(r["cloudevent"], "ok", "{r}");
        assert!(
            r["content_type"]
                .as_str()
                .is_some_and(|c| c.starts_with("application/cloudevents+json")),
            "{r}"
        );
        match r["path"].as_str().unwrap() {
            "/b" => assert_eq!(r["bearer"], "ok", "{r}"),
            _ => assert_eq!(r["signature"], "ok", "{r}"),
        }
        webhook_ids
            .entry(r["event_id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(r["webhook_id"].as_str().unwrap().to_owned());
    }
    // One webhook-id per event, across retries and the restart; never shared by two events.
    assert!(webhook_ids.values().all(|ids| ids.len() == 1));
    let distinct: BTreeSet<_> = webhook_ids.values().flatten().collect();
    assert_eq!(distinct.len(), webhook_ids.len());
    let delivered_total: usize = expected.keys().map(|p| sink.delivered(p).len()).sum();
    let wanted_total: usize = expected.values().map(BTreeSet::len).sum();
    println!(
        "bridge: {wanted_total} events delivered, {} duplicates (at least once), {} requests",
        delivered_total - wanted_total,
        records.len()
    );

    // C's sink failed 3 times with 500 and twice with 429 (Retry-After: 1): each such event
    // came again, and after a 429 not before the second had passed.
    let c: Vec<&Value> = records.iter().filter(|r| r["path"] == "/c").collect();
    assert_eq!(c.iter().filter(|r| r["status"] == 500).count(), 3);
    let throttled: Vec<&&Value> = c.iter().filter(|r| r["status"] == 429).collect();
    assert_eq!(throttled.len(), 2);
    for refused in throttled {
        let again = c
            .iter()
            .find(|r| {
                r["webhook_id"] == refused["webhook_id"]
                    && r["at"].as_f64() > refused["at"].as_f64()
            })
            .unwrap_or_else(|| panic!("no attempt after {refused}"));
        let waited = again["at"].as_f64().unwrap() - refused["at"].as_f64().unwrap();
        assert!(
            waited >= 0.9,
            "Retry-After 1 s, attempted again after {waited} s"
        );
    }

    // Every delivery result is a CloudEvent the Python SDK accepts.
    let verdicts = witness.expect_types(&[
        "ck.platform.delivery.delivered",
        "ck.platform.delivery.retrying",
    ]);
    assert!(
        verdicts.types["ck.platform.delivery.retrying"] >= 5,
        "{verdicts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_never_recovers_parks_its_event_and_a_gone_sink_stops_its_subscription() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ck_tests::nats_jetstream(&tmp.path().join("js"));
    let url = server.url();
    let made = Command::new(CK)
        .args(["platform", "streams", "--nats", &url])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let families = Families::builtin();
    let platform = Platform::new(js.clone(), &families);
    let sink = Sink::start(
        tmp.path(),
        json!({
            "/p": {"secrets": [KEY_C], "plan": [[500, null, 1000]]},
            "/g": {"secrets": [KEY_C], "plan": [[410, null, 1000]]},
        }),
    );
    let contracts = tmp.path().join("contracts");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("c.keys"), KEY_C).unwrap();
    for (id, path, filter) in [
        ("sub-parks", "/p", "platform.capability.>"),
        ("sub-gone", "/g", "platform.adoption.>"),
    ] {
        contract(
            &contracts,
            json!({"version": 1, "subscriptionId": id, "owner": "team",
                "deliveryMode": "webhook", "subjectFilters": [filter],
                "sink": {"url": sink.url(path)},
                "auth": {"class": "standard-webhooks", "secretRef": "file:c.keys"},
                "replayPolicy": "new-only", "maxAttempts": 3}),
        );
    }
    let contracts_arg = contracts.display().to_string();
    let secrets_arg = secrets.display().to_string();
    let bridge = bridge(
        &[
            "bridge",
            "--contracts",
            &contracts_arg,
            "--nats",
            &url,
            "--allow-private-sinks",
            "--secret-root",
            &secrets_arg,
            "--retry-schedule-ms",
            "100",
        ],
        &tmp.path().join("bridge.log"),
        &[],
    );
    bridge.wait_for("bridge.delivering");
    publish(
        &platform,
        "platform.capability.changed.v1.x",
        "ck.platform.capability.changed",
        "doomed",
    )
    .await;
    publish(
        &platform,
        "platform.adoption.started.v1.x",
        "ck.platform.adoption.started",
        "gone-1",
    )
    .await;
    bridge.wait_for("bridge.parked");
    bridge.wait_for("bridge.stopped");
    // After a 410 the subscription takes nothing more: a second event stays in the stream.
    publish(
        &platform,
        "platform.adoption.started.v1.x",
        "ck.platform.adoption.started",
        "gone-2",
    )
    .await;
    publish(
        &platform,
        "platform.capability.changed.v1.y",
        "ck.platform.capability.changed",
        "marker",
    )
    .await;
    ck_tests::eventually(
        Duration::from_secs(30),
        || sink.records().iter().any(|r| r["event_id"] == "marker"),
        || format!("{:?}", sink.records()),
    );
    let records = sink.records();
    let attempts = |id: &str| records.iter().filter(|r| r["event_id"] == id).count();
    assert_eq!(attempts("doomed"), 3, "maxAttempts 3: {records:?}");
    assert_eq!(attempts("gone-1"), 1, "{records:?}");
    assert_eq!(attempts("gone-2"), 0, "{records:?}");

    // The parked result names the event's stream sequence, for an operator to replay it.
    let stream = js.get_stream("PLATFORM_DELIVERY").await.unwrap();
    let parked = stream
        .get_last_raw_message_by_subject("platform.delivery.parked.v1.sub-parks")
        .await
        .unwrap();
    let parked: Value = serde_json::from_slice(&parked.payload).unwrap();
    assert_eq!(parked["type"], "ck.platform.delivery.parked");
    assert_eq!(parked["data"]["eventId"], "doomed");
    assert_eq!(parked["data"]["attempt"], 3);
    assert_eq!(parked["data"]["status"], 500);
    assert_eq!(parked["data"]["stream"], "PLATFORM_CAPABILITY");
    assert_eq!(parked["data"]["streamSequence"], 1);
    let stopped = stream
        .get_last_raw_message_by_subject("platform.delivery.stopped.v1.sub-gone")
        .await
        .unwrap();
    let stopped: Value = serde_json::from_slice(&stopped.payload).unwrap();
    assert_eq!(stopped["data"]["status"], 410);
}

#[test]
fn private_sinks_and_secrets_outside_the_operators_scope_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("c.keys"), KEY_C).unwrap();
    std::fs::write(tmp.path().join("host.keys"), KEY_C).unwrap();
    let try_contract = |name: &str, sink: &str, secret: &str, extra: &[&str]| {
        let dir = tmp.path().join(name);
        contract(
            &dir,
            json!({"version": 1, "subscriptionId": name, "owner": "team",
                "deliveryMode": "webhook", "subjectFilters": ["platform.capability.>"],
                "sink": {"url": sink},
                "auth": {"class": "standard-webhooks", "secretRef": secret},
                "replayPolicy": "new-only"}),
        );
        let mut args = vec![
            "bridge".to_owned(),
            "--contracts".to_owned(),
            dir.display().to_string(),
            "--nats".to_owned(),
            "nats://127.0.0.1:1".to_owned(),
            "--secret-root".to_owned(),
            secrets.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Command::new(CK).args(&args).output().unwrap()
    };
    for (name, sink) in [
        ("to-loopback", "http://127.0.0.1:8080/hook"),
        ("to-metadata", "http://169.254.169.254/latest"),
        ("to-localhost", "http://localhost:8080/hook"),
    ] {
        let out = try_contract(name, sink, "file:c.keys", &[]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("refused (SSRF)") && text(&out).contains(name),
            "{}",
            text(&out)
        );
    }
    for (name, secret, why) in [
        (
            "escapes-root",
            "file:../host.keys",
            "outside the secret root",
        ),
        ("reads-env", "env:HOME", "--secret-env-prefix"),
    ] {
        let out = try_contract(
            name,
            "http://127.0.0.1:8080/hook",
            secret,
            &["--allow-private-sinks"],
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains(why) && text(&out).contains(name),
            "{}",
            text(&out)
        );
    }
}

//! `ck run` end to end: real kernels built from C by `ck build`, served over a real nats-server.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use ck_tests::{NatsServer, Proc, ck_build, copy_kernel, nats, reference_kernels};
use futures::StreamExt;
use serde_json::{Value, json};

const VOTING_GUID: &str = "5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e10";

/// Copies the reference kernels' manifests and sources and builds them with `ck build`.
fn built_kernels() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["echo", "voting", "hostile"] {
        copy_kernel(name, &dir.path().join(name));
    }
    ck_build(
        env!("CARGO_BIN_EXE_ck"),
        &["echo", "voting", "hostile"].map(|k| dir.path().join(k)),
    );
    dir
}

/// A running `ck run`, killed on drop.
struct Host {
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Host {
    fn start(server: &NatsServer, kernels: &Path, cache: &Path) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<std::ffi::OsString> = vec!["run".into()];
        args.extend(["echo", "voting", "hostile"].map(|k| kernels.join(k).into()));
        for a in [
            "--nats",
            &server.url(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--insecure-no-identity",
        ] {
            args.push(a.into());
        }
        let proc = Proc::spawn(env!("CARGO_BIN_EXE_ck"), &args, &dir.path().join("ck.log"));
        proc.wait_for_n("\"nats.subscribed\"", 3);
        Host { proc, _dir: dir }
    }

    fn log(&self) -> String {
        self.proc.log()
    }

    /// All three kernels' components came from the artifact cache (or were all compiled).
    fn assert_loaded_from_cache(&self, cached: bool) {
        let log = self.log();
        let pattern = format!("\"from_cache\":{cached}");
        assert_eq!(
            log.matches(&pattern).count(),
            3,
            "expected 3 × {pattern}:\n{log}"
        );
    }
}

fn headers(trace: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Trace-Id", trace);
    h.insert("X-User-ID", "tester");
    h.insert("X-Kernel-ID", "test");
    h
}

async fn ask_raw(client: &Client, subject: &str, body: Vec<u8>) -> Value {
    let request = async_nats::Request::new()
        .payload(Bytes::from(body))
        .headers(headers("tx-test"))
        .timeout(Some(Duration::from_secs(10)));
    let reply = client
        .send_request(subject.to_owned(), request)
        .await
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

async fn ask(client: &Client, subject: &str, action: &str, data: Value) -> Value {
    ask_raw(
        client,
        subject,
        serde_json::to_vec(&json!({"action": action, "data": data})).unwrap(),
    )
    .await
}

struct Setup {
    _kernels: tempfile::TempDir,
    _cache: tempfile::TempDir,
    host: Host,
    server: NatsServer,
    client: Client,
}

async fn setup() -> Setup {
    let kernels = built_kernels();
    let cache = tempfile::tempdir().unwrap();
    let server = nats("");
    let host = Host::start(&server, kernels.path(), cache.path());
    let client = async_nats::connect(server.url()).await.unwrap();
    Setup {
        _kernels: kernels,
        _cache: cache,
        host,
        server,
        client,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kernels_answer_with_their_real_output() {
    let s = setup().await;
    let c = &s.client;
    let answer = ask(
        c,
        "input.Demo.Echo",
        "echo",
        json!({"hello": "wörld", "n": [1, 2]}),
    )
    .await;
    assert_eq!(answer["status"], "ok", "{answer}");
    assert_eq!(answer["data"], json!({"hello": "wörld", "n": [1, 2]}));
    assert_eq!(answer["kernel"], "Demo.Echo");
    assert_eq!(answer["trace_id"], "tx-test");

    // The domain kernel does real work; results are also published on result.{K} and an event
    // on event.{K}, with the trace propagated.
    let mut results = c.subscribe("result.CS.Voting").await.unwrap();
    let mut events = c.subscribe("event.CS.Voting").await.unwrap();
    c.flush().await.unwrap();
    let ballots =
        json!({"ballots": ["b", "a", "b", "c", "b", "a", "x"], "candidates": ["a", "b", "c"]});
    let answer = ask(c, "input.CS.Voting", "tally", ballots).await;
    assert_eq!(
        answer["data"],
        json!({"total": 7, "valid": 6, "invalid": 1, "counts": {"b": 3, "a": 2, "c": 1}, "winner": "b", "tie": false})
    );
    let tie = ask(
        c,
        "input.CS.Voting",
        "tally",
        json!({"ballots": ["a", "b"]}),
    )
    .await;
    assert_eq!(tie["data"]["tie"], true);
    assert_eq!(tie["data"]["winner"], Value::Null);
    let bad = ask(c, "input.CS.Voting", "tally", json!({"ballots": "a"})).await;
    assert_eq!(
        (bad["code"].as_u64(), bad["error"].as_str()),
        (Some(400), Some("kernel_error")),
        "{bad}"
    );

    let published = tokio::time::timeout(Duration::from_secs(5), results.next())
        .await
        .unwrap()
        .unwrap();
    let h = published.headers.unwrap();
    assert_eq!(h.get("Trace-Id").unwrap().as_str(), "tx-test");
    assert_eq!(h.get("X-Kernel-ID").unwrap().as_str(), "CS.Voting");
    assert_eq!(h.get("X-User-ID").unwrap().as_str(), "tester");
    let body: Value = serde_json::from_slice(&published.payload).unwrap();
    assert_eq!(body["data"]["winner"], "b");
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["type"], "action.completed");
    assert_eq!(event["action"], "tally");

    // A flat body: everything but `action` is the data; the context reaches the guest.
    let flat = ask_raw(
        c,
        "input.Demo.Echo",
        br#"{"action":"whoami","task_id":"t-42"}"#.to_vec(),
    )
    .await;
    assert_eq!(flat["data"]["task_id"], "t-42");
    // `X-User-ID` is a claim, and the guest sees it as one (issue 14 point 8).
    assert_eq!(flat["data"]["caller"], "claimed:tester");
    assert_eq!(flat["data"]["trace_id"], "tx-test");
    assert_eq!(flat["data"]["guid"], "0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d");
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_actions_are_answered_for_every_kernel() {
    let s = setup().await;
    for input in ["input.Demo.Echo", "input.CS.Voting", "input.Test.Hostile"] {
        let status = ask(&s.client, input, "status", json!({})).await;
        assert_eq!(status["data"]["state"], "ready", "{status}");
        assert!(
            status["data"]["component"]["digest"]
                .as_str()
                .unwrap()
                .starts_with("blake3:")
        );
        assert_eq!(status["data"]["runtime"]["engine"], "wasmtime 48.0.8");
        let check = ask(&s.client, input, "check.identity", json!({})).await;
        assert_eq!(check["status"], "ok");
        assert_eq!(check["data"]["passed"], true, "{check}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_answered_with_a_code() {
    let s = setup().await;
    let c = &s.client;
    let cases: Vec<(Vec<u8>, u64, &str)> = vec![
        (b"not json".to_vec(), 400, "bad_request"),
        (br#"{"data":{}}"#.to_vec(), 400, "bad_request"),
        (br#"[1,2]"#.to_vec(), 400, "bad_request"),
        (
            br#"{"action":"nope","data":{}}"#.to_vec(),
            404,
            "unknown_action",
        ),
        (
            br#"{"action":"whoami.verified","data":{}}"#.to_vec(),
            401,
            "unauthenticated",
        ),
        (
            serde_json::to_vec(&json!({"action": "echo", "data": {"x": "y".repeat(100_000)}}))
                .unwrap(),
            413,
            "payload_too_large",
        ),
    ];
    for (body, code, error) in cases {
        let answer = ask_raw(c, "input.Demo.Echo", body).await;
        assert_eq!(answer["status"], "error", "{answer}");
        assert_eq!(
            (answer["code"].as_u64(), answer["error"].as_str()),
            (Some(code), Some(error)),
            "{answer}"
        );
        assert_eq!(answer["trace_id"], "tx-test");
    }
    let alive = ask(c, "input.Demo.Echo", "echo", json!({"ok": true})).await;
    assert_eq!(alive["data"]["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_kernels_fail_alone() {
    let s = setup().await;
    let c = &s.client;
    // Each failed call is also a `tool.failed` TOOL event, with the same code and error.
    let mut failed = c
        .subscribe("ck.6b5a4c3d-2e1f-4a0b-8c9d-0e1f2a3b4c5d.tool.failed")
        .await
        .unwrap();
    c.flush().await.unwrap();
    let expectations = [
        ("spin", 504, "deadline_exceeded"),
        ("hog", 500, "memory_exhausted"),
        ("crash", 500, "kernel_trap"),
        ("flood", 500, "result_too_large"),
    ];
    for (action, code, error) in expectations {
        // The echo kernel keeps answering while the hostile call is running, and after it.
        let hostile = ask(c, "input.Test.Hostile", action, json!({}));
        let during = async {
            let started = Instant::now();
            let answer = ask(c, "input.Demo.Echo", "echo", json!({"during": action})).await;
            (answer, started.elapsed())
        };
        let (answer, (echo, echo_time)) = tokio::join!(hostile, during);
        assert_eq!(
            (answer["code"].as_u64(), answer["error"].as_str()),
            (Some(code), Some(error)),
            "{action}: {answer}"
        );
        let event = tokio::time::timeout(Duration::from_secs(5), failed.next())
            .await
            .unwrap_or_else(|_| panic!("no tool.failed for {action}"))
            .unwrap();
        let event: Value = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(event["type"], "ck.tool.failed", "{event}");
        assert_eq!(event["data"]["action"], action, "{event}");
        assert_eq!(event["data"]["code"].as_u64(), Some(code), "{event}");
        assert_eq!(event["data"]["error"], error, "{event}");
        assert!(event["data"]["duration_us"].as_u64().is_some(), "{event}");
        assert_eq!(echo["data"]["during"], action);
        assert!(
            echo_time < Duration::from_millis(250),
            "echo took {echo_time:?} during {action}"
        );
        let after = ask(c, "input.Demo.Echo", "echo", json!({"after": action})).await;
        assert_eq!(after["data"]["after"], action);
    }
    let status = ask(c, "input.Test.Hostile", "status", json!({})).await;
    assert_eq!(status["data"]["stats"]["errors"], 4, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_spinning_kernels_do_not_starve_the_host() {
    let s = setup().await;
    let c = &s.client;
    // More spinning calls than this machine has cores: each yields every epoch tick.
    let spins: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { ask(&c, "input.Test.Hostile", "spin", json!({})).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..5 {
        let started = Instant::now();
        let echo = ask(c, "input.Demo.Echo", "echo", json!({"i": i})).await;
        assert_eq!(echo["data"]["i"], i);
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "echo took {:?} beside 8 spins",
            started.elapsed()
        );
    }
    for spin in spins {
        let answer = spin.await.unwrap();
        assert_eq!(answer["code"], 504, "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_publish_outside_every_family_is_denied_naming_the_closest_family() {
    let s = setup().await;
    let c = &s.client;
    let stray = "platform.capabilty.changed.v1";
    let mut watch = c.subscribe(stray).await.unwrap();
    c.flush().await.unwrap();
    let answer = ask(c, "input.Test.Hostile", "stray", json!({})).await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let denied = &answer["data"]["denied"];
    assert_eq!(denied["subject"], stray);
    let reason = denied["reason"].as_str().unwrap();
    assert!(
        reason.contains("outside every declared subject family")
            && reason.contains("closest: `platform.capability`"),
        "{reason}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.next())
            .await
            .is_err(),
        "the stray message reached NATS"
    );
    let hostile = s._kernels.path().join("hostile");
    ck_tests::eventually(
        Duration::from_secs(5),
        || {
            ck_audit::read(&hostile)
                .unwrap()
                .iter()
                .any(|l| l["subject"] == stray && l["result"] == "deny")
        },
        || format!("no audit line for {stray}"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_publish_without_a_grant_is_denied_before_nats() {
    let s = setup().await;
    let c = &s.client;
    let forged = format!("ck.{VOTING_GUID}.data.written");
    let mut watch = c.subscribe(forged.clone()).await.unwrap();
    c.flush().await.unwrap();
    let answer = ask(c, "input.Test.Hostile", "sneak", json!({})).await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let denied = &answer["data"]["denied"];
    assert_eq!(denied["subject"], forged.as_str());
    let reason = denied["reason"].as_str().unwrap();
    assert!(
        reason.contains("Test.Hostile has no grant to publish on"),
        "{reason}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), watch.next())
            .await
            .is_err(),
        "the forged message reached NATS"
    );
    // The denial is in the kernel's audit ledger (written off the async workers).
    let hostile = s._kernels.path().join("hostile");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let lines = ck_audit::read(&hostile).unwrap();
        if let Some(l) = lines.iter().find(|l| l["subject"] == forged.as_str()) {
            break l.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit line for {forged}: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["result"], "deny", "{line}");
    assert_eq!(line["action"], "publish", "{line}");
    assert!(
        line["caller_svid"]
            .as_str()
            .unwrap()
            .starts_with("spiffe://example.org/ck/Test.Hostile/"),
        "{line}"
    );
    assert!(s.host.log().contains("\"result\":\"deny\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_messages_and_exits_zero() {
    let s = setup().await;
    let c = s.client.clone();
    let mut pending = Vec::new();
    for i in 0..200 {
        let c = c.clone();
        pending.push(tokio::spawn(async move {
            ask(
                &c,
                "input.CS.Voting",
                "tally",
                json!({"ballots": vec!["a"; 50], "i": i}),
            )
            .await
        }));
    }
    // Let the requests reach the host, then ask it to stop.
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.host.proc.terminate();
    for p in pending {
        let answer = p.await.unwrap();
        assert_eq!(answer["data"]["total"], 50, "{answer}");
    }
    let mut host = s.host;
    let status = tokio::task::spawn_blocking(move || host.proc.child().wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let _ = &s.server;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fuel_budget_stops_a_spinning_kernel() {
    let kernels = built_kernels();
    let manifest = kernels.path().join("hostile/conceptkernel.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace(
            "    timeout_ms: 300\n",
            "    timeout_ms: 5000\n    fuel: 20000000\n",
        ),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let server = nats("");
    let _host = Host::start(&server, kernels.path(), cache.path());
    let client = async_nats::connect(server.url()).await.unwrap();
    let started = Instant::now();
    let answer = ask(&client, "input.Test.Hostile", "spin", json!({})).await;
    assert_eq!(
        (answer["code"].as_u64(), answer["error"].as_str()),
        (Some(500), Some("fuel_exhausted")),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "fuel, not the 5 s deadline, must stop it"
    );
    // Kernels without a budget are unaffected by metering.
    let echo = ask(
        &client,
        "input.Demo.Echo",
        "echo",
        json!({"fuel": "unlimited"}),
    )
    .await;
    assert_eq!(echo["data"]["fuel"], "unlimited");
}

/// A kernel in a second language (Python, through componentize-py) is built from the same WIT by
/// its manifest's build command and served by the same host, with a locked-down WASI.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_kernel_is_served_like_the_c_ones() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("cymatics");
    std::fs::create_dir_all(kernel.join("tool")).unwrap();
    std::fs::create_dir_all(dir.path().join("wit")).unwrap();
    let src = reference_kernels();
    std::fs::copy(
        src.join("wit/kernel.wit"),
        dir.path().join("wit/kernel.wit"),
    )
    .unwrap();
    std::fs::copy(
        src.join("cymatics/conceptkernel.yaml"),
        kernel.join("conceptkernel.yaml"),
    )
    .unwrap();
    std::fs::copy(src.join("cymatics/tool/app.py"), kernel.join("tool/app.py")).unwrap();
    ck_build(env!("CARGO_BIN_EXE_ck"), std::slice::from_ref(&kernel));

    let server = nats("");
    let cache = tempfile::tempdir().unwrap();
    let log = dir.path().join("ck.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ck"))
        .arg("run")
        .arg(&kernel)
        .args([
            "--nats",
            &server.url(),
            "--cache-dir",
            cache.path().to_str().unwrap(),
            "--insecure-no-identity",
        ])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("\"nats.subscribed\"")
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = async_nats::connect(server.url()).await.unwrap();
    let answer = ask(
        &client,
        "input.TG.Cymatics",
        "modes",
        json!({"width": 0.3, "height": 0.2, "wave_speed": 340.0, "count": 3}),
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answer["status"], "ok", "{answer}");
    let modes = answer["data"]["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 3);
    // f11 = 170 * sqrt((1/0.3)^2 + (1/0.2)^2)
    let f11 = 170.0 * ((1.0f64 / 0.3).powi(2) + (1.0f64 / 0.2).powi(2)).sqrt();
    assert!(
        (modes[0]["frequency_hz"].as_f64().unwrap() - f11).abs() < 1e-3,
        "{answer}"
    );
    assert_eq!(
        (modes[1]["m"].as_u64(), modes[1]["n"].as_u64()),
        (Some(2), Some(1))
    );
    let status = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.contains("\"kernel\":\"TG.Cymatics\""), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn compiled_components_are_cached_and_a_corrupt_cache_is_a_miss() {
    let kernels = built_kernels();
    let cache = tempfile::tempdir().unwrap();
    let server = nats("");
    let first = Host::start(&server, kernels.path(), cache.path());
    first.assert_loaded_from_cache(false);
    drop(first);
    let second = Host::start(&server, kernels.path(), cache.path());
    second.assert_loaded_from_cache(true);
    drop(second);
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let third = Host::start(&server, kernels.path(), cache.path());
    third.assert_loaded_from_cache(false);
    let client = async_nats::connect(server.url()).await.unwrap();
    let answer = ask(&client, "input.Demo.Echo", "echo", json!({"cached": "no"})).await;
    assert_eq!(answer["data"]["cached"], "no");
}

/// Issue 14, review finding 12: every denied guest publish was one fsync'd audit line, so a
/// caller making the guest loop over denied publishes could fill the disk. The same denial is
/// coalesced: one line per interval, the rest counted.
#[tokio::test(flavor = "multi_thread")]
async fn repeated_guest_denials_are_coalesced_in_the_ledger() {
    let s = setup().await;
    let c = &s.client;
    let forged = format!("ck.{VOTING_GUID}.data.written");
    for _ in 0..50 {
        let answer = ask(c, "input.Test.Hostile", "sneak", json!({})).await;
        assert_eq!(
            answer["data"]["denied"]["subject"],
            forged.as_str(),
            "{answer}"
        );
    }
    let hostile = s._kernels.path().join("hostile");
    let denials = || {
        ck_audit::read(&hostile)
            .unwrap()
            .iter()
            .filter(|l| l["subject"] == forged.as_str())
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while denials() == 0 {
        assert!(std::time::Instant::now() < deadline, "no audit line at all");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        denials() <= 2,
        "{} lines for 50 identical denials",
        denials()
    );
}

//! Versions end to end: a `ck run` host follows `ck promote`, `ck canary` and `ck rollback`
//! without a restart, and every loop change is published as its `ck.{guid}.{loop}.{event}`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use ck_tests::{Proc, ck_build, copy_kernel, nats};
use futures::StreamExt;
use serde_json::Value;

const GUID: &str = "0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d";
const INPUT: &str = "input.Demo.Echo";

/// Demo.Echo's `echo` answering `{"v": version}` whatever it is sent.
fn write_version(kernel: &Path, version: u32) {
    ck_tests::write_echo_version(kernel, version);
}

fn ck(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ck"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ck {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends `n` echo requests, 64 at a time; returns how many each version answered.
async fn versions_answering(client: &Client, n: usize) -> std::collections::BTreeMap<i64, usize> {
    let answers: Vec<i64> = futures::stream::iter(0..n)
        .map(|_| async {
            let reply = client
                .request(INPUT, Bytes::from_static(br#"{"action":"echo","data":{}}"#))
                .await
                .expect("an answer");
            let body: Value = serde_json::from_slice(&reply.payload).unwrap();
            body["data"]["v"]
                .as_i64()
                .unwrap_or_else(|| panic!("{body}"))
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut split = std::collections::BTreeMap::new();
    for v in answers {
        *split.entry(v).or_insert(0) += 1;
    }
    split
}

async fn next_event(sub: &mut async_nats::Subscriber) -> Value {
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a loop event in time")
        .unwrap();
    let body: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body["specversion"], "1.0");
    // Loop changes carry their deterministic id as Nats-Msg-Id (per-call events need none).
    let per_call = ["ck.tool.invoked", "ck.tool.completed", "ck.tool.failed"];
    if per_call.contains(&body["type"].as_str().unwrap_or_default()) {
        return body;
    }
    assert_eq!(
        m.headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string()),
        body["id"].as_str().map(str::to_owned),
        "{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_host_follows_promote_canary_and_rollback() {
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path().join("echo");
    copy_kernel("echo", &kernel);
    write_version(&kernel, 1);
    ck_build(env!("CARGO_BIN_EXE_ck"), &[&kernel]);
    let k = kernel.to_str().unwrap();

    let server = nats("");
    let observer = async_nats::connect(server.url()).await.unwrap();
    let mut loop_events = observer.subscribe(format!("ck.{GUID}.ck.>")).await.unwrap();
    let mut tool_events = observer
        .subscribe(format!("ck.{GUID}.tool.>"))
        .await
        .unwrap();
    observer.flush().await.unwrap();
    // Every CK and TOOL loop event, judged by the Python CloudEvents SDK through nats-py.
    let witness = ck_tests::Witness::start(
        tmp.path(),
        &server.url(),
        ("", ""),
        &[&format!("ck.{GUID}.ck.>"), &format!("ck.{GUID}.tool.>")],
    );
    let cache = tmp.path().join("cache");
    let host = Proc::spawn(
        env!("CARGO_BIN_EXE_ck"),
        &[
            "run",
            k,
            "--nats",
            &server.url(),
            "--insecure-no-identity",
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
        &tmp.path().join("host.log"),
    );
    host.wait_for("\"nats.subscribed\"");
    let client = async_nats::connect(server.url()).await.unwrap();
    assert_eq!(versions_answering(&client, 50).await, [(1, 50)].into());

    // What the host recorded when it started is published: CK and TOOL commits, develop and
    // stable moving.
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            next_event(&mut loop_events).await["type"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        seen,
        ["ck.ck.commit", "ck.ck.ref-update", "ck.ck.ref-update"]
    );

    // Every guest call is a tool.invoked and a tool.completed, naming the TOOL commit.
    let mut invoked = 0;
    let mut completed = 0;
    while invoked + completed < 100 {
        let e = next_event(&mut tool_events).await;
        match e["type"].as_str().unwrap() {
            "ck.tool.invoked" => invoked += 1,
            "ck.tool.completed" => {
                completed += 1;
                assert!(e["data"]["duration_us"].as_u64().is_some(), "{e}");
                assert_eq!(e["data"]["version"], "stable");
            }
            "ck.tool.commit" | "ck.tool.ref-update" => {}
            other => panic!("unexpected {other}: {e}"),
        }
    }
    assert_eq!((invoked, completed), (50, 50));

    // Version 2 is built: develop moves, stable keeps serving version 1.
    write_version(&kernel, 2);
    ck_build(env!("CARGO_BIN_EXE_ck"), &[&kernel]);
    assert_eq!(versions_answering(&client, 20).await, [(1, 20)].into());

    // A canary at 20 %.
    ck(&["canary", k, "develop", "--weight", "20"]);
    host.wait_for_n("\"serving.changed\"", 1);
    let split = versions_answering(&client, 5000).await;
    let canary = split.get(&2).copied().unwrap_or(0);
    eprintln!(
        "canary split over 5000: {split:?} ({:.1} % canary)",
        canary as f64 / 50.0
    );
    assert!((850..=1150).contains(&canary), "{split:?}");
    assert_eq!(split.values().sum::<usize>(), 5000);

    // Rollback ends the canary: everything back on stable, and ck.rollback is published.
    ck(&["rollback", k]);
    host.wait_for_n("\"serving.changed\"", 2);
    assert_eq!(versions_answering(&client, 200).await, [(1, 200)].into());
    let mut types = Vec::new();
    while !types.iter().any(|t| t == "ck.ck.rollback") {
        types.push(
            next_event(&mut loop_events).await["type"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(types.iter().any(|t| t == "ck.ck.canary"), "{types:?}");

    // Promote: version 2 answers everything, without a restart.
    ck(&["promote", k, "develop"]);
    host.wait_for_n("\"serving.changed\"", 3);
    assert_eq!(versions_answering(&client, 200).await, [(2, 200)].into());
    let status: Value = serde_json::from_slice(
        &client
            .request(INPUT, Bytes::from_static(br#"{"action":"status"}"#))
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(status["data"]["serving"]["name"], "stable");
    let versions = ck(&["versions", k]);
    assert!(versions.contains("serving revision"), "{versions}");
    witness.expect_types(&[
        "ck.ck.commit",
        "ck.ck.ref-update",
        "ck.ck.canary",
        "ck.ck.rollback",
        "ck.ck.promote",
        "ck.tool.commit",
        "ck.tool.invoked",
        "ck.tool.completed",
    ]);

    // A promotion that changes the kernel's own permissions (declaring task actions opens its
    // JetStream subjects) renews the connection, so the server enforces the new ones; requests
    // keep being answered meanwhile.
    let manifest = std::fs::read_to_string(kernel.join("conceptkernel.yaml")).unwrap();
    let with_tasks = manifest.replace(
        "    unique:\n",
        "    unique:\n      - {name: task.start, description: Start a task, access: anon}\n",
    );
    assert_ne!(with_tasks, manifest);
    std::fs::write(kernel.join("conceptkernel.yaml"), with_tasks).unwrap();
    ck_build(env!("CARGO_BIN_EXE_ck"), &[&kernel]);
    ck(&["promote", k, "develop"]);
    host.wait_for("\"serving.permissions-changed");
    host.wait_for("\"credentials.rotated\"");
    assert_eq!(versions_answering(&client, 50).await, [(2, 50)].into());

    // A version the running host cannot take (its input topic moves) is refused, audited, and
    // the current one keeps serving.
    let manifest = std::fs::read_to_string(kernel.join("conceptkernel.yaml")).unwrap();
    let moved = manifest.replace("spec:\n", "spec:\n  nats:\n    format: guid\n");
    assert_ne!(moved, manifest);
    std::fs::write(kernel.join("conceptkernel.yaml"), moved).unwrap();
    ck_build(env!("CARGO_BIN_EXE_ck"), &[&kernel]);
    ck(&["promote", k, "develop"]);
    host.wait_for("\"serving.refused");
    let why = format!("its input topic moves from input.Demo.Echo to ck.{GUID}.input");
    assert!(host.log().contains(&why), "{}", host.log());
    assert_eq!(versions_answering(&client, 50).await, [(2, 50)].into());
    let audit = ck_audit::read(&kernel).unwrap();
    assert!(
        audit
            .iter()
            .any(|l| l["action"] == "serve-version" && l["result"] == "deny"),
        "{audit:?}"
    );
    drop(host);
}

//! `ck new` + `ck dev` end to end: the scaffold is served at once through the dev stack (a real
//! nats-server with the auth callout and SPIFFE identity), and while a client sends 1,000
//! requests a second, 20 saves are rebuilt and swapped in: every request is answered exactly
//! once, answers switch to each new version, and a broken save keeps the old one serving with
//! the compiler's error shown.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ck_tests::{Proc, seconds_from_env};
use futures::StreamExt;
use serde_json::Value;

const CK: &str = env!("CARGO_BIN_EXE_ck");

/// The scaffold's source with its greeting replaced by `v{n}`, or broken C.
fn save(kernel: &Path, original: &str, version: Option<u32>) {
    let path = kernel.join("tool/demo_hot.c");
    let text = match version {
        Some(n) => original.replace(
            "\\\"greeting\\\":\\\"hello\\\"",
            &format!("\\\"greeting\\\":\\\"v{n}\\\""),
        ),
        None => format!("{original}\nint broken = ;\n"),
    };
    assert_ne!(text, original);
    // As editors do: write beside, then rename over.
    let tmp = kernel.join("tool/.demo_hot.c.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

fn field(log: &str, event: &str, key: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("\"{event}\"")))
        .unwrap_or_else(|| panic!("no {event} in:\n{log}"));
    let v: Value = serde_json::from_str(line).unwrap();
    v[key].as_str().unwrap_or_default().to_owned()
}

/// `ck dev` of `kernel` with its own stack (logs and cache under `tmp`), ready; its URL and a
/// client connected as the static user it prints.
async fn start_dev(kernel: &Path, tmp: &Path) -> (Proc, String, async_nats::Client) {
    let dev = Proc::spawn(
        CK,
        &[
            "dev".as_ref(),
            kernel.as_os_str(),
            "--cache-dir".as_ref(),
            tmp.join("cache").as_os_str(),
        ],
        &tmp.join("dev.log"),
    );
    dev.wait_for("\"dev.ready\"");
    let log = dev.log();
    let url = field(&log, "dev.ready", "url");
    let (user, password) = (
        field(&log, "dev.ready", "user"),
        field(&log, "dev.ready", "password"),
    );
    assert_eq!(user, "dev");
    let client = async_nats::ConnectOptions::with_user_and_password(user, password)
        .connect(&url)
        .await
        .unwrap();
    (dev, url, client)
}

/// One request's fate: when it was sent and the version that answered (or the error).
type Outcome = (Instant, Result<u32, String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_are_swapped_in_under_load_without_losing_a_request() {
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path().join("hot");
    let out = Command::new(CK)
        .args(["new", "Demo.Hot", "--dir"])
        .arg(&kernel)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let original = std::fs::read_to_string(kernel.join("tool/demo_hot.c")).unwrap();

    let (dev, url, client) = start_dev(&kernel, tmp.path()).await;
    // Every answer is also published on the result topic: count them per trace id.
    let mut results = client.subscribe("result.Demo.Hot").await.unwrap();
    client.flush().await.unwrap();
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counter = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(m) = results.next().await {
                let trace = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Trace-Id"))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                *seen.lock().unwrap().entry(trace).or_default() += 1;
            }
        })
    };

    // 1,000 requests a second until told to stop.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (client, outcomes, stop) = (client.clone(), outcomes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut inflight = tokio::task::JoinSet::new();
            let mut n = 0u64;
            while !stop.is_cancelled() {
                tick.tick().await;
                n += 1;
                let (client, outcomes) = (client.clone(), outcomes.clone());
                inflight.spawn(async move {
                    let sent = Instant::now();
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Trace-Id", format!("tx-load-{n}").as_str());
                    let request = async_nats::Request::new()
                        .headers(headers)
                        .payload(Bytes::from_static(br#"{"action":"hello","data":{}}"#))
                        .timeout(Some(Duration::from_secs(10)));
                    let outcome = match client.send_request("input.Demo.Hot", request).await {
                        Ok(reply) => {
                            let body: Value = serde_json::from_slice(&reply.payload).unwrap();
                            match body["data"]["greeting"].as_str() {
                                Some("hello") => Ok(0),
                                Some(g) => g
                                    .strip_prefix('v')
                                    .and_then(|v| v.parse().ok())
                                    .ok_or_else(|| body.to_string()),
                                None => Err(body.to_string()),
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    outcomes.lock().unwrap().push((sent, outcome));
                });
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
            n
        })
    };

    // 20 saves, one of them broken; each waited for until the runner reports it.
    let started = Instant::now();
    let mut switched: Vec<(u32, Instant)> = Vec::new();
    let mut broken_at = None;
    let mut fixed_at = None;
    for version in 1..=20u32 {
        if version == 10 {
            save(&kernel, &original, None);
            tokio::task::block_in_place(|| dev.wait_for("\"dev.build-failed\""));
            broken_at = Some(Instant::now());
            let log = dev.log();
            let failure = log
                .lines()
                .find(|l| l.contains("dev.build-failed"))
                .unwrap();
            assert!(failure.contains("error: expected expression"), "{failure}");
            tokio::time::sleep(Duration::from_millis(300)).await;
            fixed_at = Some(Instant::now());
        }
        save(&kernel, &original, Some(version));
        // Failed builds are not reloads: the n-th version is the n-th reload.
        tokio::task::block_in_place(|| dev.wait_for_n("\"dev.reloaded\"", version as usize));
        switched.push((version, Instant::now()));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let soak = seconds_from_env("CK_DEV_TEST_SOAK_SECONDS", 1);
    tokio::time::sleep(soak).await;
    stop.cancel();
    let sent = load.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    counter.abort();
    let elapsed = started.elapsed();

    let outcomes = outcomes.lock().unwrap().clone();
    let rate = sent as f64 / elapsed.as_secs_f64();
    eprintln!("{sent} requests in {elapsed:.1?} ({rate:.0}/s) across 20 reloads");
    assert!(
        rate > 700.0,
        "the load generator managed only {rate:.0} requests/s"
    );
    // Exactly one answer each: every request answered, each trace id seen once on the result topic.
    assert_eq!(outcomes.len() as u64, sent);
    let failures: Vec<_> = outcomes.iter().filter(|o| o.1.is_err()).take(5).collect();
    assert!(failures.is_empty(), "unanswered or failed: {failures:?}");
    let seen = seen.lock().unwrap();
    let load_traces: Vec<_> = seen
        .iter()
        .filter(|(t, _)| t.starts_with("tx-load-"))
        .collect();
    assert_eq!(
        load_traces.len() as u64,
        sent,
        "results missing on result.Demo.Hot"
    );
    let doubles: Vec<_> = load_traces
        .iter()
        .filter(|(_, n)| **n != 1)
        .take(5)
        .collect();
    assert!(doubles.is_empty(), "answered more than once: {doubles:?}");
    // Answers switch: a request sent after reload N was reported gets version N or later, and
    // every version answered some.
    for (version, at) in &switched {
        let stale: Vec<_> = outcomes
            .iter()
            .filter(|(sent, r)| sent > at && *r.as_ref().unwrap() < *version)
            .take(3)
            .collect();
        assert!(
            stale.is_empty(),
            "sent after reload v{version}, answered by an older version: {stale:?}"
        );
        assert!(
            outcomes
                .iter()
                .any(|(_, r)| r.as_ref().ok() == Some(version)),
            "v{version} never answered"
        );
    }
    // The broken save left v9 serving.
    let broken_at = broken_at.unwrap();
    // Up to the save that fixed it (its swap may precede our noticing the reload).
    let v10_at = fixed_at.unwrap();
    let during: Vec<u32> = outcomes
        .iter()
        .filter(|(sent, _)| *sent > broken_at && *sent < v10_at)
        .map(|(_, r)| *r.as_ref().unwrap())
        .collect();
    assert!(!during.is_empty());
    assert!(during.iter().all(|v| *v == 9), "{during:?}");
    // Each reload is a TOOL commit.
    let versions = Command::new(CK)
        .arg("versions")
        .arg(&kernel)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&versions.stdout);
    assert!(text.contains("ck dev: reload"), "{text}");
    let commits = dev.log().matches("\"loop.event\"").count();
    assert!(
        commits >= 2 * 20,
        "tool.commit and tool.ref-update for each reload: {commits}"
    );

    // SIGTERM stops it cleanly, the nats-server it started with it.
    let mut dev = dev;
    dev.terminate();
    let status = tokio::task::block_in_place(|| dev.child().wait()).unwrap();
    assert!(status.success(), "{status:?}\n{}", dev.log());
    assert!(dev.log().contains("\"dev.stopped\""));
    let port = url.rsplit(':').next().unwrap().to_owned();
    let still = std::net::TcpStream::connect(format!("127.0.0.1:{port}"));
    assert!(still.is_err(), "the dev nats-server outlived ck dev");
}

/// `ck dev` serves a task kernel exactly as `ck run` does: a completed task is sealed, and its
/// audit line, its DATA commit and its `data.written` event follow; `ck verify` proves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_completed_under_ck_dev_is_sealed_committed_and_announced() {
    const GUID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path().join("tasks");
    ck_tests::copy_kernel("tasks", &kernel);
    let (mut dev, _, client) = start_dev(&kernel, tmp.path()).await;
    let mut written = client
        .subscribe(format!("ck.{GUID}.data.written"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let call = |action: &'static str, data: Value| {
        let client = client.clone();
        async move {
            let body = serde_json::json!({"action": action, "data": data});
            let request = async_nats::Request::new()
                .payload(Bytes::from(body.to_string()))
                .timeout(Some(Duration::from_secs(20)));
            let reply = client
                .send_request("input.Demo.Tasks", request)
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };
    let started = call("task.start", serde_json::json!({"task_id": "dev-1"})).await;
    assert_eq!(started["status"], "ok", "{started}");
    let completed = call(
        "task.complete",
        serde_json::json!({"task_id": "dev-1", "output": {"winner": "ada"}}),
    )
    .await;
    assert_eq!(completed["status"], "ok", "{completed}");
    let instance = completed["data"]["instance_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{completed}"))
        .to_owned();

    // The announcement names the instance and the commit that holds it.
    let event = tokio::time::timeout(Duration::from_secs(20), written.next())
        .await
        .unwrap_or_else(|_| panic!("no data.written under ck dev\n{}", dev.log()))
        .unwrap();
    let event: Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["data"]["instance_id"], instance.as_str(), "{event}");
    let commit = event["data"]["commit"].as_str().unwrap().to_owned();
    let repo = git2::Repository::open(kernel.join("data")).unwrap();
    let head = repo.head().unwrap().peel_to_commit().unwrap();
    assert_eq!(head.id().to_string(), commit);
    assert!(
        head.tree()
            .unwrap()
            .get_path(&Path::new("instances").join(&instance).join("data.json"))
            .is_ok(),
        "the DATA commit holds the sealed instance"
    );
    let audit = std::fs::read_to_string(kernel.join("data/ledger/audit.jsonl")).unwrap();
    assert!(
        audit.contains(&instance),
        "audit line for {instance}: {audit}"
    );

    dev.terminate();
    let status = dev.child().wait().unwrap();
    assert!(status.success(), "ck dev exits 0 on SIGTERM: {status:?}");
    let verify = Command::new(CK)
        .arg("verify")
        .arg(&kernel)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}");
    assert!(out.contains("1 sealed instance"), "{out}");
    assert!(!out.contains("not committed"), "{out}");
}

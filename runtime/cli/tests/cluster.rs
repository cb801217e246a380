//! The control plane on JetStream, end to end on a real 3-node nats-server cluster (JetStream,
//! replicas 3): an operator publishes a kernel from one machine's directory, three `ck run
//! --control` hosts — each with only the manifest in its own directory, no component, no
//! `.ck/` — serve what the cluster's serving record names, and `ck promote` / `ck canary` /
//! `ck rollback --nats` run from a directory that has no kernel at all switch all three.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use ck_natsd::NatsCluster;
use ck_tests::{ck_build, copy_kernel};
use futures::StreamExt;
use serde_json::Value;

const GUID: &str = "0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d";
const INPUT: &str = "input.Demo.Echo";
const CK: &str = env!("CARGO_BIN_EXE_ck");

/// Demo.Echo's `echo` answering `{"v": version}` whatever it is sent.
fn write_version(kernel: &Path, version: u32) {
    let source = format!(
        "#include \"kernel.h\"\n#include \"ck.h\"\n\
         bool exports_conceptkernel_kernel_handler_handle(ck_str *action, ck_str *data, ck_context *ctx, ck_str *ret, ck_error *err) {{\n\
           (void)err;\n\
           ck_buf b = {{0}};\n\
           ck_buf_puts(&b, \"{{\\\"v\\\":{version}}}\");\n\
           bool ok = ck_ok_buf(ret, &b);\n\
           kernel_string_free(data);\n\
           kernel_string_free(action);\n\
           exports_conceptkernel_kernel_handler_context_free(ctx);\n\
           return ok;\n\
         }}\n"
    );
    std::fs::write(kernel.join("tool/echo.c"), source).unwrap();
}

/// Runs `ck args` in `cwd`; its stdout, or the test fails with everything it printed.
fn ck_in(cwd: &Path, args: &[&str]) -> String {
    let out = Command::new(CK)
        .current_dir(cwd)
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

/// A host machine: a directory holding only the kernel's manifest (what it serves comes from
/// the cluster).
fn host_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name).join("echo");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        ck_tests::reference_kernels().join("echo/conceptkernel.yaml"),
        dir.join("conceptkernel.yaml"),
    )
    .unwrap();
    dir
}

async fn request(client: &Client, action: &str) -> Value {
    let body = format!(r#"{{"action":"{action}","data":{{}}}}"#);
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(INPUT, Bytes::from(body)),
    )
    .await
    .expect("an answer in time")
    .expect("an answer");
    serde_json::from_slice(&reply.payload).unwrap()
}

/// Asks `status` until every one of `hosts` answered with TOOL commit `tool` as stable;
/// returns how long that took.
async fn until_all_serve(client: &Client, hosts: &BTreeSet<u64>, tool: &str) -> Duration {
    let started = Instant::now();
    let mut switched = BTreeSet::new();
    while &switched != hosts {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "hosts {switched:?} of {hosts:?} serve {tool} after 30 s"
        );
        let answers: Vec<Value> = futures::stream::iter(0..8)
            .map(|_| request(client, "status"))
            .buffer_unordered(8)
            .collect()
            .await;
        for status in answers {
            let data = &status["data"];
            if data["serving"]["tool"]
                .as_str()
                .is_some_and(|t| t.starts_with(tool))
            {
                switched.insert(data["host"]["pid"].as_u64().unwrap());
            }
        }
    }
    started.elapsed()
}

/// Sends `n` echo requests, 32 at a time; how many each version answered.
async fn split(client: &Client, n: usize) -> BTreeMap<i64, usize> {
    let answers: Vec<i64> = futures::stream::iter(0..n)
        .map(|_| async {
            let body = request(client, "echo").await;
            body["data"]["v"]
                .as_i64()
                .unwrap_or_else(|| panic!("{body}"))
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut split = BTreeMap::new();
    for v in answers {
        *split.entry(v).or_insert(0) += 1;
    }
    split
}

fn develop_tool(kernel: &Path) -> String {
    let out = ck_in(kernel, &["versions", kernel.to_str().unwrap()]);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("develop"))
        .unwrap_or_else(|| panic!("{out}"));
    line.split("tool ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap()
        .to_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promote_from_any_machine_switches_every_host_of_the_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(3, "").unwrap_or_else(|e| panic!("{e}"));
    let urls = cluster.urls();

    // The operator's machine: the kernel's sources, built twice (two versions on develop).
    let operator = tmp.path().join("operator/echo");
    copy_kernel("echo", &operator);
    write_version(&operator, 1);
    ck_build(CK, &[&operator]);
    let v1 = develop_tool(&operator);
    let published = ck_in(
        tmp.path(),
        &[
            "publish",
            operator.to_str().unwrap(),
            "--nats",
            &urls,
            "--replicas",
            "3",
        ],
    );
    assert!(published.contains("(record created)"), "{published}");

    // Three hosts, each on its own node of the cluster and its own directory.
    let mut hosts = Vec::new();
    for (i, node) in cluster.nodes().iter().enumerate() {
        let dir = host_dir(tmp.path(), &format!("host{i}"));
        let logs = tmp.path().join(format!("host{i}"));
        hosts.push(ck_tests::ck_run(
            CK,
            &node.url(),
            &dir,
            &logs,
            "ck-run",
            &["--control"],
        ));
    }
    let client = async_nats::connect(ck_bus::servers(&urls).as_slice())
        .await
        .unwrap();
    let mut pids = BTreeSet::new();
    let started = Instant::now();
    while pids.len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "hosts {pids:?}"
        );
        let status = request(&client, "status").await;
        let tool = status["data"]["serving"]["tool"]
            .as_str()
            .unwrap_or_default();
        assert!(tool.starts_with(&v1), "{status}");
        pids.insert(status["data"]["host"]["pid"].as_u64().unwrap());
    }
    assert_eq!(split(&client, 60).await, BTreeMap::from([(1, 60)]));

    // Version 2, published; then promoted by GUID from a directory with no kernel in it.
    write_version(&operator, 2);
    ck_build(CK, &[&operator]);
    let v2 = develop_tool(&operator);
    ck_in(
        tmp.path(),
        &["publish", operator.to_str().unwrap(), "--nats", &urls],
    );
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let promoted = ck_in(&elsewhere, &["promote", GUID, "develop", "--nats", &urls]);
    assert!(promoted.contains("stable"), "{promoted}");
    until_all_serve(&client, &pids, &v2).await;
    assert_eq!(split(&client, 60).await, BTreeMap::from([(2, 60)]));

    // A canary of version 1 at 20 %: each host sends exactly 20 of every 100 of its own
    // messages, so across three hosts the share is 20 % within one message per host.
    ck_in(
        &elsewhere,
        &[
            "canary",
            "Demo.Echo",
            &v1,
            "--weight",
            "20",
            "--nats",
            &urls,
        ],
    );
    let started = Instant::now();
    loop {
        let s = split(&client, 300).await;
        if s.get(&1).copied().unwrap_or(0) > 0 || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    // Every host has the canary now (a host that had not would answer only version 2).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = split(&client, 1500).await;
    let canary = s.get(&1).copied().unwrap_or(0);
    assert!(
        (297..=303).contains(&canary),
        "canary share across three hosts: {s:?}"
    );
    ck_in(&elsewhere, &["rollback", GUID, "--nats", &urls]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(split(&client, 60).await, BTreeMap::from([(2, 60)]));

    // Promote → every host answering with the new version, measured (printed, not asserted).
    let rounds: usize = std::env::var("CK_PROMOTE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let mut times = Vec::new();
    for round in 0..rounds {
        let to = if round % 2 == 0 { &v1 } else { &v2 };
        let started = Instant::now();
        ck_in(&elsewhere, &["promote", GUID, to, "--nats", &urls]);
        until_all_serve(&client, &pids, to).await;
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "promote-to-all-3-hosts rounds={rounds} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} (includes the ck promote process: connect, resolve, update, announce)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );

    // The loop event stream kept each promotion once; a second operator checkout publishing
    // the same journal adds nothing (same Nats-Msg-Id).
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream("CK_LOOP_EVENTS").await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3);
    let before = info.state.messages;
    let second = tmp.path().join("second/echo");
    copy_dir(&operator, &second);
    // The copy's cursor is reset, so all its journal is sent again.
    let _ = std::fs::remove_file(second.join(".ck/events.published"));
    ck_in(
        tmp.path(),
        &["publish", second.to_str().unwrap(), "--nats", &urls],
    );
    let after = stream.info().await.unwrap().state.messages;
    assert_eq!(before, after, "a republished journal was stored again");
    let promotes = count_subject(&js, &format!("ck.{GUID}.ck.promote")).await;
    assert_eq!(promotes, 1 + rounds as u64, "one ck.promote per promotion");

    for h in &hosts {
        h.terminate();
    }
    for mut h in hosts {
        let _ = h.child().wait();
        let log = h.log();
        assert!(log.contains("\"serving.changed\""), "{log}");
    }
}

async fn count_subject(js: &async_nats::jetstream::Context, subject: &str) -> u64 {
    let stream = js.get_stream("CK_LOOP_EVENTS").await.unwrap();
    let mut subjects = stream.info_with_subjects(subject).await.unwrap();
    let mut count = 0;
    while let Some(entry) = subjects.next().await {
        count += entry.unwrap().1 as u64;
    }
    count
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `ck status --nats urls`.
fn status(cwd: &Path, urls: &str) -> String {
    ck_in(cwd, &["status", "--nats", urls])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_host_shows_stale_within_the_window_and_a_restarted_one_boots() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(3, "").unwrap_or_else(|e| panic!("{e}"));
    let urls = cluster.urls();
    // A one-second heartbeat, stale after three missed: the window is 3 s.
    let policy = tmp.path().join("fleet.yaml");
    std::fs::write(
        &policy,
        std::fs::read_to_string(ck_tests::reference_kernels().join("../policies/fleet.yaml"))
            .unwrap()
            .replace("heartbeat_seconds: 30", "heartbeat_seconds: 1"),
    )
    .unwrap();
    let policy = policy.to_str().unwrap();
    let operator = tmp.path().join("operator/echo");
    copy_kernel("echo", &operator);
    ck_build(CK, &[&operator]);
    ck_in(
        tmp.path(),
        &[
            "publish",
            operator.to_str().unwrap(),
            "--nats",
            &urls,
            "--replicas",
            "3",
            "--fleet-policy",
            policy,
        ],
    );
    let observer = async_nats::connect(ck_bus::servers(&urls).as_slice())
        .await
        .unwrap();
    let mut events = observer.subscribe("fleet.events.ct-fac.>").await.unwrap();
    observer.flush().await.unwrap();

    let start = |i: usize| {
        let dir = host_dir(tmp.path(), &format!("host{i}"));
        let logs = tmp.path().join(format!("host{i}"));
        let id = format!("h{i}");
        ck_tests::ck_run(
            CK,
            &cluster.nodes()[i].url(),
            &dir,
            &logs,
            // A fresh log per start: a restart must not find its predecessor's lines.
            &format!(
                "ck-run-{}",
                STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            &[
                "--control",
                "--silo",
                "ct-fac",
                "--host-id",
                &id,
                "--fleet-policy",
                policy,
            ],
        )
    };
    let mut h0 = start(0);
    let _h1 = start(1);

    // Both boot, become ready and pulse.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let started = Instant::now();
    while ["h0", "h1"].iter().any(|h| {
        seen.get(*h).is_none_or(|e| {
            !["boot", "pod.ready", "gamma1.pulse"]
                .iter()
                .all(|x| e.contains(*x))
        })
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "events: {seen:?}"
        );
        let m = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("a fleet event")
            .unwrap();
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body["specversion"], "1.0", "{body}");
        let event = m
            .subject
            .as_str()
            .trim_start_matches("fleet.events.ct-fac.")
            .to_owned();
        seen.entry(body["subject"].as_str().unwrap().to_owned())
            .or_default()
            .insert(event);
    }
    let shown = status(tmp.path(), &urls);
    assert!(shown.contains("silo ct-fac"), "{shown}");
    assert!(shown.contains("host h0 live ready"), "{shown}");
    assert!(shown.contains("host h1 live ready"), "{shown}");
    assert!(shown.contains("kernel Demo.Echo"), "{shown}");

    // SIGKILL: no goodbye. The server removes the host's key once the window passes.
    h0.kill();
    let killed = Instant::now();
    loop {
        let shown = status(tmp.path(), &urls);
        if shown.contains("host h0 STALE") {
            assert!(shown.contains("host h1 live"), "{shown}");
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "h0 never went stale:\n{shown}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "killed-host-stale-after ms={:.0} (heartbeat 1 s, window 3 s)",
        killed.elapsed().as_secs_f64() * 1e3
    );

    // Restarted, it announces boot again and is live.
    let _h0 = start(0);
    let started = Instant::now();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("a fleet event")
            .unwrap();
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        if m.subject.as_str() == "fleet.events.ct-fac.boot" && body["subject"] == "h0" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20));
    }
    let shown = status(tmp.path(), &urls);
    assert!(shown.contains("host h0 live"), "{shown}");
}

static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

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
    ck_tests::write_echo_version(kernel, version);
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

/// `rounds` puts to an R3 bucket, each timed until a watcher connected to each node has it;
/// sorted.
async fn kv_put_to_three_watchers(cluster: &NatsCluster, rounds: usize) -> Vec<Duration> {
    let writer = async_nats::connect(cluster.nodes()[0].url()).await.unwrap();
    let js = async_nats::jetstream::new(writer);
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "BASELINE".into(),
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut watches = Vec::new();
    for node in cluster.nodes() {
        let client = async_nats::connect(node.url()).await.unwrap();
        let kv = async_nats::jetstream::new(client)
            .get_key_value("BASELINE")
            .await
            .unwrap();
        watches.push(kv.watch("k").await.unwrap());
    }
    let mut times = Vec::new();
    for round in 0..rounds {
        let started = Instant::now();
        kv.put("k", round.to_string().into()).await.unwrap();
        for w in &mut watches {
            loop {
                let entry = w.next().await.unwrap().unwrap();
                if entry.value.as_ref() == round.to_string().as_bytes() {
                    break;
                }
            }
        }
        times.push(started.elapsed());
    }
    times.sort();
    times
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
        hosts.push(control_host(&node.url(), &dir, &logs, &[]));
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
    // The floor, in the same run: a plain KV put on the same cluster until a watcher on each
    // of the three nodes has it (no process start, no loading, no swap).
    let floor = kv_put_to_three_watchers(&cluster, rounds).await;
    println!(
        "promote-to-all-3-hosts rounds={rounds} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} (includes the ck promote process: connect, resolve, update, announce) | baseline kv-put-to-3-watchers p50_ms={:.2} p99_ms={:.2}",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
        percentile(&floor, 0.5).as_secs_f64() * 1e3,
        percentile(&floor, 0.99).as_secs_f64() * 1e3,
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
    publish_built(tmp.path(), "echo", &urls, &["--fleet-policy", policy]);
    let observer = async_nats::connect(ck_bus::servers(&urls).as_slice())
        .await
        .unwrap();
    let mut events = observer.subscribe("fleet.events.ct-fac.>").await.unwrap();
    observer.flush().await.unwrap();

    let start = |i: usize| {
        let dir = host_dir(tmp.path(), &format!("host{i}"));
        let logs = tmp.path().join(format!("host{i}"));
        let id = format!("h{i}");
        control_host(
            &cluster.nodes()[i].url(),
            &dir,
            &logs,
            &[
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
    // The silo-wide memory key keeps every host's entry (each host merges its own in; a
    // plain put by each would leave only the last writer's).
    let fleet_state = async_nats::jetstream::new(observer.clone())
        .get_key_value("FLEET_STATE")
        .await
        .unwrap();
    let memory: Value = serde_json::from_slice(
        &fleet_state
            .get("ct-fac.memory")
            .await
            .unwrap()
            .expect("ct-fac.memory"),
    )
    .unwrap();
    for host in ["h0", "h1"] {
        assert!(memory["hosts"][host]["tier"].is_string(), "{memory}");
    }

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

/// The operator's machine: a built copy of `kernels/{name}` under `root/operator/`, published to
/// the cluster with 3 replicas (`extra`: more arguments of `ck publish`).
fn publish_built(root: &Path, name: &str, urls: &str, extra: &[&str]) -> std::path::PathBuf {
    let operator = root.join("operator").join(name);
    copy_kernel(name, &operator);
    ck_build(CK, &[&operator]);
    let mut args = vec![
        "publish",
        operator.to_str().unwrap(),
        "--nats",
        urls,
        "--replicas",
        "3",
    ];
    args.extend(extra);
    ck_in(root, &args);
    operator
}

/// `ck run --control` of `dir` over `url` with `extra` arguments, logging under `logs` — a
/// fresh log per start, so a restart never finds its predecessor's lines.
fn control_host(url: &str, dir: &Path, logs: &Path, extra: &[&str]) -> ck_tests::Proc {
    let name = format!(
        "ck-run-{}",
        STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut args = vec!["--control"];
    args.extend(extra);
    ck_tests::ck_run(CK, url, dir, logs, &name, &args)
}

const TASKS_GUID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

/// One request to Demo.Tasks, with a timeout; None when no answer came in time (its host
/// died holding it).
async fn task_call(client: &Client, action: &str, data: Value) -> Option<Value> {
    let body = serde_json::json!({"action": action, "data": data});
    let request = async_nats::Request::new()
        .payload(Bytes::from(serde_json::to_vec(&body).unwrap()))
        .timeout(Some(Duration::from_secs(3)));
    let reply = client
        .send_request("input.Demo.Tasks".to_owned(), request)
        .await
        .ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

/// What one task's client saw.
#[derive(Debug, Default)]
struct Outcome {
    /// The completion was answered ok (acknowledged to this client), with its instance.
    acknowledged: Option<String>,
    /// The completion landed but its answer was lost (a retry found it completed).
    completed_elsewhere: bool,
    /// Every answer it got, for the failure message.
    answers: Vec<Value>,
}

/// Starts and completes task `id`, retrying what got no answer.
async fn run_task(client: &Client, id: &str) -> Outcome {
    let mut outcome = Outcome::default();
    for attempt in 0..60 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let answer = task_call(client, "task.start", serde_json::json!({"task_id": id})).await;
        outcome.answers.push(answer.clone().unwrap_or(Value::Null));
        match answer {
            Some(a) if a["status"] == "ok" || a["code"] == 409 => break,
            _ => continue,
        }
    }
    for attempt in 0..60 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let answer = task_call(
            client,
            "task.complete",
            serde_json::json!({"task_id": id, "output": {"n": id}}),
        )
        .await;
        outcome.answers.push(answer.clone().unwrap_or(Value::Null));
        match answer {
            Some(a) if a["status"] == "ok" => {
                outcome.acknowledged = a["data"]["instance_id"].as_str().map(str::to_owned);
                return outcome;
            }
            Some(a) if a["code"] == 409 => {
                outcome.completed_elsewhere = true;
                return outcome;
            }
            _ => continue,
        }
    }
    outcome
}

/// Tasks `{prefix}-0` … `{prefix}-{total - 1}`, each started and completed, 8 at a time (the
/// steady load a host or node is killed under): what each task's client saw.
async fn steady_load(
    client: Client,
    prefix: &'static str,
    total: usize,
) -> BTreeMap<String, Outcome> {
    futures::stream::iter(0..total)
        .map(|n| {
            let client = client.clone();
            async move {
                let id = format!("{prefix}-{n}");
                (id.clone(), run_task(&client, &id).await)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

fn instances_in(kernel: &Path) -> BTreeSet<String> {
    std::fs::read_dir(kernel.join("data/instances"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().join("proof.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_host_loses_no_acknowledged_task_and_a_lost_disk_is_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(3, "").unwrap_or_else(|e| panic!("{e}"));
    let urls = cluster.urls();
    publish_built(tmp.path(), "tasks", &urls, &[]);
    let start = |i: usize| {
        let dir = tmp.path().join(format!("host{i}/tasks"));
        if !dir.exists() {
            copy_kernel("tasks", &dir);
        }
        let logs = tmp.path().join(format!("host{i}"));
        let proc = control_host(&cluster.nodes()[i].url(), &dir, &logs, &[]);
        (proc, dir)
    };
    let mut hosts: Vec<_> = (0..3).map(start).collect();
    let client = async_nats::connect(ck_bus::servers(&urls).as_slice())
        .await
        .unwrap();

    // Steady load: 8 clients, 40 tasks each; host 0 is SIGKILLed a moment in.
    let total = 320;
    let load = tokio::spawn(steady_load(client.clone(), "t", total));
    tokio::time::sleep(Duration::from_millis(700)).await;
    hosts[0].0.kill();
    let outcomes = load.await.unwrap();
    let acknowledged: Vec<String> = outcomes
        .values()
        .filter_map(|o| o.acknowledged.clone())
        .collect();
    let elsewhere = outcomes.values().filter(|o| o.completed_elsewhere).count();
    let unfinished = outcomes
        .values()
        .filter(|o| o.acknowledged.is_none() && !o.completed_elsewhere)
        .count();

    // The killed host comes back and recovers what it owed (commits, events, replication).
    let dir0 = hosts[0].1.clone();
    hosts[0] = start(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (proc, _) in &hosts {
        proc.terminate();
    }
    for (proc, _) in &mut hosts {
        let _ = proc.child().wait();
    }

    // Nothing acknowledged is lost: each is in the cluster's sealed store; nothing was sealed
    // twice: every instance is in exactly one host's tree.
    let js = async_nats::jetstream::new(client.clone());
    let store = js
        .get_object_store(format!("ck_sealed_{}", TASKS_GUID.replace('-', "_")))
        .await
        .unwrap();
    let mut in_store = BTreeSet::new();
    let mut list = store.list().await.unwrap();
    while let Some(info) = list.next().await {
        in_store.insert(info.unwrap().name);
    }
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|i| !in_store.contains(*i))
        .collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for dir in [&dir0, &hosts[1].1, &hosts[2].1] {
        for id in instances_in(dir) {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    let double_sealed = seen.values().filter(|n| **n > 1).count();
    let by_killed = instances_in(&dir0).len();
    println!(
        "kill-one-host-under-load sent={total} acknowledged={} completed-but-answer-lost={elsewhere} unfinished={unfinished} lost={} double-sealed={double_sealed} sealed-in-cluster={} sealed-by-the-killed-host={by_killed}",
        acknowledged.len(),
        lost.len(),
        in_store.len()
    );
    // It was killed mid-load: it had sealed some, the others sealed the rest.
    assert!(by_killed > 0 && by_killed < total, "{by_killed}");
    assert!(
        lost.is_empty(),
        "acknowledged but not in the cluster: {lost:?}"
    );
    assert_eq!(double_sealed, 0, "{seen:?}");
    assert_eq!(unfinished, 0, "every task was completed by some host");
    let mut missing: Vec<String> = seen
        .keys()
        .filter(|i| !in_store.contains(*i))
        .cloned()
        .collect();
    if in_store.len() < total {
        let kv = js
            .get_key_value(format!("ck_tasks_{}", TASKS_GUID.replace('-', "_")))
            .await
            .unwrap();
        for n in 0..total {
            let task = format!("t-{n}");
            if !in_store
                .iter()
                .any(|i| i.starts_with(&format!("i-{task}-")))
            {
                let record = kv
                    .get(&task)
                    .await
                    .unwrap()
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                missing.push(format!(
                    "{task}: {record:?} answers {:?}",
                    outcomes[&task].answers
                ));
            }
        }
    }
    assert_eq!(
        in_store.len(),
        total,
        "every completed task is sealed in the cluster; in trees but not stored: {missing:?}\n{}",
        hosts[0]
            .0
            .log()
            .lines()
            .filter(|l| l.contains("recover")
                || l.contains("lifecycle")
                || l.contains("ERROR")
                || l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        hosts[1].0.log().contains("\"task.transition\"")
            && hosts[2].0.log().contains("\"task.transition\""),
        "the queue group kept answering on the other hosts"
    );

    // A disk lost: the kernel's DATA tree is rebuilt from the cluster and verifies, offline
    // and against the cluster's DATA event stream.
    let rebuilt = tmp.path().join("rebuilt/tasks");
    copy_kernel("tasks", &rebuilt);
    let out = ck_in(
        tmp.path(),
        &[
            "restore",
            TASKS_GUID,
            "--into",
            rebuilt.to_str().unwrap(),
            "--nats",
            &urls,
        ],
    );
    assert!(
        out.contains(&format!("restored {total} sealed instance(s)")),
        "{out}"
    );
    let verified = ck_in(tmp.path(), &["verify", rebuilt.to_str().unwrap()]);
    assert!(verified.contains("ok"), "{verified}");
    let verified = ck_in(
        tmp.path(),
        &["verify", rebuilt.to_str().unwrap(), "--nats", &urls],
    );
    assert!(verified.contains("ok"), "{verified}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_nats_node_under_load_loses_no_task() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = NatsCluster::start(3, "").unwrap_or_else(|e| panic!("{e}"));
    let nodes: Vec<String> = cluster.nodes().iter().map(|n| n.url()).collect();
    let urls = nodes.join(",");
    publish_built(tmp.path(), "tasks", &urls, &[]);
    // Each host knows every node, starting from a different one.
    let mut hosts = Vec::new();
    for i in 0..3 {
        let dir = tmp.path().join(format!("host{i}/tasks"));
        copy_kernel("tasks", &dir);
        let rotated: Vec<&str> = (0..3).map(|k| nodes[(i + k) % 3].as_str()).collect();
        hosts.push(control_host(
            &rotated.join(","),
            &dir,
            &tmp.path().join(format!("host{i}")),
            &[],
        ));
    }
    // The client is on the nodes that stay.
    let client = async_nats::connect([nodes[1].as_str(), nodes[2].as_str()].as_slice())
        .await
        .unwrap();
    let total = 240;
    let load = tokio::spawn(steady_load(client.clone(), "n", total));
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.node_mut(0).stop();
    let killed = Instant::now();
    let outcomes = load.await.unwrap();
    let finished_after = killed.elapsed();
    let acknowledged = outcomes
        .values()
        .filter(|o| o.acknowledged.is_some())
        .count();
    let unfinished: Vec<&String> = outcomes
        .iter()
        .filter(|(_, o)| o.acknowledged.is_none() && !o.completed_elsewhere)
        .map(|(id, _)| id)
        .collect();
    // The lifecycle state survived: every task is completed in the (R3) bucket, and every
    // seal is in the cluster.
    let js = async_nats::jetstream::new(client.clone());
    let kv = js
        .get_key_value(format!("ck_tasks_{}", TASKS_GUID.replace('-', "_")))
        .await
        .unwrap();
    let mut completed = 0;
    for n in 0..total {
        let mut got = kv.get(format!("n-{n}")).await;
        for _ in 0..40 {
            if got.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            got = kv.get(format!("n-{n}")).await;
        }
        if let Some(bytes) = got.unwrap() {
            let record: Value = serde_json::from_slice(&bytes).unwrap();
            completed += usize::from(record["state"] == "completed");
        }
    }
    // The test's own reads ride out the store's leader election too (opening the store asks
    // for its stream's info, which times out while the election runs).
    let name = format!("ck_sealed_{}", TASKS_GUID.replace('-', "_"));
    let mut opened = js.get_object_store(&name).await;
    for _ in 0..40 {
        if opened.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        opened = js.get_object_store(&name).await;
    }
    let store = opened.unwrap();
    let stored = || async {
        for _ in 0..40 {
            let Ok(mut list) = store.list().await else {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            };
            let mut names = BTreeSet::new();
            let mut complete = true;
            while let Some(info) = list.next().await {
                match info {
                    Ok(info) => {
                        names.insert(info.name);
                    }
                    Err(_) => {
                        complete = false;
                        break;
                    }
                }
            }
            if complete {
                return names;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the sealed store could not be listed");
    };
    // Every acknowledged seal is in the cluster at once; one whose copy the cluster did not
    // take during the election (answered 503, completed on retry) is stored by its host's
    // replay shortly after.
    let first = stored().await;
    let not_stored: Vec<&String> = outcomes
        .values()
        .filter_map(|o| o.acknowledged.as_ref())
        .filter(|i| !first.contains(*i))
        .collect();
    assert!(
        not_stored.is_empty(),
        "acknowledged, not in the cluster: {not_stored:?}"
    );
    let waited = Instant::now();
    let mut sealed = first.len();
    while sealed < total && waited.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        sealed = stored().await.len();
    }
    println!(
        "kill-one-nats-node-under-load sent={total} acknowledged={acknowledged} unfinished={} completed-in-bucket={completed} sealed-in-cluster={sealed} (at first look {}) load-finished-after-kill_ms={:.0}",
        unfinished.len(),
        first.len(),
        finished_after.as_secs_f64() * 1e3
    );
    assert!(unfinished.is_empty(), "never completed: {unfinished:?}");
    assert_eq!(completed, total, "lifecycle state lost with the node");
    if sealed < total {
        let have = stored().await;
        let mut report = String::new();
        for (i, host) in hosts.iter().enumerate() {
            for id in instances_in(&tmp.path().join(format!("host{i}/tasks"))) {
                if !have.contains(&id) {
                    report.push_str(&format!("host{i} has {id}, the cluster does not\n"));
                    for line in host.log().lines().filter(|l| {
                        l.contains(&id[2..id.rfind('-').unwrap_or(2)]) || l.contains("replicat")
                    }) {
                        report.push_str(&format!("  {}\n", &line[..line.len().min(400)]));
                    }
                }
            }
        }
        panic!("a seal is missing from the cluster: {sealed} of {total}\n{report}");
    }
    for h in &hosts {
        h.terminate();
    }
}

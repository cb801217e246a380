//! The security regression suite (issue 14): real nats-server, real `ck run`, hostile clients
//! with no more than an ordinary caller has (a connection that may publish on a kernel's input).
//! Each test names the attack it replays; `docs/SECURITY.md` lists them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use ck_tests::{NatsServer, Proc, ck_build, ck_run, copy_kernel, eventually, nats_jetstream};
use futures::StreamExt;
use serde_json::{Value, json};

const GUID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const INPUT: &str = "input.Demo.Tasks";

/// A copy of `kernels/tasks` at `dir` (its manifest passed through `edit`), built.
fn built_kernel(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    copy_kernel("tasks", dir);
    let manifest = dir.join("conceptkernel.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, edit(text)).unwrap();
    ck_build(env!("CARGO_BIN_EXE_ck"), &[dir]);
    dir.to_owned()
}

/// `ck run` of one kernel, ready (subscribed); SIGKILLed on drop.
fn start_host(server: &NatsServer, kernel: &Path, logs: &Path, name: &str) -> Proc {
    ck_run(
        env!("CARGO_BIN_EXE_ck"),
        &server.url(),
        kernel,
        logs,
        name,
        &[],
    )
}

async fn request(client: &Client, headers: HeaderMap, body: Value) -> Value {
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(Bytes::from(serde_json::to_vec(&body).unwrap()))
        .timeout(Some(Duration::from_secs(20)));
    let reply = client
        .send_request(INPUT.to_owned(), request)
        .await
        .unwrap_or_else(|e| panic!("{body}: {e}"));
    serde_json::from_slice(&reply.payload).unwrap()
}

fn audit_lines(kernel: &Path) -> Vec<Value> {
    let path = kernel.join("data/ledger/audit.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A served victim: a nats-server with JetStream, a built copy of `kernels/tasks` (its manifest
/// through `edit`) served by `ck run`, and an ordinary caller's connection.
struct Victim {
    tmp: tempfile::TempDir,
    server: NatsServer,
    kernel: PathBuf,
    host: Proc,
    client: Client,
}

impl Victim {
    async fn start(edit: impl Fn(String) -> String) -> Victim {
        let tmp = tempfile::tempdir().unwrap();
        let server = nats_jetstream(&tmp.path().join("js"));
        let kernel = built_kernel(&tmp.path().join("tasks"), edit);
        let host = start_host(&server, &kernel, tmp.path(), "first");
        let client = async_nats::connect(server.url()).await.unwrap();
        Victim {
            tmp,
            server,
            kernel,
            host,
            client,
        }
    }

    /// A plain victim ([`Victim::start`]) with task `task_id` started.
    async fn with_task_started(task_id: &str) -> Victim {
        let victim = Victim::start(|m| m).await;
        let started = victim.call("task.start", json!({"task_id": task_id})).await;
        assert_eq!(started["status"], "ok", "{started}");
        victim
    }

    /// Sends `action` with `data` and no headers; the answer.
    async fn call(&self, action: &str, data: Value) -> Value {
        request(
            &self.client,
            HeaderMap::new(),
            json!({"action": action, "data": data}),
        )
        .await
    }
}

/// Point 1. A caller names a reply subject inside the kernel's own KV task bucket, its loop
/// events, the JetStream API and its own input: the host must answer none of them (it would
/// write there with its own credentials), audit the refusal, and still start afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_subject_outside_the_inboxes_is_never_answered() {
    let Victim {
        tmp,
        server,
        kernel,
        mut host,
        client,
    } = Victim::with_task_started("t-1").await;

    let bucket = format!("ck_tasks_{}", GUID.replace('-', "_"));
    let mut events = client
        .subscribe(format!("ck.{GUID}.data.written"))
        .await
        .unwrap();
    let mut own_input = client.subscribe(INPUT).await.unwrap();
    let hostile = [
        format!("$KV.{bucket}.zzz"),
        format!("$KV.{bucket}.t-1"),
        format!("ck.{GUID}.data.written"),
        format!("$JS.API.STREAM.DELETE.KV_{bucket}"),
        INPUT.to_owned(),
    ];
    for reply in &hostile {
        client
            .publish_with_reply(
                INPUT,
                reply.clone(),
                Bytes::from_static(br#"{"action":"status"}"#),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    // The kernel's private inbox family is a caller's inbox: answered there.
    let private = format!("_INBOX_{GUID}.probe");
    let mut inbox = client.subscribe(private.clone()).await.unwrap();
    client
        .publish_with_reply(
            INPUT,
            private,
            Bytes::from_static(br#"{"action":"status"}"#),
        )
        .await
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), inbox.next())
        .await
        .expect("no answer in the kernel's private inbox")
        .unwrap();
    let answered: Value = serde_json::from_slice(&answered.payload).unwrap();
    assert_eq!(answered["status"], "ok", "{answered}");

    // Nothing reached the bucket, the loop events or the input from the host.
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(&bucket).await.unwrap();
    assert!(
        kv.get("zzz").await.unwrap().is_none(),
        "the host answered into its own KV bucket"
    );
    let t1 = kv.get("t-1").await.unwrap().expect("t-1 is stored");
    let t1: Value = serde_json::from_slice(&t1).unwrap_or_else(|e| {
        panic!(
            "t-1 was overwritten by an answer ({e}): {}",
            String::from_utf8_lossy(&t1)
        )
    });
    assert_eq!(t1["state"], "in_progress", "{t1}");
    let forged = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
    assert!(
        forged.is_err(),
        "an answer went to a loop event subject: {forged:?}"
    );
    // The input saw the six requests (ours) and nothing the host sent.
    let mut on_input = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), own_input.next()).await
    {
        assert!(
            m.headers.is_none(),
            "the host published on its own input: {m:?}"
        );
        on_input += 1;
    }
    assert_eq!(on_input, hostile.len() + 1);
    assert!(js.get_stream(format!("KV_{bucket}")).await.is_ok());

    // Refused, logged and audited (coalesced: one anonymous caller, one line an interval).
    host.wait_for("\"reply.refused\"");
    eventually(
        Duration::from_secs(10),
        || {
            audit_lines(&kernel)
                .iter()
                .any(|l| l["action"] == "reply.refused" && l["result"] == "deny")
        },
        || format!("no reply.refused audit line: {:?}", audit_lines(&kernel)),
    );

    // And the kernel starts again.
    host.kill();
    let _again = start_host(&server, &kernel, tmp.path(), "second");
    let status = request(&client, HeaderMap::new(), json!({"action": "status"})).await;
    assert_eq!(status["status"], "ok", "{status}");
}

/// Point 1. One stored value in the task bucket that is not a task record (written by whoever
/// could) must not keep the kernel from starting: it is quarantined — kept, logged, audited —
/// and every other task serves.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_task_record_is_quarantined_not_fatal() {
    let Victim {
        tmp,
        server,
        kernel,
        mut host,
        client,
    } = Victim::with_task_started("t-1").await;
    host.kill();

    let js = async_nats::jetstream::new(client.clone());
    let bucket = format!("ck_tasks_{}", GUID.replace('-', "_"));
    let kv = js.get_key_value(&bucket).await.unwrap();
    kv.put("junk", Bytes::from_static(b"{\"status\":\"error\"}"))
        .await
        .unwrap();

    let host = start_host(&server, &kernel, tmp.path(), "second");
    assert!(host.log().contains("task.quarantined"), "{}", host.log());
    let done = request(
        &client,
        HeaderMap::new(),
        json!({"action": "task.complete", "data": {"task_id": "t-1", "output": {"ok": 1}}}),
    )
    .await;
    assert_eq!(done["status"], "ok", "{done}");
    let junk = request(
        &client,
        HeaderMap::new(),
        json!({"action": "task.update", "data": {"task_id": "junk", "delta": {}}}),
    )
    .await;
    assert_eq!(junk["code"], 500, "{junk}");
    assert_eq!(junk["error"], "task_state_corrupt", "{junk}");
    assert!(
        kv.get("junk").await.unwrap().is_some(),
        "the evidence is kept"
    );
    eventually(
        Duration::from_secs(10),
        || {
            audit_lines(&kernel)
                .iter()
                .any(|l| l["key"] == "quarantine:junk")
        },
        || format!("no quarantine audit line: {:?}", audit_lines(&kernel)),
    );
}

/// Point 2. A 70 KB `X-User-ID` (or `Trace-Id`) on a call to an `auth` action without a token
/// made a 70 KB audit line, after which nothing was appended. Headers are bounded where they
/// are parsed (431, naming the header), audit lines are bounded, unauthenticated refusals are
/// coalesced per claimed name and interval, and the ledger keeps working: a seal after the
/// flood is audited and committed.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_and_refusal_floods_cannot_silence_the_ledger() {
    let victim = Victim::start(|m| {
        m.replace(
            "      - {name: progress,",
            "      - {name: secret, description: Needs a proven caller, access: auth}\n      - {name: progress,",
        )
    })
    .await;
    let (kernel, client) = (victim.kernel.clone(), victim.client.clone());
    let secret = json!({"action": "secret"});

    for header in ["X-User-ID", "Trace-Id"] {
        let mut headers = HeaderMap::new();
        headers.insert(header, "m".repeat(70_000).as_str());
        let answer = request(&client, headers, secret.clone()).await;
        assert_eq!(answer["code"], 431, "{header}: {answer}");
        assert_eq!(answer["error"], "header_too_large", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(header),
            "{answer}"
        );
    }
    // A flood of unauthenticated calls: every one refused (401), few lines written.
    let before = audit_lines(&kernel).len();
    let flood = 300;
    for i in 0..flood {
        let mut headers = HeaderMap::new();
        // Half from one claimed name, half from names that change every call.
        let user = if i % 2 == 0 {
            "mallory".to_owned()
        } else {
            format!("mallory-{i}")
        };
        headers.insert("X-User-ID", user.as_str());
        let answer = request(&client, headers, secret.clone()).await;
        assert_eq!(answer["code"], 401, "{answer}");
    }
    // The seal after the flood is audited and committed.
    for (action, data) in [
        ("task.start", json!({"task_id": "t-1"})),
        (
            "task.complete",
            json!({"task_id": "t-1", "output": {"ok": 1}}),
        ),
    ] {
        let answer = request(
            &client,
            HeaderMap::new(),
            json!({"action": action, "data": data}),
        )
        .await;
        assert_eq!(answer["status"], "ok", "{answer}");
    }
    eventually(
        Duration::from_secs(20),
        || {
            audit_lines(&kernel)
                .iter()
                .any(|l| l["key"].as_str().is_some_and(|k| k.starts_with("seal:")))
        },
        || "the seal after the flood was never audited".to_owned(),
    );
    let lines = audit_lines(&kernel);
    let refusals = lines[before..]
        .iter()
        .filter(|l| l["action"] == "secret")
        .count();
    assert!(
        refusals < flood / 2,
        "{refusals} lines for {flood} unauthenticated calls: not coalesced"
    );
    let raw = std::fs::read_to_string(kernel.join("data/ledger/audit.jsonl")).unwrap();
    assert!(
        raw.lines().all(|l| l.len() < 8 * 1024),
        "an audit line over 8 KiB"
    );
    let status = request(&client, HeaderMap::new(), json!({"action": "status"})).await;
    assert!(
        status["data"]["audit"]["coalesced_refusals"]
            .as_u64()
            .unwrap()
            > 0,
        "{status}"
    );
    assert_eq!(status["data"]["state"], "ready", "{status}");
    eventually(
        Duration::from_secs(20),
        || {
            let (code, out) = verify_at(&kernel);
            code == 0 && !out.contains("not committed")
        },
        || verify_at(&kernel).1,
    );
}

/// `ck verify`'s exit code and output for `path`.
fn verify_at(path: &Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ck"))
        .arg("verify")
        .arg(path)
        .arg("--all")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A copy of the kernel directory `from` at `to` (`cp -a`: modes and links kept).
fn copy_tree(from: &Path, to: &Path) -> PathBuf {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
    to.to_owned()
}

/// Point 10. `ck verify` is honest: nothing at the path is not "ok"; an instance deleted from
/// the tree, the DATA history removed, or an instance the history never committed all fail,
/// naming what is wrong; the `data/` path the docs name verifies like the kernel directory.
#[tokio::test(flavor = "multi_thread")]
async fn ck_verify_fails_whenever_it_cannot_prove_what_it_claims() {
    let mut victim = Victim::start(|m| m).await;
    let kernel = victim.kernel.clone();
    for t in ["t-1", "t-2"] {
        for (action, data) in [
            ("task.start", json!({"task_id": t})),
            ("task.complete", json!({"task_id": t, "output": {"t": t}})),
        ] {
            let answer = victim.call(action, data).await;
            assert_eq!(answer["status"], "ok", "{answer}");
        }
    }
    eventually(
        Duration::from_secs(20),
        || verify_at(&kernel).0 == 0,
        || verify_at(&kernel).1,
    );
    victim.host.kill();
    let (code, out) = verify_at(&kernel.join("data"));
    assert_eq!(code, 0, "the data/ path: {out}");
    assert!(out.contains("2 sealed instance(s)"), "{out}");

    let empty = victim.tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, out) = verify_at(&empty);
    assert_eq!(code, 2, "nothing to verify is not ok: {out}");

    let instances = |k: &Path| {
        let mut ids: Vec<PathBuf> = std::fs::read_dir(k.join("data/instances"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        ids.sort();
        ids
    };

    // An instance deleted from the tree.
    let deleted = copy_tree(&kernel, &victim.tmp.path().join("deleted"));
    let gone = instances(&deleted)[0].clone();
    std::process::Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(&gone)
        .status()
        .unwrap();
    std::fs::remove_dir_all(&gone).unwrap();
    let (code, out) = verify_at(&deleted);
    assert_eq!(code, 1, "a deleted instance: {out}");
    assert!(out.contains("missing from the tree"), "{out}");

    // The DATA history removed.
    let no_history = copy_tree(&kernel, &victim.tmp.path().join("no-history"));
    std::fs::remove_dir_all(no_history.join("data/.git")).unwrap();
    let (code, out) = verify_at(&no_history);
    assert_eq!(code, 1, "history removed: {out}");
    assert!(out.contains("DATA history is missing"), "{out}");

    // A forged instance the history never committed.
    let forged = copy_tree(&kernel, &victim.tmp.path().join("forged"));
    let source = instances(&forged)[0].clone();
    let copy = forged.join("data/instances/i-forged-1");
    std::process::Command::new("cp")
        .arg("-a")
        .arg(&source)
        .arg(&copy)
        .status()
        .unwrap();
    let (code, out) = verify_at(&forged);
    assert_eq!(code, 1, "a forged instance: {out}");
    assert!(
        out.contains("i-forged-1") && out.contains("not committed"),
        "{out}"
    );
}

/// Point 9 (sizes). Each `task.update` grew the task's record until it outgrew `max_payload`
/// and the task was stuck, in a bucket without limits: deltas and outputs are bounded (413),
/// a record is bounded with room kept for its completion, and the bucket has `max_bytes` and
/// `max_value_size`.
#[tokio::test(flavor = "multi_thread")]
async fn task_records_and_their_bucket_are_bounded() {
    let victim = Victim::start(|m| m).await;
    let call = |action: &'static str, data: Value| victim.call(action, data);
    let started = call("task.start", json!({"task_id": "t-1"})).await;
    assert_eq!(started["status"], "ok", "{started}");

    let huge = call(
        "task.update",
        json!({"task_id": "t-1", "delta": {"x": "a".repeat(20 * 1024)}}),
    )
    .await;
    assert_eq!(huge["code"], 413, "{huge}");
    assert_eq!(huge["error"], "task_message_too_large", "{huge}");

    let mut refused = None;
    for n in 0..100 {
        let answer = call(
            "task.update",
            json!({"task_id": "t-1", "delta": {"n": n, "x": "a".repeat(15 * 1024)}}),
        )
        .await;
        if answer["status"] != "ok" {
            refused = Some((n, answer));
            break;
        }
    }
    let (n, answer) =
        refused.expect("100 updates of 15 KiB were all kept: the record is unbounded");
    assert_eq!(answer["code"], 413, "{answer}");
    assert_eq!(answer["error"], "task_record_too_large", "{answer}");
    assert!(n > 5, "refused after only {n} updates: {answer}");
    // The full task can still be completed, with the largest output.
    let done = call(
        "task.complete",
        json!({"task_id": "t-1", "output": {"x": "a".repeat(250 * 1024)}}),
    )
    .await;
    assert_eq!(done["status"], "ok", "{done}");
    assert_eq!(done["data"]["state"], "completed", "{done}");

    let js = async_nats::jetstream::new(victim.client.clone());
    let mut stream = js
        .get_stream(format!("KV_ck_tasks_{}", GUID.replace('-', "_")))
        .await
        .unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_message_size, 512 * 1024, "{config:?}");
    assert_eq!(config.max_bytes, 1024 * 1024 * 1024, "{config:?}");
}

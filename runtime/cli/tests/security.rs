//! The security regression suite (issue 14): real nats-server, real `ck run`, hostile clients
//! with no more than an ordinary caller has (a connection that may publish on a kernel's input).
//! Each test names the attack it replays; `docs/SECURITY.md` lists them.

mod secured;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use ck_tests::{NatsServer, Proc, ck_build, ck_run, copy_kernel, eventually, nats_jetstream};
use futures::StreamExt;
use secured::{Stack, Verdict, spiffe};
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

/// Starts task `task_id` and completes it with `output` through `client`; each answer must be ok.
async fn start_and_complete(client: &Client, task_id: &str, output: Value) {
    for (action, data) in [
        ("task.start", json!({"task_id": task_id})),
        (
            "task.complete",
            json!({"task_id": task_id, "output": output}),
        ),
    ] {
        let answer = request(
            client,
            HeaderMap::new(),
            json!({"action": action, "data": data}),
        )
        .await;
        assert_eq!(answer["status"], "ok", "{action} {task_id}: {answer}");
    }
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
    // The unreadable requests are audited too (coalesced: anyone can send them).
    eventually(
        Duration::from_secs(5),
        || {
            audit_lines(&kernel)
                .iter()
                .any(|l| l["action"] == "request.refused" && l["result"] == "deny")
        },
        || format!("no request.refused line: {:?}", audit_lines(&kernel)),
    );
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
    start_and_complete(&client, "t-1", json!({"ok": 1})).await;
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
    verify_with(path, &[])
}

/// `ck verify path --all extra…`'s exit code and output.
fn verify_with(path: &Path, extra: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ck"))
        .arg("verify")
        .arg(path)
        .arg("--all")
        .args(extra)
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
        start_and_complete(&victim.client, t, json!({"t": t})).await;
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

/// Point 3: a second manifest in the callout's registry cannot borrow what a victim's
/// manifest opens. Replays the review's four variants: the victim's GUID under another name
/// (granting the thief `read-storage`), a fake instance of the victim's class (granting
/// `invoke-tool`), the victim's GUID with `-` written as `_` (same bucket and stream names), and
/// an explicit topic outside the kernel families shared with the victim. Before, `ck authz`
/// only logged the conflicts and the thief's connection got the victim's subjects.
#[test]
fn a_second_manifest_cannot_borrow_a_victims_guid_name_or_topic_at_the_callout() {
    const VICTIM: &str = "aaaaaaaa-1111-4aaa-8aaa-aaaaaaaaaaaa";
    const THIEF: &str = "bbbbbbbb-2222-4bbb-8bbb-bbbbbbbbbbbb";
    const FAKE: &str = "cccccccc-3333-4ccc-8ccc-cccccccccccc";
    let stack = Stack::start(1, 300);
    stack.register("Victim.K", VICTIM, "");
    stack.register("Thief.K", THIEF, "");
    let victim_data = format!("ck.{VICTIM}.data.>");
    let thief_grant = |actions: &str| {
        format!(
            "  - identity: {}\n    actions: [{actions}]\n    expires: never\n",
            spiffe("Thief.K", THIEF)
        )
    };
    let mut thief = stack.connect_as("Thief.K", THIEF);
    assert_eq!(thief.subscribe(&victim_data).unwrap(), Verdict::Denied);
    assert_eq!(thief.subscribe("result.Victim.K").unwrap(), Verdict::Denied);

    // (b) the victim's GUID under another name, granting the thief the victim's DATA loop;
    // (c) a fake instance of the victim's class granting the thief `invoke-tool`.
    stack.register_at(
        "fake-guid",
        "Fake.K",
        VICTIM,
        "",
        &thief_grant("read-storage"),
    );
    stack.register_at(
        "fake-instance",
        "Victim.K",
        FAKE,
        "",
        &thief_grant("invoke-tool"),
    );
    std::thread::sleep(Duration::from_millis(300)); // the registry rescans at most every 200 ms
    let mut thief = stack.connect_as("Thief.K", THIEF);
    assert_eq!(
        thief.subscribe(&victim_data).unwrap(),
        Verdict::Denied,
        "a manifest reusing the victim's GUID opened its DATA loop\n{}",
        stack.authz_logs()
    );
    assert_eq!(
        thief.subscribe("result.Victim.K").unwrap(),
        Verdict::Denied,
        "a fake instance of the victim's class opened its results"
    );
    // Every kernel in a conflict is refused, with the reason, whichever manifest came first.
    let victim_id = spiffe("Victim.K", VICTIM);
    let token = stack.svid(&victim_id, None);
    stack.assert_refused(&victim_id, &token, "is refused by the registry rule");
    let fake_id = spiffe("Fake.K", VICTIM);
    let token = stack.svid(&fake_id, None);
    stack.assert_refused(&fake_id, &token, "is also used by");
    assert!(stack.authz_logs().contains("registry.conflict"));

    // Once the conflicting manifests are gone the victim connects again.
    std::fs::remove_dir_all(stack.root().join("registry/fake-guid")).unwrap();
    std::fs::remove_dir_all(stack.root().join("registry/fake-instance")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stack.connect_as("Victim.K", VICTIM);

    // (a) the victim's GUID with `_` for `-` names the victim's bucket and stream: refused.
    let alias = VICTIM.replace('-', "_");
    stack.register_at("alias", "Alias.K", &alias, "", "");
    std::thread::sleep(Duration::from_millis(300));
    let alias_id = spiffe("Alias.K", &alias);
    let token = stack.svid(&alias_id, None);
    stack.assert_refused(&alias_id, &token, "no kernel registered with SPIFFE ID");
    assert!(
        stack.authz_logs().contains("invalid kernel guid"),
        "the registry says why the alias is not loaded"
    );

    // (d) an explicit topic outside the kernel families, shared with another kernel: neither
    // manifest is loaded, so the second cannot receive the first's requests.
    let topic = "  nats:\n    input_topic: orders.incoming\n";
    stack.register_at("orders-a", "Orders.A", FAKE, topic, "");
    stack.register_at(
        "orders-b",
        "Orders.B",
        "dddddddd-4444-4ddd-8ddd-dddddddddddd",
        topic,
        "",
    );
    std::thread::sleep(Duration::from_millis(300));
    let id = spiffe("Orders.B", "dddddddd-4444-4ddd-8ddd-dddddddddddd");
    let token = stack.svid(&id, None);
    stack.assert_refused(&id, &token, "no kernel registered with SPIFFE ID");
    assert!(
        stack
            .authz_logs()
            .contains("outside the kernel's own subject families")
    );
}

/// Point 3: a manifest at the registry root does not hide the kernels below it, and a
/// directory that cannot be read is skipped, not the end of the scan. Before, the root's own
/// `conceptkernel.yaml` was the only manifest loaded.
#[test]
fn a_manifest_at_the_registry_root_does_not_hide_the_others() {
    const ROOT: &str = "eeeeeeee-5555-4eee-8eee-eeeeeeeeeeee";
    const BELOW: &str = "bbbbbbbb-2222-4bbb-8bbb-bbbbbbbbbbbb";
    let stack = Stack::start(1, 300);
    stack.register_at("", "Root.K", ROOT, "", "");
    stack.register("Below.K", BELOW, "");
    std::thread::sleep(Duration::from_millis(300));
    stack.connect_as("Root.K", ROOT);
    stack.connect_as("Below.K", BELOW);
}

/// Point 7, the host's half: only successful answers to `anon` guest actions are broadcast on
/// `result.{K}`; task answers (task ids, outputs), errors and answers to `auth` actions go to
/// the caller alone. Before, every answer was also published on `result.{K}`.
#[tokio::test(flavor = "multi_thread")]
async fn only_public_answers_are_broadcast_on_the_result_topic() {
    // `progress` stays `anon`; `task.fail` is made an `auth` action (a 401 without a token).
    let victim = Victim::start(|m| {
        m.replace(
            "{name: task.fail, description: Mark the task failed, access: anon}",
            "{name: task.fail, description: Mark the task failed, access: auth}",
        )
    })
    .await;
    let mut results = victim.client.subscribe("result.Demo.Tasks").await.unwrap();
    victim.client.flush().await.unwrap();
    let started = victim
        .call("task.start", json!({"task_id": "secret-1"}))
        .await;
    assert_eq!(started["status"], "ok", "{started}");
    let done = victim
        .call(
            "task.complete",
            json!({"task_id": "secret-1", "output": {"pin": 1234}}),
        )
        .await;
    assert_eq!(done["status"], "ok", "{done}");
    let unknown = victim.call("no.such.action", json!({})).await;
    assert_eq!(unknown["code"], 404, "{unknown}");
    let unauthenticated = victim
        .call("task.fail", json!({"task_id": "secret-1"}))
        .await;
    assert_eq!(unauthenticated["code"], 401, "{unauthenticated}");
    let public = victim.call("progress", json!({"delta": {"a": 1}})).await;
    assert_eq!(public["status"], "ok", "{public}");
    let status = victim.call("status", json!({})).await;
    assert_eq!(status["status"], "ok", "{status}");

    // The two public answers arrive, in order; nothing else was broadcast before them.
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), results.next()).await {
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        seen.push(body);
    }
    let actions: Vec<&str> = seen
        .iter()
        .map(|b| b["action"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(actions, ["progress", "status"], "broadcast: {seen:#?}");
}

/// Point 7, the server's half: a kernel granted one action of another (here `status`) may call
/// it but not read the other's result topic; `read-results` is the grant that opens it.
/// Before, any named grant opened `result.{K}` too.
#[test]
fn a_grant_for_one_action_does_not_open_the_result_topic() {
    const OWNER: &str = "aaaaaaaa-1111-4aaa-8aaa-aaaaaaaaaaaa";
    const GRANTEE: &str = "bbbbbbbb-2222-4bbb-8bbb-bbbbbbbbbbbb";
    let stack = Stack::start(1, 300);
    let grant = |actions: &str| {
        format!(
            "  - identity: {}\n    actions: [{actions}]\n    expires: never\n",
            spiffe("Grantee.K", GRANTEE)
        )
    };
    stack.register("Owner.K", OWNER, &grant("status"));
    stack.register("Grantee.K", GRANTEE, "");
    let mut grantee = stack.connect_as("Grantee.K", GRANTEE);
    assert_eq!(grantee.publish("input.Owner.K").unwrap(), Verdict::Allowed);
    assert_eq!(
        grantee.subscribe("result.Owner.K").unwrap(),
        Verdict::Denied,
        "a grant of `status` opened every caller's results\n{}",
        stack.authz_logs()
    );
    stack.register("Owner.K", OWNER, &grant("status, read-results"));
    std::thread::sleep(Duration::from_millis(300));
    let mut grantee = stack.connect_as("Grantee.K", GRANTEE);
    assert_eq!(
        grantee.subscribe("result.Owner.K").unwrap(),
        Verdict::Allowed
    );
}

/// Sends `action` with `data` to `subject` as the static observer, with `X-User-ID: claim`
/// and `Authorization: Bearer token` when given; the answer.
async fn ask_as(
    client: &Client,
    subject: &str,
    action: &str,
    data: Value,
    claim: Option<&str>,
    token: Option<&str>,
) -> Value {
    let mut headers = HeaderMap::new();
    if let Some(claim) = claim {
        headers.insert("X-User-ID", claim);
    }
    if let Some(token) = token {
        headers.insert("Authorization", format!("Bearer {token}").as_str());
    }
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(Bytes::from(
            serde_json::to_vec(&json!({"action": action, "data": data})).unwrap(),
        ))
        .timeout(Some(Duration::from_secs(20)));
    let reply = client
        .send_request(subject.to_owned(), request)
        .await
        .unwrap_or_else(|e| panic!("{action}: {e}"));
    serde_json::from_slice(&reply.payload).unwrap()
}

fn sealed_manifest(kernel: &Path, instance: &Value) -> Value {
    let path = kernel.join(format!(
        "data/instances/{}/manifest.json",
        instance.as_str().unwrap()
    ));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Points 8 and 9, against the secured stack. An `X-User-ID` that spells a SPIFFE ID is shown to
/// the guest, recorded on the task and sealed into provenance as `claimed:…`, never as the
/// identity (before, it was indistinguishable from a proven one). A task started by a proven
/// caller is owned by it: another proven identity, or the owner's name merely claimed, is
/// refused (403) on update and complete (before, anyone could move anyone's task); a holder of
/// the kernel's `manage-tasks` grant may.
#[test]
fn claimed_names_are_not_identities_and_tasks_belong_to_who_proved_them() {
    const TASKS: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
    const OWNER: &str = "aaaaaaaa-1111-4aaa-8aaa-aaaaaaaaaaaa";
    const OTHER: &str = "bbbbbbbb-2222-4bbb-8bbb-bbbbbbbbbbbb";
    const MANAGER: &str = "cccccccc-3333-4ccc-8ccc-cccccccccccc";
    let stack = Stack::start(1, 300);
    let _echo = stack.serve_echo();
    let manager = spiffe("Test.C", MANAGER);
    let _tasks = stack.serve_edited("tasks", "Demo.Tasks", |m| {
        format!("{m}  - identity: {manager}\n    actions: [manage-tasks]\n    expires: never\n")
    });
    let echo_id = spiffe("Demo.Echo", "0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d");
    let tasks_id = spiffe("Demo.Tasks", TASKS);
    let owner = spiffe("Test.A", OWNER);
    let (owner_token, other_token, manager_token, owner_for_echo) = (
        stack.svid(&owner, Some(&tasks_id)),
        stack.svid(&spiffe("Test.B", OTHER), Some(&tasks_id)),
        stack.svid(&manager, Some(&tasks_id)),
        stack.svid(&owner, Some(&echo_id)),
    );
    let kernel = stack.kernel_dir("Demo.Tasks");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let c = stack.observer().await;
        let echo = |action: &'static str, claim: Option<&'static str>, token: Option<String>| {
            let c = c.clone();
            async move {
                ask_as(
                    &c,
                    "input.Demo.Echo",
                    action,
                    json!({}),
                    claim,
                    token.as_deref(),
                )
                .await
            }
        };
        // Point 8: the guest context.
        let spoof: &'static str =
            "spiffe://example.org/ck/Test.A/aaaaaaaa-1111-4aaa-8aaa-aaaaaaaaaaaa";
        let claimed = echo("whoami", Some(spoof), None).await;
        assert_eq!(
            claimed["data"]["caller"],
            format!("claimed:{spoof}"),
            "{claimed}"
        );
        let proven = echo("whoami", Some("mallory"), Some(owner_for_echo.clone())).await;
        assert_eq!(
            proven["data"]["caller"],
            owner.as_str(),
            "a token proves even an anon call: {proven}"
        );
        let forged = echo("whoami", None, Some("not-a-jwt".into())).await;
        assert_eq!(
            forged["code"], 401,
            "a token that proves nothing is refused: {forged}"
        );

        let tasks = |action: &'static str,
                     data: Value,
                     claim: Option<&'static str>,
                     token: Option<&String>| {
            let c = c.clone();
            let token = token.cloned();
            async move {
                ask_as(
                    &c,
                    "input.Demo.Tasks",
                    action,
                    data,
                    claim,
                    token.as_deref(),
                )
                .await
            }
        };
        // Point 8: a task moved by a claimed name records and seals the claim as a claim.
        let started = tasks(
            "task.start",
            json!({"task_id": "t-claimed"}),
            Some(spoof),
            None,
        )
        .await;
        assert_eq!(started["status"], "ok", "{started}");
        let done = tasks(
            "task.complete",
            json!({"task_id": "t-claimed", "output": {"n": 1}}),
            Some(spoof),
            None,
        )
        .await;
        assert_eq!(done["status"], "ok", "{done}");
        let sealed = sealed_manifest(&kernel, &done["data"]["instance_id"]);
        assert_eq!(
            sealed["prov:wasAssociatedWith"],
            format!("claimed:{spoof}"),
            "{sealed}"
        );
        assert_eq!(sealed["ck:owner"], Value::Null, "{sealed}");

        // Point 9: the proven starter owns the task.
        let started = tasks(
            "task.start",
            json!({"task_id": "t-owned"}),
            None,
            Some(&owner_token),
        )
        .await;
        assert_eq!(started["status"], "ok", "{started}");
        for (who, claim, token) in [
            ("another proven identity", None, Some(&other_token)),
            ("the owner's name, claimed", Some(spoof), None),
        ] {
            for (action, data) in [
                (
                    "task.update",
                    json!({"task_id": "t-owned", "delta": {"x": 1}}),
                ),
                (
                    "task.complete",
                    json!({"task_id": "t-owned", "output": {"stolen": true}}),
                ),
            ] {
                let refused = tasks(action, data, claim, token).await;
                assert_eq!(
                    refused["code"], 403,
                    "{who} may {action} the owner's task: {refused}"
                );
                assert_eq!(refused["error"], "not_task_owner", "{refused}");
            }
        }
        let updated = tasks(
            "task.update",
            json!({"task_id": "t-owned", "delta": {"x": 1}}),
            None,
            Some(&owner_token),
        )
        .await;
        assert_eq!(
            updated["status"], "ok",
            "the owner moves its task: {updated}"
        );
        let managed = tasks(
            "task.update",
            json!({"task_id": "t-owned", "delta": {"y": 2}}),
            None,
            Some(&manager_token),
        )
        .await;
        assert_eq!(
            managed["status"], "ok",
            "a manage-tasks grantee may: {managed}"
        );
        let done = tasks(
            "task.complete",
            json!({"task_id": "t-owned", "output": {"ok": true}}),
            None,
            Some(&owner_token),
        )
        .await;
        assert_eq!(done["status"], "ok", "{done}");
        let sealed = sealed_manifest(&kernel, &done["data"]["instance_id"]);
        assert_eq!(sealed["ck:owner"], owner.as_str(), "{sealed}");
        assert_eq!(sealed["prov:wasAssociatedWith"], owner.as_str(), "{sealed}");
    });
}

/// The `.cwasm` entries of a cache directory, in name order.
fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.extension().is_some_and(|e| e == "cwasm"));
    found.sort();
    found
}

/// Point 5. The compiled-component cache is native code the host runs. (a) A cache directory
/// others may write is refused at start with the fix, not used. (b) An entry replaced by
/// another component's entry, its unkeyed checksum intact (what anyone who can write the
/// directory can produce), is not loaded: the kernel still runs its own code. (c) With no
/// cache location configured there is no shared fallback in the temporary directory. Before,
/// (a) served from the open directory, (b) ran the other component in the victim's place and
/// (c) cached in `$TMPDIR/ck/components`.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_or_exposed_component_cache_is_never_loaded() {
    use std::os::unix::fs::PermissionsExt;
    const CK: &str = env!("CARGO_BIN_EXE_ck");
    let tmp = tempfile::tempdir().unwrap();
    let server = ck_tests::nats("");
    let echo = tmp.path().join("echo");
    copy_kernel("echo", &echo);
    let voting = tmp.path().join("voting");
    copy_kernel("voting", &voting);
    ck_build(CK, &[&echo, &voting]);
    let client = async_nats::connect(server.url()).await.unwrap();
    let tally = || async {
        let reply = client
            .request(
                "input.CS.Voting",
                Bytes::from(r#"{"action":"tally","data":{"ballots":["a","b","a"]}}"#),
            )
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&reply.payload).unwrap()
    };

    // (a) A directory others may write.
    let open = tmp.path().join("open-cache");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut refused = Proc::spawn(
        CK,
        &[
            "run".as_ref(),
            voting.as_os_str(),
            "--nats".as_ref(),
            server.url().as_ref(),
            "--insecure-no-identity".as_ref(),
            "--cache-dir".as_ref(),
            open.as_os_str(),
        ],
        &tmp.path().join("open.log"),
    );
    let status = {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = refused.child().try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(
        status.is_some_and(|s| !s.success()),
        "ck run served from a cache directory anyone may write:\n{}",
        refused.log()
    );
    assert!(refused.log().contains("chmod 700"), "{}", refused.log());
    assert!(cache_entries(&open).is_empty());

    // (b) The victim's entry replaced by another component's (a valid entry of its own).
    let cache = tmp.path().join("cache");
    let host = start_host(&server, &echo, tmp.path(), "echo");
    drop(host);
    let echo_entry = cache_entries(&cache);
    assert_eq!(echo_entry.len(), 1, "{echo_entry:?}");
    let host = start_host(&server, &voting, tmp.path(), "voting");
    assert_eq!(tally().await["data"]["winner"], "a");
    drop(host);
    let voting_entry: Vec<PathBuf> = cache_entries(&cache)
        .into_iter()
        .filter(|p| *p != echo_entry[0])
        .collect();
    assert_eq!(voting_entry.len(), 1, "{voting_entry:?}");
    std::fs::copy(&echo_entry[0], &voting_entry[0]).unwrap();
    let host = start_host(&server, &voting, tmp.path(), "voting-again");
    let answer = tally().await;
    assert_eq!(
        answer["data"]["winner"], "a",
        "the kernel ran a component it was not given: {answer}"
    );
    assert!(host.log().contains("cache.entry_refused"), "{}", host.log());
    drop(host);

    // (c) No cache location at all: nothing is written to the temporary directory.
    let scratch = tmp.path().join("tmpdir");
    std::fs::create_dir(&scratch).unwrap();
    let host = Proc::spawn_in_env(
        CK,
        &[
            "run".as_ref(),
            voting.as_os_str(),
            "--nats".as_ref(),
            server.url().as_ref(),
            "--insecure-no-identity".as_ref(),
        ],
        &tmp.path().join("no-cache.log"),
        &["HOME", "XDG_CACHE_HOME", "CK_CACHE_DIR"],
        &[("TMPDIR", scratch.as_os_str())],
    );
    host.wait_for("\"nats.subscribed\"");
    assert_eq!(tally().await["data"]["winner"], "a");
    assert!(host.log().contains("cache.disabled"), "{}", host.log());
    assert!(
        std::fs::read_dir(&scratch).unwrap().next().is_none(),
        "something was cached in the temporary directory"
    );
}

/// Point 4. A task kernel's own connection may not administer JetStream: no stream creation
/// (its configuration could capture foreign subjects, or mirror / source another kernel's
/// bucket) and no consumer creation (a push consumer delivers to any subject it names), for its
/// own bucket and stream as for any other; nats-server refuses each attempt. The callout
/// provisions the bucket and stream, so the kernel's host still serves its tasks. Before, the
/// kernel's permissions allowed `STREAM.CREATE` and `CONSUMER.CREATE` on its own names, with
/// any configuration.
#[test]
fn a_kernel_connection_cannot_administer_jetstream() {
    const TASKS: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
    let stack = Stack::start(1, 300);
    let _host = stack.serve("tasks", "Demo.Tasks");
    let bucket = format!("KV_ck_tasks_{}", TASKS.replace('-', "_"));
    let events = format!("ck_data_{}", TASKS.replace('-', "_"));
    let mut kernel = stack.connect_as("Demo.Tasks", TASKS);
    for attempt in [
        format!("$JS.API.STREAM.CREATE.{bucket}"),
        format!("$JS.API.STREAM.CREATE.{events}"),
        format!("$JS.API.STREAM.UPDATE.{bucket}"),
        format!("$JS.API.CONSUMER.CREATE.{bucket}"),
        format!("$JS.API.CONSUMER.CREATE.{bucket}.push.$KV.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{bucket}.push"),
        format!("$JS.API.CONSUMER.CREATE.{events}"),
    ] {
        assert_eq!(
            kernel.publish(&attempt).unwrap(),
            Verdict::Denied,
            "the kernel's connection may publish {attempt}\n{}",
            stack.authz_logs()
        );
    }
    // What the host needs stays open, and it serves: the callout made bucket and stream.
    for needed in [
        format!("$JS.API.STREAM.INFO.{bucket}"),
        format!("$JS.API.DIRECT.GET.{bucket}.$KV.x.t-1"),
    ] {
        assert_eq!(
            kernel.publish(&needed).unwrap(),
            Verdict::Allowed,
            "{needed}"
        );
    }
    assert!(
        stack.authz_logs().contains("authz.provisioned"),
        "{}",
        stack.authz_logs()
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let c = stack.observer().await;
        let started = ask_as(
            &c,
            "input.Demo.Tasks",
            "task.start",
            json!({"task_id": "t-1"}),
            None,
            None,
        )
        .await;
        assert_eq!(started["status"], "ok", "{started}");
        let js = async_nats::jetstream::new(c.clone());
        let stream = js.get_stream(&bucket).await.unwrap();
        let config = &stream.cached_info().config;
        assert_eq!(
            config.max_message_size,
            512 * 1024,
            "the callout used the host's configuration"
        );
        assert_eq!(
            config.subjects,
            [format!("$KV.ck_tasks_{}.>", TASKS.replace('-', "_"))]
        );
    });
}

/// Point 6. A flood of bogus connects (a registered kernel's SPIFFE ID, a junk password; no
/// secret needed) from its own process does not lock legitimate kernels out, and cannot fill
/// the victim's ledger: the refusals are coalesced (one line per identity, reason and interval,
/// with the count). Before, each refused connect was one fsync'd ledger line, decided on an
/// async worker with a registry rescan, one unbounded task each.
#[test]
fn a_connect_flood_neither_locks_kernels_out_nor_fills_the_ledger() {
    const VICTIM: &str = "aaaaaaaa-1111-4aaa-8aaa-aaaaaaaaaaaa";
    const LEGIT: &str = "bbbbbbbb-2222-4bbb-8bbb-bbbbbbbbbbbb";
    let stack = Stack::start(1, 300);
    stack.register("Victim.K", VICTIM, "");
    stack.register("Legit.K", LEGIT, "");
    let victim = spiffe("Victim.K", VICTIM);
    let legit = spiffe("Legit.K", LEGIT);
    let token = stack.svid(&legit, None);
    let mut flood = std::process::Command::new(env!("CARGO_BIN_EXE_ck"))
        .args([
            "bench-flood",
            "--addr",
            &format!("127.0.0.1:{}", stack.server.port()),
        ])
        .args(["--user", &victim, "--rate", "1000", "--seconds", "6"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Legitimate connects one after the other for as long as the flood runs (how many fit is
    // the benchmark's business; here every one must be admitted).
    let (mut admitted, mut refused) = (0, Vec::new());
    while flood.try_wait().unwrap().is_none() {
        match stack.connect(&legit, &token) {
            Ok(_) => admitted += 1,
            Err(e) => refused.push(e),
        }
    }
    let output = flood.wait_with_output().unwrap();
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        refused.is_empty(),
        "{} of {} legitimate connects failed during the flood: {:?}",
        refused.len(),
        admitted + refused.len(),
        &refused[..refused.len().min(3)]
    );
    assert!(
        admitted > 0,
        "no legitimate connect was tried during the flood"
    );
    assert!(
        seen["refused"].as_u64().unwrap() > 1000,
        "the flood did not happen: {seen}"
    );
    assert_eq!(seen["admitted"], 0, "{seen}");
    let lines = ck_audit::read(&stack.kernel_dir("Victim.K")).unwrap();
    let denies = lines
        .iter()
        .filter(|l| l["action"] == "connect" && l["result"] == "deny")
        .count();
    assert!(
        (1..=5).contains(&denies),
        "{denies} ledger lines for {} refused connects",
        seen["refused"]
    );
}

/// Point 11 (LOCAL kernels). Under `--allow-local` a `LOCAL.*` kernel connects on its name
/// alone, without proof; a `domain` in its manifest must not make it count as an authenticated
/// member of that trust domain. Here another kernel grants `auth` (every authenticated identity
/// of its domain) `read-storage`: a proven kernel of the domain may read its DATA loop, the
/// LOCAL one may not. Before, the LOCAL kernel got the grant.
#[test]
fn an_unproven_local_kernel_gets_no_auth_level_access() {
    const OWNER: &str = "aaaaaaaa-1111-4aaa-8aaa-aaaaaaaaaaaa";
    const PROVEN: &str = "bbbbbbbb-2222-4bbb-8bbb-bbbbbbbbbbbb";
    let stack = Stack::start_with(1, 300, &["--allow-local"]);
    stack.register(
        "Owner.K",
        OWNER,
        "  - identity: auth\n    actions: [read-storage]\n    expires: never\n",
    );
    stack.register("Proven.K", PROVEN, "");
    stack.register("LOCAL.Scratch", "dddddddd-4444-4ddd-8ddd-dddddddddddd", "");
    let data = format!("ck.{OWNER}.data.>");
    let mut proven = stack.connect_as("Proven.K", PROVEN);
    assert_eq!(proven.subscribe(&data).unwrap(), Verdict::Allowed);
    let mut local = stack
        .connect("LOCAL.Scratch", "")
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.authz_logs()));
    assert_eq!(
        local.subscribe(&data).unwrap(),
        Verdict::Denied,
        "an unproven LOCAL kernel got the `auth` grant of its domain"
    );
    assert_eq!(
        local.publish("result.LOCAL.Scratch").unwrap(),
        Verdict::Allowed
    );
}

/// Point 10 (`--nats`). A consistent rewrite: the kernel's tree replaced by one a real host
/// produced elsewhere (another NATS server, the same kernel, the same task id, another output)
/// — every hash, the history and the ledger agree with each other, so the offline check passes.
/// Checked against what the victim's cluster recorded (the `data.written` events in its DATA
/// event stream, with each instance's hashes) it fails, naming the instance. Before, `ck
/// verify` had no way to consult the cluster (no `--nats`).
#[tokio::test(flavor = "multi_thread")]
async fn ck_verify_against_the_cluster_catches_a_consistent_rewrite() {
    let mut victim = Victim::start(|m| m).await;
    let kernel = victim.kernel.clone();
    start_and_complete(&victim.client, "pay-1", json!({"amount": 10})).await;
    eventually(
        Duration::from_secs(20),
        || verify_at(&kernel).0 == 0,
        || verify_at(&kernel).1,
    );
    victim.host.kill();
    let url = victim.server.url();
    let (code, out) = verify_with(&kernel, &["--nats", &url]);
    assert_eq!(code, 0, "the genuine tree: {out}");
    assert!(out.contains("anchored"), "{out}");

    // The rewrite: the same kernel served against another server, the same task completed
    // with another output; then that tree put in the victim's place.
    let elsewhere = victim.tmp.path().join("elsewhere");
    let server = nats_jetstream(&elsewhere.join("js"));
    let forged = built_kernel(&elsewhere.join("tasks"), |m| m);
    let mut host = start_host(&server, &forged, &elsewhere, "forger");
    let client = async_nats::connect(server.url()).await.unwrap();
    start_and_complete(&client, "pay-1", json!({"amount": 1000000})).await;
    eventually(
        Duration::from_secs(20),
        || verify_at(&forged).0 == 0,
        || verify_at(&forged).1,
    );
    host.kill();
    let (code, out) = verify_at(&forged);
    assert_eq!(
        code, 0,
        "the rewrite is consistent, so the offline check passes: {out}"
    );
    let (code, out) = verify_with(&forged, &["--nats", &url]);
    assert_eq!(
        code, 1,
        "the rewrite checked against the victim's cluster: {out}"
    );
    assert!(
        out.contains("missing from the tree") || out.contains("the cluster recorded"),
        "{out}"
    );
}

/// Point 11 (TLS). With a CA made in the test, the stack's nats-server requires TLS
/// (`ck authz init --tls-cert/--tls-key`), `ck authz` (callout and provisioner) and `ck run`
/// connect with `--tls-ca`, and a kernel is served and answers over TLS. A client speaking in
/// clear is refused by the server before it can present a password (an SVID), and a TLS client
/// that does not trust the CA does not connect. Before, no TLS option existed anywhere.
#[test]
fn every_connection_can_require_tls_against_a_ca() {
    let stack = Stack::start_tls();
    let _host = stack.serve("tasks", "Demo.Tasks");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let c = stack.observer_tls().await;
        let answer = ask_as(
            &c,
            "input.Demo.Tasks",
            "task.start",
            json!({"task_id": "t-tls"}),
            None,
            None,
        )
        .await;
        assert_eq!(
            answer["status"], "ok",
            "served and provisioned over TLS: {answer}"
        );
        let untrusted = async_nats::ConnectOptions::with_user_and_password(
            "observer".into(),
            "observer-secret".into(),
        )
        .require_tls(true)
        .connect(stack.server.url())
        .await;
        assert!(
            untrusted.is_err(),
            "a client that does not trust the CA connected"
        );
    });
    let clear = stack.connect(
        &spiffe("Demo.Tasks", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"),
        "svid-in-clear",
    );
    assert!(clear.is_err(), "a plain-text client was let in");
    // `ck call` and `ck verify --nats` take the CA too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ck"))
        .args([
            "call",
            "input.Demo.Tasks",
            "status",
            "--nats",
            &stack.server.url(),
        ])
        .args([
            "--nats-user",
            "observer",
            "--nats-password",
            "observer-secret",
        ])
        .arg("--tls-ca")
        .arg(stack.tls_ca())
        .output()
        .unwrap();
    assert!(out.status.success(), "ck call over TLS: {out:?}");
}

/// Point 11 (`xkey`). The server seals every authorization request to the callout's curve key
/// (`ck authz init` writes `callout.xk` and the server's `auth_callout { xkey }`), and the
/// callout seals its answer back: a second subscriber on the callout subject holding the
/// callout's password sees sealed bytes, not the request JWT with the SVID presented as the
/// password. Before, requests were plain JWTs.
#[test]
fn callout_requests_are_sealed_to_the_callouts_key() {
    const KERNEL: &str = "aaaaaaaa-1111-4aaa-8aaa-aaaaaaaaaaaa";
    let stack = Stack::start(1, 300);
    stack.register("Sealed.K", KERNEL, "");
    let password = std::fs::read_to_string(stack.root().join("authz/callout.password")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (headers, payload) = runtime.block_on(async {
        let eavesdropper = async_nats::ConnectOptions::with_user_and_password(
            "ck-authz".into(),
            password.trim().into(),
        )
        .connect(stack.server.url())
        .await
        .unwrap();
        let mut requests = eavesdropper.subscribe("$SYS.REQ.USER.AUTH").await.unwrap();
        eavesdropper.flush().await.unwrap();
        stack.connect_as("Sealed.K", KERNEL);
        let seen = tokio::time::timeout(Duration::from_secs(5), requests.next())
            .await
            .unwrap()
            .unwrap();
        (seen.headers, seen.payload)
    });
    let server_key = headers
        .as_ref()
        .and_then(|h| h.get("Nats-Server-Xkey"))
        .map(|v| v.as_str().to_owned());
    assert!(
        server_key.as_deref().is_some_and(|k| k.starts_with('X')),
        "no server curve key: the request was not sealed ({headers:?})"
    );
    assert!(
        !payload.starts_with(b"eyJ"),
        "the request is a readable JWT: {}",
        String::from_utf8_lossy(&payload[..payload.len().min(80)])
    );
}

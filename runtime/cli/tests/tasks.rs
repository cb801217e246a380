//! The write-once task lifecycle end to end: `ck run` hosts serving `Demo.Tasks` (built from C
//! by `ck build`) over a real nats-server with JetStream (file storage, `sync_interval:
//! always`), and `ck verify` on what they sealed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use ck_tests::{NatsServer, Proc, ck_build, ck_run, copy_kernel, nats_jetstream, seconds_from_env};
use serde_json::{Value, json};

const GUID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const INPUT: &str = "input.Demo.Tasks";

/// A copy of `kernels/tasks` (manifest and C source) at `dir`, built with `ck build`.
fn built_kernel(dir: &Path) -> PathBuf {
    copy_kernel("tasks", dir);
    ck_build(env!("CARGO_BIN_EXE_ck"), &[dir]);
    dir.to_owned()
}

/// A running `ck run` of one kernel directory; SIGKILLed on drop.
struct Host {
    proc: Proc,
}

impl Host {
    fn start(server: &NatsServer, kernel: &Path, logs: &Path, name: &str) -> Host {
        Host::start_with(server, kernel, logs, name, &[])
    }

    /// [`Host::start`] with more arguments for `ck run`.
    fn start_with(
        server: &NatsServer,
        kernel: &Path,
        logs: &Path,
        name: &str,
        extra: &[&str],
    ) -> Host {
        let proc = ck_run(
            env!("CARGO_BIN_EXE_ck"),
            &server.url(),
            kernel,
            logs,
            name,
            extra,
        );
        Host { proc }
    }

    fn log(&self) -> String {
        self.proc.log()
    }

    fn kill(&mut self) {
        self.proc.kill();
    }
}

async fn send(client: &Client, body: Value) -> Value {
    let request = async_nats::Request::new()
        .payload(Bytes::from(serde_json::to_vec(&body).unwrap()))
        .timeout(Some(Duration::from_secs(20)));
    let reply = client
        .send_request(INPUT.to_owned(), request)
        .await
        .unwrap_or_else(|e| panic!("{body}: {e}"));
    serde_json::from_slice(&reply.payload).unwrap()
}

async fn task(client: &Client, action: &str, data: Value) -> Value {
    send(client, json!({"action": action, "data": data})).await
}

fn ck_verify(kernel: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ck"))
        .arg("verify")
        .arg(kernel)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Every `data.written` in the kernel's DATA stream, in stream order: (instance, commit).
async fn data_written(js: &async_nats::jetstream::Context) -> Vec<(String, String)> {
    let Ok(stream) = js
        .get_stream(format!("ck_data_{}", GUID.replace('-', "_")))
        .await
    else {
        return Vec::new();
    };
    let last = stream
        .get_info()
        .await
        .map(|i| i.state.last_sequence)
        .unwrap_or(0);
    let mut found = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await
            && m.subject.as_str() == format!("ck.{GUID}.data.written")
        {
            let body: Value = serde_json::from_slice(&m.payload).unwrap();
            found.push((
                body["data"]["instance_id"].as_str().unwrap().to_owned(),
                body["data"]["commit"].as_str().unwrap().to_owned(),
            ));
        }
    }
    found
}

fn instances(kernel: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(kernel.join("data/instances"))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Runs `edit` on `file` made writable, checks `ck verify` fails naming it first, restores.
fn tampered_is_named(kernel: &Path, file: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let original = std::fs::read(file).unwrap();
    let mode = std::fs::metadata(file).unwrap().permissions().mode();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = original.clone();
    edit(&mut bytes);
    assert_ne!(bytes, original);
    std::fs::write(file, &bytes).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
    let (ok, out) = ck_verify(kernel);
    assert!(
        !ok,
        "ck verify accepted a changed {}:\n{out}",
        file.display()
    );
    let first = out.lines().find(|l| l.starts_with("FAIL")).unwrap_or("");
    assert!(
        first.contains(&file.display().to_string()),
        "the first broken link must name {}:\n{out}",
        file.display()
    );
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(file, &original).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
    assert!(
        ck_verify(kernel).0,
        "restored {} must verify",
        file.display()
    );
}

/// Changes one byte inside the first occurrence of `needle`.
fn flip_in(needle: &str) -> impl FnOnce(&mut Vec<u8>) + '_ {
    move |bytes| {
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap_or_else(|| panic!("'{needle}' not found"));
        let i = at + needle.len() - 1;
        bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_lifecycle_seals_once_and_verify_names_any_changed_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let server = nats_jetstream(&tmp.path().join("js"));
    let kernel = built_kernel(&tmp.path().join("tasks"));
    // Every DATA loop event, judged by the Python CloudEvents SDK through nats-py.
    let witness = ck_tests::Witness::start(
        tmp.path(),
        &server.url(),
        ("", ""),
        &[&format!("ck.{GUID}.data.>")],
    );
    let _host = Host::start(&server, &kernel, tmp.path(), "host");
    let c = async_nats::connect(server.url()).await.unwrap();

    // Flat body (ckp-spec §3.1) and envelope alike.
    let started = send(&c, json!({"action": "task.start", "task_id": "t-1"})).await;
    assert_eq!(started["status"], "ok", "{started}");
    assert_eq!(started["data"]["state"], "in_progress");
    let update = task(
        &c,
        "task.update",
        json!({"task_id": "t-1", "delta": {"step": 1}}),
    )
    .await;
    assert_eq!(update["data"]["state"], "in_progress", "{update}");

    // Refusals name the task, its state and the action, and change nothing.
    let early = task(&c, "task.update", json!({"task_id": "t-2", "delta": {}})).await;
    assert_eq!(early["code"], 409, "{early}");
    let message = early["message"].as_str().unwrap();
    assert!(
        message.contains("task t-2") && message.contains("never started"),
        "{message}"
    );
    assert!(message.contains("task.update"), "{message}");
    let early = task(&c, "task.complete", json!({"task_id": "t-2", "output": {}})).await;
    assert_eq!(early["code"], 409, "{early}");
    let twice = task(&c, "task.start", json!({"task_id": "t-1"})).await;
    assert_eq!(twice["code"], 409, "{twice}");
    assert!(
        twice["message"]
            .as_str()
            .unwrap()
            .contains("is in_progress"),
        "{twice}"
    );
    let no_output = task(&c, "task.complete", json!({"task_id": "t-1"})).await;
    assert_eq!(no_output["code"], 400, "{no_output}");
    let bad_id = task(&c, "task.start", json!({"task_id": "../escape"})).await;
    assert_eq!(bad_id["code"], 400, "{bad_id}");

    let output = json!({"winner": "ada", "votes": {"ada": 3, "grace": 2}});
    let done = task(
        &c,
        "task.complete",
        json!({"task_id": "t-1", "output": output}),
    )
    .await;
    assert_eq!(done["status"], "ok", "{done}");
    assert_eq!(done["data"]["state"], "completed");
    let instance = done["data"]["instance_id"].as_str().unwrap().to_owned();
    let again = task(
        &c,
        "task.complete",
        json!({"task_id": "t-1", "output": {"winner": "grace"}}),
    )
    .await;
    assert_eq!(again["code"], 409, "{again}");
    assert!(
        again["message"].as_str().unwrap().contains("is completed"),
        "{again}"
    );
    for action in ["task.update", "task.fail", "task.retry"] {
        let after = task(&c, action, json!({"task_id": "t-1"})).await;
        assert_eq!(after["code"], 409, "{action}: {after}");
    }

    // The sealed instance: the output as data.json, read-only, with its proof and ledger.
    let dir = kernel.join("data/instances").join(&instance);
    let data: Value =
        serde_json::from_slice(&std::fs::read(dir.join("data.json")).unwrap()).unwrap();
    assert_eq!(data, output);
    let mode = std::fs::metadata(dir.join("data.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o222, 0, "data.json must be read-only");
    let ledger: Value =
        serde_json::from_slice(&std::fs::read(dir.join("ledger.json")).unwrap()).unwrap();
    let steps: Vec<&str> = ledger["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["action"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["task.start", "task.update", "task.complete"]);
    assert_eq!(instances(&kernel).len(), 1, "exactly one instance");

    // The DATA events, kept in the kernel's stream under deterministic message ids.
    let js = async_nats::jetstream::new(c.clone());
    let mut commits = std::collections::BTreeSet::new();
    let stream = js
        .get_stream(format!("ck_data_{}", GUID.replace('-', "_")))
        .await
        .unwrap();
    witness.expect_types(&[
        "ck.data.written",
        "ck.data.proof-generated",
        "ck.data.ledger-entry",
    ]);
    for event in ["data.written", "data.proof-generated", "data.ledger-entry"] {
        // Announced once the seal is committed to the DATA repository, just after the answer.
        let subject = format!("ck.{GUID}.{event}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let message = loop {
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => break m,
                Err(e) => assert!(Instant::now() < deadline, "{event}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.to_string())
            .unwrap_or_default();
        assert_eq!(id, format!("{GUID}:{event}:{instance}"));
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["data"]["instance_id"], instance.as_str());
        assert_eq!(body["data"]["data_hash"], done["data"]["data_hash"]);
        commits.insert(body["data"]["commit"].as_str().unwrap().to_owned());
    }

    // The seal is one commit in the kernel's DATA repository, named by the events.
    assert_eq!(commits.len(), 1);
    let repo = git2::Repository::open(kernel.join("data")).unwrap();
    let head = repo.head().unwrap().peel_to_commit().unwrap();
    assert!(commits.contains(&head.id().to_string()));
    assert!(head.summary().unwrap().contains(&instance));

    // `ck verify` accepts it, and names the file of any changed byte.
    let (ok, out) = ck_verify(&kernel);
    assert!(ok, "{out}");
    assert!(out.contains("1 sealed instance(s)"), "{out}");
    tampered_is_named(&kernel, &dir.join("data.json"), flip_in("\"ada"));
    tampered_is_named(&kernel, &dir.join("manifest.json"), flip_in("\"Demo"));
    tampered_is_named(&kernel, &dir.join("ledger.json"), flip_in("\"task.up"));
    tampered_is_named(&kernel, &dir.join("proof.json"), flip_in("\"PAS"));
    tampered_is_named(
        &kernel,
        &kernel.join("data/ledger/audit.jsonl"),
        flip_in("\"sealed"),
    );

    // History: a later commit that rewrites the sealed data.json fails verification even when
    // the file on disk is untouched.
    let rewrite = |bytes: &[u8]| {
        let parent = repo.head().unwrap().peel_to_commit().unwrap();
        let mut builder = git2::build::TreeUpdateBuilder::new();
        let blob = repo.blob(bytes).unwrap();
        builder.upsert(
            format!("instances/{instance}/data.json"),
            blob,
            git2::FileMode::Blob,
        );
        let tree = builder
            .create_updated(&repo, &parent.tree().unwrap())
            .unwrap();
        let tree = repo.find_tree(tree).unwrap();
        let who = git2::Signature::now("mallory", "mallory@example.org").unwrap();
        repo.commit(
            Some("HEAD"),
            &who,
            &who,
            "fix the winner",
            &tree,
            &[&parent],
        )
        .unwrap();
    };
    rewrite(b"{\"winner\": \"grace\"}\n");
    let (ok, out) = ck_verify(&kernel);
    assert!(!ok, "a rewritten seal must fail verification:\n{out}");
    assert!(
        out.contains("data.json: changed after it was sealed") && out.contains("fix the winner"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_racing_seal_each_task_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = nats_jetstream(&tmp.path().join("js"));
    let (a, b) = (
        built_kernel(&tmp.path().join("a")),
        built_kernel(&tmp.path().join("b")),
    );
    let _host_a = Host::start(&server, &a, tmp.path(), "a");
    let _host_b = Host::start(&server, &b, tmp.path(), "b");
    let c = async_nats::connect(server.url()).await.unwrap();
    let tasks: Vec<String> = (0..200).map(|i| format!("race-{i}")).collect();
    for t in &tasks {
        let started = task(&c, "task.start", json!({"task_id": t})).await;
        assert_eq!(started["status"], "ok", "{started}");
    }
    // Two completions per task, all 400 in flight at once, spread over both hosts by the
    // queue group.
    let races = tasks.iter().map(|t| {
        let c = c.clone();
        async move {
            let one = task(
                &c,
                "task.complete",
                json!({"task_id": t, "output": {"by": 1}}),
            );
            let two = task(
                &c,
                "task.complete",
                json!({"task_id": t, "output": {"by": 2}}),
            );
            let (one, two) = tokio::join!(one, two);
            (t.clone(), one, two)
        }
    });
    let mut winners = std::collections::HashMap::new();
    for (t, one, two) in futures::future::join_all(races).await {
        let (won, lost) = match (one["status"].as_str(), two["status"].as_str()) {
            (Some("ok"), Some("error")) => (&one, &two),
            (Some("error"), Some("ok")) => (&two, &one),
            _ => panic!("{t}: exactly one completion must win:\n{one}\n{two}"),
        };
        assert_eq!(lost["code"], 409, "{t}: {lost}");
        winners.insert(
            won["data"]["instance_id"].as_str().unwrap().to_owned(),
            won["data"]["data_hash"].clone(),
        );
    }
    assert_eq!(winners.len(), 200);

    // Every task sealed exactly once, in one of the two data directories, with the winner's
    // data.
    let (in_a, in_b) = (instances(&a), instances(&b));
    assert!(
        !in_a.is_empty() && !in_b.is_empty(),
        "both hosts sealed ({} / {})",
        in_a.len(),
        in_b.len()
    );
    assert_eq!(in_a.len() + in_b.len(), 200);
    for dir in in_a.iter().chain(&in_b) {
        let id = dir.file_name().unwrap().to_str().unwrap();
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["data_hash"], winners[id], "{id}");
    }
    for kernel in [&a, &b] {
        let (ok, out) = ck_verify(kernel);
        assert!(ok, "{}: {out}", kernel.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_killed_while_sealing_loses_no_acknowledged_completion() {
    let tmp = tempfile::tempdir().unwrap();
    let server = nats_jetstream(&tmp.path().join("js"));
    let kernel = built_kernel(&tmp.path().join("tasks"));
    let mut host = Host::start(&server, &kernel, tmp.path(), "first");
    let c = async_nats::connect(server.url()).await.unwrap();
    let tasks: Vec<String> = (0..400).map(|i| format!("k-{i}")).collect();
    for t in &tasks {
        task(&c, "task.start", json!({"task_id": t})).await;
    }

    // Completions in flight, 32 at a time; SIGKILL the host once 100 were answered.
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load = {
        let (c, answered, tasks) = (c.clone(), answered.clone(), tasks.clone());
        tokio::spawn(async move {
            use futures::StreamExt;
            futures::stream::iter(tasks)
                .for_each_concurrent(32, |t| {
                    let (c, answered) = (c.clone(), answered.clone());
                    async move {
                        let body = json!({"action": "task.complete", "data": {"task_id": t, "output": {"n": t}}});
                        let request = async_nats::Request::new()
                            .payload(Bytes::from(serde_json::to_vec(&body).unwrap()))
                            .timeout(Some(Duration::from_secs(2)));
                        if let Ok(reply) = c.send_request(INPUT.to_owned(), request).await {
                            let answer: Value = serde_json::from_slice(&reply.payload).unwrap();
                            if answer["status"] == "ok" {
                                answered.lock().unwrap().push(t);
                            }
                        }
                    }
                })
                .await;
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.lock().unwrap().len() < 100 {
        assert!(
            Instant::now() < deadline,
            "completions are not being answered"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    host.kill();
    load.await.unwrap();
    let acknowledged = answered.lock().unwrap().clone();
    assert!(acknowledged.len() < tasks.len(), "the kill came too late");

    // The host died between the broker's acknowledgement and the seal of one more task.
    let host_id = std::fs::read_to_string(kernel.join("data/.host-id")).unwrap();
    let store = ck_task::TaskStore::open(&async_nats::jetstream::new(c.clone()), GUID)
        .await
        .unwrap();
    let orphan = |action| ck_task::TaskMessage {
        action,
        task_id: "orphan".into(),
        delta: None,
        output: Some(json!({"sealed": "after restart"})),
        error: None,
    };
    store
        .apply(
            &orphan(ck_task::TaskAction::Start),
            &ck_loops::data::Actor::unproven("tester"),
            &host_id,
        )
        .await
        .unwrap();
    store
        .apply(
            &orphan(ck_task::TaskAction::Complete),
            &ck_loops::data::Actor::unproven("tester"),
            &host_id,
        )
        .await
        .unwrap();

    let restarted = Host::start(&server, &kernel, tmp.path(), "second");
    // Every completion the broker acknowledged is sealed now: the answered ones, the ones in
    // flight at the kill, and the orphan.
    let mut completed = 0;
    for t in tasks.iter().chain(std::iter::once(&"orphan".to_owned())) {
        let (record, _) = store.get(t).await.unwrap().unwrap();
        if record.state != ck_task::TaskState::Completed {
            assert!(
                !acknowledged.contains(t),
                "{t} was answered ok but is not completed"
            );
            continue;
        }
        completed += 1;
        let dir = kernel
            .join("data/instances")
            .join(ck_task::instance_id(&record));
        assert!(
            dir.join("proof.json").is_file(),
            "{t}: acknowledged completion not sealed after restart\n{}",
            restarted.log()
        );
    }
    assert!(
        completed > acknowledged.len(),
        "the orphan is completed too"
    );
    assert!(
        restarted.log().contains("task.recovered"),
        "{}",
        restarted.log()
    );
    let (ok, out) = ck_verify(&kernel);
    assert!(ok, "{out}");
    // The restart also committed what the kill left uncommitted.
    assert!(!out.contains("not committed"), "{out}\n{}", restarted.log());
    assert_eq!(instances(&kernel).len(), completed);
}

/// `instance.amend` as `ontology.yaml` allows: refused for sealed instances; with
/// `amendments_allowed`, a new amendment file (never a rewrite) whose proof chains to the seal's,
/// committed and announced as `data.amended`, and checked by `ck verify`.
#[tokio::test(flavor = "multi_thread")]
async fn amendments_follow_instance_mutability() {
    let tmp = tempfile::tempdir().unwrap();
    let server = nats_jetstream(&tmp.path().join("js"));
    let kernel = built_kernel(&tmp.path().join("tasks"));
    // This copy also declares instance.amend.
    let manifest = std::fs::read_to_string(kernel.join("conceptkernel.yaml")).unwrap();
    let manifest = manifest
        .replace(
            "      - {name: progress,",
            "      - {name: instance.amend, description: Amend an instance, access: anon}\n      - {name: progress,",
        )
        .replace("task.retry, progress]", "task.retry, progress, instance.amend]");
    std::fs::write(kernel.join("conceptkernel.yaml"), manifest).unwrap();
    std::fs::write(
        kernel.join("ontology.yaml"),
        "instance_mutability: sealed\n",
    )
    .unwrap();

    let mut host = Host::start(&server, &kernel, tmp.path(), "sealed");
    let c = async_nats::connect(server.url()).await.unwrap();
    task(&c, "task.start", json!({"task_id": "t-1"})).await;
    let done = task(
        &c,
        "task.complete",
        json!({"task_id": "t-1", "output": {"winner": "ada"}}),
    )
    .await;
    let instance = done["data"]["instance_id"].as_str().unwrap().to_owned();
    let refused = task(
        &c,
        "instance.amend",
        json!({"instance_id": instance, "amendment": {"note": "x"}}),
    )
    .await;
    assert_eq!(refused["code"], 409, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("instance_mutability: sealed"),
        "{refused}"
    );
    host.kill();

    std::fs::write(
        kernel.join("ontology.yaml"),
        "instance_mutability: amendments_allowed\n",
    )
    .unwrap();
    let witness = ck_tests::Witness::start(
        tmp.path(),
        &server.url(),
        ("", ""),
        &[&format!("ck.{GUID}.data.amended")],
    );
    let _host = Host::start(&server, &kernel, tmp.path(), "amendable");
    let amended = task(
        &c,
        "instance.amend",
        json!({"instance_id": instance, "amendment": {"note": "recounted"}}),
    )
    .await;
    assert_eq!(amended["status"], "ok", "{amended}");
    let file = amended["data"]["amendment"].as_str().unwrap().to_owned();
    assert!(file.starts_with("data_amendment_"), "{file}");
    let not_an_addition = task(
        &c,
        "instance.amend",
        json!({"instance_id": instance, "amendment": {"winner": "grace"}}),
    )
    .await;
    assert_eq!(not_an_addition["code"], 409, "{not_an_addition}");
    assert!(
        not_an_addition["message"]
            .as_str()
            .unwrap()
            .contains("`winner`"),
        "{not_an_addition}"
    );
    let unknown = task(
        &c,
        "instance.amend",
        json!({"instance_id": "i-nope-1", "amendment": {"a": 1}}),
    )
    .await;
    assert_eq!(unknown["code"], 404, "{unknown}");

    // The sealed data.json is untouched; the amendment is committed and announced.
    let dir = kernel.join("data/instances").join(&instance);
    let data: Value =
        serde_json::from_slice(&std::fs::read(dir.join("data.json")).unwrap()).unwrap();
    assert_eq!(data, json!({"winner": "ada"}));
    let stream = async_nats::jetstream::new(c.clone())
        .get_stream(format!("ck_data_{}", GUID.replace('-', "_")))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    witness.expect_types(&["ck.data.amended"]);
    let event = loop {
        match stream
            .get_last_raw_message_by_subject(&format!("ck.{GUID}.data.amended"))
            .await
        {
            Ok(m) => break m,
            Err(e) => assert!(Instant::now() < deadline, "data.amended: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let body: Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(body["data"]["amendment"], file.as_str());
    let repo = git2::Repository::open(kernel.join("data")).unwrap();
    let head = repo.head().unwrap().peel_to_commit().unwrap();
    assert_eq!(body["data"]["commit"], head.id().to_string());
    assert!(
        head.tree()
            .unwrap()
            .get_path(&Path::new("instances").join(&instance).join(&file))
            .is_ok()
    );

    let (ok, out) = ck_verify(&kernel);
    assert!(ok, "{out}");
    tampered_is_named(&kernel, &dir.join(&file), flip_in("\"recounte"));

    // A host that dies after writing an amendment but before committing it: the next start
    // audits, commits and announces it.
    drop(_host);
    let late = ck_loops::data::amend(
        &kernel,
        &instance,
        ck_loops::data::InstanceMutability::AmendmentsAllowed,
        &json!({"audited": "late"}),
        &ck_loops::data::Actor::unproven("tester"),
        u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap(),
    )
    .unwrap();
    let restarted = Host::start(&server, &kernel, tmp.path(), "restarted");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body: Option<Value> = stream
            .get_last_raw_message_by_subject(&format!("ck.{GUID}.data.amended"))
            .await
            .ok()
            .map(|m| serde_json::from_slice(&m.payload).unwrap());
        if body.is_some_and(|b| b["data"]["amendment"] == late.file.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late amendment was not announced\n{}",
            restarted.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ledger = std::fs::read_to_string(kernel.join("data/ledger/audit.jsonl")).unwrap();
    assert!(ledger.contains(&format!("with {}", late.file)), "{ledger}");
    let (ok, out) = ck_verify(&kernel);
    assert!(ok && !out.contains("not committed"), "{out}");
}

/// NATS stops right after a burst of completions is answered and stays down for 30 s
/// (`CK_OUTAGE_TEST_SECONDS`): the DATA events the host could not get confirmed wait in
/// `pending_events.jsonl` and, once the server is back, arrive in commit order; nothing sealed
/// goes unannounced.
#[tokio::test(flavor = "multi_thread")]
async fn events_cut_off_by_an_outage_are_replayed_in_order() {
    let outage = seconds_from_env("CK_OUTAGE_TEST_SECONDS", 30);
    let tmp = tempfile::tempdir().unwrap();
    let mut server = nats_jetstream(&tmp.path().join("js"));
    let kernel = built_kernel(&tmp.path().join("tasks"));
    let host = Host::start(&server, &kernel, tmp.path(), "host");
    let c = async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .connect(server.url())
        .await
        .unwrap();
    for i in 0..64 {
        task(&c, "task.start", json!({"task_id": format!("o-{i}")})).await;
    }
    // The committer lingers 20 ms for a group before committing and announcing: stop the
    // server as soon as the first completion is answered, while the group is being gathered.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let first_tx = std::sync::Mutex::new(Some(first_tx));
    let burst = futures::future::join_all((0..64).map(|i| {
        let c = c.clone();
        let first_tx = &first_tx;
        async move {
            let body = json!({"action": "task.complete", "data": {"task_id": format!("o-{i}"), "output": {"i": i}}});
            let request = async_nats::Request::new()
                .payload(Bytes::from(serde_json::to_vec(&body).unwrap()))
                .timeout(Some(Duration::from_secs(5)));
            let ok = c
                .send_request(INPUT.to_owned(), request)
                .await
                .is_ok_and(|r| serde_json::from_slice::<Value>(&r.payload).unwrap()["status"] == "ok");
            if ok && let Some(tx) = first_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    }));
    let stopper = async {
        first_rx.await.unwrap();
        server.stop();
    };
    tokio::join!(burst, stopper);
    tokio::time::sleep(outage).await;
    let queued = std::fs::read_to_string(kernel.join("data/ledger/pending_events.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    assert!(
        queued > 0,
        "no event was cut off by the outage:\n{}",
        host.log()
    );

    server.restart().unwrap();
    let js = async_nats::jetstream::new(c.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    let (written, sealed) = loop {
        // Completions the host took before the outage may still be sealing: a seal is recorded
        // in the cluster before it is acknowledged, so those finish once the server is back.
        // Count the sealed instances afresh on every poll.
        let sealed: Vec<String> = instances(&kernel)
            .iter()
            .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(!sealed.is_empty());
        // Every data.written, in stream order.
        let written = data_written(&js).await;
        // Done when every seal is in the stream and the queue is replayed (an event the server
        // stored just before dying may be there already; its replay is then a duplicate the
        // stream drops).
        let replayed = !kernel.join("data/ledger/pending_events.jsonl").exists();
        if written.len() == sealed.len() && replayed {
            break (written, sealed);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} seals announced after the outage\n{}",
            written.len(),
            sealed.len(),
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Each instance once, and the commits in the order git made them.
    let mut ids: Vec<&String> = written.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), sealed.len());
    let repo = git2::Repository::open(kernel.join("data")).unwrap();
    let mut walk = repo.revwalk().unwrap();
    walk.push_head().unwrap();
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
        .unwrap();
    let order: Vec<String> = walk.map(|o| o.unwrap().to_string()).collect();
    let positions: Vec<usize> = written
        .iter()
        .map(|(_, commit)| {
            order
                .iter()
                .position(|c| c == commit)
                .expect("a known commit")
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] <= w[1]),
        "events out of commit order: {positions:?}"
    );
    // The host removes the queue file before it logs the replay: wait for the line (it fails
    // after 30 s without it) rather than look once.
    host.proc.wait_for("event.replayed");
    assert!(!kernel.join("data/ledger/pending_events.jsonl").exists());
}

/// SIGTERM while the NATS server is gone: `ck run` does not wait for a reconnect that may never
/// come — it exits 0 within its grace period — and nothing it acknowledged is lost: the next
/// start, with the server back, has every completion sealed, committed and announced.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_nats_gone_exits_within_the_grace_period_and_loses_nothing() {
    let grace = Duration::from_secs(3);
    let tmp = tempfile::tempdir().unwrap();
    let mut server = nats_jetstream(&tmp.path().join("js"));
    let kernel = built_kernel(&tmp.path().join("tasks"));
    let mut host = Host::start_with(&server, &kernel, tmp.path(), "first", &["--grace", "3"]);
    let c = async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .connect(server.url())
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let t = format!("g-{i}");
        task(&c, "task.start", json!({"task_id": t})).await;
        let answer = task(
            &c,
            "task.complete",
            json!({"task_id": t, "output": {"i": i}}),
        )
        .await;
        assert_eq!(answer["status"], "ok", "{answer}");
        acknowledged.push(answer["data"]["instance_id"].as_str().unwrap().to_owned());
    }
    // The server goes away while the last seals are being committed and announced.
    server.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    host.proc.terminate();
    let status = loop {
        if let Some(status) = host.proc.child().try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "ck run still running 30 s after SIGTERM with NATS gone\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = asked.elapsed();
    eprintln!("ck run exited {took:?} after SIGTERM with the server gone");
    assert!(status.success(), "{status:?}\n{}", host.log());
    // The grace period, plus the process's own start-to-exit slack (runtime teardown).
    assert!(
        took < grace + Duration::from_secs(2),
        "took {took:?} with a {grace:?} grace period\n{}",
        host.log()
    );

    server.restart().unwrap();
    let restarted = Host::start(&server, &kernel, tmp.path(), "second");
    for id in &acknowledged {
        assert!(
            kernel
                .join("data/instances")
                .join(id)
                .join("proof.json")
                .is_file(),
            "{id}: acknowledged but not sealed"
        );
    }
    let js = async_nats::jetstream::new(c.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let announced: std::collections::HashSet<String> = data_written(&js)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if acknowledged.iter().all(|id| announced.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged completions announced after the restart\n{}",
            acknowledged
                .iter()
                .filter(|id| announced.contains(*id))
                .count(),
            acknowledged.len(),
            restarted.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (ok, out) = ck_verify(&kernel);
    assert!(ok, "{out}");
    assert!(!out.contains("not committed"), "{out}");
}

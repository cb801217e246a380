//! The platform lane against a real nats-server: one stream per family (`ck platform
//! streams`), CloudEvents published only inside a family (`ck platform publish`) and judged by
//! the Python CloudEvents SDK, a stray subject refused by ck and by JetStream alike, and the
//! subscription contracts checked (`ck platform contracts`).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use futures::StreamExt;

const CK: &str = env!("CARGO_BIN_EXE_ck");

fn ck(args: &[&str]) -> Output {
    Command::new(CK).args(args).output().expect("ck runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_events_land_only_inside_a_family_each_in_its_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ck_tests::nats_jetstream(&tmp.path().join("js"));
    let url = server.url();
    let witness = ck_tests::Witness::start(
        tmp.path(),
        &url,
        ("", ""),
        &["platform.capability.>", "fleet.agent.>"],
    );
    let client = async_nats::connect(&url).await.unwrap();
    let mut everything = client.subscribe(">").await.unwrap();
    client.flush().await.unwrap();
    let publish = |subject: &str, extra: &[&str]| {
        let mut args = vec![
            "platform",
            "publish",
            subject,
            "--nats",
            &url,
            "--type",
            "ck.platform.capability.changed",
            "--source",
            "spiffe://ck.local/team/backend-core",
            "--data",
            r#"{"capability":"billing","state":"ga"}"#,
        ];
        args.extend_from_slice(extra);
        ck(&args)
    };

    // Before the streams exist, a family subject has nowhere to land: refused, not lost.
    let early = publish("platform.capability.changed.v1.billing", &[]);
    assert_eq!(early.status.code(), Some(1), "{}", text(&early));
    assert!(
        text(&early).contains("ck platform streams"),
        "{}",
        text(&early)
    );

    let made = ck(&["platform", "streams", "--nats", &url]);
    assert!(made.status.success(), "{}", text(&made));
    for stream in [
        "PLATFORM_CAPABILITY",
        "PLATFORM_ADOPTION",
        "PLATFORM_HVFS",
        "FLEET_AGENT",
        "PLATFORM_SECURITY",
        "PLATFORM_DELIVERY",
    ] {
        assert!(text(&made).contains(stream), "{stream}: {}", text(&made));
    }
    // Run again, it changes nothing.
    assert!(
        ck(&["platform", "streams", "--nats", &url])
            .status
            .success()
    );

    let stored = publish("platform.capability.changed.v1.billing", &["--id", "cap-1"]);
    assert!(stored.status.success(), "{}", text(&stored));
    assert!(
        text(&stored).contains("#1 in PLATFORM_CAPABILITY"),
        "{}",
        text(&stored)
    );
    let again = publish("platform.capability.changed.v1.billing", &["--id", "cap-1"]);
    assert!(text(&again).contains("already stored"), "{}", text(&again));

    // A misspelt family: refused by ck before the server sees it, naming the closest family.
    let stray = publish("platform.capabilty.changed.v1", &[]);
    assert_eq!(stray.status.code(), Some(1), "{}", text(&stray));
    assert!(
        text(&stray).contains("outside every declared subject family")
            && text(&stray).contains("closest: `platform.capability`"),
        "{}",
        text(&stray)
    );
    // And by JetStream for a client that is not ck: no stream captures it.
    let js = async_nats::jetstream::new(client.clone());
    let raw = js
        .publish("platform.capabilty.changed.v1", "{}".into())
        .await
        .unwrap()
        .await;
    // Not stored: with nobody subscribed the server answers "no stream"; with subscribers
    // (this test has two) no stream acknowledges and the publish times out.
    use async_nats::jetstream::context::PublishErrorKind;
    assert!(
        matches!(
            raw.map_err(|e| e.kind()),
            Err(PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut)
        ),
        "a stray JetStream publish was acknowledged"
    );
    assert!(
        js.stream_by_subject("platform.capabilty.changed.v1")
            .await
            .is_err(),
        "a stream captures the stray subject"
    );
    let handoff = ck(&[
        "platform",
        "publish",
        "fleet.agent.handoff.v1",
        "--nats",
        &url,
        "--type",
        "ck.fleet.agent.handoff",
        "--source",
        "spiffe://ck.local/agent/forge-1",
        "--about",
        "task-7",
    ]);
    assert!(
        text(&handoff).contains("in FLEET_AGENT"),
        "{}",
        text(&handoff)
    );

    let verdicts =
        witness.expect_types(&["ck.platform.capability.changed", "ck.fleet.agent.handoff"]);
    assert_eq!(
        verdicts.types["ck.platform.capability.changed"], 2,
        "{verdicts:?}"
    );
    // Nothing ck refused reached the server; what it stored carries its id as Nats-Msg-Id.
    let mut subjects = Vec::new();
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(300), everything.next()).await
    {
        if !m.subject.starts_with("$JS") && !m.subject.starts_with("_INBOX") {
            subjects.push(m.subject.to_string());
        }
    }
    assert_eq!(
        subjects
            .iter()
            .filter(|s| s.as_str() == "platform.capabilty.changed.v1")
            .count(),
        1,
        "only the raw client's attempt: {subjects:?}"
    );
    let kept = js
        .get_stream("PLATFORM_CAPABILITY")
        .await
        .unwrap()
        .get_last_raw_message_by_subject("platform.capability.changed.v1.billing")
        .await
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&kept.payload).unwrap();
    assert_eq!(event["id"], "cap-1");
    assert_eq!(
        kept.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some("cap-1")
    );
}

#[test]
fn every_example_contract_is_accepted_and_a_broken_one_is_refused_with_the_schema_error() {
    let examples = repository().join("contracts/examples");
    let out = ck(&["platform", "contracts", examples.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("7 contracts accepted"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("platform-operators-alerts: platform operators"),
        "{}",
        text(&out)
    );
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.json");
    std::fs::write(
        &broken,
        r#"{"version":1,"subscriptionId":"x-hooks","owner":"x","deliveryMode":"webhook",
            "subjectFilters":["platform.capability.>"],"replayPolicy":"new-only"}"#,
    )
    .unwrap();
    let out = ck(&["platform", "contracts", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("broken.json")
            && text(&out).contains("\"sink\" is a required property"),
        "{}",
        text(&out)
    );
}

const ECHO_GUID: &str = "0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d";
const TASKS_GUID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

/// Every message of `stream`: (subject, Nats-Msg-Id).
async fn stream_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<(String, String)> {
    let mut handle = js.get_stream(stream).await.unwrap();
    let state = handle.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = handle.get_raw_message(seq).await {
            let id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            out.push((m.subject.to_string(), id));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loops_commits_and_ref_moves_reach_the_hvfs_lane_once_across_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ck_tests::nats_jetstream(&tmp.path().join("js"));
    let url = server.url();
    let ok = |args: &[&str]| {
        let out = ck(args);
        assert!(out.status.success(), "ck {args:?}: {}", text(&out));
    };
    let kernel = tmp.path().join("operator/echo");
    ck_tests::copy_kernel("echo", &kernel);
    ck_tests::write_echo_version(&kernel, 1);
    ck_tests::ck_build(CK, &[&kernel]);
    let k = kernel.to_str().unwrap();
    ok(&["publish", k, "--nats", &url]);
    ok(&["platform", "streams", "--nats", &url]);
    let witness = ck_tests::Witness::start(tmp.path(), &url, ("", ""), &["platform.hvfs.>"]);
    let client = async_nats::connect(&url).await.unwrap();
    // The DATA loop: a task kernel seals one instance (its DATA stream holds data.written).
    let tasks = tmp.path().join("tasks");
    ck_tests::copy_kernel("tasks", &tasks);
    ck_tests::ck_build(CK, &[&tasks]);
    let _tasks_host = ck_tests::ck_run(CK, &url, &tasks, tmp.path(), "tasks", &[]);
    for body in [
        serde_json::json!({"action": "task.start", "data": {"task_id": "t-1"}}),
        serde_json::json!({"action": "task.complete", "data": {"task_id": "t-1", "output": {"winner": "ada"}}}),
    ] {
        let reply = client
            .request("input.Demo.Tasks", body.to_string().into())
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(answer["status"], "ok", "{answer}");
    }
    let js = async_nats::jetstream::new(client);
    // DATA events are announced just after the seal is committed: wait for data.written.
    let data_stream = ck_manifest::topics::data_event_stream(TASKS_GUID);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let written = match js.get_stream(&data_stream).await {
            Ok(stream) => stream
                .get_last_raw_message_by_subject(&format!("ck.{TASKS_GUID}.data.written"))
                .await
                .is_ok(),
            Err(_) => false,
        };
        if written {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no data.written in {data_stream}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let projector = || {
        let p = ck_tests::Proc::spawn(
            CK,
            &["platform", "hvfs", "--nats", &url],
            &tmp.path().join("hvfs.log"),
        );
        p.wait_for("hvfs.projecting");
        p
    };
    // What the HVFS lane must hold: one projection of each commit and ref move in the loop
    // event stream, by id.
    let expected = || async {
        let mut events = stream_messages(&js, "CK_LOOP_EVENTS").await;
        events.extend(
            stream_messages(&js, &ck_manifest::topics::data_event_stream(TASKS_GUID)).await,
        );
        let mut ids: Vec<String> = events
            .into_iter()
            .filter(|(subject, _)| {
                ck_manifest::topics::parse_loop_event_subject(subject)
                    .and_then(|(_, e)| ck_manifest::topics::HvfsKind::of(e))
                    .is_some()
            })
            .map(|(_, id)| format!("hvfs:{id}"))
            .collect();
        ids.sort();
        ids
    };
    let projected = || async {
        let mut ids: Vec<String> = stream_messages(&js, "PLATFORM_HVFS")
            .await
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        ids.sort();
        ids
    };
    let until_caught_up = || async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (want, have) = (expected().await, projected().await);
            if want == have {
                return have;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "HVFS lane {have:?}\nloop events {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    let mut first = projector();
    let before = until_caught_up().await;
    assert!(
        before.iter().any(|id| id.contains(":ck.commit:"))
            && before.iter().any(|id| id.contains(":tool.commit:"))
            && before.iter().any(|id| id.contains(":data.written:")),
        "{before:?}"
    );
    // Killed (no goodbye); a new version is published and promoted meanwhile.
    first.kill();
    ck_tests::write_echo_version(&kernel, 2);
    ck_tests::ck_build(CK, &[&kernel]);
    ok(&["publish", k, "--nats", &url]);
    ok(&["promote", ECHO_GUID, "develop", "--nats", &url]);
    let _second = projector();
    let after = until_caught_up().await;
    assert!(after.len() > before.len(), "{after:?}");
    assert!(
        after.iter().any(|id| id.contains(":ck.promote:")),
        "{after:?}"
    );
    let subjects: Vec<String> = stream_messages(&js, "PLATFORM_HVFS")
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert!(
        subjects.contains(&format!("platform.hvfs.ref.v1.ck.{ECHO_GUID}"))
            && subjects.contains(&format!("platform.hvfs.commit.v1.tool.{ECHO_GUID}"))
            && subjects.contains(&format!("platform.hvfs.commit.v1.data.{TASKS_GUID}")),
        "{subjects:?}"
    );
    witness.expect_types(&["ck.platform.hvfs.commit", "ck.platform.hvfs.ref"]);
}

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

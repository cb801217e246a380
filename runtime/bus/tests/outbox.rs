//! Loop events across a NATS outage, against a real nats-server with JetStream that is killed
//! and restarted on the same port and store: what the broker cannot confirm is queued on disk
//! (surviving a restart of the outbox itself), replayed in order on reconnect, and a queue that
//! passed 1000 events ends with `data.nats-degraded`.

use std::time::{Duration, Instant};

use ck_bus::outbox::{DEGRADED_AT, pending_path};
use ck_bus::{LoopEventMessage, Outbox, Publisher};
use futures::StreamExt;
use serde_json::json;

const GUID: &str = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";

fn event(n: usize) -> LoopEventMessage {
    LoopEventMessage {
        subject: format!("ck.{GUID}.data.written"),
        msg_id: format!("{GUID}:data.written:i-{n}"),
        trace_id: format!("tx-{n}"),
        user: "tester".into(),
        body: json!({"n": n}),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_wait_on_disk_through_an_outage_and_replay_in_order() {
    let outage = ck_tests::seconds_from_env("CK_OUTAGE_TEST_SECONDS", 30);
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ck_tests::nats_jetstream(&tmp.path().join("js"));
    let client = async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .connect(server.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "events".into(),
        subjects: vec![format!("ck.{GUID}.data.>")],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(900),
        ..Default::default()
    })
    .await
    .unwrap();
    let kernel_dir = tmp.path().join("kernel");
    let publisher = Publisher::new(client.clone(), "Demo.Outbox");
    let outbox = Outbox::open(
        &kernel_dir,
        GUID,
        "ckp://Kernel#Demo.Outbox:v1.0",
        publisher.clone(),
    )
    .unwrap();

    // Up: confirmed at once, nothing queued.
    assert_eq!(outbox.send(vec![event(0), event(1)]).await.unwrap(), 2);
    assert_eq!(outbox.queued().await, 0);

    // Down: everything from now on waits on disk, in order.
    server.stop();
    let mut sent = 2;
    let down = Instant::now();
    while down.elapsed() < outage {
        assert_eq!(outbox.send(vec![event(sent)]).await.unwrap(), 0);
        sent += 1;
    }
    let burst: Vec<LoopEventMessage> = (sent..sent + DEGRADED_AT).map(event).collect();
    sent += DEGRADED_AT;
    outbox.send(burst).await.unwrap();
    assert_eq!(outbox.queued().await, sent - 2);
    assert!(outbox.degraded().await);
    let lines = std::fs::read_to_string(pending_path(&kernel_dir))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, sent - 2);

    // The queue survives the outbox (a host restart).
    drop(outbox);
    let outbox = Outbox::open(
        &kernel_dir,
        GUID,
        "ckp://Kernel#Demo.Outbox:v1.0",
        publisher,
    )
    .unwrap();
    assert_eq!(outbox.queued().await, sent - 2);

    // Back: replayed in order, then the degraded notice; the queue file is gone.
    server.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox.queued().await > 0 {
        assert!(Instant::now() < deadline, "the queue was not replayed");
        outbox.replay().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!outbox.degraded().await);
    assert!(!pending_path(&kernel_dir).exists());

    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("events").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(
        info.state.messages as usize,
        sent + 1,
        "every event once, plus the degraded notice"
    );
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(sent + 1);
    for n in 0..sent {
        let message = messages.next().await.unwrap().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["n"], n, "event {n} out of order");
        let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
        assert_eq!(
            id.map(|v| v.to_string()),
            Some(format!("{GUID}:data.written:i-{n}"))
        );
    }
    let last = messages.next().await.unwrap().unwrap();
    assert_eq!(
        last.subject.as_str(),
        format!("ck.{GUID}.data.nats-degraded")
    );
}

//! The bridge's benchmark (ignored; `cargo test --release -p ck-cli --test bridge_bench --
//! --ignored --nocapture`): deliveries per second from a JetStream backlog to a local HTTP
//! sink, and publish-to-sink latency, for `ck bridge` (its own process: durable consumer,
//! Standard Webhooks signature, a delivery result published per event) beside a baseline in
//! the same run — a plain JetStream pull consumer in this process POSTing the same messages
//! with the same HTTP client library (reqwest) and the same number in flight, then
//! acknowledging. The sink is a hyper server in this process that answers 204 and notes
//! each arrival.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind, consumer};
use ck_acl::families::Families;
use ck_platform::{Platform, PlatformEvent};
use futures::StreamExt;
use serde_json::{Value, json};

const CK: &str = env!("CARGO_BIN_EXE_ck");
const KEY: &str = "whsec_11mXXGrgWRYBcAIxdAuJxYtannudp/qfIOTdkZB0Jyo=";

/// What the sink saw: per path, each event's arrival (and its publish-to-arrival latency).
#[derive(Default)]
struct Seen {
    count: BTreeMap<String, usize>,
    latency: BTreeMap<String, Vec<Duration>>,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn sink(seen: Arc<Mutex<Seen>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                use http_body_util::BodyExt;
                                let path = request.uri().path().to_owned();
                                let body = request.into_body().collect().await?.to_bytes();
                                let arrived = now_ns();
                                let event: Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                let mut seen = seen.lock().unwrap();
                                *seen.count.entry(path.clone()).or_default() += 1;
                                if let Some(sent) = event["data"]["sentNs"].as_str() {
                                    let sent: u128 = sent.parse().unwrap();
                                    seen.latency.entry(path).or_default().push(
                                        Duration::from_nanos(arrived.saturating_sub(sent) as u64),
                                    );
                                }
                                Ok::<_, hyper::Error>(
                                    hyper::Response::builder()
                                        .status(204)
                                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                                        .unwrap(),
                                )
                            }
                        },
                    );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

/// The baseline: a plain pull consumer POSTing each message, `in_flight` at a time.
async fn baseline(
    js: jetstream::Context,
    url: String,
    filter: &str,
    deliver_policy: consumer::DeliverPolicy,
    in_flight: usize,
) {
    let stream = js.get_stream("PLATFORM_CAPABILITY").await.unwrap();
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(format!("baseline_{}", filter.replace(['.', '*', '>'], "_"))),
            filter_subject: filter.to_owned(),
            deliver_policy,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(45),
            max_ack_pending: (in_flight * 4) as i64,
            ..Default::default()
        })
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let messages = consumer
        .stream()
        .max_messages_per_batch(in_flight)
        .messages()
        .await
        .unwrap();
    tokio::spawn(async move {
        messages
            .for_each_concurrent(in_flight, |message| {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let Ok(message) = message else { return };
                    let answer = http
                        .post(&url)
                        .header("content-type", "application/cloudevents+json")
                        .body(message.payload.to_vec())
                        .send()
                        .await;
                    let kind = match answer {
                        Ok(r) if r.status().is_success() => AckKind::Ack,
                        _ => AckKind::Nak(Some(Duration::from_millis(100))),
                    };
                    let _ = message.ack_with(kind).await;
                }
            })
            .await;
    });
}

async fn publish_all(platform: &Platform<'_>, prefix: &str, count: usize) {
    // Published concurrently (acknowledged by the stream) so the backlog is made quickly.
    futures::stream::iter(0..count)
        .for_each_concurrent(64, |i| async move {
            let subject = format!("platform.capability.{prefix}.v1.k{}", i % 10);
            let id = format!("{prefix}-{i}");
            platform
                .publish(&PlatformEvent {
                    subject: &subject,
                    ty: "ck.platform.capability.changed",
                    source: "urn:ck:bench",
                    about: None,
                    id: Some(&id),
                    time: None,
                    data: json!({"i": i, "pad": "x".repeat(200)}),
                })
                .await
                .unwrap();
        })
        .await;
}

fn wait_count(seen: &Arc<Mutex<Seen>>, path: &str, count: usize) -> Duration {
    let started = Instant::now();
    ck_tests::eventually(
        Duration::from_secs(300),
        || seen.lock().unwrap().count.get(path).copied().unwrap_or(0) >= count,
        || format!("{path}: {:?}", seen.lock().unwrap().count.get(path)),
    );
    started.elapsed()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_bridge_deliveries() {
    let backlog: usize = std::env::var("CK_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let in_flight = 32;
    let tmp = tempfile::tempdir().unwrap();
    let server = ck_tests::nats_jetstream(&tmp.path().join("js"));
    let url = server.url();
    let made = Command::new(CK)
        .args(["platform", "streams", "--nats", &url])
        .output()
        .unwrap();
    assert!(made.status.success());
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client);
    let families = Families::builtin();
    let platform = Platform::new(js.clone(), &families);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let port = sink(seen.clone()).await;

    // Throughput: a backlog of events drained by each in turn.
    publish_all(&platform, "changed", backlog).await;
    let started = Instant::now();
    baseline(
        js.clone(),
        format!("http://127.0.0.1:{port}/base"),
        "platform.capability.changed.v1.*",
        consumer::DeliverPolicy::All,
        in_flight,
    )
    .await;
    wait_count(&seen, "/base", backlog);
    let base_rate = backlog as f64 / started.elapsed().as_secs_f64();

    let contracts = tmp.path().join("contracts");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&contracts).unwrap();
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("k"), KEY).unwrap();
    for (id, filter, replay) in [
        (
            "bench-backlog",
            "platform.capability.changed.v1.*",
            json!({"replayPolicy": "from-sequence", "startSequence": 1}),
        ),
        (
            "bench-latency",
            "platform.capability.timed.v1.*",
            json!({"replayPolicy": "new-only"}),
        ),
    ] {
        let mut body = json!({"version": 1, "subscriptionId": id, "owner": "bench",
            "deliveryMode": "webhook", "subjectFilters": [filter],
            "sink": {"url": format!("http://127.0.0.1:{port}/{id}")},
            "auth": {"class": "standard-webhooks", "secretRef": "file:k"}});
        body.as_object_mut()
            .unwrap()
            .extend(replay.as_object().unwrap().clone());
        std::fs::write(contracts.join(format!("{id}.json")), body.to_string()).unwrap();
    }
    let contracts_arg = contracts.display().to_string();
    let secrets_arg = secrets.display().to_string();
    let concurrency = in_flight.to_string();
    let started = Instant::now();
    let bridge = ck_tests::Proc::spawn_in_env(
        CK,
        &[
            "bridge",
            "--contracts",
            &contracts_arg,
            "--nats",
            &url,
            "--allow-private-sinks",
            "--secret-root",
            &secrets_arg,
            "--concurrency",
            &concurrency,
        ],
        &tmp.path().join("bridge.log"),
        &[],
        &[("CK_LOG", OsStr::new("warn,ck_bridge=info"))],
    );
    bridge.wait_for("bridge.delivering");
    let startup = started.elapsed();
    let drained = wait_count(&seen, "/bench-backlog", backlog);
    let bridge_rate = backlog as f64 / drained.as_secs_f64();

    // Latency: one event at a time (the next after the last arrived), to the bridge's
    // new-only subscription, then to a baseline consumer on the same subjects.
    let rounds = 200;
    for (path, start_baseline) in [("/bench-latency", false), ("/base-latency", true)] {
        if start_baseline {
            baseline(
                js.clone(),
                format!("http://127.0.0.1:{port}/base-latency"),
                "platform.capability.timed.v1.*",
                consumer::DeliverPolicy::New,
                in_flight,
            )
            .await;
        }
        let before = seen.lock().unwrap().count.get(path).copied().unwrap_or(0);
        for i in 0..rounds {
            let id = format!("timed-{path}-{i}");
            platform
                .publish(&PlatformEvent {
                    subject: "platform.capability.timed.v1.k",
                    ty: "ck.platform.capability.changed",
                    source: "urn:ck:bench",
                    about: None,
                    id: Some(&id),
                    time: None,
                    data: json!({"sentNs": now_ns().to_string()}),
                })
                .await
                .unwrap();
            wait_count(&seen, path, before + i + 1);
        }
    }
    let mut latency = std::mem::take(&mut seen.lock().unwrap().latency);
    let bridge_latency = latency.get_mut("/bench-latency").unwrap();
    let bridge_latency = &mut bridge_latency[..];
    let (b50, b95) = (
        percentile(bridge_latency, 0.5),
        percentile(bridge_latency, 0.95),
    );
    let base_latency = latency.get_mut("/base-latency").unwrap();
    let base_latency = &mut base_latency[..];
    let (p50, p95) = (
        percentile(base_latency, 0.5),
        percentile(base_latency, 0.95),
    );
    println!("bridge bench: {backlog} events of ~400 bytes, {in_flight} in flight, one local sink");
    println!(
        "| baseline: plain pull consumer + reqwest POST, same run | {base_rate:.0} deliveries/s | p50 {p50:.2?}, p95 {p95:.2?} |"
    );
    println!(
        "| ck bridge (signed, result published per delivery; started in {startup:.0?}) | {bridge_rate:.0} deliveries/s | p50 {b50:.2?}, p95 {b95:.2?} |"
    );
    drop(bridge);
}

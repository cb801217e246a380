//! What a host shows its operator over HTTP (`ck run --http`): `/healthz`, `/readyz`, and
//! `/metrics` in the Prometheus text format — checked against what the test itself saw on the
//! wire, including messages shed with 503 once `--max-in-flight` are being handled.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use ck_tests::{ck_build, ck_run, copy_kernel, nats};
use futures::StreamExt;
use serde_json::Value;

const CK: &str = env!("CARGO_BIN_EXE_ck");

/// `GET path` on `addr`: (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name{kernel="Test.Hostile"}` in a metrics text.
fn sample(metrics: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{kernel=\"Test.Hostile\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_shedding_are_visible() {
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path().join("hostile");
    copy_kernel("hostile", &kernel);
    ck_build(CK, &[&kernel]);
    let server = nats("");
    let host = ck_run(
        CK,
        &server.url(),
        &kernel,
        tmp.path(),
        "ck-run",
        &["--http", "127.0.0.1:0", "--max-in-flight", "2"],
    );
    host.wait_for("\"http.listening\"");
    let addr = host
        .log()
        .lines()
        .find(|l| l.contains("\"http.listening\""))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|v| v["addr"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("{}", host.log()));

    assert_eq!(get(&addr, "/healthz").0, 200);
    let (status, body) = get(&addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");
    assert_eq!(get(&addr, "/nothing").0, 404);

    // Ten calls that each run until their 300 ms deadline, at once: two are handled, the
    // others find both slots busy and are answered 503 at once.
    let client = async_nats::connect(server.url()).await.unwrap();
    let codes: Vec<i64> = futures::stream::iter(0..10)
        .map(|_| async {
            let reply = client
                .request(
                    "input.Test.Hostile",
                    Bytes::from_static(br#"{"action":"spin","data":{}}"#),
                )
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&reply.payload).unwrap();
            body["code"].as_i64().unwrap_or(0)
        })
        .buffer_unordered(10)
        .collect()
        .await;
    let shed = codes.iter().filter(|c| **c == 503).count();
    assert!(shed >= 1, "nothing was shed: {codes:?}");
    assert!(shed <= 8, "more than the busy share was shed: {codes:?}");

    let (status, metrics) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&metrics, "ck_shed_total") as usize,
        shed,
        "{metrics}"
    );
    assert!(sample(&metrics, "ck_requests_total") >= 10.0);
    assert!(
        sample(&metrics, "ck_errors_total") >= 10.0,
        "every spin ends in an error"
    );
    assert_eq!(sample(&metrics, "ck_in_flight"), 0.0);
    assert!(
        metrics.contains("ck_request_duration_seconds_bucket{"),
        "{metrics}"
    );
    assert!(metrics.contains("ck_instance_pool_slots 1000"), "{metrics}");
    assert!(host.log().contains("\"request.shed\""));
}

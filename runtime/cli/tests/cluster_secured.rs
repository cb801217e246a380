//! The secured stack on a 3-node cluster (every node with the auth callout; one `ck authz`
//! answering for all of them through the routes): with the identity provider stopped, the
//! connections that exist keep serving until their SVIDs expire, and the host recovers by
//! itself once the provider is back.

mod secured;

use std::process::Command;
use std::time::{Duration, Instant};

use ck_natsd::NatsCluster;
use secured::*;

/// `ck authz init`'s server configuration without what each cluster node sets itself (its
/// listener, name and JetStream store).
fn node_body(config: &str) -> String {
    let mut body = Vec::new();
    let mut in_jetstream = false;
    for line in config.lines() {
        if line.starts_with("jetstream {") {
            in_jetstream = true;
            continue;
        }
        if in_jetstream {
            in_jetstream = line.trim() != "}";
            continue;
        }
        if line.starts_with("listen:") || line.starts_with("server_name:") {
            continue;
        }
        body.push(line);
    }
    body.join("\n")
}

/// Echo requests as the observer for `seconds`: (answered, failed).
async fn load(client: &async_nats::Client, seconds: f64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut ok, mut failed) = (0, 0);
    while Instant::now() < deadline {
        let request = async_nats::Request::new()
            .payload(bytes::Bytes::from_static(br#"{"action":"echo","data":{}}"#))
            .timeout(Some(Duration::from_millis(500)));
        match client.send_request("input.Demo.Echo", request).await {
            Ok(reply) if reply.payload.windows(11).any(|w| w == b"\"status\":\"o") => ok += 1,
            _ => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, failed)
}

#[test]
fn with_the_identity_provider_stopped_connections_serve_until_expiry_and_recover() {
    let ttl: u32 = 12;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let init = Command::new(CK)
        .args(["authz", "init"])
        .arg(root.join("authz"))
        .args(["--static-user", &format!("{}:{}", OBSERVER.0, OBSERVER.1)])
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let config = std::fs::read_to_string(root.join("authz/nats-server.conf")).unwrap();
    let cluster = NatsCluster::start(3, &node_body(&config)).unwrap_or_else(|e| panic!("{e}"));
    let urls = cluster.urls();
    let socket = root.join("spiffe.sock");
    let keys = root.join("keys");
    let ttl_text = ttl.to_string();
    let provider_args = [
        "identity",
        "serve",
        "--socket",
        socket.to_str().unwrap(),
        "--dir",
        keys.to_str().unwrap(),
        "--trust-domain",
        DOMAIN,
        "--ttl",
        &ttl_text,
    ];
    let mut provider = ck_proc(&provider_args, root.join("identity-1.log"));
    provider.wait_for("identity.serving");
    let registry = root.join("registry");
    let kernel = registry.join("echo");
    copy_kernel("echo", &kernel);
    ck_build(CK, &[&kernel]);
    let authz = ck_proc(
        &[
            "authz",
            "serve",
            "--dir",
            root.join("authz").to_str().unwrap(),
            "--nats",
            &urls,
            "--registry",
            registry.to_str().unwrap(),
            "--trust-domain",
            DOMAIN,
            "--spiffe-socket",
            socket.to_str().unwrap(),
        ],
        root.join("authz.log"),
    );
    authz.wait_for("authz.serving");
    // The host connects through the node that the callout is not on.
    let host = ck_proc(
        &[
            "run",
            kernel.to_str().unwrap(),
            "--nats",
            &cluster.nodes()[2].url(),
            "--spiffe-socket",
            socket.to_str().unwrap(),
            "--cache-dir",
            root.join("cache").to_str().unwrap(),
        ],
        root.join("host.log"),
    );
    host.wait_for("\"ready\"");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::ConnectOptions::with_user_and_password(
            OBSERVER.0.into(),
            OBSERVER.1.into(),
        )
        .connect(ck_bus::servers(&urls).as_slice())
        .await
        .unwrap();
        let (before, failed_before) = load(&client, 1.0).await;
        assert!(before > 0 && failed_before == 0, "{before} {failed_before}");

        // The provider stops: what is connected keeps serving (for well under its SVID's
        // lifetime), though no new SVID can be had.
        provider.kill();
        let stopped = Instant::now();
        let (during, failed_during) = load(&client, f64::from(ttl) / 4.0).await;
        assert!(during > 0, "nothing was answered with the provider down");
        assert_eq!(failed_during, 0, "the existing connection stopped serving early");

        // Past the SVID's expiry the host cannot connect again until the provider returns.
        let until_expiry = Duration::from_secs(u64::from(ttl) + 2).saturating_sub(stopped.elapsed());
        tokio::time::sleep(until_expiry).await;
        let (after_expiry, failed_after_expiry) = load(&client, 2.0).await;
        provider = ck_proc(&provider_args, root.join("identity-2.log"));
        provider.wait_for("identity.serving");
        let back = Instant::now();
        let mut recovered = None;
        while back.elapsed() < Duration::from_secs(60) {
            let (ok, _) = load(&client, 0.5).await;
            if ok > 0 {
                recovered = Some(back.elapsed());
                break;
            }
        }
        println!(
            "identity-provider-outage ttl_s={ttl} answered_before={before} answered_while_down_before_expiry={during} failed_then={failed_during} after_expiry answered={after_expiry} failed={failed_after_expiry} recovered_after_provider_returned_ms={:?}",
            recovered.map(|d| d.as_millis())
        );
        assert!(
            recovered.is_some(),
            "the host never recovered:\n{}",
            host.log()
        );
    });
}

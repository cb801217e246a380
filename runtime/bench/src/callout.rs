//! `ck bench --callout`: what the auth callout costs a connect, beside a connect that bypasses
//! it on the same server in the same run, and a storm of kernels connecting at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ck_authz::setup::{CALLOUT_USER, CalloutSecrets, StaticUser, render_server_config};
use ck_authz::{Authorizer, AuthorizerConfig, Registry};
use ck_identity::{DevProvider, IdentityClient, ProviderConfig, TrustBundles, TrustDomain};
use tokio_util::sync::CancellationToken;

use crate::percentile;

const DOMAIN: &str = "bench.local";

fn report(label: &str, mut times: Vec<Duration>, errors: usize) -> serde_json::Value {
    times.sort();
    let (p50, p99) = (
        percentile(&times, 0.5) / 1e3,
        percentile(&times, 0.99) / 1e3,
    );
    println!(
        "{label:<44} n={:<4} p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   ({errors} errors)",
        times.len()
    );
    serde_json::json!({"target": label, "n": times.len(), "errors": errors, "p50_ms": p50, "p99_ms": p99})
}

async fn connect_once(url: &str, user: &str, password: &str) -> Result<Duration> {
    let started = Instant::now();
    let client =
        async_nats::ConnectOptions::with_user_and_password(user.to_owned(), password.to_owned())
            .connect(url)
            .await?;
    let elapsed = started.elapsed();
    drop(client);
    Ok(elapsed)
}

/// What the callout benchmark measures.
pub struct CalloutBench<'a> {
    /// Sequential connects per path.
    pub connects: usize,
    /// Kernels connecting at once.
    pub storm: usize,
    /// Bogus connects per second during the flood phase (0 skips it).
    pub flood: u32,
    /// Seconds of the flood phase.
    pub flood_seconds: f64,
    /// The `ck` binary (the flood runs as `{generator} bench-flood …`, its own process).
    pub generator: &'a std::path::Path,
    /// Write the rows as JSON here too.
    pub json: Option<&'a std::path::Path>,
}

/// Runs the callout benchmark: `connects` sequential connects each way, `storm` kernels
/// connecting at once, then sequential connects while an external process floods the callout
/// with bogus ones.
pub async fn run(bench: &CalloutBench<'_>) -> Result<()> {
    let (connects, storm, json) = (bench.connects, bench.storm, bench.json);
    let dir = tempfile::tempdir()?;
    let registry = dir.path().join("registry");
    let mut kernels = Vec::new();
    for i in 0..storm.max(1) {
        let class = format!("Bench.K{i}");
        let guid = uuid::Uuid::new_v4().to_string();
        let kdir = registry.join(&class);
        std::fs::create_dir_all(&kdir)?;
        std::fs::write(
            kdir.join("conceptkernel.yaml"),
            format!(
                "apiVersion: conceptkernel/v3\nkernel_class: {class}\nkernel_id: {guid}\ndomain: {DOMAIN}\n\
                 spec:\n  actions:\n    common:\n      - {{name: status, access: anon}}\n"
            ),
        )?;
        kernels.push(format!("spiffe://{DOMAIN}/ck/{class}/{guid}"));
    }

    let shutdown = CancellationToken::new();
    let socket = dir.path().join("spiffe.sock");
    let provider = Arc::new(DevProvider::open(ProviderConfig {
        key_dir: dir.path().join("keys"),
        trust_domains: vec![TrustDomain::new(DOMAIN)?],
        ttl: Duration::from_secs(300),
    })?);
    {
        let (provider, socket, token) = (provider.clone(), socket.clone(), shutdown.clone());
        tokio::spawn(async move { provider.serve(&socket, token).await });
    }
    let secrets = CalloutSecrets::generate();
    let config = render_server_config(
        &secrets,
        "127.0.0.1:0",
        &[StaticUser {
            name: "bench".into(),
            password: "bench".into(),
            role: None,
        }],
        &dir.path().join("jetstream"),
        None,
        &ck_authz::setup::Topology::Single,
    )?;
    let body: Vec<&str> = config
        .lines()
        .filter(|l| !l.starts_with("listen:"))
        .collect();
    let server = ck_natsd::NatsServer::start(&body.join("\n"))?;
    let url = server.url();

    let socket_text = socket.display().to_string();
    let mut identity = None;
    for _ in 0..100 {
        if let Ok(c) = IdentityClient::connect(&socket_text).await {
            identity = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let identity = identity.context("the dev identity provider did not come up")?;
    let authorizer = Arc::new(Authorizer::new(
        AuthorizerConfig {
            issuer: secrets.issuer()?,
            account: "APP".into(),
            trust_domains: vec![TrustDomain::new(DOMAIN)?],
            allow_local: false,
            policy: ck_acl::Policy::default(),
            xkey: secrets.xkey()?,
        },
        Registry::open(vec![registry]),
        TrustBundles::Live(ck_identity::bundle_source(&socket_text).await?),
    ));
    let callout_client = async_nats::ConnectOptions::with_user_and_password(
        CALLOUT_USER.to_owned(),
        secrets.password.clone(),
    )
    .connect(url.as_str())
    .await?;
    let provisioner = ck_authz::Provisioner::for_secrets(url.as_str(), &secrets, None).await?;
    {
        let token = shutdown.clone();
        tokio::spawn(ck_authz::serve(
            callout_client,
            authorizer,
            provisioner,
            token,
        ));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!(
        "nats-server with auth callout on {url}; ck authz in this process; {} build",
        if cfg!(debug_assertions) {
            "debug (use --release)"
        } else {
            "release"
        }
    );

    // SVIDs for every kernel of the storm, fetched beforehand (and timed).
    let mut svids = Vec::new();
    let mut fetch_times = Vec::new();
    for id in &kernels {
        let started = Instant::now();
        let svid = identity
            .fetch(id, &ck_identity::nats_audience(DOMAIN))
            .await?;
        fetch_times.push(started.elapsed());
        svids.push(svid.token);
    }
    let mut rows = vec![report(
        "JWT-SVID fetch from the Workload API",
        fetch_times,
        0,
    )];

    // Warm up both paths.
    for _ in 0..20 {
        connect_once(&url, "bench", "bench").await?;
        connect_once(&url, &kernels[0], &svids[0]).await?;
    }
    let (mut direct, mut errors) = (Vec::new(), 0);
    for _ in 0..connects {
        match connect_once(&url, "bench", "bench").await {
            Ok(t) => direct.push(t),
            Err(_) => errors += 1,
        }
    }
    rows.push(report(
        "connect, static user (no callout, baseline)",
        direct,
        errors,
    ));
    let (mut callout, mut errors) = (Vec::new(), 0);
    for _ in 0..connects {
        match connect_once(&url, &kernels[0], &svids[0]).await {
            Ok(t) => callout.push(t),
            Err(_) => errors += 1,
        }
    }
    rows.push(report(
        "connect as a kernel through ck authz",
        callout,
        errors,
    ));

    let started = Instant::now();
    let attempts = kernels.iter().zip(&svids).map(|(id, token)| {
        let url = url.clone();
        async move { connect_once(&url, id, token).await }
    });
    let results = futures::future::join_all(attempts).await;
    let wall = started.elapsed();
    let errors = results.iter().filter(|r| r.is_err()).count();
    let storm_times: Vec<Duration> = results.into_iter().filter_map(Result::ok).collect();
    let mut row = report(
        &format!("storm: {} kernels connect at once", kernels.len()),
        storm_times,
        errors,
    );
    println!(
        "{:<44} wall {:.1} ms ({:.0} connects/s)",
        "",
        wall.as_secs_f64() * 1e3,
        kernels.len() as f64 / wall.as_secs_f64()
    );
    row["wall_ms"] = serde_json::json!(wall.as_secs_f64() * 1e3);
    rows.push(row);

    if bench.flood > 0 {
        // The victim: a registered kernel's SPIFFE ID with a junk password (refused, and
        // audited in its ledger, coalesced). Legitimate connects of another kernel are timed
        // meanwhile; one slower than nats-server's 2 s auth timeout is a failure.
        let addr = url.trim_start_matches("nats://").to_owned();
        let flood = std::process::Command::new(bench.generator)
            .args(["bench-flood", "--addr", &addr, "--user", &kernels[0]])
            .args(["--rate", &bench.flood.to_string()])
            .args(["--seconds", &bench.flood_seconds.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("starting the flood generator (ck bench-flood)")?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let legit = kernels.len().min(2) - 1;
        let until = Instant::now() + Duration::from_secs_f64((bench.flood_seconds - 2.0).max(1.0));
        let (mut during, mut errors) = (Vec::new(), 0);
        while Instant::now() < until {
            match connect_once(&url, &kernels[legit], &svids[legit]).await {
                Ok(t) if t < Duration::from_secs(2) => during.push(t),
                _ => errors += 1,
            }
        }
        let output = flood.wait_with_output()?;
        let seen: crate::flood::FloodResult = serde_json::from_slice(&output.stdout)
            .context("reading the flood generator's result")?;
        let achieved = seen.attempted as f64 / seen.elapsed_s;
        let mut row = report(
            &format!("connect through ck authz, {:.0} bogus/s", achieved),
            during,
            errors,
        );
        println!(
            "{:<44} flood: {} attempted, {} refused, {} admitted, {} failed otherwise",
            "", seen.attempted, seen.refused, seen.admitted, seen.errors
        );
        row["flood"] = serde_json::to_value(&seen)?;
        row["flood_rate_per_s"] = serde_json::json!(achieved);
        rows.push(row);
    }
    shutdown.cancel();
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)?;
    }
    drop(server);
    Ok(())
}

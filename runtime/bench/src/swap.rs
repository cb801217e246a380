//! `ck bench --swap N`: save-to-serving time of `ck dev`, over N saves of a copy of the echo
//! kernel, each one a different component (so every reload compiles, as a real edit does):
//! build (clang, wit-component) and swap (record the TOOL commit, read the version back,
//! compile it, build its service, swap the route) — while the kernel is serving requests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use bytes::Bytes;
use ck_host::{HostConfig, HostEngine};
use ck_serve::{Host, IdentityMode, ServeConfig};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::percentile;

#[derive(Serialize)]
struct Report {
    reloads: usize,
    build_p50_ms: f64,
    build_p95_ms: f64,
    swap_p50_ms: f64,
    swap_p95_ms: f64,
    total_p50_ms: f64,
    total_p95_ms: f64,
    requests_during: u64,
    failed_requests: u64,
}

pub async fn run(echo: &Path, reloads: usize, json: Option<&Path>) -> Result<()> {
    let work = tempfile::tempdir()?;
    let dir = work.path().join("echo");
    crate::tasks::copy_kernel(echo, &dir)?;
    let source = std::fs::read_to_string(dir.join("tool/echo.c"))?;
    let server = ck_natsd::NatsServer::start("")?;
    let url = server.url();
    let engine = HostEngine::new(HostConfig::default()).map_err(|e| anyhow!("{e:#}"))?;
    let host = Host::with_engine(
        ServeConfig {
            nats: url.clone(),
            identity: IdentityMode::Insecure,
            cache_dir: Some(work.path().join("cache")),
            follow_serving_record: false,
            ..ServeConfig::default()
        },
        engine,
    )
    .await?;
    let loader = host.loader(Vec::new());
    let first = {
        let (d, l) = (dir.clone(), loader.clone());
        tokio::task::spawn_blocking(move || ck_dev::build_version(&d, &l, "bench: first")).await??
    };
    let kernel = first.version.kernel.clone();
    host.add(Host::plan_version(first.version, loader.clone()))
        .await?;
    // Requests keep flowing during every reload (8 in flight); they stop before serving does.
    let stop_callers = CancellationToken::new();
    let caller = async_nats::connect(&url).await?;
    caller.flush().await?;
    let (ok, failed) = (
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let mut callers = Vec::new();
    for _ in 0..8 {
        let (c, t, ok, failed) = (
            caller.clone(),
            stop_callers.clone(),
            ok.clone(),
            failed.clone(),
        );
        let subject = kernel.topics.input.clone();
        callers.push(tokio::spawn(async move {
            while !t.is_cancelled() {
                let body = Bytes::from_static(br#"{"action":"echo","data":{"x":1}}"#);
                let counter = match c.request(subject.clone(), body).await {
                    Ok(r) if !r.payload.windows(6).any(|w| w == b"\"error") => &ok,
                    Ok(r) => {
                        eprintln!("failed: {}", String::from_utf8_lossy(&r.payload));
                        &failed
                    }
                    Err(e) => {
                        eprintln!("failed: {e}");
                        &failed
                    }
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    println!(
        "{reloads} saves of a copy of {} while it serves requests",
        echo.display()
    );
    let (mut builds, mut swaps, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=reloads {
        // A different constant each time: a new component, compiled, never a cache hit.
        let edited = format!("{source}\nint ck_bench_reload_{i} = {i};\n");
        std::fs::write(dir.join("tool/echo.c"), edited)?;
        let (d, l) = (dir.clone(), loader.clone());
        let reason = format!("bench: reload {i}");
        let reloaded =
            tokio::task::spawn_blocking(move || ck_dev::build_version(&d, &l, &reason)).await??;
        let build = reloaded.build;
        host.swap(&kernel.name, reloaded.version, None).await?;
        let swap = reloaded.started_swap.elapsed();
        builds.push(build);
        swaps.push(swap);
        totals.push(build + swap);
        println!(
            "  reload {i:>2}: build {:>6.1} ms   swap {:>5.1} ms",
            build.as_secs_f64() * 1e3,
            swap.as_secs_f64() * 1e3
        );
    }
    stop_callers.cancel();
    for c in callers {
        let _ = c.await;
    }
    host.shutdown().await;
    for v in [&mut builds, &mut swaps, &mut totals] {
        v.sort();
    }
    let ms = |v: &[Duration], q: f64| percentile(v, q) / 1e3;
    let report = Report {
        reloads,
        build_p50_ms: ms(&builds, 0.5),
        build_p95_ms: ms(&builds, 0.95),
        swap_p50_ms: ms(&swaps, 0.5),
        swap_p95_ms: ms(&swaps, 0.95),
        total_p50_ms: ms(&totals, 0.5),
        total_p95_ms: ms(&totals, 0.95),
        requests_during: ok.load(std::sync::atomic::Ordering::Relaxed),
        failed_requests: failed.load(std::sync::atomic::Ordering::Relaxed),
    };
    println!(
        "swap only:   p50 {:.1} ms   p95 {:.1} ms\nbuild only:  p50 {:.1} ms   p95 {:.1} ms\nbuild+swap:  p50 {:.1} ms   p95 {:.1} ms\nrequests answered meanwhile: {} ({} failed)",
        report.swap_p50_ms,
        report.swap_p95_ms,
        report.build_p50_ms,
        report.build_p95_ms,
        report.total_p50_ms,
        report.total_p95_ms,
        report.requests_during,
        report.failed_requests
    );
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    drop(server);
    Ok(())
}

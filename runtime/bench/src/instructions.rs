//! Instructions per request, counted by valgrind's callgrind — stable where wall-clock and CPU
//! figures on a shared two-core machine are not. Each target is served by a process of its
//! own (`ck bench-serve`, [`serve`]) started under callgrind with instrumentation off; after a
//! warm-up, instrumentation is switched on for a fixed number of requests and off again, and
//! the process's instruction total (all its threads) is divided by the requests.

use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::StreamExt;

use crate::{bench_host, load, load_one, protocol_responder, serve_kernel};

/// The most requests in flight a measurement may have: the served host's pool has this many
/// slots.
pub const MAX_IN_FLIGHT: usize = 4;

/// What `ck bench-serve` serves.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    /// NATS server URL.
    pub nats: String,
    /// `baseline`, `protocol`, `fresh` or `reused`.
    pub target: String,
    /// The echo kernel.
    pub echo: PathBuf,
    /// Publish the per-answer event.
    pub events: bool,
    /// Publish the TOOL events.
    pub tool_events: bool,
    /// Slots of the instance pool (requests in flight must stay within it).
    pub max_instances: u32,
}

/// `ck bench-serve`: serves `spec.target`, prints `ready {subject}`, and serves until its
/// standard input closes.
pub fn serve(spec: &ServeSpec) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let echo = load_one(&spec.echo)?;
        // Under valgrind, a small pool: the default reserves more address space (4 GiB per
        // memory slot) than valgrind will map.
        let engine = ck_host::HostEngine::new(ck_host::HostConfig {
            max_instances: spec.max_instances,
            max_memory_mb: 64,
            ..ck_host::HostConfig::default()
        })
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut host = None;
        let subject = match spec.target.as_str() {
            "baseline" => {
                let responder = async_nats::connect(&spec.nats).await?;
                // A queue group, as hosts have: several responders share the requests.
                let mut sub = responder
                    .queue_subscribe("bench.baseline", "bench".into())
                    .await?;
                responder.flush().await?;
                tokio::spawn(async move {
                    while let Some(message) = sub.next().await {
                        if let Some(reply) = message.reply {
                            let _ = responder.publish(reply, message.payload).await;
                        }
                    }
                });
                "bench.baseline".to_owned()
            }
            "protocol" => {
                tokio::spawn(protocol_responder(
                    spec.nats.clone(),
                    echo.clone(),
                    spec.events,
                    spec.tool_events,
                ));
                // The responder subscribes as it starts.
                tokio::time::sleep(Duration::from_millis(500)).await;
                "bench.protocol".to_owned()
            }
            "fresh" | "reused" => {
                let h = bench_host(&engine, &spec.nats, spec.events, spec.tool_events).await?;
                let reuse = if spec.target == "reused" { 1000 } else { 0 };
                serve_kernel(&h, echo.clone(), reuse).await?;
                host = Some(h);
                echo.topics.input.clone()
            }
            other => bail!("unknown target {other}: baseline, protocol, fresh or reused"),
        };
        println!("ready {subject}");
        // Serve until the benchmark closes our standard input.
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        })
        .await?;
        if let Some(h) = host {
            h.shutdown().await;
        }
        anyhow::Ok(())
    })
}

/// Measures the instructions per request of each of `targets` (served as `config` says),
/// `requests` requests at `concurrency` in flight, with the load generated in this process.
/// Returns (target, instructions per request).
pub(crate) async fn measure(
    config: &crate::BenchConfig,
    url: &str,
    targets: &[&str],
    requests: usize,
    concurrency: usize,
) -> Result<Vec<(String, f64)>> {
    anyhow::ensure!(
        concurrency <= MAX_IN_FLIGHT,
        "instructions are counted at most {MAX_IN_FLIGHT} requests in flight (the pool a host under valgrind can map); asked {concurrency}"
    );
    let (generator, echo) = (&config.generator, &config.echo);
    let (events, tool_events) = (!config.no_events, !config.no_tool_events);
    let work = tempfile::tempdir()?;
    let client = async_nats::connect(url).await?;
    let body = Bytes::from(
        serde_json::json!({"action": "echo", "data": {"pad": "x".repeat(59)}}).to_string(),
    );
    let mut results = Vec::new();
    for target in targets {
        let out = work.path().join(format!("callgrind.{target}"));
        let mut command = tokio::process::Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg("--instr-atstart=no")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(generator)
            .args(crate::served::args(
                url,
                target,
                echo,
                events,
                tool_events,
                MAX_IN_FLIGHT as u32,
            ));
        let served = crate::served::Served::start(command, target, Duration::from_secs(180))
            .await
            .context("running valgrind (is it installed?)")?;
        let (pid, subject) = (served.pid, served.subject.clone());
        // Warm up (uninstrumented), then count exactly `requests`.
        let _ = load(&client, &subject, body.clone(), 4, Duration::from_secs(3)).await;
        callgrind_control(&["-z"], pid).await?;
        callgrind_control(&["-i", "on"], pid).await?;
        let failed = futures::stream::iter(0..requests)
            .map(|_| {
                let (client, subject, body) = (client.clone(), subject.clone(), body.clone());
                async move { client.request(subject, body).await.is_err() }
            })
            .buffer_unordered(concurrency)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await;
        callgrind_control(&["-i", "off"], pid).await?;
        // A dump now holds exactly the instrumented window (`{out}.1`).
        callgrind_control(&["-d"], pid).await?;
        let dump = PathBuf::from(format!("{}.1", out.display()));
        let total = totals(&dump)?;
        served.stop(Duration::from_secs(120)).await;
        let counted = requests - failed;
        let per_request = total as f64 / counted.max(1) as f64;
        println!(
            "{target:<10} {per_request:>12.0} instructions per request   ({counted} requests at c={concurrency}, {failed} failed)"
        );
        results.push((target.to_string(), per_request));
    }
    Ok(results)
}

async fn callgrind_control(args: &[&str], pid: u32) -> Result<()> {
    let status = tokio::process::Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .context("running callgrind_control")?;
    anyhow::ensure!(
        status.success(),
        "callgrind_control {args:?} {pid}: {status}"
    );
    Ok(())
}

/// The instruction total of a callgrind dump: its `totals:` line (its `summary:` line counts
/// from the program's start, 0 with instrumentation off at start).
fn totals(path: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .with_context(|| format!("{}: no totals line", path.display()))
}

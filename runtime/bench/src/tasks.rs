//! `ck bench --tasks N`: sealed tasks per second end to end — a `task.complete` request through
//! the host, acknowledged by JetStream, sealed (`data.json`, manifest, ledger, proof, each
//! fsynced) and audited, then committed to the DATA repository and announced (three
//! JetStream-confirmed events) — beside synchronous JetStream publishes to the same server in
//! the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use ck_host::{HostConfig, HostEngine};
use futures::StreamExt;

use crate::{bench_host, percentile, serve_kernel};

fn row(
    label: &str,
    c: usize,
    n: usize,
    wall: Duration,
    mut times: Vec<Duration>,
) -> serde_json::Value {
    times.sort();
    let rate = n as f64 / wall.as_secs_f64();
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    println!(
        "{label:<46} c={c:<3} {rate:>8.0} /s   p50 {p50:>7.0} µs   p99 {p99:>7.0} µs   (n={n})"
    );
    serde_json::json!({"target": label, "concurrency": c, "n": n, "per_second": rate, "p50_us": p50, "p99_us": p99})
}

/// Runs `n` operations split over `c` workers; each operation's latency is recorded.
async fn spread<F, Fut>(n: usize, c: usize, op: F) -> Result<(Duration, Vec<Duration>)>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..c {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut times = Vec::new();
            for i in (w..n).step_by(c) {
                let t = Instant::now();
                op(i).await?;
                times.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(times)
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    Ok((started.elapsed(), all))
}

/// Copies a kernel's manifest and `tool/` into `to`, so the benchmark seals into a fresh tree.
pub(crate) fn copy_kernel(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to.join("tool"))?;
    std::fs::copy(
        from.join("conceptkernel.yaml"),
        to.join("conceptkernel.yaml"),
    )
    .with_context(|| format!("{}: no conceptkernel.yaml", from.display()))?;
    for entry in std::fs::read_dir(from.join("tool"))? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::copy(
                &path,
                to.join("tool").join(path.file_name().unwrap_or_default()),
            )?;
        }
    }
    Ok(())
}

/// Runs the benchmark with `n` tasks per concurrency level, on a lone nats-server.
pub async fn run(kernel_src: &Path, n: usize, levels: &[usize], json: Option<&Path>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ck_natsd::NatsServer::start(&format!(
        "jetstream {{ store_dir: \"{}\", sync_interval: always }}",
        dir.path().join("js").display()
    ))?;
    let url = server.url();
    println!(
        "nats-server on {url}, JetStream file storage, sync_interval: always; data under {}",
        dir.path().display()
    );
    let rows = measure(&url, "", kernel_src, n, levels, dir.path()).await?;
    if let Some(path) = json {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&serde_json::json!({"rows": rows}))?,
        )?;
    }
    Ok(())
}

/// Measures `n` tasks per concurrency level on the server at `url` (a lone one, or one node of
/// a cluster, where every stream and bucket gets 3 replicas), with `label` after each row's
/// name; the kernel's tree and scratch files go under `dir`. Returns the rows.
pub(crate) async fn measure(
    url: &str,
    label: &str,
    kernel_src: &Path,
    n: usize,
    levels: &[usize],
    dir: &Path,
) -> Result<Vec<serde_json::Value>> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "bench".into(),
        subjects: vec!["bench.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: ck_task::provision::replicas(&js),
        ..Default::default()
    })
    .await?;

    let kernel_dir = dir.join("tasks");
    copy_kernel(kernel_src, &kernel_dir)?;
    let kernel = crate::load_one(&kernel_dir)?;
    let engine = HostEngine::new(HostConfig::default()).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let host = bench_host(&engine, url, true, true).await?;
    serve_kernel(&host, kernel.clone(), 0).await?;
    client.flush().await?;

    let output = serde_json::json!({"winner": "ada", "votes": {"ada": 3, "grace": 2, "linus": 1}});
    let payload = Bytes::from(serde_json::to_vec(&output)?);
    let mut rows = Vec::new();
    let mut sealed = 0;
    for &c in levels {
        // (a) Baseline: synchronous JetStream publishes (each awaits its acknowledgement).
        let (js2, body) = (js.clone(), payload.clone());
        let (wall, times) = spread(n, c, move |i| {
            let (js, body) = (js2.clone(), body.clone());
            async move {
                js.publish(format!("bench.{}", i % 64), body).await?.await?;
                Ok(())
            }
        })
        .await?;
        rows.push(row(
            &format!("(a) JetStream publish, acknowledged{label}"),
            c,
            n,
            wall,
            times,
        ));

        // (a') The disk under both: create, write and fsync a small file.
        let scratch = dir.join(format!("fsync-{c}"));
        std::fs::create_dir_all(&scratch)?;
        let (scratch2, body) = (scratch.clone(), payload.clone());
        let (wall, times) = spread(n, c, move |i| {
            let (path, body) = (scratch2.join(i.to_string()), body.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    let mut f = std::fs::File::create_new(path)?;
                    f.write_all(&body)?;
                    f.sync_all()
                })
                .await??;
                Ok(())
            }
        })
        .await?;
        std::fs::remove_dir_all(&scratch)?;
        rows.push(row(
            "(a') file create + write + fsync (this disk)",
            c,
            n,
            wall,
            times,
        ));

        // (b) Sealed tasks: start them (not measured), then complete each through the host.
        let input = kernel.topics.input.clone();
        for i in 0..n {
            let body = serde_json::json!({"action": "task.start", "data": {"task_id": format!("c{c}-{i}")}});
            client
                .request(input.clone(), Bytes::from(serde_json::to_vec(&body)?))
                .await?;
        }
        // End to end means announced: the clock stops at the n-th data.written of this level,
        // which follows the seal's git commit.
        let mut announced = client
            .subscribe(ck_manifest::topics::loop_event_subject(
                &kernel.guid,
                ck_manifest::topics::LoopEvent::DataWritten,
            ))
            .await?;
        client.flush().await?;
        let started = Instant::now();
        let (client2, input2, out) = (client.clone(), input.clone(), output.clone());
        let (_, times) = spread(n, c, move |i| {
            let (client, input) = (client2.clone(), input2.clone());
            let body = serde_json::json!({"action": "task.complete", "data": {"task_id": format!("c{c}-{i}"), "output": out}});
            async move {
                let reply = client
                    .request(input, Bytes::from(serde_json::to_vec(&body)?))
                    .await?;
                let answer: serde_json::Value = serde_json::from_slice(&reply.payload)?;
                if answer["status"] != "ok" {
                    bail!("task.complete refused: {answer}");
                }
                Ok(())
            }
        })
        .await?;
        let prefix = format!("\"i-c{c}-");
        let mut seen = 0;
        while seen < n {
            let event = tokio::time::timeout(Duration::from_secs(30), announced.next())
                .await
                .context("data.written events stopped coming")?
                .context("subscription closed")?;
            if event
                .payload
                .windows(prefix.len())
                .any(|w| w == prefix.as_bytes())
            {
                seen += 1;
            }
        }
        let wall = started.elapsed();
        sealed += n;
        rows.push(row(
            &format!("(b) sealed task (ck host, Demo.Tasks){label}"),
            c,
            n,
            wall,
            times,
        ));
    }
    // Seals are committed (and announced) just after their answers: wait for the last ones.
    let report = {
        let kernel_dir = kernel_dir.clone();
        tokio::task::spawn_blocking(move || {
            ck_loops::data::verify_tree_settled(&kernel_dir, Duration::from_secs(30), |_| {})
        })
        .await
        .context("verifying the DATA tree")?
    };
    host.shutdown().await;
    let commits = git2::Repository::open(kernel_dir.join("data"))
        .and_then(|repo| {
            let mut walk = repo.revwalk()?;
            walk.push_head()?;
            Ok(walk.count())
        })
        .unwrap_or(0);
    println!("DATA repository: {commits} commits for {sealed} seals (group commits under load)");

    println!(
        "ck verify on the benchmark's DATA tree: {} instances (expected {sealed}), {} ledger lines, {}",
        report.instances,
        report.ledger_lines,
        if report.ok() { "all verify" } else { "BROKEN" }
    );
    if !report.ok() || report.instances != sealed {
        bail!(
            "the benchmark's DATA tree does not verify: {:?}",
            report.findings.first()
        );
    }
    Ok(rows)
}

//! The load generator of `ck bench`: `concurrency` clients, each sending requests one after the
//! other for a fixed time. It runs inside the benchmark process, or (`ck bench --external`) as
//! its own process (`ck bench-load`, hidden: [`run`]), so that its CPU is not the host's and its
//! threads do not share the host's scheduler.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;

/// What one load run saw.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct LoadResult {
    /// Requests answered without an error status.
    pub requests: u64,
    /// Requests that failed or were answered with an error.
    pub errors: u64,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// Latencies of the answered requests, sorted, µs.
    pub latencies_us: Vec<f64>,
}

/// Runs `concurrency` clients doing sequential requests for `duration`.
pub(crate) async fn load(
    client: &async_nats::Client,
    subject: &str,
    body: Bytes,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, subject, body) = (client.clone(), subject.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match client.request(subject.clone(), body.clone()).await {
                    Ok(reply)
                        if !reply
                            .payload
                            .windows(16)
                            .any(|w| w == b"\"status\":\"error") =>
                    {
                        latencies.push(sent.elapsed().as_secs_f64() * 1e6)
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    all.sort_by(f64::total_cmp);
    LoadResult {
        requests: all.len() as u64,
        errors,
        elapsed_s: started.elapsed().as_secs_f64(),
        latencies_us: all,
    }
}

/// One run of the external load generator.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// NATS server URL.
    pub nats: String,
    /// Subject to send requests to.
    pub subject: String,
    /// Request body.
    pub body: String,
    /// Requests in flight.
    pub concurrency: usize,
    /// Seconds to run.
    pub seconds: f64,
    /// Milliseconds of warm-up (8 in flight) before measuring.
    pub warmup_ms: u64,
}

/// `ck bench-load`: warms up, prints `warm`, waits for a line on stdin (the benchmark samples
/// CPU times then), runs, and prints one [`LoadResult`] as JSON on stdout.
pub fn run(args: &LoadSpec) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let client = async_nats::connect(&args.nats)
            .await
            .with_context(|| format!("connecting to {}", args.nats))?;
        let body = Bytes::from(args.body.clone());
        if args.warmup_ms > 0 {
            load(
                &client,
                &args.subject,
                body.clone(),
                8,
                Duration::from_millis(args.warmup_ms),
            )
            .await;
        }
        println!("warm");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go)?;
        anyhow::Ok(
            load(
                &client,
                &args.subject,
                body,
                args.concurrency,
                Duration::from_secs_f64(args.seconds),
            )
            .await,
        )
    })?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// The load generator as its own process, warmed up and waiting to start.
pub(crate) struct External {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl External {
    /// Starts `ck bench-load` and waits until it is warm.
    pub(crate) async fn warm(
        generator: &std::path::Path,
        url: &str,
        subject: &str,
        body: &Bytes,
        concurrency: usize,
        duration: Duration,
        warmup: Duration,
    ) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(generator)
            .args(["bench-load", "--nats", url, "--subject", subject])
            .arg("--body")
            .arg(String::from_utf8_lossy(body).as_ref())
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--seconds", &duration.as_secs_f64().to_string()])
            .args(["--warmup-ms", &warmup.as_millis().to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("running ck bench-load")?;
        let stdout = child.stdout.take().context("ck bench-load's stdout")?;
        let mut stdout = tokio::io::BufReader::new(stdout).lines();
        match stdout.next_line().await? {
            Some(line) if line == "warm" => Ok(Self { child, stdout }),
            other => anyhow::bail!("ck bench-load did not warm up: {other:?}"),
        }
    }

    /// Starts the measured run and returns what it saw.
    pub(crate) async fn run(mut self) -> Result<LoadResult> {
        use tokio::io::AsyncWriteExt;
        let mut stdin = self.child.stdin.take().context("ck bench-load's stdin")?;
        stdin.write_all(b"go\n").await?;
        drop(stdin);
        let line = self
            .stdout
            .next_line()
            .await?
            .context("ck bench-load printed no result")?;
        let status = self.child.wait().await?;
        anyhow::ensure!(status.success(), "ck bench-load failed: {status}");
        serde_json::from_str(&line).context("reading ck bench-load's result")
    }
}

//! `ck bridge`: deliver the webhook subscriptions' events to their sinks (`ck_bridge`) until
//! interrupted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};

use crate::publish::{ClusterArgs, Refusals};

/// Arguments of `ck bridge`.
#[derive(clap::Args)]
pub struct Args {
    /// The subscription contracts: files, or directories of them (every *.json but schemas).
    /// Only webhook subscriptions are the bridge's.
    #[arg(long = "contracts", value_name = "PATH", required = true)]
    contracts: Vec<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The subject families file (default: policies/subject-families.yaml as shipped).
    #[arg(long, value_name = "FILE")]
    subject_families: Option<PathBuf>,
    /// Call sinks on private, loopback or link-local addresses (off: refused as SSRF).
    #[arg(long)]
    allow_private_sinks: bool,
    /// Contracts' `file:` secretRefs must lie inside this directory.
    #[arg(long, value_name = "DIR")]
    secret_root: Option<PathBuf>,
    /// Contracts' `env:` secretRefs must name variables starting with this prefix.
    #[arg(long, value_name = "PREFIX")]
    secret_env_prefix: Option<String>,
    /// Deliveries in flight per consumer.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// The retry delays in milliseconds, comma-separated (the last repeats); by default
    /// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h.
    #[arg(long, value_name = "MS,...", value_delimiter = ',')]
    retry_schedule_ms: Vec<u64>,
    /// Attempts before an event is parked, where its contract sets no maxAttempts.
    #[arg(long, default_value_t = 8)]
    max_attempts: u32,
    /// The source of delivery results: the bridge's SPIFFE ID or URN.
    #[arg(long, value_name = "URI", default_value = "urn:ck:bridge")]
    source: String,
}

/// Runs `ck bridge`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let families = crate::families::load(args.subject_families.as_deref())?;
    let checker = ck_contracts::ContractChecker::new(&families);
    let mut subscriptions = Vec::new();
    for path in &args.contracts {
        if path.is_dir() {
            subscriptions.extend(checker.check_dir(path)?);
        } else {
            subscriptions.push(checker.check_file(path)?);
        }
    }
    let mut config = ck_bridge::BridgeConfig {
        allow_private_sinks: args.allow_private_sinks,
        secrets: ck_bridge::secrets::SecretScope {
            root: args.secret_root.clone(),
            env_prefix: args.secret_env_prefix.clone(),
        },
        concurrency: usize::from(args.concurrency),
        source: args.source.clone(),
        ..Default::default()
    };
    if !args.retry_schedule_ms.is_empty() {
        config.retry.schedule = args
            .retry_schedule_ms
            .iter()
            .map(|ms| std::time::Duration::from_millis(*ms))
            .collect();
    }
    config.retry.max_attempts = args.max_attempts.max(1);
    tokio::runtime::Runtime::new()?.block_on(async {
        // A contract the bridge will not deliver (a private sink, a secret outside the
        // operator's scope) is refused before anything connects.
        let webhooks = match ck_bridge::prepare(&subscriptions, &config).await {
            Ok(webhooks) => webhooks,
            Err(refused) => {
                eprintln!("ck: refused: {refused}");
                return Ok(ExitCode::from(1));
            }
        };
        if webhooks.is_empty() {
            anyhow::bail!("no webhook subscription among the contracts given: nothing to deliver");
        }
        let refusals = Refusals::default();
        let js = args.cluster.connect(&refusals).await?;
        let bridge = ck_bridge::Bridge::new(js, &families, config)?;
        let stop = tokio_util::sync::CancellationToken::new();
        // On SIGINT or SIGTERM no new delivery starts; those in flight finish (one not
        // acknowledged is delivered again after the ack wait).
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing a SIGTERM handler")?;
        tokio::spawn({
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                stop.cancel();
            }
        });
        let delivered = bridge.run(&webhooks, stop).await;
        delivered.map_err(|e| refusals.explain(e.into()))?;
        let counts = &bridge.counts;
        println!(
            "bridge: {} delivered, {} retrying, {} parked, {} subscriptions stopped by their sink",
            counts.delivered.load(Ordering::Relaxed),
            counts.retrying.load(Ordering::Relaxed),
            counts.parked.load(Ordering::Relaxed),
            counts.stopped.load(Ordering::Relaxed),
        );
        Ok(ExitCode::SUCCESS)
    })
}

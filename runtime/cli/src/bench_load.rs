//! `ck bench-load`: the arguments of the external load generator (`ck_bench::load`).

use anyhow::Result;

/// Arguments of `ck bench-load` (the external load generator; not for people).
#[derive(clap::Args)]
pub struct Args {
    /// NATS server URL.
    #[arg(long)]
    nats: String,
    /// Subject to send requests to.
    #[arg(long)]
    subject: String,
    /// Request body.
    #[arg(long)]
    body: String,
    /// Requests in flight.
    #[arg(long)]
    concurrency: usize,
    /// Seconds to run.
    #[arg(long)]
    seconds: f64,
    /// Milliseconds of warm-up (8 in flight) before measuring.
    #[arg(long, default_value_t = 300)]
    warmup_ms: u64,
}

pub fn run(args: &Args) -> Result<std::process::ExitCode> {
    ck_bench::load::run(&ck_bench::load::LoadSpec {
        nats: args.nats.clone(),
        subject: args.subject.clone(),
        body: args.body.clone(),
        concurrency: args.concurrency,
        seconds: args.seconds,
        warmup_ms: args.warmup_ms,
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

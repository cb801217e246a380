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

/// Arguments of `ck bench-flood` (the connect-flood generator of `ck bench --callout`; not for
/// people).
#[derive(clap::Args)]
pub struct FloodArgs {
    /// `host:port` of the server.
    #[arg(long)]
    addr: String,
    /// The user every CONNECT claims.
    #[arg(long)]
    user: String,
    /// Attempts per second.
    #[arg(long)]
    rate: u32,
    /// Seconds to run.
    #[arg(long)]
    seconds: f64,
}

pub fn flood(args: &FloodArgs) -> Result<std::process::ExitCode> {
    ck_bench::flood::run(&ck_bench::flood::FloodSpec {
        addr: args.addr.clone(),
        user: args.user.clone(),
        rate: args.rate,
        seconds: args.seconds,
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Arguments of `ck bench-serve` (one target served for `ck bench --instructions`; not for
/// people).
#[derive(clap::Args)]
pub struct ServeArgs {
    /// NATS server URL.
    #[arg(long)]
    nats: String,
    /// baseline, protocol, fresh or reused.
    #[arg(long)]
    target: String,
    /// The echo kernel.
    #[arg(long)]
    echo: std::path::PathBuf,
    /// Do not publish the per-answer event.
    #[arg(long)]
    no_events: bool,
    /// Do not publish the TOOL events.
    #[arg(long)]
    no_tool_events: bool,
    /// Slots of the instance pool (small enough for valgrind by default).
    #[arg(long, default_value_t = ck_bench::instructions::MAX_IN_FLIGHT as u32)]
    max_instances: u32,
}

/// `ck bench-serve`.
pub fn serve(args: &ServeArgs) -> Result<std::process::ExitCode> {
    ck_bench::instructions::serve(&ck_bench::instructions::ServeSpec {
        nats: args.nats.clone(),
        target: args.target.clone(),
        echo: args.echo.clone(),
        events: !args.no_events,
        tool_events: !args.no_tool_events,
        max_instances: args.max_instances,
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

//! `ck bench`: its arguments; the benchmarks are `ck_bench`.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// Arguments of `ck bench`.
#[derive(clap::Args)]
pub struct Args {
    /// The echo kernel (answers `echo` with its data).
    #[arg(long, default_value = "kernels/echo")]
    echo: PathBuf,
    /// The domain kernel (CS.Voting: `tally`).
    #[arg(long, default_value = "kernels/voting")]
    domain: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrency levels (requests in flight).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    concurrency: Vec<usize>,
    /// Do not publish the per-answer event on event.{K} (to see what it costs).
    #[arg(long)]
    no_events: bool,
    /// Do not publish the TOOL loop's per-call events (`tool.invoked`, `tool.completed`) in
    /// (a'), (b), (b') and (c).
    #[arg(long)]
    no_tool_events: bool,
    /// Which targets to measure: baseline, protocol, fresh, reused, domain (all by default).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,protocol,fresh,reused,domain"
    )]
    targets: Vec<String>,
    /// Measure the auth callout instead: connect latency through `ck authz` beside a static
    /// user's, over --connects sequential connects, and a storm of --storm kernels.
    #[arg(long)]
    callout: bool,
    /// Sequential connects per path (with --callout).
    #[arg(long, default_value_t = 500)]
    connects: usize,
    /// Kernels connecting at once (with --callout).
    #[arg(long, default_value_t = 200)]
    storm: usize,
    /// Bogus connects per second (a registered kernel's SPIFFE ID, a junk password) sent by an
    /// external process while legitimate connects are measured (with --callout; 0 skips).
    #[arg(long, default_value_t = 2000)]
    flood: u32,
    /// Seconds of the flood (with --callout).
    #[arg(long, default_value_t = 10.0)]
    flood_seconds: f64,
    /// Measure on a 3-node nats-server cluster instead: throughput of 1, 2 and 3 hosts (each
    /// its own process on its own node) beside as many plain responders; with --tasks N, seals
    /// on a lone server (R1) beside the cluster (R3).
    #[arg(long)]
    cluster: bool,
    /// Measure sealed tasks instead: this many `task.complete`s per concurrency level through
    /// the host (Demo.Tasks), beside as many acknowledged JetStream publishes.
    #[arg(long, value_name = "N")]
    tasks: Option<usize>,
    /// Rounds of the TOOL-events cost measurement: the echo kernel served twice at once, with
    /// and without `tool.*` events, measured alternately at c=64 (medians compared; 0 skips).
    #[arg(long, default_value_t = 5)]
    tool_events_rounds: usize,
    /// Measure `ck dev` reloads instead: this many saves of a copy of the echo kernel, each
    /// built and swapped in while requests flow (build and swap times, p50/p95).
    #[arg(long, value_name = "N")]
    swap: Option<usize>,
    /// The task kernel (with --tasks).
    #[arg(long, default_value = "kernels/tasks")]
    tasks_kernel: PathBuf,
    /// Run the load generator as its own process (`ck bench-load`): the CPU reported for this
    /// process is then the host's (or the baseline responder's) alone.
    #[arg(long)]
    external: bool,
    /// Worker threads of this process's runtime, which serves the hosts (1: a current-thread
    /// runtime, no cross-thread hand-offs; 0: one per core).
    #[arg(long, default_value_t = 0)]
    host_threads: usize,
    /// Count instructions per request instead, with valgrind's callgrind (installed
    /// separately): this many requests per target (baseline, protocol, fresh, reused) and
    /// concurrency level, each target served by its own process under callgrind.
    #[arg(long, value_name = "N")]
    instructions: Option<usize>,
    /// Write the results as JSON to this file too.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<std::process::ExitCode> {
    let config = ck_bench::BenchConfig {
        echo: args.echo.clone(),
        domain: args.domain.clone(),
        seconds: args.seconds,
        concurrency: args.concurrency.clone(),
        no_events: args.no_events,
        no_tool_events: args.no_tool_events,
        targets: args.targets.clone(),
        callout: args.callout,
        cluster: args.cluster,
        connects: args.connects,
        storm: args.storm,
        flood: args.flood,
        flood_seconds: args.flood_seconds,
        tasks: args.tasks,
        tool_events_rounds: args.tool_events_rounds,
        swap: args.swap,
        tasks_kernel: args.tasks_kernel.clone(),
        external: args.external,
        host_threads: args.host_threads,
        json: args.json.clone(),
        instructions: args.instructions,
        generator: std::env::current_exe().context("locating the ck binary")?,
    };
    ck_bench::run(&config)?;
    Ok(std::process::ExitCode::SUCCESS)
}

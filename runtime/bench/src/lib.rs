//! The benchmarks behind `ck bench`: request/reply throughput and latency through the kernel
//! host (`ck-serve`), side by side with a plain async-nats responder and a responder sending
//! the protocol's own messages on the same nats-server in the same run; the auth callout
//! ([`callout`]), sealed tasks ([`tasks`]) and `ck dev` reloads ([`swap`]). The load generator
//! runs in this process or as its own ([`load`]). A benchmark is a report: it prints its rows
//! as it measures them, and writes them as JSON when asked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use ck_host::{HostConfig, HostEngine};
use ck_manifest::Kernel;
use ck_serve::{Host, IdentityMode, ServeConfig};
use futures::StreamExt;
use serde::Serialize;

use crate::load::{External, load};

mod callout;
mod cluster;
pub mod flood;
pub mod instructions;
pub mod load;
mod served;
mod swap;
mod tasks;

fn load_one(path: &std::path::Path) -> Result<Kernel> {
    ck_dev::reload::kernel_at(path)
}

/// What `ck bench` measures, and how.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The echo kernel (answers `echo` with its data).
    pub echo: PathBuf,
    /// The domain kernel (CS.Voting: `tally`).
    pub domain: PathBuf,
    /// Seconds per measurement.
    pub seconds: f64,
    /// Concurrency levels (requests in flight).
    pub concurrency: Vec<usize>,
    /// Do not publish the per-answer event on event.{K} (to see what it costs).
    pub no_events: bool,
    /// Do not publish the TOOL loop's per-call events (`tool.invoked`, `tool.completed`) in
    /// (a'), (b), (b') and (c).
    pub no_tool_events: bool,
    /// Which targets to measure: baseline, protocol, fresh, reused, domain (all by default).
    pub targets: Vec<String>,
    /// Measure the auth callout instead: connect latency through `ck authz` beside a static
    /// user's, over --connects sequential connects, and a storm of --storm kernels.
    pub callout: bool,
    /// Sequential connects per path (with --callout).
    pub connects: usize,
    /// Bogus connects per second during the flood phase (with --callout; 0 skips).
    pub flood: u32,
    /// Seconds of the flood phase.
    pub flood_seconds: f64,
    /// Kernels connecting at once (with --callout).
    pub storm: usize,
    /// Measure on a 3-node nats-server cluster instead: request throughput of 1, 2 and 3 hosts
    /// beside as many plain responders, and (with `tasks`) seals on a lone server (R1) beside
    /// the cluster (R3).
    pub cluster: bool,
    /// Measure sealed tasks instead: this many `task.complete`s per concurrency level through
    /// the host (Demo.Tasks), beside as many acknowledged JetStream publishes.
    pub tasks: Option<usize>,
    /// Rounds of the TOOL-events cost measurement: the echo kernel served twice at once, with
    /// and without `tool.*` events, measured alternately at c=64 (medians compared; 0 skips).
    pub tool_events_rounds: usize,
    /// Measure `ck dev` reloads instead: this many saves of a copy of the echo kernel, each
    /// built and swapped in while requests flow (build and swap times, p50/p95).
    pub swap: Option<usize>,
    /// The task kernel (with --tasks).
    pub tasks_kernel: PathBuf,
    /// Run the load generator as its own process (`ck bench-load`): the CPU reported for this
    /// process is then the host's (or the baseline responder's) alone.
    pub external: bool,
    /// Worker threads of this process's runtime, which serves the hosts (1: a current-thread
    /// runtime, no cross-thread hand-offs; 0: one per core).
    pub host_threads: usize,
    /// Write the results as JSON to this file too.
    pub json: Option<PathBuf>,
    /// Count instructions per request instead (valgrind's callgrind): this many requests per
    /// target and concurrency level, each target served by its own process under callgrind.
    pub instructions: Option<usize>,
    /// The program that runs the external load generator (the `ck` binary: it is run as
    /// `{generator} bench-load …`).
    pub generator: PathBuf,
}

#[derive(Serialize, Clone)]
struct Row {
    target: String,
    concurrency: usize,
    requests: u64,
    errors: u64,
    throughput_rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU time of the serving processes (this one, with the load generator unless it is
    /// external; or the responders' and hosts' own processes) per request, µs.
    cpu_us_per_request: f64,
    /// CPU time of nats-server per request, µs.
    server_cpu_us_per_request: f64,
}

/// CPU time used so far by a process (all its threads), from `/proc/{pid}/stat`.
fn cpu_time(pid: &str) -> Duration {
    // utime and stime are fields 14 and 15, counted in USER_HZ (100 on Linux) ticks; the
    // command name (field 2) may hold spaces, so count from the closing parenthesis.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

#[derive(Serialize)]
struct Report {
    machine: String,
    payload_bytes: usize,
    seconds_per_run: f64,
    rows: Vec<Row>,
    instantiate_p50_us: f64,
    instantiate_p99_us: f64,
    ratio_echo_fresh_vs_baseline_c64: Option<f64>,
    ratio_echo_fresh_vs_protocol_c64: Option<f64>,
    tool_events_cost_c64: Option<f64>,
}

/// The `q` quantile of sorted durations, in microseconds (0 when empty).
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e6
}

/// The `q` quantile of sorted microseconds (0 when empty).
fn quantile_us(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

struct Target<'a> {
    client: &'a async_nats::Client,
    /// The server's URL (for an external load generator).
    url: String,
    /// The nats-servers' process ids (their CPU time, summed, is reported per request).
    server_pids: Vec<String>,
    /// The processes serving the target, when they are not this one (their CPU time, summed,
    /// is reported as the target's).
    serving_pids: Vec<String>,
}

async fn measure(
    rows: &mut Vec<Row>,
    on: &Target<'_>,
    target: &str,
    subject: &str,
    body: &Bytes,
    args: &BenchConfig,
) {
    let client = on.client;
    let warmup = Duration::from_millis(300);
    if !args.external {
        // Warm up connections, caches and the pool before measuring.
        let _ = load(client, subject, body.clone(), 8, warmup).await;
    }
    for &c in &args.concurrency {
        let duration = Duration::from_secs_f64(args.seconds);
        // An external generator warms up before the CPU times are taken.
        let generator = match args.external {
            true => {
                match External::warm(&args.generator, &on.url, subject, body, c, duration, warmup)
                    .await
                {
                    Ok(g) => Some(g),
                    Err(e) => {
                        eprintln!("{target} c={c}: {e:#}");
                        continue;
                    }
                }
            }
            false => None,
        };
        let sum = |pids: &[String]| pids.iter().map(|pid| cpu_time(pid)).sum::<Duration>();
        let serving_cpu = || match on.serving_pids.is_empty() {
            true => cpu_time("self"),
            false => sum(&on.serving_pids),
        };
        let servers_cpu = || sum(&on.server_pids);
        let (cpu, server_cpu) = (serving_cpu(), servers_cpu());
        let result = match generator {
            Some(g) => match g.run().await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{target} c={c}: {e:#}");
                    continue;
                }
            },
            None => load(client, subject, body.clone(), c, duration).await,
        };
        let requests = result.requests;
        let per_request = |used: Duration| used.as_secs_f64() * 1e6 / requests.max(1) as f64;
        let row = Row {
            target: target.to_owned(),
            concurrency: c,
            requests,
            errors: result.errors,
            throughput_rps: requests as f64 / result.elapsed_s,
            p50_us: quantile_us(&result.latencies_us, 0.50),
            p99_us: quantile_us(&result.latencies_us, 0.99),
            cpu_us_per_request: per_request(serving_cpu().saturating_sub(cpu)),
            server_cpu_us_per_request: per_request(servers_cpu().saturating_sub(server_cpu)),
        };
        println!(
            "{:<38} c={:<3} {:>8.0} req/s   p50 {:>6.0} µs   p99 {:>6.0} µs   cpu/req {:>5.1} + server {:>4.1} µs   ({} ok, {} errors)",
            row.target,
            row.concurrency,
            row.throughput_rps,
            row.p50_us,
            row.p99_us,
            row.cpu_us_per_request,
            row.server_cpu_us_per_request,
            row.requests,
            row.errors
        );
        rows.push(row);
    }
}

/// A host for benchmarks: on a server without authentication, serving kernels as they stand
/// in their directories, sharing `engine`.
pub(crate) async fn bench_host(
    engine: &HostEngine,
    url: &str,
    events: bool,
    tool_events: bool,
) -> Result<Host> {
    Ok(Host::with_engine(
        ServeConfig {
            nats: url.to_owned(),
            identity: IdentityMode::Insecure,
            publish_events: events,
            tool_events,
            follow_serving_record: false,
            ..ServeConfig::default()
        },
        engine.clone(),
    )
    .await?)
}

/// Builds `kernel`'s component in its directory unless it is there already.
pub(crate) fn ensure_built(kernel: &Kernel) -> Result<()> {
    let dir = kernel.dir();
    if kernel
        .tool
        .component
        .as_ref()
        .is_none_or(|c| !dir.join(c).is_file())
    {
        ck_build::build_kernel(kernel, dir)?;
    }
    Ok(())
}

/// Serves `kernel` on `host` as it stands in its directory (built first when it is not), with
/// warm instance reuse set to `reuse` (0: a fresh instance per message).
pub(crate) async fn serve_kernel(
    host: &Host,
    mut kernel: Kernel,
    reuse: u64,
) -> Result<Arc<ck_serve::VersionService>> {
    kernel.limits.reuse_instances = reuse;
    ensure_built(&kernel)?;
    let name = kernel.name.clone();
    host.add(host.plan_working(kernel, Vec::new())?).await?;
    Ok(host.service(&name).await?)
}

/// Runs the benchmark `args` describes.
pub fn run(args: &BenchConfig) -> Result<()> {
    let runtime = ck_serve::runtime::build(args.host_threads)?;
    if args.callout {
        runtime.block_on(crate::callout::run(&crate::callout::CalloutBench {
            connects: args.connects,
            storm: args.storm,
            flood: args.flood,
            flood_seconds: args.flood_seconds,
            generator: &args.generator,
            json: args.json.as_deref(),
        }))?;
        return Ok(());
    }
    if args.cluster {
        runtime.block_on(crate::cluster::run(args))?;
        return Ok(());
    }
    if let Some(n) = args.swap {
        runtime.block_on(crate::swap::run(&args.echo, n, args.json.as_deref()))?;
        return Ok(());
    }
    if let Some(n) = args.instructions {
        runtime.block_on(instructions_run(args, n))?;
        return Ok(());
    }
    if let Some(n) = args.tasks {
        runtime.block_on(crate::tasks::run(
            &args.tasks_kernel,
            n,
            &args.concurrency,
            args.json.as_deref(),
        ))?;
        return Ok(());
    }
    runtime.block_on(bench(args))
}

/// `--instructions N`: instructions per request of each wanted target of baseline, protocol,
/// fresh and reused, at each concurrency level.
async fn instructions_run(args: &BenchConfig, requests: usize) -> Result<()> {
    let server = ck_natsd::NatsServer::start("")?;
    let url = server.url();
    println!(
        "nats-server {} on {url}; instructions counted by callgrind over {requests} requests per target",
        nats_version()
    );
    let targets: Vec<&str> = ["baseline", "protocol", "fresh", "reused"]
        .into_iter()
        .filter(|t| args.targets.iter().any(|x| x == t))
        .collect();
    let mut rows = Vec::new();
    for &c in &args.concurrency {
        for (target, per_request) in
            instructions::measure(args, &url, &targets, requests, c).await?
        {
            rows.push(serde_json::json!({"target": target, "concurrency": c, "instructions_per_request": per_request}));
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)?;
    }
    drop(server);
    Ok(())
}

async fn bench(args: &BenchConfig) -> Result<()> {
    let server = ck_natsd::NatsServer::start("")?;
    let url = server.url();
    println!(
        "nats-server {} on {url}; {} s per run; host built {}; load generator {}; host threads {}",
        nats_version(),
        args.seconds,
        profile(),
        if args.external {
            "in its own process"
        } else {
            "in this process"
        },
        match args.host_threads {
            0 => "one per core".to_owned(),
            n => n.to_string(),
        }
    );
    let engine = HostEngine::new(HostConfig::default()).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let client = async_nats::connect(&url).await?;
    let payload =
        serde_json::json!({"action": "echo", "data": {"pad": "x".repeat(59)}}).to_string();
    let body = Bytes::from(payload.clone());

    // (a) Baseline: a plain async-nats responder echoing the payload, no WebAssembly.
    let responder = async_nats::connect(&url).await?;
    let mut sub = responder.subscribe("bench.baseline").await?;
    responder.flush().await?;
    let baseline = tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            if let Some(reply) = message.reply {
                let _ = responder.publish(reply, message.payload).await;
            }
        }
    });

    let echo = load_one(&args.echo)?;
    let domain = load_one(&args.domain)?;
    let wanted = |t: &str| args.targets.iter().any(|x| x == t);
    let on = Target {
        client: &client,
        url: url.clone(),
        server_pids: vec![server.pid().to_string()],
        serving_pids: Vec::new(),
    };
    // (a') The messages the protocol asks for, without WebAssembly or ck's serving loop.
    let protocol = if wanted("protocol") {
        Some(tokio::spawn(protocol_responder(
            url.clone(),
            echo.clone(),
            !args.no_events,
            !args.no_tool_events,
        )))
    } else {
        None
    };
    let mut rows = Vec::new();
    if wanted("baseline") {
        measure(
            &mut rows,
            &on,
            "(a) plain async-nats responder",
            "bench.baseline",
            &body,
            args,
        )
        .await;
    }

    if protocol.is_some() {
        client.flush().await?;
        measure(
            &mut rows,
            &on,
            "(a') responder + protocol publishes",
            "bench.protocol",
            &body,
            args,
        )
        .await;
    }

    // (b) The echo kernel through the host, fresh instance per message (the default).
    let mut instantiate = Vec::new();
    if wanted("fresh") {
        let host = bench_host(&engine, &url, !args.no_events, !args.no_tool_events).await?;
        let fresh = serve_kernel(&host, echo.clone(), 0).await?;
        client.flush().await?;
        measure(
            &mut rows,
            &on,
            "(b) ck host, echo, fresh instance",
            &echo.topics.input,
            &body,
            args,
        )
        .await;
        instantiate = fresh.guest().instantiate_timings(2000).await;
        host.shutdown().await;
    }

    // (b') The same with warm instance reuse.
    if wanted("reused") {
        let host = bench_host(&engine, &url, !args.no_events, !args.no_tool_events).await?;
        serve_kernel(&host, echo.clone(), 1000).await?;
        client.flush().await?;
        measure(
            &mut rows,
            &on,
            "(b') ck host, echo, reused instance",
            &echo.topics.input,
            &body,
            args,
        )
        .await;
        host.shutdown().await;
    }

    // (c) The domain kernel doing real work (tally 20 ballots), fresh instances.
    let host = bench_host(&engine, &url, !args.no_events, !args.no_tool_events).await?;
    if wanted("domain") {
        serve_kernel(&host, domain.clone(), 0).await?;
        client.flush().await?;
        let ballots: Vec<&str> = ["ada", "grace", "linus", "barbara"]
            .iter()
            .cycle()
            .take(20)
            .copied()
            .collect();
        let tally = Bytes::from(
            serde_json::json!({"action": "tally", "data": {"ballots": ballots}}).to_string(),
        );
        measure(
            &mut rows,
            &on,
            "(c) ck host, CS.Voting tally",
            &domain.topics.input,
            &tally,
            args,
        )
        .await;
    }
    host.shutdown().await;
    baseline.abort();
    if let Some(protocol) = protocol {
        protocol.abort();
    }

    let p50 = percentile(&instantiate, 0.5);
    let p99 = percentile(&instantiate, 0.99);
    println!("instantiate (InstancePre, pooling, fresh store): p50 {p50:.1} µs   p99 {p99:.1} µs");
    let at = |target: &str| {
        rows.iter()
            .find(|r| r.target.starts_with(target) && r.concurrency == 64)
            .map(|r| r.throughput_rps)
    };
    let ratio = at("(a)").zip(at("(b) ")).map(|(a, b)| b / a);
    if let Some(r) = ratio {
        println!("ratio (b)/(a) throughput at c=64: {r:.2}");
    }
    let ratio_protocol = at("(a')").zip(at("(b) ")).map(|(a, b)| b / a);
    if let Some(r) = ratio_protocol {
        println!("ratio (b)/(a') throughput at c=64: {r:.2} (against the protocol's own messages)");
    }
    let tool_events_cost = if args.tool_events_rounds > 0 && wanted("fresh") {
        Some(tool_events_cost(&engine, &url, &client, &echo, &body, args).await?)
    } else {
        None
    };
    let report = Report {
        machine: format!(
            "{} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        payload_bytes: payload.len(),
        seconds_per_run: args.seconds,
        rows,
        instantiate_p50_us: p50,
        instantiate_p99_us: p99,
        ratio_echo_fresh_vs_baseline_c64: ratio,
        ratio_echo_fresh_vs_protocol_c64: ratio_protocol,
        tool_events_cost_c64: tool_events_cost,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    drop(server);
    Ok(())
}

/// A plain async-nats responder that sends what the protocol asks of every answer, as the host
/// sends it, and nothing more: the request parsed, the reply and `result.{K}` with the CKP
/// headers, the event on `event.{K}`, and the two TOOL events. No WebAssembly, no serving
/// machinery: the floor any CKP host on this server pays per message.
async fn protocol_responder(
    url: String,
    kernel: Kernel,
    events: bool,
    send_tool_events: bool,
) -> Result<()> {
    use ck_bus::envelope::{ANONYMOUS, Responder, answer_messages, parse_request};
    let client = async_nats::connect(&url).await?;
    let mut sub = client.subscribe("bench.protocol").await?;
    client.flush().await?;
    let who = Responder {
        kernel: kernel.name.clone(),
        kernel_urn: kernel.urn.clone(),
    };
    // The host's own TOOL-event encoder, labelled like a served version (commit ids of the
    // same length), so that the floor sends the same bytes.
    let tool_events = ck_host::ToolEvents::new(
        &kernel,
        Some(&ck_host::VersionLabel {
            name: "stable".into(),
            ck: "c".repeat(40),
            tool: "t".repeat(40),
        }),
    );
    while let Some(message) = sub.next().await {
        let (trace_id, request) = parse_request(&message.payload, Default::default(), 1 << 20);
        let outcome = request.map_err(|e| e.failure()).and_then(|r| {
            serde_json::value::RawValue::from_string(r.data)
                .map_err(|e| ck_bus::Failure::new(500, "invalid_result", e.to_string()))
        });
        if send_tool_events {
            let call = tool_events.next_call();
            for outcome in [
                ck_host::Outcome::Invoked,
                ck_host::Outcome::Finished(Duration::from_micros(1), None),
            ] {
                let (subject, body) = tool_events.encode("echo", &trace_id, call, outcome);
                let _ = client.publish(subject, body).await;
            }
        }
        let answer = answer_messages(&who, &trace_id, ANONYMOUS, Some("echo"), &outcome, events);
        if let Some(reply) = message.reply {
            let _ = client
                .publish_with_headers(reply, answer.headers.clone(), answer.result.clone())
                .await;
        }
        if let Some(event) = answer.event {
            let _ = client
                .publish_with_headers(kernel.topics.event.clone(), answer.headers.clone(), event)
                .await;
        }
        let _ = client
            .publish_with_headers(kernel.topics.result.clone(), answer.headers, answer.result)
            .await;
    }
    Ok(())
}

/// What the TOOL loop's per-call events cost: the same kernel served twice at once (input
/// subjects apart), with and without them, measured alternately so both see the same machine.
/// Returns the cost as a fraction of the quiet one's median throughput.
async fn tool_events_cost(
    engine: &HostEngine,
    url: &str,
    client: &async_nats::Client,
    echo: &Kernel,
    body: &Bytes,
    args: &BenchConfig,
) -> Result<f64> {
    let mut quiet = echo.clone();
    quiet.topics.input = format!("{}.quiet", echo.topics.input);
    quiet.topics.result = format!("{}.quiet", echo.topics.result);
    quiet.topics.event = format!("{}.quiet", echo.topics.event);
    // Two hosts on one engine: one kernel served with the events and without them at once.
    let loud = bench_host(engine, url, !args.no_events, true).await?;
    serve_kernel(&loud, echo.clone(), 0).await?;
    let silent = bench_host(engine, url, !args.no_events, false).await?;
    serve_kernel(&silent, quiet.clone(), 0).await?;
    client.flush().await?;
    let duration = Duration::from_secs_f64(args.seconds);
    let _ = load(
        client,
        &quiet.topics.input,
        body.clone(),
        8,
        Duration::from_millis(300),
    )
    .await;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..args.tool_events_rounds {
        // Alternate which goes first, so neither always follows the other.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for events in order {
            let subject = if events {
                &echo.topics.input
            } else {
                &quiet.topics.input
            };
            let started = Instant::now();
            let requests = load(client, subject, body.clone(), 64, duration)
                .await
                .requests;
            let rps = requests as f64 / started.elapsed().as_secs_f64();
            if events {
                with.push(rps)
            } else {
                without.push(rps)
            }
        }
    }
    loud.shutdown().await;
    silent.shutdown().await;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, wo) = (median(&mut with), median(&mut without));
    let cost = 1.0 - w / wo;
    println!(
        "tool.invoked/completed events, echo fresh c=64, median of {} alternating rounds: {w:.0} req/s with, {wo:.0} without: cost {:.1} %",
        args.tool_events_rounds,
        cost * 100.0
    );
    Ok(cost)
}

fn nats_version() -> String {
    ck_natsd::binary()
        .ok()
        .and_then(|b| std::process::Command::new(b).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "in debug mode (numbers are not representative: use --release)"
    } else {
        "in release mode"
    }
}

//! `ck` — the ConceptKernel runtime's command line. It composes the library crates and owns
//! nothing but argument parsing, output formatting and exit codes.

mod acl;
mod authz;
mod bench;
mod bench_load;
mod bridge;
mod build;
mod build_agent;
mod call;
mod deploy;
mod dev;
mod families;
mod fleet;
mod host;
mod identity;
mod mcp;
mod new;
mod platform;
mod publish;
mod restore;
mod run;
mod status;
mod validate;
mod verify;
mod versions;

use std::process::ExitCode;

/// The host allocates small buffers per message on several threads; glibc's arenas contend on
/// them (measured: lock waits and `malloc_consolidate` ≈ 11 % of a host under load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// ConceptKernel runtime and SPIFFE-secured NATS topic router.
#[derive(Parser)]
#[command(name = "ck", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check conceptkernel.yaml manifests and report every problem with file, line and field.
    ///
    /// Each PATH is a manifest file, a kernel directory, or a directory searched for
    /// `conceptkernel.yaml` files. Manifests checked together are also checked against each
    /// other (shared GUIDs, colliding topics). Exits 1 when any error is found; warnings alone
    /// do not fail.
    Validate(validate::Args),
    /// Print the NATS permissions compiled for a kernel, as JSON and/or a nats-server block.
    ///
    /// Permissions are deny-by-default allow lists built from the kernel's own topics and the
    /// grants and edges of every kernel given with --with.
    Acl(acl::Args),
    /// Build kernel components from source (C in tool/, or the manifest's spec.tool.build).
    Build(build::Args),
    /// Serve kernels on NATS: subscribe each input topic, answer every message, publish results
    /// and events. SIGTERM or Ctrl-C drains in-flight messages and exits 0.
    Run(run::Args),
    /// Serve a fleet site: what its bucket lists, and every install request and scrub the hub
    /// sends it (verified, fetched, compiled, loaded, health-checked, reported), until SIGTERM.
    Host(host::Args),
    /// Deploy a kernel to a fleet site from the hub: publish it, request it on the site's
    /// install bus with your JWT-SVID, show its progress; exit 0 once the site serves it.
    Deploy(deploy::Args),
    /// Answer the hub's build requests (`fleet.build.{guid}.request` `{ref}`): build the
    /// component from the kernel's TOOL loop at that ref, check it reproduces, push it to the
    /// hub's store and answer `fleet.build.{guid}.done`.
    BuildAgent(build_agent::Args),
    /// Send one request to a kernel and print the answer (exit 1 on an error answer).
    Call(call::Args),
    /// Measure request/reply through the kernel host beside a plain async-nats responder, on a
    /// nats-server it starts itself. Build with --release for representative figures.
    Bench(bench::Args),
    /// The external load generator of `ck bench --external` (prints one JSON result).
    #[command(hide = true)]
    BenchLoad(bench_load::Args),
    /// The connect-flood generator of `ck bench --callout` (prints one JSON result).
    #[command(hide = true)]
    BenchFlood(bench_load::FloodArgs),
    /// One target served for `ck bench --instructions` (under callgrind).
    #[command(hide = true)]
    BenchServe(bench_load::ServeArgs),
    /// SPIFFE identities: the dev identity provider (a Workload API on a unix socket) and an
    /// SVID probe.
    Identity(identity::Args),
    /// The NATS auth callout: set it up (`init`) and run it (`serve`).
    Authz(authz::Args),
    /// Verify a kernel's DATA tree offline: every sealed instance's hashes, proof and PROV-O
    /// fields, and the audit ledger's hash chain. Prints the first broken link with its file
    /// (and line); exits 0 only when everything verifies.
    Verify(verify::Args),
    /// Make a version (a branch such as `develop`, or a commit of the CK or TOOL loop) the
    /// stable one. A running host switches to it without a restart.
    Promote(versions::PromoteArgs),
    /// Send a share of the messages (--weight percent) to a version; 0 ends the canary.
    Canary(versions::CanaryArgs),
    /// End a running canary, or else make the previous stable version stable again.
    Rollback(versions::RollbackArgs),
    /// Publish kernels' recorded versions (manifests, components) to the cluster's control
    /// plane, creating a serving record where the cluster has none. Hosts started with
    /// `ck run --control` serve what the cluster's serving records name.
    Publish(publish::Args),
    /// A fleet's link streams: each site's install requests kept at the hub and mirrored to
    /// the site, its reports kept at the site and sourced to the hub.
    Fleet(fleet::Args),
    /// The platform lane: one JetStream stream per subject family, publishing a CloudEvent
    /// inside a family, and checking subscription contracts.
    Platform(platform::Args),
    /// Deliver the webhook subscriptions' events to their sinks (durable JetStream consumers,
    /// Standard Webhooks signatures or bearer tokens, retries, parking, delivery results on
    /// platform.delivery.>) until interrupted; started again, it resumes where it was.
    Bridge(bridge::Args),
    /// A read-only MCP server on stdio for coding agents: subject families (with their
    /// streams and message counts), kernels, subscriptions, delivery results and silos.
    Mcp(mcp::Args),
    /// Show the fleet: silos, their hosts (live or stale) and what each serves, from the
    /// cluster's FLEET_STATE; --watch follows every change.
    Status(status::Args),
    /// Rebuild a kernel's DATA tree (sealed instances, audit ledger, DATA history) from the
    /// cluster's copy of its sealed instances, after its disk was lost.
    Restore(restore::Args),
    /// Show the serving record and the CK and TOOL loops' branches of a kernel.
    Versions(versions::KernelArg),
    /// Serve one kernel for its author: start a local nats-server with the auth callout and
    /// SPIFFE identity (unless --nats is given), build, serve, and on every save rebuild and
    /// swap the new version in without dropping a message.
    Dev(dev::Args),
    /// Scaffold a kernel directory (manifest, C source, ontology) that `ck dev` serves at once.
    New(new::Args),
}

fn init_logging(serving: bool) {
    // Structured JSON lines on stderr (ckp-spec §5.2); filter with CK_LOG. By default a serving
    // host logs at info (the NATS client's own connection chatter at warn); other commands,
    // whose output is their answer, only warn.
    let default = if serving {
        "info,async_nats=warn"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(
        cli.command,
        Command::Run(_)
            | Command::Host(_)
            | Command::BuildAgent(_)
            | Command::Authz(_)
            | Command::Identity(_)
            | Command::Bridge(_)
    ));
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Acl(args) => acl::run(&args),
        Command::Build(args) => build::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Host(args) => host::run(&args),
        Command::Deploy(args) => deploy::run(&args),
        Command::BuildAgent(args) => build_agent::run(&args),
        Command::Call(args) => call::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::BenchLoad(args) => bench_load::run(&args),
        Command::BenchServe(args) => bench_load::serve(&args),
        Command::BenchFlood(args) => bench_load::flood(&args),
        Command::Identity(args) => identity::run(&args),
        Command::Authz(args) => authz::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Promote(args) => versions::promote(&args),
        Command::Canary(args) => versions::canary(&args),
        Command::Rollback(args) => versions::rollback(&args),
        Command::Publish(args) => publish::run(&args),
        Command::Fleet(args) => fleet::run(&args),
        Command::Platform(args) => platform::run(&args),
        Command::Mcp(args) => mcp::run(&args),
        Command::Bridge(args) => bridge::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Restore(args) => restore::run(&args),
        Command::Versions(args) => versions::versions(&args),
        Command::Dev(args) => dev::run(&args),
        Command::New(args) => new::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ck: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

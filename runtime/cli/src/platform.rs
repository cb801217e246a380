//! `ck platform`: the platform lane's family streams (`ck_platform`), publishing a CloudEvent
//! inside a family, and checking subscription contracts (`ck_contracts`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use ck_acl::families::Families;

use crate::publish::{ClusterArgs, Refusals};

/// Arguments of `ck platform`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Create (or update) one JetStream stream per subject family that declares one; a
    /// subject outside every family then has no stream to land in.
    Streams(StreamsArgs),
    /// Publish one CloudEvent (structured mode) into its family's stream; a subject outside
    /// every family is refused, naming the closest family. Prints the stream and sequence.
    Publish(PublishArgs),
    /// Project the CK, TOOL and DATA loops' commits and ref moves onto platform.hvfs.>
    /// (durable consumers: stopped and started again, it resumes where it left off) until
    /// interrupted.
    Hvfs(HvfsArgs),
    /// Check subscription contracts against contracts/platform-update-subscription.schema.json
    /// and the subject families; exit 1 naming the first contract at fault.
    Contracts(ContractsArgs),
}

#[derive(clap::Args)]
struct FamiliesArg {
    /// The subject families file (default: policies/subject-families.yaml as shipped).
    #[arg(long, value_name = "FILE")]
    subject_families: Option<PathBuf>,
}

impl FamiliesArg {
    fn load(&self) -> Result<Families> {
        crate::families::load(self.subject_families.as_deref())
    }
}

#[derive(clap::Args)]
struct StreamsArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    families: FamiliesArg,
    /// Replicas of each stream (3 on a 3-node cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: u8,
}

#[derive(clap::Args)]
struct PublishArgs {
    /// The NATS subject (for example platform.capability.changed.v1.billing).
    subject: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    families: FamiliesArg,
    /// The CloudEvent type (for example ck.platform.capability.changed).
    #[arg(long = "type", value_name = "TYPE")]
    ty: String,
    /// The CloudEvent source: the emitter's SPIFFE ID or URN.
    #[arg(long, value_name = "URI")]
    source: String,
    /// The event's data: a JSON document.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    data: String,
    /// The CloudEvent id (also the Nats-Msg-Id); by default derived from the event.
    #[arg(long)]
    id: Option<String>,
    /// The CloudEvent subject attribute (what the event is about).
    #[arg(long, value_name = "TEXT")]
    about: Option<String>,
}

#[derive(clap::Args)]
struct HvfsArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    families: FamiliesArg,
}

#[derive(clap::Args)]
struct ContractsArgs {
    /// Contract files, or directories of them (every *.json but schemas).
    #[arg(value_name = "PATH", required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    families: FamiliesArg,
}

/// Runs `ck platform`.
pub fn run(args: &Args) -> Result<ExitCode> {
    match &args.command {
        Command::Contracts(a) => contracts(a),
        Command::Streams(a) => block_on(streams(a)),
        Command::Publish(a) => block_on(publish(a)),
        Command::Hvfs(a) => block_on(hvfs(a)),
    }
}

fn block_on(work: impl std::future::Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    tokio::runtime::Runtime::new()?.block_on(work)
}

async fn streams(a: &StreamsArgs) -> Result<ExitCode> {
    let families = a.families.load()?;
    let refusals = Refusals::default();
    let js = a.cluster.connect(&refusals).await?;
    let platform = ck_platform::Platform::new(js, &families);
    let states = platform
        .ensure_streams(usize::from(a.replicas))
        .await
        .map_err(|e| refusals.explain(e.into()))?;
    for s in states {
        println!(
            "{}: stream {} ({}), {} messages",
            s.family,
            s.stream,
            s.subjects.join(", "),
            s.messages
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn publish(a: &PublishArgs) -> Result<ExitCode> {
    let families = a.families.load()?;
    let data: serde_json::Value =
        serde_json::from_str(&a.data).context("--data must be a JSON document")?;
    // Refused before connecting: nothing outside a family reaches the server.
    if let Err(outside) = families.family_of_subject(&a.subject) {
        eprintln!("ck: refused: {outside}");
        return Ok(ExitCode::from(1));
    }
    let refusals = Refusals::default();
    let js = a.cluster.connect(&refusals).await?;
    let platform = ck_platform::Platform::new(js, &families);
    let event = ck_platform::PlatformEvent {
        subject: &a.subject,
        ty: &a.ty,
        source: &a.source,
        about: a.about.as_deref(),
        id: a.id.as_deref(),
        time: None,
        data,
    };
    match platform.publish(&event).await {
        Ok(p) => {
            println!(
                "{}: {} #{} in {} (family {}){}",
                a.subject,
                p.id,
                p.sequence,
                p.stream,
                p.family,
                if p.duplicate { ", already stored" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(
            e @ (ck_platform::PlatformError::Outside(_)
            | ck_platform::PlatformError::NoStream { .. }),
        ) => {
            eprintln!("ck: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(refusals.explain(e.into())),
    }
}

async fn hvfs(a: &HvfsArgs) -> Result<ExitCode> {
    let families = a.families.load()?;
    let refusals = Refusals::default();
    let js = a.cluster.connect(&refusals).await?;
    let platform = ck_platform::Platform::new(js, &families);
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    eprintln!("hvfs.projecting");
    let done = ck_platform::hvfs::run_projector(&platform, stop, |_| {})
        .await
        .map_err(|e| refusals.explain(e.into()))?;
    println!(
        "hvfs: {} projected, {} already stored, {} not commits or ref moves, {} unprojectable",
        done.stored, done.duplicates, done.skipped, done.refused
    );
    Ok(ExitCode::SUCCESS)
}

fn contracts(a: &ContractsArgs) -> Result<ExitCode> {
    let families = a.families.load()?;
    let checker = ck_contracts::ContractChecker::new(&families);
    let mut accepted = 0;
    for path in &a.paths {
        let result = if Path::new(path).is_dir() {
            checker.check_dir(path)
        } else {
            checker.check_file(path).map(|s| vec![s])
        };
        match result {
            Ok(subscriptions) => {
                for s in subscriptions {
                    println!(
                        "{}: {} ({:?}, {:?}) — {}",
                        s.subscription_id,
                        s.owner,
                        s.delivery_mode,
                        s.replay_policy,
                        s.families(&families).join(", ")
                    );
                    accepted += 1;
                }
            }
            Err(e) => {
                eprintln!("ck: {e}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    println!("{accepted} contracts accepted");
    Ok(ExitCode::SUCCESS)
}

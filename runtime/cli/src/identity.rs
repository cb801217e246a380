//! `ck identity`: the dev identity provider and a Workload API probe.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ck_identity::{DevProvider, IdentityClient, ProviderConfig, TrustDomain};
use tokio_util::sync::CancellationToken;

/// Arguments of `ck identity`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Serve a SPIFFE Workload API on a unix socket, issuing JWT-SVIDs signed by a local key
    /// (for development and tests; it does not attest workloads).
    Serve(ServeArgs),
    /// Fetch a JWT-SVID from a Workload API and print it (SPIRE's agent or `ck identity serve`).
    Fetch(FetchArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Unix socket to serve on (created 0600).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", value_name = "PATH")]
    socket: PathBuf,
    /// Directory where signing keys persist.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Trust domain to issue SVIDs in (repeatable).
    #[arg(long = "trust-domain", required = true, value_name = "DOMAIN", value_parser = parse_trust_domain)]
    trust_domains: Vec<TrustDomain>,
    /// SVID lifetime in seconds (SPIRE's default is 300).
    #[arg(long, default_value_t = 300)]
    ttl: u64,
}

#[derive(clap::Args)]
struct FetchArgs {
    /// The SPIFFE ID to fetch an SVID for.
    spiffe_id: String,
    /// Audience (default: nats.{trust domain}).
    #[arg(long)]
    audience: Option<String>,
    /// Workload API socket.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", value_name = "PATH")]
    socket: String,
}

/// Parses a `--trust-domain` value (`example.org` or `spiffe://example.org`).
pub(crate) fn parse_trust_domain(name: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(name).map_err(|e| format!("not a trust domain: {e}"))
}

pub fn run(args: &Args) -> Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match &args.command {
            Command::Serve(a) => serve(a).await,
            Command::Fetch(a) => fetch(a).await,
        }
    })
}

async fn serve(args: &ServeArgs) -> Result<std::process::ExitCode> {
    let provider = Arc::new(DevProvider::open(ProviderConfig {
        key_dir: args.dir.clone(),
        trust_domains: args.trust_domains.clone(),
        ttl: Duration::from_secs(args.ttl.max(1)),
    })?);
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        ck_serve::signal::terminated().await;
        trigger.cancel();
    });
    provider.serve(&args.socket, shutdown).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn fetch(args: &FetchArgs) -> Result<std::process::ExitCode> {
    let id = ck_identity::SpiffeId::new(&args.spiffe_id)
        .with_context(|| format!("'{}' is not a SPIFFE ID", args.spiffe_id))?;
    let audience = args
        .audience
        .clone()
        .unwrap_or_else(|| ck_identity::nats_audience(id.trust_domain_name()));
    let client = IdentityClient::connect(&args.socket).await?;
    let svid = client.fetch(&args.spiffe_id, &audience).await?;
    println!("{}", svid.token);
    Ok(std::process::ExitCode::SUCCESS)
}

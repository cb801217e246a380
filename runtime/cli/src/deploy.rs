//! `ck deploy`: a kernel version to a fleet site from the hub — published to the hub's control
//! plane, requested on the site's install bus with the operator's JWT-SVID, its progress shown
//! live, the exit code from its `done`. The site runs nothing (`ck host --silo` carries it
//! out). `ck fleet scrub` shares the requester and the following.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ck_control::install::{self, Outcome, Report, RequestWatch, VersionSpec};
use ck_manifest::topics::InstallSubject;

use crate::publish::{ClusterArgs, Refusals};

/// Who asks, and how they prove it.
#[derive(clap::Args, Clone)]
pub struct RequesterArgs {
    /// Your SPIFFE ID: the requester the site's install policy is checked for.
    #[arg(long = "as", value_name = "SPIFFE_ID", env = "CK_REQUESTER")]
    pub requester: String,
    /// The Workload API socket that issues your JWT-SVID (SPIRE's agent, or `ck identity
    /// serve`).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", value_name = "PATH")]
    pub spiffe_socket: String,
    /// The site's install audience template, `{silo}` and `{request}` filled in (default: the
    /// shipped install policy's).
    #[arg(long, value_name = "TEMPLATE")]
    pub audience: Option<String>,
    /// The request's id (default: generated). A request is carried out once per id.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Seconds to wait for `done` (a site cut off carries the request out when its link
    /// returns; the request stays at the hub meanwhile).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
    /// Print the request (JSON, one line) instead of sending it, e.g. for `nats pub`.
    #[arg(long)]
    pub print_request: bool,
}

impl RequesterArgs {
    /// The request id to use.
    pub fn id(&self) -> Result<String> {
        let id = match &self.id {
            Some(id) => id.clone(),
            None => format!("req-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ")),
        };
        if !ck_manifest::topics::is_fleet_name(&id) {
            bail!("--id must be 1–64 of A-Z a-z 0-9 - _, not `{id}`");
        }
        Ok(id)
    }

    /// A JWT-SVID of the requester for silo `silo`'s install audience, bound to `binding`
    /// (the request's `proof_binding`).
    pub async fn proof(&self, silo: &str, binding: &str) -> Result<String> {
        let audience = match &self.audience {
            Some(template) => ck_acl::install::audience_from(template, silo, binding),
            None => ck_acl::install::InstallPolicy::parse(ck_acl::install::SHIPPED_INSTALL_POLICY)?
                .audience_for(silo, binding),
        };
        let identity = ck_identity::IdentityClient::connect(&self.spiffe_socket)
            .await
            .with_context(|| format!("connecting to the Workload API at {}", self.spiffe_socket))?;
        Ok(identity.fetch(&self.requester, &audience).await?.token)
    }
}

/// Prints each report of the request as it comes; the exit code from `done` (0 installed or
/// scrubbed, 1 otherwise, 3 when no `done` came in time).
pub async fn follow(mut watch: RequestWatch, silo: &str, timeout: Duration) -> Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut quiet_since = tokio::time::Instant::now();
    let mut said_waiting = false;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), watch.next());
        let report = match tokio::time::timeout_at(deadline, next).await {
            Err(_) => {
                eprintln!(
                    "no done from {silo} within {} s; the request stays at the hub and is carried out when the site takes it",
                    timeout.as_secs()
                );
                return Ok(ExitCode::from(3));
            }
            Ok(Err(_)) => {
                if !said_waiting && quiet_since.elapsed() >= Duration::from_secs(10) {
                    println!(
                        "waiting for {silo} (no report for 10 s: its link may be down; the request is kept at the hub)"
                    );
                    said_waiting = true;
                }
                continue;
            }
            Ok(Ok(None)) => bail!("the subscription to {silo}'s reports ended"),
            Ok(Ok(Some(report))) => report,
        };
        quiet_since = tokio::time::Instant::now();
        match report {
            Report::Progress(p) => println!(
                "  {:<8} {:<4} {:>6} ms{}",
                serde_json::to_value(p.step)?.as_str().unwrap_or_default(),
                if p.ok { "ok" } else { "FAIL" },
                p.ms,
                p.detail.map(|d| format!("  {d}")).unwrap_or_default()
            ),
            Report::Done(done) => {
                let outcome = serde_json::to_value(done.outcome)?;
                println!(
                    "{silo}: {}{}",
                    outcome.as_str().unwrap_or_default(),
                    done.reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
                for k in &done.kernels {
                    println!(
                        "  serves {} {} ({}) health {}",
                        k.name, k.version, k.digest, k.health
                    );
                }
                if let Some(r) = &done.receipt {
                    println!(
                        "  receipt: requested by {}, carried out by {} at {} (request {})",
                        r.requester, r.host, r.at, r.seq
                    );
                }
                return Ok(match done.outcome {
                    Outcome::Installed | Outcome::Scrubbed => ExitCode::SUCCESS,
                    _ => ExitCode::FAILURE,
                });
            }
        }
    }
}

/// Arguments of `ck deploy`.
#[derive(clap::Args)]
pub struct Args {
    /// The kernel directory (built: its recorded `develop` version is deployed).
    #[arg(value_name = "KERNEL")]
    kernel: PathBuf,
    /// The site.
    #[arg(long, value_name = "SILO")]
    silo: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    requester: RequesterArgs,
}

/// Runs `ck deploy`.
pub fn run(args: &Args) -> Result<ExitCode> {
    if let Some(problem) = ck_manifest::topics::silo_name_problem(&args.silo) {
        bail!("--silo: {problem}");
    }
    let kernel = crate::validate::load_one(&args.kernel)?;
    let id = args.requester.id()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let refusals = Refusals::default();
        let plane = args
            .cluster
            .open(Some(&ck_control::PlaneConfig::default()), &refusals)
            .await
            .map_err(|e| refusals.explain(e))?;
        let published = plane
            .publish(&kernel)
            .await
            .with_context(|| format!("publishing {} to the hub", kernel.name))
            .map_err(|e| refusals.explain(e))?;
        let mut request = plane
            .develop_request(&kernel, &id, &args.requester.requester)
            .await?;
        request.proof = args
            .requester
            .proof(&args.silo, &request.proof_binding())
            .await?;
        if !args.requester.print_request {
            println!(
                "{} {} ({}) at the hub: {} component(s) uploaded",
                kernel.name,
                match &request.version {
                    VersionSpec::Pin(pin) => pin.short(),
                    VersionSpec::Named(name) => name.clone(),
                },
                request.digest,
                published.uploaded
            );
        }
        if args.requester.print_request {
            println!("{}", serde_json::to_string(&request)?);
            return Ok(ExitCode::SUCCESS);
        }
        let watch = install::send(
            plane.jetstream(),
            &args.silo,
            InstallSubject::Request,
            &id,
            &request,
        )
        .await
        .map_err(|e| refusals.explain(e.into()))?;
        println!("{id}: requested at the hub; {}:", args.silo);
        follow(
            watch,
            &args.silo,
            Duration::from_secs(args.requester.timeout),
        )
        .await
    })
}

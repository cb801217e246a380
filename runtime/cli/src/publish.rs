//! `ck publish`, and the operator's connection to the cluster's control plane that it and
//! `ck promote` / `ck canary` / `ck rollback --nats` share.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ck_control::{ControlPlane, PlaneConfig};

/// How an operator's command reaches the cluster's control plane.
#[derive(clap::Args, Clone)]
pub struct ClusterArgs {
    /// NATS server URL(s) of the cluster, comma-separated: the change is made in the cluster's
    /// control plane (every host serving the kernel follows it), not in a local `.ck/`.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// NATS user to connect as (an operator's static user of the server).
    #[arg(long, env = "CK_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// Its password.
    #[arg(
        long,
        env = "CK_NATS_PASSWORD",
        requires = "nats_user",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// The CA file that signs the NATS server's certificate (TLS required).
    #[arg(long, value_name = "FILE", env = "CK_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// What nats-server refused on an operator's connection (`Permissions Violation …`): a
/// refused JetStream request only times out, so the refusal itself is what explains it.
#[derive(Clone, Default)]
pub struct Refusals(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Refusals {
    /// `error` with the server's refusals appended (and why they happen).
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        let seen = self.0.lock().map(|v| v.clone()).unwrap_or_default();
        match seen.first() {
            Some(first) => error.context(format!(
                "nats-server refused this user ({first}{}): policies/control-plane.yaml gives writes to the `operator` role only (`ck authz init --operator NAME:PASSWORD`)",
                if seen.len() > 1 {
                    format!(", and {} more", seen.len() - 1)
                } else {
                    String::new()
                }
            )),
            None => error,
        }
    }
}

impl ClusterArgs {
    /// Connects to the cluster as the operator's user (what the server refuses on the
    /// connection is collected in `refusals`).
    pub async fn connect(&self, refusals: &Refusals) -> Result<async_nats::jetstream::Context> {
        let url = self
            .nats
            .as_deref()
            .context("--nats URL names the cluster")?;
        let client = crate::call::operator_options(
            self.nats_user.as_deref(),
            self.nats_password.as_deref(),
            self.tls_ca.as_deref(),
        )
        .connection_timeout(std::time::Duration::from_secs(5))
        .event_callback({
            let seen = refusals.0.clone();
            move |event| {
                let seen = seen.clone();
                async move {
                    if let async_nats::Event::ServerError(async_nats::ServerError::Other(e)) = event
                        && e.contains("Permissions Violation")
                        && let Ok(mut seen) = seen.lock()
                    {
                        seen.push(e);
                    }
                }
            }
        })
        .connect(ck_bus::servers(url).as_slice())
        .await
        .with_context(|| format!("connecting to {url}"))?;
        Ok(async_nats::jetstream::new(client))
    }

    /// Connects and opens the control plane (creating what is missing with `config` when
    /// given); what the server refuses on the connection is collected in `refusals`.
    pub async fn open(
        &self,
        config: Option<&PlaneConfig>,
        refusals: &Refusals,
    ) -> Result<ControlPlane> {
        let js = self.connect(refusals).await?;
        Ok(match config {
            Some(config) => ControlPlane::create(js, config).await?,
            None => ControlPlane::open(js).await?,
        })
    }
}

/// Arguments of `ck publish`.
#[derive(clap::Args)]
pub struct Args {
    /// Kernel directories (or manifests) whose recorded versions are published.
    #[arg(value_name = "KERNEL", required = true)]
    kernels: Vec<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Replicas of the control plane's buckets when this publish creates them (3 on a 3-node
    /// cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: u8,
    /// The fleet policy whose heartbeat window becomes FLEET_STATE's max age when this publish
    /// creates it (default: policies/fleet.yaml as shipped).
    #[arg(long, value_name = "FILE")]
    fleet_policy: Option<PathBuf>,
}

/// The fleet policy in `file`, or the shipped one.
pub fn fleet_policy(file: Option<&std::path::Path>) -> Result<ck_control::fleet::FleetPolicy> {
    match file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            ck_control::fleet::FleetPolicy::parse(&text)
                .with_context(|| format!("{}", file.display()))
        }
        None => Ok(ck_control::fleet::FleetPolicy::shipped()),
    }
}

/// `ck publish`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let kernels = args
        .kernels
        .iter()
        .map(|k| crate::validate::load_one(k))
        .collect::<Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let config = PlaneConfig {
            replicas: usize::from(args.replicas),
            fleet: fleet_policy(args.fleet_policy.as_deref())?,
        };
        let refusals = Refusals::default();
        let plane = args
            .cluster
            .open(Some(&config), &refusals)
            .await
            .map_err(|e| refusals.explain(e))?;
        for kernel in &kernels {
            let published = plane
                .publish(kernel)
                .await
                .with_context(|| format!("publishing {}", kernel.name))
                .map_err(|e| refusals.explain(e))?;
            println!(
                "{} ({}): {} version(s) published, {} component(s) uploaded, {} loop event(s) announced; cluster serving revision {}: stable {}{}{}",
                kernel.name,
                kernel.guid,
                published.versions.len(),
                published.uploaded,
                published.events,
                published.record.revision,
                published.record.stable.short(),
                published
                    .record
                    .canary
                    .as_ref()
                    .map(|c| format!(", canary {} at {}%", c.pin.short(), c.weight))
                    .unwrap_or_default(),
                if published.created_record {
                    " (record created)"
                } else {
                    ""
                }
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

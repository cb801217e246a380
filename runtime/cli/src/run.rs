//! `ck run`: serve kernels on NATS until SIGTERM or Ctrl-C, then drain within the grace period
//! and exit 0.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use ck_manifest::{Kernel, KernelSet};
use ck_serve::{Host, IdentityMode, ServeConfig};

use crate::validate::{load_all, report_failures};

/// Arguments of `ck run`.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Kernel directories (or manifests) to serve.
    #[arg(required = true, value_name = "KERNEL")]
    pub kernels: Vec<PathBuf>,
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222", env = "CK_NATS_URL")]
    pub nats: String,
    /// Other kernels whose grants and edges count when compiling permissions.
    #[arg(long = "with", value_name = "PATH")]
    pub with: Vec<PathBuf>,
    /// Compiled-component cache directory (default: $CK_CACHE_DIR, $XDG_CACHE_HOME/ck/components
    /// or ~/.cache/ck/components; none if unset). It must be yours and not writable by others;
    /// entries are authenticated with a key kept in it (`.key`, mode 0600).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The CA file that signs the NATS server's certificate: every kernel connection requires
    /// TLS and verifies the server against it (with a tls:// URL, or a server requiring TLS).
    #[arg(long, value_name = "FILE", env = "CK_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Do not use the compiled-component cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Messages handled at once per kernel.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Kernel instances that may exist at once across all kernels.
    #[arg(long, default_value_t = 1000)]
    pub max_instances: u32,
    /// Largest linear memory a kernel may ask for, in MiB.
    #[arg(long, default_value_t = 512)]
    pub max_memory_mb: u64,
    /// Do not publish an event on the kernel's event topic for every answer.
    #[arg(long)]
    pub no_events: bool,
    /// Do not publish the TOOL loop's per-call events (`tool.invoked`, `tool.completed`,
    /// `tool.failed`).
    #[arg(long)]
    pub no_tool_events: bool,
    /// SPIFFE Workload API socket (SPIRE's agent, or `ck identity serve`): each kernel connects
    /// as its SPIFFE ID with a fresh JWT-SVID.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", value_name = "PATH")]
    pub spiffe_socket: Option<String>,
    /// Let kernels named LOCAL.* connect without SPIFFE (as their name, no password).
    #[arg(long)]
    pub allow_local: bool,
    /// Connect without any identity, for a nats-server without authentication (tests,
    /// benchmarks). Never use it against a production server.
    #[arg(long, conflicts_with = "spiffe_socket")]
    pub insecure_no_identity: bool,
    /// Worker threads serving the kernels (0: one per core; 1: a current-thread runtime, no
    /// cross-thread hand-off per message).
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,
    /// Seconds stopping may take (draining, committing the last seals) before what is left
    /// is abandoned to the durable queues; keep it under the orchestrator's kill timeout.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub grace: f64,
    /// Serve what the cluster's control plane says (the serving records and versions `ck
    /// publish` and `ck promote --nats` write), following it through a watch, instead of each
    /// kernel's `.ck/`. Its URL(s); `--nats` when given without a value.
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
    pub control: Option<String>,
    /// The host's own NATS user for the control plane (it may read the registry, the
    /// component store and the serving records).
    #[arg(long, env = "CK_CONTROL_USER", requires = "control")]
    pub control_user: Option<String>,
    /// That user's password.
    #[arg(
        long,
        env = "CK_CONTROL_PASSWORD",
        requires = "control_user",
        hide_env_values = true
    )]
    pub control_password: Option<String>,
    /// Serve /metrics (Prometheus text), /healthz and /readyz on this address (e.g.
    /// 127.0.0.1:9464; port 0 picks one, logged as `http.listening`).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Report this host to the fleet as a host of silo NAME: `fleet.events.{silo}.boot`,
    /// `.pod.ready`, `.gamma1.pulse`, `.mal.tier_down`, and its state in FLEET_STATE (`ck
    /// status` shows it). Needs --control.
    #[arg(long, value_name = "NAME", requires = "control")]
    pub silo: Option<String>,
    /// This host's name in its silo (default: the machine's name and the process id).
    #[arg(long, value_name = "NAME", requires = "silo")]
    pub host_id: Option<String>,
    /// The fleet policy (heartbeat, stale window, memory tiers; default: policies/fleet.yaml as
    /// shipped).
    #[arg(long, value_name = "FILE", requires = "silo")]
    pub fleet_policy: Option<PathBuf>,
}

impl Args {
    /// The host configuration these arguments describe.
    fn config(&self, served: &[Kernel]) -> Result<ServeConfig> {
        let identity = match (&self.spiffe_socket, self.insecure_no_identity) {
            (Some(socket), _) => IdentityMode::Spiffe {
                socket: socket.clone(),
            },
            (None, true) => IdentityMode::Insecure,
            // Kernels that need an identity are refused when added, each with its reason.
            (None, false) => IdentityMode::None,
        };
        if !(self.grace.is_finite() && self.grace >= 0.0) {
            bail!(
                "--grace must be a number of seconds ≥ 0, not {}",
                self.grace
            );
        }
        Ok(ServeConfig {
            nats: self.nats.clone(),
            identity,
            allow_local: self.allow_local,
            tls_ca: self.tls_ca.clone(),
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir
                    .clone()
                    .or_else(ck_host::ArtifactCache::default_dir)
            },
            max_in_flight: self.max_in_flight,
            max_instances: self.max_instances,
            max_memory_mb: self.max_memory_mb,
            fuel: served.iter().any(|k| k.limits.fuel.is_some()),
            publish_events: !self.no_events,
            tool_events: !self.no_tool_events,
            follow_serving_record: true,
            control: self.control.as_ref().map(|url| ck_serve::ControlConfig {
                nats: if url.is_empty() {
                    self.nats.clone()
                } else {
                    url.clone()
                },
                user: self
                    .control_user
                    .clone()
                    .map(|u| (u, self.control_password.clone().unwrap_or_default())),
            }),
            site: None,
            fleet: match &self.silo {
                Some(silo) => Some(ck_serve::FleetConfig {
                    silo: silo.clone(),
                    host: self
                        .host_id
                        .clone()
                        .unwrap_or_else(ck_control::fleet::default_host_name),
                    policy: crate::publish::fleet_policy(self.fleet_policy.as_deref())?,
                }),
                None => None,
            },
            grace: Duration::from_secs_f64(self.grace),
        })
    }
}

/// The kernels to serve and the other kernels known, checked: every diagnostic is printed and
/// invalid or conflicting manifests refuse to serve.
fn load(args: &Args) -> Result<(Vec<Kernel>, Vec<Kernel>)> {
    let (loaded, problems) = load_all(&args.kernels);
    let (known, known_problems) = load_all(&args.with);
    if report_failures(
        problems.iter().chain(&known_problems),
        loaded.iter().chain(&known),
    ) {
        bail!("refusing to serve invalid manifests");
    }
    let served: Vec<Kernel> = loaded.into_iter().filter_map(|l| l.kernel).collect();
    let known: Vec<Kernel> = known.into_iter().filter_map(|l| l.kernel).collect();
    let (_, conflicts) = KernelSet::new(served.iter().chain(&known).cloned().collect());
    if !conflicts.is_empty() {
        for c in &conflicts {
            eprintln!("{c}");
        }
        bail!("refusing to serve conflicting manifests");
    }
    Ok((served, known))
}

pub fn run(args: &Args) -> Result<std::process::ExitCode> {
    let (served, known) = load(args)?;
    let config = args.config(&served)?;
    let runtime = ck_serve::runtime::build(args.worker_threads)?;
    let outcome = runtime.block_on(async {
        let host = std::sync::Arc::new(Host::start(config).await?);
        if let Some(addr) = args.http {
            ck_serve::serve_http(host.clone(), addr).await?;
        }
        let all: Vec<Kernel> = served.iter().chain(&known).cloned().collect();
        let mut plans = Vec::new();
        for kernel in &served {
            let others = all
                .iter()
                .filter(|k| k.manifest_path != kernel.manifest_path)
                .cloned()
                .collect();
            plans.push(if host.control().is_some() {
                host.plan_cluster(kernel, others).await?
            } else {
                host.plan_recorded(kernel, others, "served by ck run")?
            });
        }
        let stop = ck_serve::signal::terminated();
        tokio::pin!(stop);
        for plan in plans {
            let name = plan.kernel.name.clone();
            tokio::select! {
                added = host.add(plan) => if let Err(e) = added {
                    // The kernels already serving stop as on SIGTERM before the error is shown.
                    host.shutdown().await;
                    return Err(anyhow::Error::from(e).context(format!("serving {name}")));
                },
                _ = &mut stop => {
                    tracing::info!("shutdown.requested");
                    host.shutdown().await;
                    return Ok(());
                }
            }
        }
        tokio::select! {
            _ = &mut stop => {}
            // Returns at once without --silo; then the stop signal is all there is to wait for.
            _ = async { host.run_fleet().await; std::future::pending::<()>().await } => {}
        }
        tracing::info!("shutdown.requested");
        host.shutdown().await;
        anyhow::Ok(())
    });
    // Work the grace period abandoned (a blocking commit on a stalled disk) is not waited for.
    runtime.shutdown_timeout(Duration::from_millis(500));
    outcome?;
    Ok(std::process::ExitCode::SUCCESS)
}

//! `ck host`: a host started for a fleet site. It serves what the site's bucket lists and
//! carries out the install requests and scrubs the hub sends the site (`ck_serve`'s install
//! bus), until SIGTERM or Ctrl-C; nobody at the site runs anything else.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ck_serve::{Host, IdentityMode, ServeConfig};

/// Arguments of `ck host`.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The site (silo) this host serves.
    #[arg(long, value_name = "NAME")]
    pub silo: String,
    /// The site's NATS server (its leaf node).
    #[arg(long, default_value = "nats://127.0.0.1:4222", env = "CK_NATS_URL")]
    pub nats: String,
    /// The host's own NATS user at the site (`ck authz init --silo … --control-host`).
    #[arg(long, env = "CK_CONTROL_USER")]
    pub control_user: String,
    /// That user's password.
    #[arg(long, env = "CK_CONTROL_PASSWORD", hide_env_values = true)]
    pub control_password: String,
    /// SPIFFE Workload API socket: kernels connect as their SPIFFE IDs, and requesters'
    /// JWT-SVIDs are verified against the trust bundles it streams.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", value_name = "PATH")]
    pub spiffe_socket: String,
    /// Where the site keeps its kernels (`kernels/`, their DATA), the archive of scrubbed
    /// kernels (`archive/`) and its audit ledger (`data/ledger/audit.jsonl`).
    #[arg(long, value_name = "DIR")]
    pub site_dir: PathBuf,
    /// The hub's JetStream domain.
    #[arg(long, value_name = "NAME", default_value = "hub")]
    pub hub_domain: String,
    /// Who may install what where (default: policies/install.yaml as shipped).
    #[arg(long, value_name = "FILE")]
    pub install_policy: Option<PathBuf>,
    /// This host's name in its silo (default: the machine's name and the process id).
    #[arg(long, value_name = "NAME")]
    pub host_id: Option<String>,
    /// The SPIFFE ID receipts name as the host that carried a request out; the Workload API must
    /// issue it an SVID (default:
    /// spiffe://{the policy's first trust domain}/ck/host/{silo}/{host}).
    #[arg(long, value_name = "ID")]
    pub host_spiffe_id: Option<String>,
    /// The fleet policy (heartbeat, stale window, memory tiers).
    #[arg(long, value_name = "FILE")]
    pub fleet_policy: Option<PathBuf>,
    /// Seconds a health check waits for an installed version to serve.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub health_timeout: u64,
    /// Compiled-component cache directory (default: $CK_CACHE_DIR, $XDG_CACHE_HOME/ck/components
    /// or ~/.cache/ck/components).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The CA file that signs the site server's certificate.
    #[arg(long, value_name = "FILE", env = "CK_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Seconds stopping may take before what is left is abandoned to the durable queues.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub grace: f64,
}

impl Args {
    fn config(&self) -> Result<ServeConfig> {
        if !(self.grace.is_finite() && self.grace >= 0.0) {
            bail!(
                "--grace must be a number of seconds ≥ 0, not {}",
                self.grace
            );
        }
        let policy_text = match &self.install_policy {
            Some(file) => std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?,
            None => ck_acl::install::SHIPPED_INSTALL_POLICY.to_owned(),
        };
        let policy = ck_acl::install::InstallPolicy::parse(&policy_text).with_context(|| {
            self.install_policy
                .as_ref()
                .map_or("policies/install.yaml".into(), |f| f.display().to_string())
        })?;
        let host = self
            .host_id
            .clone()
            .unwrap_or_else(ck_control::fleet::default_host_name);
        let host_spiffe_id = match &self.host_spiffe_id {
            Some(id) => id.clone(),
            None => {
                let domain = policy
                    .rules
                    .iter()
                    .flat_map(|r| r.requesters.iter())
                    .find_map(|r| {
                        r.strip_prefix("spiffe://")
                            .and_then(|rest| rest.split('/').next())
                    })
                    .unwrap_or("ck.local");
                format!("spiffe://{domain}/ck/host/{}/{host}", self.silo)
            }
        };
        std::fs::create_dir_all(&self.site_dir)
            .with_context(|| format!("creating {}", self.site_dir.display()))?;
        Ok(ServeConfig {
            nats: self.nats.clone(),
            identity: IdentityMode::Spiffe {
                socket: self.spiffe_socket.clone(),
            },
            tls_ca: self.tls_ca.clone(),
            cache_dir: self
                .cache_dir
                .clone()
                .or_else(ck_host::ArtifactCache::default_dir),
            // Any kernel may be sent: one that meters fuel must not be refused for it.
            fuel: true,
            control: Some(ck_serve::ControlConfig {
                nats: self.nats.clone(),
                user: Some((self.control_user.clone(), self.control_password.clone())),
            }),
            fleet: Some(ck_serve::FleetConfig {
                silo: self.silo.clone(),
                host,
                policy: crate::publish::fleet_policy(self.fleet_policy.as_deref())?,
            }),
            site: Some(ck_serve::SiteConfig {
                hub_domain: self.hub_domain.clone(),
                dir: self.site_dir.clone(),
                policy,
                host_spiffe_id,
                health_timeout: Duration::from_secs(self.health_timeout),
            }),
            grace: Duration::from_secs_f64(self.grace),
            ..ServeConfig::default()
        })
    }
}

/// Runs `ck host`.
pub fn run(args: &Args) -> Result<std::process::ExitCode> {
    let config = args.config()?;
    let runtime = ck_serve::runtime::build(0)?;
    let outcome = runtime.block_on(async {
        let host = std::sync::Arc::new(Host::start(config).await?);
        if let Some(addr) = args.http {
            ck_serve::serve_http(host.clone(), addr).await?;
        }
        tracing::info!(silo = %args.silo, "site.serving");
        tokio::select! {
            _ = ck_serve::signal::terminated() => {}
            _ = async {
                tokio::join!(host.run_site(), host.run_fleet());
                std::future::pending::<()>().await
            } => {}
        }
        tracing::info!("shutdown.requested");
        host.shutdown().await;
        anyhow::Ok(())
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
    outcome?;
    Ok(std::process::ExitCode::SUCCESS)
}

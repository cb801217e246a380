//! What a [`crate::Host`] is built from: a plain struct, no command-line types. `ck run`,
//! `ck dev`, `ck bench` and tests each fill one in; the defaults are `ck run`'s.

use std::path::PathBuf;
use std::time::Duration;

/// How the host's kernels prove who they are to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMode {
    /// Each kernel connects as its SPIFFE ID with a JWT-SVID from this Workload API socket
    /// (SPIRE's agent, or the dev identity provider); callers of `auth`/`owner` actions are
    /// verified against the trust bundles it streams.
    Spiffe {
        /// The Workload API socket (a path or a `unix://` URL).
        socket: String,
    },
    /// No identity source: only `LOCAL.*` kernels connect (as their name, with
    /// [`ServeConfig::allow_local`]); any other kernel is refused when added.
    None,
    /// No identity at all, for a nats-server without authentication (tests, benchmarks).
    /// Never for a production server.
    Insecure,
}

/// Everything a serving host needs besides the kernels it serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// NATS server URL(s), comma-separated.
    pub nats: String,
    /// How kernels connect.
    pub identity: IdentityMode,
    /// Kernels named `LOCAL.*` connect as their name, without proof.
    pub allow_local: bool,
    /// The CA that signs the NATS server's certificate: every kernel connection then requires
    /// TLS and verifies the server against it (`ck_bus::with_tls`).
    pub tls_ca: Option<PathBuf>,
    /// The compiled-component cache directory; `None` serves without a cache.
    pub cache_dir: Option<PathBuf>,
    /// Messages handled at once per kernel.
    pub max_in_flight: usize,
    /// Kernel instances that may exist at once across all kernels.
    pub max_instances: u32,
    /// Largest linear memory a kernel may ask for, in MiB.
    pub max_memory_mb: u64,
    /// Count fuel, so kernels with `spec.limits.fuel` can be served (costs every kernel some
    /// speed). A kernel asking for fuel on a host without it is refused when added.
    pub fuel: bool,
    /// Publish an event on the kernel's event topic for every answer.
    pub publish_events: bool,
    /// Publish the TOOL loop's per-call events (`tool.invoked`, `tool.completed`,
    /// `tool.failed`).
    pub tool_events: bool,
    /// Follow each kernel's serving record (promote / canary / rollback) while serving.
    pub follow_serving_record: bool,
    /// The cluster's control plane: when set, what each kernel serves comes from its serving
    /// record in the cluster (versions from the registry and the component store), followed
    /// through a KV watch, instead of from its `.ck/` directory.
    pub control: Option<ControlConfig>,
    /// Report this host to the fleet (`policies/fleet.yaml`) over the control plane's
    /// connection: `boot`, `pod.ready`, heartbeats, memory tier, and its state in
    /// `FLEET_STATE`. Needs `control`.
    pub fleet: Option<FleetConfig>,
    /// Serve a fleet site's install bus (`ck host --silo`): what the site serves comes from
    /// its bucket and its install requests, not from kernel directories. Needs `control`
    /// (the site's own control plane) and `fleet`.
    pub site: Option<SiteConfig>,
    /// How long stopping may take in any state (serving, reconnecting, NATS gone, mid-swap,
    /// mid-seal) before what is left is abandoned; durable queues stay for the next start.
    pub grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            nats: "nats://127.0.0.1:4222".into(),
            identity: IdentityMode::Insecure,
            allow_local: false,
            tls_ca: None,
            cache_dir: ck_host::ArtifactCache::default_dir(),
            max_in_flight: 256,
            max_instances: 1000,
            max_memory_mb: 512,
            fuel: false,
            publish_events: true,
            tool_events: true,
            follow_serving_record: true,
            control: None,
            fleet: None,
            site: None,
            grace: DEFAULT_GRACE,
        }
    }
}

/// How the host reaches the cluster's control plane (`ck_control`): one connection of the
/// host's own, which may read the registry, the component store and the serving records (the
/// server's permissions for that user say so; it writes none of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// NATS server URL(s), comma-separated.
    pub nats: String,
    /// The host's user and password, when the server asks for them.
    pub user: Option<(String, String)>,
}

/// Which silo and host this host reports as, under which fleet policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The silo (site).
    pub silo: String,
    /// This host's name in the silo.
    pub host: String,
    /// Heartbeat, window and memory tiers.
    pub policy: ck_control::fleet::FleetPolicy,
}

/// A host serving a fleet site's install bus (see `crate::install`).
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// The hub's JetStream domain (its registry and component store are read through it).
    pub hub_domain: String,
    /// Where the site keeps its kernels' directories (`kernels/{name}`: their DATA), the
    /// archive of scrubbed kernels (`archive/`) and its audit ledger.
    pub dir: PathBuf,
    /// Who may install what where.
    pub policy: ck_acl::install::InstallPolicy,
    /// The SPIFFE ID receipts name as the host that carried a request out; the Workload API
    /// must issue it an SVID when the host starts.
    pub host_spiffe_id: String,
    /// How long a health check waits for the installed version to serve.
    pub health_timeout: Duration,
}

/// The default grace period of a stop: well inside the 30 s an orchestrator gives a pod.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

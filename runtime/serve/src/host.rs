//! The running host: one engine, one Workload API client, and the kernels it serves — each on
//! its own connection, behind its own swappable route, with its task lifecycle and its
//! follower. Kernels are added, swapped and removed while the others keep answering; stopping
//! is bounded by the configured grace period in every state.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ck_bus::{Endpoint, Publisher, ServeOptions, ServeReport};
use ck_host::{ArtifactCache, HostEngine, KernelComponent, VersionLabel};
use ck_loops::state::Loops;
use ck_manifest::Kernel;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{IdentityMode, ServeConfig};
use crate::connection::{SvidVerifier, connect_spec, retry_connect};
use crate::dispatch::VersionService;
use crate::error::{Kinded, ServeError, ServeErrorKind};
use crate::follower::Follower;
use crate::lifecycle::RunningLifecycle;
use crate::protocol::VersionStats;
use crate::swap::{ServiceParts, Swapped, Swapper};
use crate::version::{Loader, PreparedVersion};

/// A kernel ready to be added: the versions to serve, loaded and checked, and how to load the
/// next ones. Everything that can fail before a connection is made has failed by now.
pub struct KernelPlan {
    /// The kernel as served (its topics and identity are the subscription's).
    pub kernel: Kernel,
    /// The stable version.
    pub stable: PreparedVersion,
    /// The canary and its weight, if any.
    pub canary: Option<(PreparedVersion, u8)>,
    /// The serving record's revision to follow from; None when the record is not followed.
    pub revision: Option<u64>,
    /// Whether the record followed is the cluster's (`Host::plan_cluster`), not the one in
    /// the kernel's `.ck/`.
    pub from_cluster: bool,
    /// Loads later versions of this kernel.
    pub loader: Loader,
}

/// How a served kernel is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Connected and answering.
    Serving,
    /// Connected and answering, but an audit append failed (`audit.write-failed` in the log):
    /// refusals may go unrecorded.
    Degraded,
    /// Its connection is down; the client is reconnecting (messages wait on the server).
    Reconnecting,
    /// Its serving loop has ended (stopped, or failed: see the log).
    Stopped,
}

/// What one served kernel is serving, and how it is doing.
#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    /// The kernel's name.
    pub name: String,
    /// Its GUID.
    pub guid: String,
    /// The topic it is subscribed on.
    pub input: String,
    /// The stable version.
    pub stable: VersionLabel,
    /// The canary and its weight.
    pub canary: Option<(VersionLabel, u8)>,
    /// Health.
    pub health: Health,
    /// Counters of the versions serving now (stable and canary together).
    pub stats: VersionStats,
    /// Seconds since it was added.
    pub uptime_s: f64,
}

/// What a removed kernel did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Removed {
    /// Messages answered over its serving life.
    pub answered: u64,
    /// Whether everything drained within the grace period (false: something was abandoned;
    /// durable queues keep it for the next start).
    pub drained: bool,
}

struct Served {
    swapper: Arc<Swapper>,
    token: CancellationToken,
    serving: JoinHandle<Result<ServeReport, async_nats::SubscribeError>>,
    follower: JoinHandle<()>,
    lifecycle: Option<RunningLifecycle>,
    added: Instant,
}

/// A running ck host (see the crate doc).
pub struct Host {
    config: ServeConfig,
    engine: HostEngine,
    pub(crate) cache: Option<ArtifactCache>,
    identity: Option<ck_identity::IdentityClient>,
    pub(crate) verifier: Option<Arc<SvidVerifier>>,
    control: Option<ck_control::ControlPlane>,
    fleet: Option<tokio::sync::Mutex<crate::fleet::FleetLink>>,
    pub(crate) site: Option<crate::install::SiteParts>,
    metrics: crate::observe::HostMetrics,
    kernels: tokio::sync::Mutex<BTreeMap<String, Served>>,
    pub(crate) shutdown: CancellationToken,
}

impl Host {
    /// Starts a host: the WebAssembly engine, and with SPIFFE the Workload API client and the
    /// trust bundles callers are verified against. Serves nothing until kernels are added.
    pub async fn start(config: ServeConfig) -> Result<Self, ServeError> {
        let engine = HostEngine::new(ck_host::HostConfig {
            max_instances: config.max_instances,
            max_memory_mb: config.max_memory_mb,
            fuel: config.fuel,
            ..ck_host::HostConfig::default()
        })
        .map_err(|e| {
            ServeError::new(
                ServeErrorKind::Engine,
                format!("cannot start the WebAssembly engine: {e:#}"),
            )
        })?;
        Self::with_engine(config, engine).await
    }

    /// [`Host::start`] on an engine shared with other hosts in this process (benchmarks
    /// serving one kernel several ways at once); its limits are the engine's, not `config`'s.
    pub async fn with_engine(config: ServeConfig, engine: HostEngine) -> Result<Self, ServeError> {
        let cache = match &config.cache_dir {
            Some(dir) => Some(ArtifactCache::open(dir).kinded(ServeErrorKind::Cache, || {
                "the compiled-component cache is refused".to_owned()
            })?),
            None => {
                tracing::warn!(
                    "cache.disabled; no cache directory (set CK_CACHE_DIR, XDG_CACHE_HOME or HOME, or --cache-dir): components are compiled at every start"
                );
                None
            }
        };
        let (identity, verifier) = match &config.identity {
            IdentityMode::Spiffe { socket } => {
                // One Workload API client for all kernels (its SVID cache is per identity).
                let identity = ck_identity::IdentityClient::connect(socket)
                    .await
                    .kinded(ServeErrorKind::Identity, || {
                        format!("connecting to the Workload API at {socket}")
                    })?;
                // Callers of `auth`/`owner` actions prove who they are with JWT-SVIDs from the
                // served kernels' trust domains.
                let bundles = ck_identity::bundle_source(socket)
                    .await
                    .kinded(ServeErrorKind::Identity, || {
                        format!("reading trust bundles from the Workload API at {socket}")
                    })?;
                let verifier = Arc::new(SvidVerifier {
                    bundles: ck_identity::TrustBundles::Live(bundles),
                    trust_domains: Default::default(),
                });
                (Some(identity), Some(verifier))
            }
            IdentityMode::None | IdentityMode::Insecure => (None, None),
        };
        // A site host asks the hub through its link: answers must come on the site's own
        // inbox prefix, the only replies the link carries.
        let site_silo = match (&config.site, &config.fleet) {
            (Some(_), Some(f)) => Some(f.silo.clone()),
            (Some(_), None) => {
                return Err(ServeError::new(
                    ServeErrorKind::Control,
                    "serving a site's install bus needs its silo (--silo)",
                ));
            }
            (None, _) => None,
        };
        let inbox = site_silo
            .as_deref()
            .map(ck_manifest::topics::fleet_site_inbox);
        let control = match &config.control {
            Some(c) => Some(crate::cluster::open(c, config.tls_ca.as_deref(), inbox).await?),
            None => None,
        };
        let site = match (&config.site, &control, &site_silo) {
            (Some(s), Some(plane), Some(silo)) => {
                // Receipts name this host's SPIFFE ID: the Workload API must issue it an SVID
                // (with SPIRE, a registration entry for this host), or the host does not start.
                if let Some(identity) = &identity {
                    identity
                        .fetch(&s.host_spiffe_id, "ck-install-receipt")
                        .await
                        .kinded(ServeErrorKind::Identity, || {
                            format!(
                                "the Workload API issues no SVID for the host's SPIFFE ID {} (register it, or pass --host-spiffe-id)",
                                s.host_spiffe_id
                            )
                        })?;
                }
                Some(crate::install::SiteParts::open(s, silo, plane).await?)
            }
            (Some(_), _, _) => {
                return Err(ServeError::new(
                    ServeErrorKind::Control,
                    "serving a site's install bus needs the site's control plane (--control)",
                ));
            }
            _ => None,
        };
        let fleet = match (&config.fleet, &control) {
            (Some(f), Some(plane)) => Some(tokio::sync::Mutex::new(
                crate::fleet::open(f, plane, site.as_ref().map(|s| s.hub_js())).await?,
            )),
            (Some(_), None) => {
                return Err(ServeError::new(
                    ServeErrorKind::Control,
                    "reporting to the fleet (a silo) needs the control plane (--control)",
                ));
            }
            (None, _) => None,
        };
        let metrics = crate::observe::HostMetrics::new(config.max_instances);
        Ok(Self {
            config,
            engine,
            cache,
            identity,
            verifier,
            control,
            fleet,
            site,
            metrics,
            kernels: Default::default(),
            shutdown: CancellationToken::new(),
        })
    }

    /// The host's configuration.
    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    /// The host's WebAssembly engine.
    pub fn engine(&self) -> &HostEngine {
        &self.engine
    }

    /// A loader of versions for this host, compiling permissions against `others`.
    pub fn loader(&self, others: Vec<Kernel>) -> Loader {
        Loader {
            engine: self.engine.clone(),
            cache: self.cache.clone(),
            others,
        }
    }

    /// Plans serving `kernel` as recorded in its CK and TOOL loops: what is about to be served
    /// is recorded first (the loops hold every version a host ever served, `reason` says
    /// why), stable is pinned to it the first time, and the serving record's versions are
    /// loaded. Blocking (git, compilation): call it off the async workers when serving.
    pub fn plan_recorded(
        &self,
        kernel: &Kernel,
        others: Vec<Kernel>,
        reason: &str,
    ) -> Result<KernelPlan, ServeError> {
        let dir = kernel.dir().to_path_buf();
        let path = component_path(kernel)?;
        let record = {
            let loops = Loops::open(kernel).kinded(ServeErrorKind::Loops, || {
                format!("{}: opening its CK and TOOL loops", kernel.name)
            })?;
            let recorded = loops
                .record(Some(&path), reason)
                .kinded(ServeErrorKind::Loops, || {
                    format!("{}: recording its CK and TOOL loops", kernel.name)
                })?;
            let record = loops.pin_current().kinded(ServeErrorKind::Loops, || {
                format!("{}: pinning the version it serves", kernel.name)
            })?;
            if recorded
                .develop
                .as_ref()
                .is_some_and(|d| *d != record.stable)
            {
                tracing::warn!(
                    kernel = %kernel.name,
                    stable = %record.stable.short(),
                    develop = %recorded.develop.as_ref().map(|d| d.short()).unwrap_or_default(),
                    hint = %format!("`ck promote {} develop` serves it", dir.display()),
                    "serving.develop-differs"
                );
            }
            record
        };
        let loader = self.loader(others);
        let (stable, canary) = loader
            .load_record(&dir, &record)
            .kinded(ServeErrorKind::Component, || {
                format!("{}: loading the versions it serves", kernel.name)
            })?;
        for v in std::iter::once(&stable).chain(canary.as_ref().map(|c| &c.0)) {
            log_loaded(v);
        }
        Ok(KernelPlan {
            kernel: stable.kernel.clone(),
            stable,
            canary,
            revision: self.config.follow_serving_record.then_some(record.revision),
            from_cluster: false,
            loader,
        })
    }

    /// Plans serving `kernel` as the cluster's control plane says (`ServeConfig::control`):
    /// the versions its serving record in the cluster names, read back from the registry and
    /// the component store, then followed through a watch. Nothing is recorded in the
    /// kernel's `.ck/` (operators publish versions with `ck publish`); its directory holds
    /// its DATA.
    pub async fn plan_cluster(
        &self,
        kernel: &Kernel,
        others: Vec<Kernel>,
    ) -> Result<KernelPlan, ServeError> {
        let Some(control) = &self.control else {
            return Err(ServeError::new(
                ServeErrorKind::Control,
                "the host has no control plane configured",
            ));
        };
        let (record, _) = control
            .record(&kernel.guid)
            .await
            .kinded(ServeErrorKind::Control, || {
                format!("{}: reading its serving record", kernel.name)
            })?
            .ok_or_else(|| {
                ServeError::with_source(
                    ServeErrorKind::Control,
                    format!("{}: nothing to serve", kernel.name),
                    ck_control::ControlError::NotPublished {
                        guid: kernel.guid.clone(),
                    },
                )
            })?;
        let loader = self.loader(others);
        let (stable, canary) = crate::cluster::load_record(control, &loader, kernel.dir(), &record)
            .await
            .map_err(|e| {
                ServeError::new(
                    ServeErrorKind::Control,
                    format!(
                        "{}: loading the versions its serving record (revision {}) names: {e:#}",
                        kernel.name, record.revision
                    ),
                )
            })?;
        for v in std::iter::once(&stable).chain(canary.as_ref().map(|c| &c.0)) {
            log_loaded(v);
        }
        Ok(KernelPlan {
            kernel: stable.kernel.clone(),
            stable,
            canary,
            revision: Some(record.revision),
            from_cluster: true,
            loader,
        })
    }

    /// The host's metrics (served by `observe::serve_http`).
    pub(crate) fn metrics(&self) -> &crate::observe::HostMetrics {
        &self.metrics
    }

    /// Whether the host is stopping.
    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Cancelled when the host starts stopping.
    pub fn stopping(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The cluster's control plane, when the host has one.
    pub fn control(&self) -> Option<&ck_control::ControlPlane> {
        self.control.as_ref()
    }

    /// Plans serving `kernel` as it stands in its directory (its built component, its working
    /// manifest), without recording anything and without following a serving record —
    /// benchmarks and tests of the host itself.
    pub fn plan_working(
        &self,
        kernel: Kernel,
        others: Vec<Kernel>,
    ) -> Result<KernelPlan, ServeError> {
        let path = component_path(&kernel)?;
        let component = KernelComponent::load(&self.engine, &path, self.cache.as_ref())
            .kinded(ServeErrorKind::Component, || {
                format!("{}: loading {}", kernel.name, path.display())
            })?;
        let loader = self.loader(others);
        let label = VersionLabel {
            name: "working".into(),
            ck: String::new(),
            tool: component.digest.clone(),
        };
        let version = loader
            .prepare(kernel, component, label, Vec::new())
            .kinded(ServeErrorKind::Manifest, || "preparing the working version")?;
        log_loaded(&version);
        Ok(Self::plan_version(version, loader))
    }

    /// Plans serving one prepared version, without following a serving record (`ck dev`
    /// swaps its builds in itself).
    pub fn plan_version(version: PreparedVersion, loader: Loader) -> KernelPlan {
        KernelPlan {
            kernel: version.kernel.clone(),
            stable: version,
            canary: None,
            revision: None,
            from_cluster: false,
            loader,
        }
    }

    /// Starts serving a planned kernel: connects as its identity (waiting while NATS is
    /// unreachable), starts its task lifecycle (recovery first), subscribes its input topic
    /// and follows its state. Returns once it is subscribed. The other kernels are not
    /// touched.
    pub async fn add(&self, plan: KernelPlan) -> Result<(), ServeError> {
        if self.shutdown.is_cancelled() {
            return Err(ServeError::new(
                ServeErrorKind::Stopped,
                "the host is stopping",
            ));
        }
        let kernel = plan.kernel.clone();
        if self.kernels.lock().await.contains_key(&kernel.name) {
            return Err(already_served(&kernel.name));
        }
        if let Some(verifier) = &self.verifier {
            verifier.admit_domain_of(&kernel)?;
        }
        let renew = Arc::new(tokio::sync::Notify::new());
        let mut spec = connect_spec(
            &self.config.nats,
            self.identity.as_ref(),
            self.config.allow_local,
            self.config.identity == IdentityMode::Insecure,
            &kernel,
        )?;
        spec.renew_now = Some(renew.clone());
        spec.tls_ca = self.config.tls_ca.clone();
        let token = self.shutdown.child_token();
        let client = retry_connect(&token, &self.config.nats, || ck_bus::connect(&spec)).await?;
        let publisher = Publisher::new(client.clone(), kernel.name.clone());
        let lifecycle = RunningLifecycle::start(&kernel, &publisher, &self.config.nats).await?;
        let parts = ServiceParts {
            publisher: publisher.clone(),
            verifier: self
                .verifier
                .clone()
                .map(|v| v as Arc<dyn crate::access::CallerVerifier>),
            lifecycle: lifecycle.as_ref().map(|l| l.lifecycle.clone()),
            tool_events: self.config.tool_events,
        };
        let swapper = match Swapper::new(
            kernel.clone(),
            self.engine.clone(),
            parts,
            plan.stable,
            plan.canary,
            renew,
        ) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                // Nothing was served: the lifecycle's background work stops with it.
                if let Some(l) = lifecycle {
                    l.stop(tokio::time::Instant::now() + self.config.grace)
                        .await;
                }
                return Err(e);
            }
        };
        let follower = tokio::spawn(
            Follower {
                swapper: swapper.clone(),
                loader: plan.loader,
                revision: plan.revision,
                control: if plan.from_cluster {
                    self.control.clone()
                } else {
                    None
                },
            }
            .run(token.clone()),
        );
        let mut endpoint = Endpoint::for_kernel(&kernel);
        endpoint.metrics = Some(self.metrics.for_kernel(&kernel.name));
        let options = ServeOptions {
            max_payload: kernel.limits.max_request_bytes as usize,
            max_in_flight: self.config.max_in_flight,
            publish_events: self.config.publish_events,
        };
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let serving = {
            let (versioned, token, endpoint) =
                (swapper.versioned.clone(), token.clone(), endpoint.clone());
            tokio::spawn(async move {
                ck_bus::serve_rotating(
                    spec,
                    client,
                    endpoint,
                    versioned,
                    options,
                    token,
                    Some(subscribed_tx),
                    move |fresh| publisher.replace_client(fresh.clone()),
                )
                .await
            })
        };
        // Ready means subscribed: a caller may send the moment `add` returns.
        let _ = subscribed.await;
        tracing::info!(kernel = %kernel.name, input = %endpoint.input, "ready");
        let served = Served {
            swapper,
            token,
            serving,
            follower,
            lifecycle,
            added: Instant::now(),
        };
        let mut kernels = self.kernels.lock().await;
        if kernels.contains_key(&kernel.name) {
            // Another `add` of the same kernel won the race while this one connected: this
            // one stops again (its subscription shared the queue group, so nothing was
            // answered twice).
            drop(kernels);
            let deadline = tokio::time::Instant::now() + self.config.grace;
            stop_served(&kernel.name, served, deadline).await;
            return Err(already_served(&kernel.name));
        }
        kernels.insert(kernel.name.clone(), served);
        Ok(())
    }

    /// Serves `stable` (and `canary`) of the served kernel `name` from the next message on,
    /// behind the same subscription; messages in flight finish on the versions they started
    /// with. Refused (the current versions keep serving) when a version's topics move.
    pub async fn swap(
        &self,
        name: &str,
        stable: PreparedVersion,
        canary: Option<(PreparedVersion, u8)>,
    ) -> Result<Swapped, ServeError> {
        let swapper = self.served(name).await?;
        swapper.swap(stable, canary)
    }

    /// Stops serving `name`: its subscription drains (messages already delivered are
    /// answered), its lifecycle commits and announces what it sealed, its connection closes
    /// and its instances are released — within the grace period. The other kernels are not
    /// touched.
    pub async fn remove(&self, name: &str) -> Result<Removed, ServeError> {
        let served = self
            .kernels
            .lock()
            .await
            .remove(name)
            .ok_or_else(|| not_served(name))?;
        let deadline = tokio::time::Instant::now() + self.config.grace;
        Ok(stop_served(name, served, deadline).await)
    }

    /// The names of the kernels served.
    pub async fn kernels(&self) -> Vec<String> {
        self.kernels.lock().await.keys().cloned().collect()
    }

    /// The current stable version of `name` (its label, counters, guest).
    pub async fn service(&self, name: &str) -> Result<Arc<VersionService>, ServeError> {
        Ok(self.served(name).await?.versioned.current().stable.clone())
    }

    /// What every served kernel is serving, and how it is doing.
    pub async fn report(&self) -> Vec<KernelReport> {
        let kernels = self.kernels.lock().await;
        kernels
            .iter()
            .map(|(name, served)| {
                let route = served.swapper.versioned.current();
                let mut stats = route.stable.stats();
                if let Some((canary, _)) = &route.canary {
                    let c = canary.stats();
                    stats.ok += c.ok;
                    stats.errors += c.errors;
                    stats.instances += c.instances;
                }
                let health = if served.serving.is_finished() {
                    Health::Stopped
                } else if served.swapper.parts.publisher.client().connection_state()
                    == async_nats::connection::State::Connected
                {
                    if ck_audit::failed_appends() > 0 {
                        Health::Degraded
                    } else {
                        Health::Serving
                    }
                } else {
                    Health::Reconnecting
                };
                KernelReport {
                    name: name.clone(),
                    guid: served.swapper.kernel.guid.clone(),
                    input: served.swapper.kernel.topics.input.clone(),
                    stable: route.stable.version().clone(),
                    canary: route
                        .canary
                        .as_ref()
                        .map(|(c, w)| (c.version().clone(), *w)),
                    health,
                    stats,
                    uptime_s: served.added.elapsed().as_secs_f64(),
                }
            })
            .collect()
    }

    /// Stops every kernel at once, each as [`Host::remove`] does, all within one grace
    /// period; then returns what each did. Whatever is still running at the deadline is
    /// abandoned (logged): durable queues (sealed but uncommitted instances, unconfirmed
    /// events) are on disk for the next start.
    pub async fn shutdown(&self) -> Vec<(String, Removed)> {
        self.shutdown.cancel();
        if let Some(fleet) = &self.fleet {
            // Not ready any more, said while the connection still stands (bounded: with the
            // server gone the state simply goes stale).
            let said = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                let kernels = crate::fleet::kernel_states(self.report().await);
                fleet
                    .lock()
                    .await
                    .reporter()
                    .await
                    .ready(false, kernels)
                    .await
            })
            .await;
            if let Ok(Err(e)) = said {
                tracing::warn!(error = %e, "fleet.report-failed");
            }
        }
        let deadline = tokio::time::Instant::now() + self.config.grace;
        let served = std::mem::take(&mut *self.kernels.lock().await);
        let stops = served.into_iter().map(|(name, served)| async move {
            let removed = stop_served(&name, served, deadline).await;
            (name, removed)
        });
        futures::future::join_all(stops).await
    }

    /// Reports this host to the fleet until the host stops (nothing without `fleet` in its
    /// config): `boot`, then `pod.ready`, then a heartbeat per the fleet policy, each with the
    /// host's state written to `FLEET_STATE`. Call it once the kernels it starts with are added.
    pub async fn run_fleet(&self) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        let heartbeat = fleet.lock().await.reporter().await.policy().heartbeat();
        let kernels = crate::fleet::kernel_states(self.report().await);
        let mut link = fleet.lock().await;
        let reporter = link.reporter().await;
        for outcome in [
            reporter.boot(kernels.clone()).await,
            reporter.ready(true, kernels).await,
        ] {
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "fleet.report-failed");
            }
        }
        drop(link);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(heartbeat) => {}
            }
            self.pulse_fleet().await;
        }
    }

    /// Reports what the host serves to the fleet now (after a change, between heartbeats).
    pub(crate) async fn pulse_fleet(&self) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        let kernels = crate::fleet::kernel_states(self.report().await);
        if let Err(e) = fleet.lock().await.reporter().await.pulse(kernels).await {
            tracing::warn!(error = %e, "fleet.report-failed");
        }
    }

    async fn served(&self, name: &str) -> Result<Arc<Swapper>, ServeError> {
        self.kernels
            .lock()
            .await
            .get(name)
            .map(|s| s.swapper.clone())
            .ok_or_else(|| not_served(name))
    }
}

/// Stops one served kernel by `deadline`: drain, follower, lifecycle, in that order (every
/// message answered before the last seals are committed).
async fn stop_served(name: &str, served: Served, deadline: tokio::time::Instant) -> Removed {
    let Served {
        swapper,
        token,
        mut serving,
        mut follower,
        lifecycle,
        ..
    } = served;
    token.cancel();
    let mut drained = true;
    let answered = match tokio::time::timeout_at(deadline, &mut serving).await {
        Ok(Ok(Ok(report))) => report.answered,
        Ok(Ok(Err(e))) => {
            tracing::error!(kernel = %name, error = %e, "serve.failed");
            0
        }
        Ok(Err(e)) => {
            tracing::error!(kernel = %name, error = %e, "serve.task");
            0
        }
        Err(_) => {
            serving.abort();
            drained = false;
            0
        }
    };
    if tokio::time::timeout_at(deadline, &mut follower)
        .await
        .is_err()
    {
        follower.abort();
        drained = false;
    }
    if let Some(lifecycle) = lifecycle {
        drained &= lifecycle.stop(deadline).await;
    }
    if drained {
        tracing::info!(kernel = %name, answered, "stopped");
    } else {
        tracing::warn!(kernel = %name, answered, "stopped.grace-exceeded");
    }
    // The last references to its services (and so its instances) go with the swapper.
    drop(swapper);
    Removed { answered, drained }
}

fn already_served(name: &str) -> ServeError {
    ServeError::new(
        ServeErrorKind::AlreadyServed,
        format!("{name} is already served by this host"),
    )
}

fn not_served(name: &str) -> ServeError {
    ServeError::new(
        ServeErrorKind::UnknownKernel,
        format!("{name} is not served by this host"),
    )
}

/// The built component of `kernel`, or why there is none.
fn component_path(kernel: &Kernel) -> Result<std::path::PathBuf, ServeError> {
    let dir = kernel.dir();
    let Some(relative) = &kernel.tool.component else {
        return Err(ServeError::new(
            ServeErrorKind::Component,
            format!(
                "{}: `spec.tool.component` is not set: nothing to serve",
                kernel.manifest_path.display()
            ),
        ));
    };
    let path = dir.join(relative);
    if !path.is_file() {
        return Err(ServeError::new(
            ServeErrorKind::Component,
            format!(
                "{}: component {} does not exist; build it with `ck build {}`",
                kernel.name,
                path.display(),
                display_dir(dir)
            ),
        ));
    }
    Ok(path)
}

fn display_dir(dir: &Path) -> String {
    dir.display().to_string()
}

fn log_loaded(v: &PreparedVersion) {
    tracing::info!(
        kernel = %v.kernel.name,
        version = %v.label.name,
        ck = %v.label.ck,
        tool = %v.label.tool,
        digest = %v.component.digest,
        from_cache = v.component.from_cache,
        load_ms = v.component.load_time.as_secs_f64() * 1e3,
        "component.loaded"
    );
}

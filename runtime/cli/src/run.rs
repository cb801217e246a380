//! `ck run`: serve kernels on NATS until SIGTERM or Ctrl-C, then drain and exit 0.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ck_bus::{ConnectSpec, CredentialSource, Credentials, Endpoint, Publisher, ServeOptions};
use ck_host::{ArtifactCache, HostConfig, HostEngine};
use ck_loops::state::Loops;
use ck_manifest::{Kernel, KernelSet};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::validate::{load_all, report_failures};
use crate::versions::{LoadedVersion, Loader, ServiceParts};

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
    /// Compiled-component cache directory (default: $CK_CACHE_DIR or ~/.cache/ck/components).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
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
}

/// Presents a kernel's SPIFFE ID and current JWT-SVID.
struct SpiffeCredentials {
    client: ck_identity::IdentityClient,
    spiffe_id: String,
    audience: String,
}

impl CredentialSource for SpiffeCredentials {
    fn credentials(&self) -> BoxFuture<'static, Result<Credentials, String>> {
        let (client, id, audience) = (
            self.client.clone(),
            self.spiffe_id.clone(),
            self.audience.clone(),
        );
        Box::pin(async move {
            let svid = client
                .svid(&id, &audience)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Credentials {
                user: id,
                password: Some(svid.token),
                renew_at: Some(svid.refresh_at),
            })
        })
    }
}

/// Verifies callers' bearer JWT-SVIDs against the trust bundles streamed from the Workload API.
struct SvidVerifier {
    bundles: ck_identity::TrustBundles,
    trust_domains: Vec<ck_identity::TrustDomain>,
}

impl ck_host::CallerVerifier for SvidVerifier {
    fn verify(&self, token: &str, audience: &str) -> Result<String, String> {
        ck_identity::verify_bearer(token, audience, &self.trust_domains, &self.bundles)
            .map(|v| v.spiffe_id.to_string())
            .map_err(|r| r.to_string())
    }
}

/// A LOCAL.* kernel's name, without proof.
struct LocalCredentials(String);

impl CredentialSource for LocalCredentials {
    fn credentials(&self) -> BoxFuture<'static, Result<Credentials, String>> {
        let user = self.0.clone();
        Box::pin(async move {
            Ok(Credentials {
                user,
                password: None,
                renew_at: None,
            })
        })
    }
}

/// How each kernel connects, decided before anything is served.
pub async fn connect_spec(
    args: &Args,
    identity: Option<&ck_identity::IdentityClient>,
    kernel: &Kernel,
) -> Result<ConnectSpec> {
    let credentials: Option<Arc<dyn CredentialSource>> = if kernel.name.starts_with("LOCAL.")
        && args.allow_local
    {
        Some(Arc::new(LocalCredentials(kernel.name.clone())))
    } else if let Some(client) = identity {
        let Some(spiffe_id) = kernel.spiffe_id() else {
            bail!(
                "{}: {} has no `domain`, so it has no SPIFFE ID to connect as",
                kernel.manifest_path.display(),
                kernel.name
            );
        };
        let domain = kernel.domain.clone().unwrap_or_default();
        Some(Arc::new(SpiffeCredentials {
            client: client.clone(),
            spiffe_id,
            audience: ck_identity::nats_audience(&domain),
        }))
    } else if args.insecure_no_identity {
        tracing::warn!(kernel = %kernel.name, "connecting without identity (--insecure-no-identity)");
        None
    } else if kernel.name.starts_with("LOCAL.") {
        bail!(
            "{}: LOCAL kernels connect without SPIFFE only with --allow-local",
            kernel.name
        );
    } else {
        bail!(
            "{}: kernels connect as their SPIFFE ID; give the Workload API socket with \
             --spiffe-socket or SPIFFE_ENDPOINT_SOCKET (or --insecure-no-identity for a \
             nats-server without authentication)",
            kernel.name
        );
    };
    // What the server refuses on this connection goes to the kernel's audit ledger too.
    let dir = kernel.dir().to_path_buf();
    let (name, identity) = (
        kernel.name.clone(),
        kernel.spiffe_id().unwrap_or_else(|| kernel.name.clone()),
    );
    let on_violation: Arc<dyn Fn(String) + Send + Sync> = Arc::new(move |error: String| {
        let subject = error.split('"').nth(1).unwrap_or_default().to_owned();
        let action = if error.contains("Subscription") {
            "subscribe"
        } else {
            "publish"
        };
        let record = ck_audit::AuditRecord::now(
            &identity,
            action,
            ck_audit::Verdict::Deny,
            error,
            "nats-server (seen by ck host)",
        )
        .subject(subject);
        ck_audit::append_detached(dir.clone(), name.clone(), record);
    });
    Ok(ConnectSpec {
        url: args.nats.clone(),
        name: format!("ck:{}:{}", kernel.name, kernel.guid),
        inbox_prefix: ck_manifest::topics::inbox_prefix(&kernel.guid),
        credentials,
        on_violation: Some(on_violation),
        renew_now: None,
    })
}

/// One kernel, loaded and checked, before any connection is made.
pub struct Ready {
    /// The manifest of the stable version (its topics and identity are served).
    pub kernel: Kernel,
    /// The stable version.
    pub stable: LoadedVersion,
    /// The canary and its weight, if any.
    pub canary: Option<(LoadedVersion, u8)>,
    /// The serving record's revision.
    pub revision: u64,
    /// Loads later versions of this kernel.
    pub loader: Loader,
}

/// Loads manifests, records what is served in the CK and TOOL loops, compiles permissions and
/// components: everything that can fail before serving fails here, with the file at fault
/// named.
pub fn prepare(args: &Args) -> Result<(HostEngine, Vec<Ready>)> {
    let (loaded, problems) = load_all(&args.kernels);
    let (known, known_problems) = load_all(&args.with);
    let failed = report_failures(
        problems.iter().chain(&known_problems),
        loaded.iter().chain(&known),
    );
    if failed {
        bail!("refusing to serve invalid manifests");
    }
    let served: Vec<Kernel> = loaded.into_iter().filter_map(|l| l.kernel).collect();
    let mut all: Vec<Kernel> = served.clone();
    all.extend(known.into_iter().filter_map(|l| l.kernel));
    let (_, conflicts) = KernelSet::new(all.clone());
    if !conflicts.is_empty() {
        for c in &conflicts {
            eprintln!("{c}");
        }
        bail!("refusing to serve conflicting manifests");
    }
    let engine = HostEngine::new(HostConfig {
        max_instances: args.max_instances,
        max_memory_mb: args.max_memory_mb,
        fuel: served.iter().any(|k| k.limits.fuel.is_some()),
        ..HostConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("cannot start the WebAssembly engine: {e:#}"))?;
    let cache = (!args.no_cache).then(|| {
        ArtifactCache::new(
            args.cache_dir
                .clone()
                .unwrap_or_else(ArtifactCache::default_dir),
        )
    });
    let mut ready = Vec::new();
    for kernel in served {
        let dir = kernel.dir().to_path_buf();
        let Some(relative) = &kernel.tool.component else {
            bail!(
                "{}: `spec.tool.component` is not set: nothing to serve",
                kernel.manifest_path.display()
            );
        };
        let path = dir.join(relative);
        if !path.is_file() {
            bail!(
                "{}: component {} does not exist; build it with `ck build {}`",
                kernel.name,
                path.display(),
                dir.display()
            );
        }
        // What is about to be served is recorded first: the CK and TOOL loops hold every
        // version a host ever served.
        let record = {
            let loops = Loops::open(&kernel)
                .with_context(|| format!("{}: opening its CK and TOOL loops", kernel.name))?;
            let recorded = loops
                .record(Some(&path), "served by ck run")
                .with_context(|| format!("{}: recording its CK and TOOL loops", kernel.name))?;
            let record = loops.pin_current()?;
            if recorded
                .develop
                .as_ref()
                .is_some_and(|d| *d != record.stable)
            {
                tracing::warn!(
                    kernel = %kernel.name,
                    stable = %record.stable.short(),
                    develop = %recorded.develop.as_ref().map(|d| d.short()).unwrap_or_default(),
                    "serving the pinned stable version; develop differs (`ck promote {} develop` serves it)",
                    dir.display()
                );
            }
            record
        };
        let others = all
            .iter()
            .filter(|k| k.manifest_path != kernel.manifest_path)
            .cloned()
            .collect();
        let loader = Loader {
            engine: engine.clone(),
            cache: cache.clone(),
            others,
        };
        let (stable, canary) = loader.load_record(&dir, &record)?;
        for v in std::iter::once(&stable).chain(canary.as_ref().map(|c| &c.0)) {
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
        ready.push(Ready {
            kernel: stable.kernel.clone(),
            stable,
            canary,
            revision: record.revision,
            loader,
        });
    }
    Ok((engine, ready))
}

/// Connects with backoff while NATS is unreachable or refuses (a kernel does not report ready
/// before it is connected).
pub async fn retry_connect<F, Fut>(
    shutdown: &CancellationToken,
    url: &str,
    attempt: F,
) -> Result<async_nats::Client>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<async_nats::Client, async_nats::ConnectError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(client) => return Ok(client),
            Err(e) => {
                tracing::warn!(url, error = %e, retry_in_ms = delay.as_millis() as u64, "nats.unreachable");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => bail!("stopped before NATS was reachable"),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Serves prepared kernels until `shutdown`; returns after every kernel drained.
pub async fn serve_all(
    args: &Args,
    engine: &HostEngine,
    ready: Vec<Ready>,
    shutdown: CancellationToken,
) -> Result<()> {
    let options = ServeOptions {
        max_in_flight: args.max_in_flight,
        publish_events: !args.no_events,
        ..ServeOptions::default()
    };
    // Callers of `auth`/`owner` actions prove who they are with JWT-SVIDs from the served
    // kernels' trust domains.
    let verifier: Option<Arc<dyn ck_host::CallerVerifier>> = match &args.spiffe_socket {
        Some(socket) => {
            let mut trust_domains = Vec::new();
            for domain in ready.iter().filter_map(|r| r.kernel.domain.as_deref()) {
                let td = ck_identity::TrustDomain::new(domain)
                    .with_context(|| format!("trust domain '{domain}'"))?;
                if !trust_domains.contains(&td) {
                    trust_domains.push(td);
                }
            }
            let bundles = ck_identity::bundle_source(socket).await?;
            Some(Arc::new(SvidVerifier {
                bundles: ck_identity::TrustBundles::Live(bundles),
                trust_domains,
            }))
        }
        None => None,
    };
    // One Workload API client for all kernels (its SVID cache is per identity).
    let identity = match &args.spiffe_socket {
        Some(socket) => Some(ck_identity::IdentityClient::connect(socket).await?),
        None => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut committers = Vec::new();
    let mut followers = tokio::task::JoinSet::new();
    for r in ready {
        let renew = Arc::new(tokio::sync::Notify::new());
        let mut spec = connect_spec(args, identity.as_ref(), &r.kernel).await?;
        spec.renew_now = Some(renew.clone());
        let client = retry_connect(&shutdown, &args.nats, || ck_bus::connect(&spec)).await?;
        let publisher = Publisher::new(client.clone(), r.kernel.name.clone());
        let endpoint = Endpoint::for_kernel(&r.kernel);
        let options = ServeOptions {
            max_payload: r.kernel.limits.max_request_bytes as usize,
            ..options
        };
        let name = r.kernel.name.clone();
        let lifecycle = lifecycle_for(&r.kernel, &publisher, &args.nats).await?;
        if let Some(l) = &lifecycle {
            committers.push((l.clone(), l.spawn_committer()));
            // Events the broker could not confirm wait on disk; replay them once it can.
            let (outbox, token) = (l.outbox(), shutdown.clone());
            tokio::spawn(async move {
                outbox
                    .replay_until(std::time::Duration::from_secs(1), token)
                    .await
            });
        }
        let parts = ServiceParts {
            publisher: publisher.clone(),
            verifier: verifier.clone(),
            lifecycle,
            tool_events: !args.no_tool_events,
        };
        let permissions = r.stable.permissions.clone();
        let versioned = Arc::new(ck_host::Versioned::new(
            parts.route(engine, r.stable, r.canary)?,
        ));
        let follower = crate::versions::Follower {
            kernel: r.kernel.clone(),
            loader: r.loader,
            parts,
            versioned: versioned.clone(),
            revision: r.revision,
            permissions,
            renew,
        };
        followers.spawn(follower.run(shutdown.clone()));
        let token = shutdown.clone();
        tracing::info!(kernel = %name, input = %endpoint.input, "ready");
        tasks.spawn(async move {
            let report = ck_bus::serve_rotating(
                spec,
                client,
                endpoint,
                versioned,
                options,
                token,
                move |fresh| publisher.replace_client(fresh.clone()),
            )
            .await;
            (name, report)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (name, report) = done?;
        let report = report.with_context(|| format!("serving {name}"))?;
        tracing::info!(kernel = %name, answered = report.answered, "stopped");
    }
    while followers.join_next().await.is_some() {}
    // Every message is answered: commit and announce the last seals before exiting.
    for (lifecycle, committer) in committers {
        lifecycle.close();
        let _ = committer.await;
    }
    Ok(())
}

/// The task lifecycle of a kernel that declares `task.*` actions, after sealing whatever this
/// host acknowledged but had not sealed when it last stopped. None for other kernels.
pub(crate) async fn lifecycle_for(
    kernel: &ck_manifest::Kernel,
    publisher: &Publisher,
    server: &str,
) -> Result<Option<Arc<ck_task::Lifecycle>>> {
    if !kernel.declares_task_lifecycle() {
        return Ok(None);
    }
    let lifecycle = ck_task::Lifecycle::new(kernel, publisher.clone())
        .with_context(|| format!("{}: preparing data/", kernel.dir().display()))?;
    let recovered = lifecycle.recover().await.map_err(|f| {
        anyhow::anyhow!(
            "{} declares task actions, whose state lives in JetStream, but {server} refused: {} (run nats-server with JetStream enabled, `-js`)",
            kernel.name,
            f.message
        )
    })?;
    for sealed in &recovered {
        tracing::warn!(kernel = %kernel.name, instance_id = %sealed.instance_id, "task.recovered");
    }
    tracing::info!(kernel = %kernel.name, host_id = %lifecycle.host_id(), recovered = recovered.len(), "task.lifecycle");
    Ok(Some(Arc::new(lifecycle)))
}

/// Resolves when SIGTERM or Ctrl-C arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub fn run(args: &Args) -> Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (engine, ready) = prepare(args)?;
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown.requested");
            trigger.cancel();
        });
        serve_all(args, &engine, ready, shutdown).await?;
        Ok(std::process::ExitCode::SUCCESS)
    })
}

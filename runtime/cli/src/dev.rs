//! `ck dev`: the hot-reload runner for kernel authors. It serves one kernel directory the way
//! production does — through a real nats-server whose every connection goes through the auth
//! callout with the permissions compiled from the kernel's grants, the kernel connecting as
//! its SPIFFE ID with a JWT-SVID from the dev identity provider — and on every save rebuilds,
//! records the build as a TOOL (and, when identity files changed, CK) commit, and swaps the new
//! version in behind the same subscription. A failed build or an invalid manifest is shown and
//! the running version keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ck_bus::{Endpoint, Publisher, ServeOptions};
use ck_host::{ArtifactCache, HostConfig, HostEngine, Route, Versioned};
use ck_loops::journal::Journal;
use ck_loops::state::{self, Loops};
use ck_manifest::Kernel;
use ck_subject::Permissions;
use notify::Watcher;
use tokio_util::sync::CancellationToken;

use crate::versions::{LoadedVersion, Loader, ServiceParts, publish_journal};

/// Arguments of `ck dev`.
#[derive(clap::Args)]
pub struct Args {
    /// The kernel directory (or its manifest).
    #[arg(value_name = "KERNEL")]
    pub kernel: PathBuf,
    /// A NATS server to use instead of starting one (with its identity as for `ck run`).
    #[arg(long, env = "CK_NATS_URL")]
    pub nats: Option<String>,
    /// With --nats: the SPIFFE Workload API socket the kernel gets its JWT-SVIDs from.
    #[arg(
        long,
        env = "SPIFFE_ENDPOINT_SOCKET",
        value_name = "PATH",
        requires = "nats"
    )]
    pub spiffe_socket: Option<String>,
    /// With --nats: connect without identity (a server without authentication).
    #[arg(long, requires = "nats", conflicts_with = "spiffe_socket")]
    pub insecure_no_identity: bool,
    /// Compiled-component cache directory (default: $CK_CACHE_DIR or ~/.cache/ck/components).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Quiet time after a change before rebuilding, in milliseconds (editors write in bursts).
    #[arg(long, default_value_t = 50)]
    pub debounce_ms: u64,
}

/// The local production-like stack `ck dev` starts when no server is given.
struct Stack {
    server: ck_natsd::NatsServer,
    socket: PathBuf,
    user: (String, String),
    _dir: tempfile::TempDir,
}

fn kernel_at(path: &Path) -> Result<Kernel> {
    let manifest = if path.is_dir() {
        path.join(ck_manifest::MANIFEST_FILE)
    } else {
        path.to_owned()
    };
    let loaded = ck_manifest::load_file(&manifest, chrono::Utc::now());
    match loaded.kernel {
        Some(k) => Ok(k),
        None => {
            let problems: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
            bail!("{}", problems.join("\n"))
        }
    }
}

/// Starts the dev identity provider, a nats-server configured for the auth callout (rendered
/// from the same template as `ck authz init`), and the callout deciding from `kernel`'s
/// directory.
async fn start_stack(kernel: &Kernel, shutdown: &CancellationToken) -> Result<Stack> {
    let dir = tempfile::Builder::new().prefix("ck-dev-").tempdir()?;
    let domain = kernel.domain.clone().unwrap_or_else(|| "dev.local".into());
    let trust_domain = ck_identity::TrustDomain::new(&domain)
        .map_err(|e| anyhow!("{}: domain '{domain}': {e}", kernel.manifest_path.display()))?;
    let provider = Arc::new(ck_identity::DevProvider::open(
        ck_identity::ProviderConfig {
            key_dir: dir.path().join("identity"),
            trust_domains: vec![trust_domain.clone()],
            ttl: Duration::from_secs(300),
        },
    )?);
    let socket = dir.path().join("spiffe.sock");
    {
        let (socket, token) = (socket.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = provider.serve(&socket, token).await {
                tracing::error!(error = %e, "identity.failed");
            }
        });
    }
    let password = uuid::Uuid::new_v4().simple().to_string();
    let user = ("dev".to_owned(), password);
    let authz_dir = dir.path().join("authz");
    let config = ck_authz::setup::init(
        &authz_dir,
        "127.0.0.1:4222",
        &[ck_authz::setup::StaticUser {
            name: user.0.clone(),
            password: user.1.clone(),
        }],
    )
    .map_err(anyhow::Error::msg)?;
    // The rendered configuration without its listen line: the server picks a free port.
    let body: String = std::fs::read_to_string(&config)?
        .lines()
        .filter(|l| !l.starts_with("listen:"))
        .collect::<Vec<_>>()
        .join("\n");
    let server = ck_natsd::NatsServer::start(&body)?;
    let secrets = ck_authz::setup::CalloutSecrets::load(&authz_dir)?;
    let mut bundles = None;
    for _ in 0..100 {
        match ck_identity::bundle_source(&socket.display().to_string()).await {
            Ok(b) => {
                bundles = Some(b);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let bundles = bundles.ok_or_else(|| anyhow!("the dev identity provider did not start"))?;
    let registry = ck_authz::Registry::open(vec![kernel.dir().to_path_buf()]);
    let authorizer = Arc::new(ck_authz::Authorizer::new(
        ck_authz::AuthorizerConfig {
            issuer: secrets.issuer().map_err(anyhow::Error::msg)?,
            account: "APP".into(),
            trust_domains: vec![trust_domain],
            allow_local: kernel.is_local(),
            policy: ck_acl::Policy::default(),
        },
        registry,
        ck_identity::TrustBundles::Live(bundles),
    ));
    let callout = async_nats::ConnectOptions::with_user_and_password(
        ck_authz::setup::CALLOUT_USER.to_owned(),
        secrets.password.clone(),
    )
    .name("ck-dev-authz")
    .connect(server.url())
    .await?;
    let token = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = ck_authz::serve(callout, authorizer, token).await {
            tracing::error!(error = %e, "authz.failed");
        }
    });
    Ok(Stack {
        server,
        socket,
        user,
        _dir: dir,
    })
}

/// Timings of one reload.
pub(crate) struct Reloaded {
    /// The version built.
    pub version: LoadedVersion,
    /// Time spent building.
    pub build: Duration,
    /// When the build ended and the swap began.
    pub started_swap: Instant,
}

/// Builds the kernel as its manifest says, records the build in the loops and loads the
/// resulting `develop` version. Every failure leaves the serving version alone.
pub(crate) fn build_version(dir: &Path, loader: &Loader, reason: &str) -> Result<Reloaded> {
    let started = Instant::now();
    let kernel = kernel_at(dir).context("the manifest is invalid")?;
    let report = ck_build::build_kernel(&kernel, kernel.dir()).map_err(|e| anyhow!("{e}"))?;
    let build = started.elapsed();
    let started_swap = Instant::now();
    let loops = Loops::open(&kernel)?;
    let recorded = loops.record(Some(&report.component), reason)?;
    let develop = recorded
        .develop
        .ok_or_else(|| anyhow!("nothing recorded on develop"))?;
    let version = loops.materialize(&develop)?;
    drop(loops);
    let version = loader.load(kernel.dir(), &version, state::DEVELOP)?;
    Ok(Reloaded {
        version,
        build,
        started_swap,
    })
}

/// Whether a changed path can change the kernel: its manifest, identity files or sources —
/// not its state, data, build outputs or editor droppings.
fn relevant(kernel_dir: &Path, path: &Path) -> bool {
    let Ok(relative) = path.strip_prefix(kernel_dir) else {
        return false;
    };
    let mut parts = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy());
    let first = parts.next().unwrap_or_default();
    if matches!(first.as_ref(), "data" | state::STATE_DIR | "target") {
        return false;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    !(matches!(ext, "wasm" | "cwasm" | "pyc" | "o" | "swp" | "swx")
        || name.ends_with('~')
        || name.starts_with(".#")
        || name.contains(".tmp")
        || relative
            .components()
            .any(|c| c.as_os_str().to_string_lossy() == "__pycache__"))
}

pub fn run(args: &Args) -> Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(dev(args))
}

async fn dev(args: &Args) -> Result<std::process::ExitCode> {
    let shutdown = CancellationToken::new();
    {
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            crate::run::shutdown_signal().await;
            trigger.cancel();
        });
    }
    // Absolute, so the watcher's paths and the kernel's compare.
    let path = args
        .kernel
        .canonicalize()
        .with_context(|| format!("{}", args.kernel.display()))?;
    let kernel = kernel_at(&path)?;
    let dir = kernel.dir().to_path_buf();
    let engine = HostEngine::new(HostConfig::default())
        .map_err(|e| anyhow!("cannot start the WebAssembly engine: {e:#}"))?;
    let cache = ArtifactCache::new(
        args.cache_dir
            .clone()
            .unwrap_or_else(ArtifactCache::default_dir),
    );
    let loader = Loader {
        engine: engine.clone(),
        cache: Some(cache),
        others: Vec::new(),
    };

    // Watch first, so a save during the first build is not missed.
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        use notify::EventKind;
        use notify::event::ModifyKind;
        // Only writes count: a build reading the sources (access, open, close-nowrite) or a
        // metadata touch must not trigger the next build.
        if let Ok(event) = event
            && match event.kind {
                EventKind::Create(_) | EventKind::Remove(_) => true,
                EventKind::Modify(ModifyKind::Metadata(_)) => false,
                EventKind::Modify(_) => true,
                _ => false,
            }
        {
            let _ = tx.send(event.paths);
        }
    })?;
    watcher
        .watch(&dir, notify::RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", dir.display()))?;

    // The first version: keep waiting for a save that builds.
    let mut reloads = 0u32;
    let first = loop {
        let l = loader.clone();
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || build_version(&d, &l, "ck dev: first build"))
            .await?
        {
            Ok(r) => break r,
            Err(e) => {
                println!(
                    "ck dev: {} does not build yet:\n{e:#}\nwaiting for a change…",
                    kernel.name
                );
                tracing::warn!(kernel = %kernel.name, error = %format!("{e:#}"), "dev.build-failed");
                if !next_change(&dir, &mut changes, args.debounce_ms, &shutdown).await {
                    return Ok(std::process::ExitCode::SUCCESS);
                }
            }
        }
    };
    let kernel = first.version.kernel.clone();

    let stack = match &args.nats {
        Some(_) => None,
        None => Some(start_stack(&kernel, &shutdown).await?),
    };
    let url = match (&args.nats, &stack) {
        (Some(url), _) => url.clone(),
        (None, Some(s)) => s.server.url(),
        (None, None) => unreachable!("a stack is started when no server is given"),
    };
    let run_args = crate::run::Args {
        kernels: vec![dir.clone()],
        nats: url.clone(),
        with: Vec::new(),
        cache_dir: None,
        no_cache: false,
        max_in_flight: 256,
        max_instances: 1000,
        max_memory_mb: 512,
        no_events: false,
        no_tool_events: false,
        spiffe_socket: match &stack {
            Some(s) => Some(s.socket.display().to_string()),
            None => args.spiffe_socket.clone(),
        },
        allow_local: stack.is_some(),
        insecure_no_identity: args.insecure_no_identity,
    };
    let identity = match &run_args.spiffe_socket {
        Some(socket) => Some(ck_identity::IdentityClient::connect(socket).await?),
        None => None,
    };
    let renew = Arc::new(tokio::sync::Notify::new());
    let mut spec = crate::run::connect_spec(&run_args, identity.as_ref(), &kernel).await?;
    spec.renew_now = Some(renew.clone());
    let client = crate::run::retry_connect(&shutdown, &url, || ck_bus::connect(&spec)).await?;
    let publisher = Publisher::new(client.clone(), kernel.name.clone());
    let lifecycle = crate::run::lifecycle_for(&kernel, &publisher, &url).await?;
    let parts = ServiceParts {
        publisher: publisher.clone(),
        verifier: None,
        lifecycle,
        tool_events: true,
    };
    let mut permissions: Permissions = first.version.permissions.clone();
    let tool = first.version.label.tool.clone();
    let versioned = Arc::new(Versioned::new(Route::stable(
        parts.service(&engine, first.version)?,
    )));
    let swap = first.started_swap.elapsed();
    let endpoint = Endpoint::for_kernel(&kernel);
    println!(
        "ck dev: {} tool@{} built in {} ms, loaded in {} ms; serving {} on {url}",
        kernel.name,
        ck_loops::serving::short(&tool),
        first.build.as_millis(),
        swap.as_millis(),
        endpoint.input
    );
    if let Some(s) = &stack {
        println!(
            "  nats-server, auth callout and SPIFFE identity as in production. Send it a message:\n  \
             CK_NATS_USER={} CK_NATS_PASSWORD={} ck call {} <action> '<json>' --nats {url}",
            s.user.0,
            s.user.1,
            dir.display()
        );
    }
    tracing::info!(
        kernel = %kernel.name,
        url = %url,
        user = stack.as_ref().map(|s| s.user.0.as_str()).unwrap_or(""),
        password = stack.as_ref().map(|s| s.user.1.as_str()).unwrap_or(""),
        input = %endpoint.input,
        "dev.ready"
    );
    let journal = Journal::new(&state::state_dir(&dir));
    let _ = publish_journal(&journal, &publisher, &kernel.urn).await;

    let serving = {
        let (versioned, token, endpoint) = (versioned.clone(), shutdown.clone(), endpoint.clone());
        let options = ServeOptions {
            max_payload: kernel.limits.max_request_bytes as usize,
            ..ServeOptions::default()
        };
        let publisher = publisher.clone();
        tokio::spawn(async move {
            ck_bus::serve_rotating(
                spec,
                client,
                endpoint,
                versioned,
                options,
                token,
                move |c| publisher.replace_client(c.clone()),
            )
            .await
        })
    };

    while next_change(&dir, &mut changes, args.debounce_ms, &shutdown).await {
        reloads += 1;
        let (l, d) = (loader.clone(), dir.clone());
        let reason = format!("ck dev: reload {reloads}");
        let current = versioned.current().stable.version().cloned();
        let outcome = tokio::task::spawn_blocking(move || build_version(&d, &l, &reason)).await?;
        let reloaded = match outcome {
            Ok(r) => r,
            Err(e) => {
                let serving = current
                    .map(|v| format!("tool@{}", ck_loops::serving::short(&v.tool)))
                    .unwrap_or_default();
                println!("reload {reloads} failed; still serving {serving}:\n{e:#}");
                tracing::warn!(kernel = %kernel.name, reload = reloads, error = %format!("{e:#}"), "dev.build-failed");
                continue;
            }
        };
        if let Some(why) = crate::versions::topics_moved(&kernel, &reloaded.version.kernel) {
            println!("reload {reloads} not swapped in: {why}; restart ck dev to serve it");
            tracing::warn!(kernel = %kernel.name, reload = reloads, reason = %why, "dev.restart-needed");
            continue;
        }
        let changed_permissions = reloaded.version.permissions != permissions;
        permissions = reloaded.version.permissions.clone();
        let label = reloaded.version.label.clone();
        let unchanged = current.as_ref() == Some(&label);
        match parts.service(&engine, reloaded.version) {
            Ok(service) => {
                versioned.swap(Route::stable(service));
            }
            Err(e) => {
                println!("reload {reloads} failed: {e:#}");
                continue;
            }
        }
        let swap = reloaded.started_swap.elapsed();
        println!(
            "reload {reloads}: tool@{}{} built in {} ms, swapped in {} ms",
            ck_loops::serving::short(&label.tool),
            if unchanged { " (unchanged)" } else { "" },
            reloaded.build.as_millis(),
            swap.as_millis()
        );
        tracing::info!(
            kernel = %kernel.name,
            reload = reloads,
            tool = %label.tool,
            ck = %label.ck,
            build_ms = reloaded.build.as_secs_f64() * 1e3,
            swap_ms = swap.as_secs_f64() * 1e3,
            "dev.reloaded"
        );
        if changed_permissions {
            println!("  permissions changed: renewing the connection so the callout grants them");
            renew.notify_one();
        }
        if let Err(e) = publish_journal(&journal, &publisher, &kernel.urn).await {
            tracing::warn!(error = %format!("{e:#}"), "loop.events-unpublished");
        }
    }
    shutdown.cancel();
    let report = serving.await?;
    let _ = publish_journal(&journal, &publisher, &kernel.urn).await;
    tracing::info!(kernel = %kernel.name, answered = report.map(|r| r.answered).unwrap_or(0), reloads, "dev.stopped");
    drop(stack);
    Ok(std::process::ExitCode::SUCCESS)
}

/// Waits for a relevant change and then for `debounce_ms` of quiet; false on shutdown.
async fn next_change(
    dir: &Path,
    changes: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<PathBuf>>,
    debounce_ms: u64,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        let paths = tokio::select! {
            _ = shutdown.cancelled() => return false,
            p = changes.recv() => match p { Some(p) => p, None => return false },
        };
        if paths.iter().any(|p| relevant(dir, p)) {
            break;
        }
    }
    let quiet = Duration::from_millis(debounce_ms);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(quiet) => return true,
            p = changes.recv() => if p.is_none() { return true },
        }
    }
}

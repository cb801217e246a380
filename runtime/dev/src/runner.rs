//! The `ck dev` loop: first build, the stack, the host, then rebuild and swap on every save.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use ck_serve::{Host, IdentityMode, ServeConfig, ServeErrorKind};
use tokio_util::sync::CancellationToken;

use crate::reload::{build_version, kernel_at};
use crate::watch::DirWatcher;

/// What `ck dev` is asked to do.
#[derive(Debug, Clone)]
pub struct DevConfig {
    /// The kernel directory (or its manifest).
    pub kernel: PathBuf,
    /// A NATS server to use instead of starting the local stack.
    pub nats: Option<String>,
    /// With `nats`: the Workload API socket the kernel gets its JWT-SVIDs from.
    pub spiffe_socket: Option<String>,
    /// With `nats`: connect without identity (a server without authentication).
    pub insecure_no_identity: bool,
    /// With `nats`: the CA that signs the server's certificate (TLS required).
    pub tls_ca: Option<PathBuf>,
    /// The compiled-component cache directory (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Quiet time after a change before rebuilding.
    pub debounce: Duration,
    /// How long stopping may take.
    pub grace: Duration,
}

/// What happens, as it happens.
#[derive(Debug)]
pub enum DevEvent {
    /// The kernel does not build yet; `ck dev` waits for a change.
    FirstBuildFailed {
        /// The kernel.
        kernel: String,
        /// Why (the compiler's output, the manifest's diagnostics).
        error: String,
    },
    /// The first version is served.
    Ready {
        /// The kernel.
        kernel: String,
        /// Its directory.
        dir: PathBuf,
        /// Its TOOL commit.
        tool: String,
        /// Build time.
        build: Duration,
        /// Record, load and serve time.
        load: Duration,
        /// The input topic.
        input: String,
        /// The NATS URL.
        url: String,
        /// With the local stack: a static user (name, password) to call the kernel as.
        user: Option<(String, String)>,
    },
    /// A save did not build or load; the previous version keeps serving.
    ReloadFailed {
        /// Which reload.
        reload: u32,
        /// The TOOL commit still serving.
        serving: String,
        /// Why.
        error: String,
    },
    /// A save moved the kernel's topics: it needs a restart to be served.
    RestartNeeded {
        /// Which reload.
        reload: u32,
        /// What moved.
        why: String,
    },
    /// A save is served.
    Reloaded {
        /// Which reload.
        reload: u32,
        /// Its TOOL commit.
        tool: String,
        /// It is the version that was serving already.
        unchanged: bool,
        /// Build time.
        build: Duration,
        /// Record, load and swap time.
        swap: Duration,
        /// The kernel's permissions changed: its connection is renewed.
        permissions_changed: bool,
    },
}

/// A failure of `ck dev` itself (not of a save, which is reported and survived).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DevError(#[from] anyhow::Error);

/// Runs `ck dev` until `shutdown`; returns how many reloads were made.
pub async fn run(
    config: DevConfig,
    shutdown: CancellationToken,
    mut on_event: impl FnMut(DevEvent),
) -> Result<u32, DevError> {
    // Absolute, so the watcher's paths and the kernel's compare.
    let path = config
        .kernel
        .canonicalize()
        .with_context(|| format!("{}", config.kernel.display()))?;
    let kernel = kernel_at(&path)?;
    let dir = kernel.dir().to_path_buf();
    // Watch first, so a save during the first build is not missed.
    let mut watcher = DirWatcher::new(&dir)?;
    let stack = match &config.nats {
        Some(_) => None,
        None => Some(crate::stack::start(&kernel, &shutdown).await?),
    };
    let url = match (&config.nats, &stack) {
        (Some(url), _) => url.clone(),
        (_, Some(s)) => s.server.url(),
        (None, None) => unreachable!("a stack is started when no server is given"),
    };
    let identity = match (&stack, &config.spiffe_socket) {
        (Some(s), _) => IdentityMode::Spiffe {
            socket: s.socket.display().to_string(),
        },
        (None, Some(socket)) => IdentityMode::Spiffe {
            socket: socket.clone(),
        },
        (None, None) if config.insecure_no_identity => IdentityMode::Insecure,
        (None, None) => IdentityMode::None,
    };
    // The same host as `ck run`: only what a developer needs differs (no serving record is
    // followed: every save is swapped in as it builds).
    let host = Host::start(ServeConfig {
        nats: url.clone(),
        identity,
        allow_local: stack.is_some(),
        tls_ca: config.tls_ca.clone(),
        cache_dir: config.cache_dir.clone(),
        follow_serving_record: false,
        grace: config.grace,
        ..ServeConfig::default()
    })
    .await?;
    let loader = host.loader(Vec::new());

    // The first version: keep waiting for a save that builds.
    let first = loop {
        let (l, d) = (loader.clone(), dir.clone());
        match tokio::task::spawn_blocking(move || build_version(&d, &l, "ck dev: first build"))
            .await
            .map_err(|e| anyhow!("the build panicked: {e}"))?
        {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(kernel = %kernel.name, error = %format!("{e:#}"), "dev.build-failed");
                on_event(DevEvent::FirstBuildFailed {
                    kernel: kernel.name.clone(),
                    error: format!("{e:#}"),
                });
                if !watcher.next_change(config.debounce, &shutdown).await {
                    return Ok(0);
                }
            }
        }
    };
    let kernel = first.version.kernel.clone();
    let name = kernel.name.clone();
    let tool = first.version.label.tool.clone();
    let started_swap = first.started_swap;
    let build = first.build;
    host.add(Host::plan_version(first.version, loader.clone()))
        .await?;
    let input = kernel.topics.input.clone();
    tracing::info!(
        kernel = %name,
        url = %url,
        user = stack.as_ref().map(|s| s.user.0.as_str()).unwrap_or(""),
        password = stack.as_ref().map(|s| s.user.1.as_str()).unwrap_or(""),
        input = %input,
        "dev.ready"
    );
    on_event(DevEvent::Ready {
        kernel: name.clone(),
        dir: dir.clone(),
        tool,
        build,
        load: started_swap.elapsed(),
        input,
        url,
        user: stack.as_ref().map(|s| s.user.clone()),
    });

    let mut reloads = 0u32;
    while watcher.next_change(config.debounce, &shutdown).await {
        reloads += 1;
        let current = host.service(&name).await.ok().map(|s| s.version().clone());
        let serving = current
            .as_ref()
            .map(|v| format!("tool@{}", ck_loops::serving::short(&v.tool)))
            .unwrap_or_default();
        let (l, d) = (loader.clone(), dir.clone());
        let reason = format!("ck dev: reload {reloads}");
        let built = tokio::task::spawn_blocking(move || build_version(&d, &l, &reason))
            .await
            .map_err(|e| anyhow!("the build panicked: {e}"))?;
        let reloaded = match built {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(kernel = %name, reload = reloads, error = %format!("{e:#}"), "dev.build-failed");
                on_event(DevEvent::ReloadFailed {
                    reload: reloads,
                    serving,
                    error: format!("{e:#}"),
                });
                continue;
            }
        };
        let (build, started_swap) = (reloaded.build, reloaded.started_swap);
        let label = reloaded.version.label.clone();
        match host.swap(&name, reloaded.version, None).await {
            Ok(swapped) => {
                let swap = started_swap.elapsed();
                tracing::info!(
                    kernel = %name,
                    reload = reloads,
                    tool = %label.tool,
                    ck = %label.ck,
                    build_ms = build.as_secs_f64() * 1e3,
                    swap_ms = swap.as_secs_f64() * 1e3,
                    "dev.reloaded"
                );
                on_event(DevEvent::Reloaded {
                    reload: reloads,
                    tool: label.tool.clone(),
                    unchanged: current.as_ref() == Some(&label),
                    build,
                    swap,
                    permissions_changed: swapped.permissions_changed,
                });
            }
            Err(e) if e.kind() == ServeErrorKind::TopicsMoved => {
                tracing::warn!(kernel = %name, reload = reloads, reason = %e, "dev.restart-needed");
                on_event(DevEvent::RestartNeeded {
                    reload: reloads,
                    why: e.to_string(),
                });
            }
            Err(e) => {
                tracing::warn!(kernel = %name, reload = reloads, error = %e, "dev.build-failed");
                on_event(DevEvent::ReloadFailed {
                    reload: reloads,
                    serving,
                    error: format!("{:#}", anyhow::Error::from(e)),
                });
            }
        }
    }
    let stopped = host.shutdown().await;
    let answered: u64 = stopped.iter().map(|(_, r)| r.answered).sum();
    tracing::info!(kernel = %name, answered, reloads, "dev.stopped");
    drop(stack);
    Ok(reloads)
}

impl From<ck_serve::ServeError> for DevError {
    fn from(e: ck_serve::ServeError) -> Self {
        Self(e.into())
    }
}

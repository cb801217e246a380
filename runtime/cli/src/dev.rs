//! `ck dev`: the hot-reload runner for kernel authors (`ck_dev`); this module parses its
//! arguments and prints what it reports.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use ck_dev::{DevConfig, DevEvent};
use tokio_util::sync::CancellationToken;

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
    /// With --nats: the CA file that signs the server's certificate (TLS required).
    #[arg(long, value_name = "FILE", env = "CK_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Compiled-component cache directory (default: $CK_CACHE_DIR or ~/.cache/ck/components).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Quiet time after a change before rebuilding, in milliseconds (editors write in bursts).
    #[arg(long, default_value_t = 50)]
    pub debounce_ms: u64,
}

fn print(event: DevEvent) {
    match event {
        DevEvent::FirstBuildFailed { kernel, error } => {
            println!("ck dev: {kernel} does not build yet:\n{error}\nwaiting for a change…")
        }
        DevEvent::Ready {
            kernel,
            dir,
            tool,
            build,
            load,
            input,
            url,
            user,
        } => {
            println!(
                "ck dev: {kernel} tool@{} built in {} ms, loaded in {} ms; serving {input} on {url}",
                ck_loops::serving::short(&tool),
                build.as_millis(),
                load.as_millis(),
            );
            if let Some((name, password)) = user {
                println!(
                    "  nats-server, auth callout and SPIFFE identity as in production. Send it a message:\n  \
                     CK_NATS_USER={name} CK_NATS_PASSWORD={password} ck call {} <action> '<json>' --nats {url}",
                    dir.display()
                );
            }
        }
        DevEvent::ReloadFailed {
            reload,
            serving,
            error,
        } => println!("reload {reload} failed; still serving {serving}:\n{error}"),
        DevEvent::RestartNeeded { reload, why } => {
            println!("reload {reload} not swapped in: {why}; restart ck dev to serve it")
        }
        DevEvent::Reloaded {
            reload,
            tool,
            unchanged,
            build,
            swap,
            permissions_changed,
        } => {
            println!(
                "reload {reload}: tool@{}{} built in {} ms, swapped in {} ms",
                ck_loops::serving::short(&tool),
                if unchanged { " (unchanged)" } else { "" },
                build.as_millis(),
                swap.as_millis()
            );
            if permissions_changed {
                println!(
                    "  permissions changed: renewing the connection so the callout grants them"
                );
            }
        }
    }
}

pub fn run(args: &Args) -> Result<std::process::ExitCode> {
    let config = DevConfig {
        kernel: args.kernel.clone(),
        nats: args.nats.clone(),
        spiffe_socket: args.spiffe_socket.clone(),
        insecure_no_identity: args.insecure_no_identity,
        tls_ca: args.tls_ca.clone(),
        cache_dir: args
            .cache_dir
            .clone()
            .or_else(ck_host::ArtifactCache::default_dir),
        debounce: Duration::from_millis(args.debounce_ms),
        grace: ck_serve::DEFAULT_GRACE,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            ck_serve::signal::terminated().await;
            trigger.cancel();
        });
        ck_dev::run(config, shutdown, print).await
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
    outcome?;
    Ok(std::process::ExitCode::SUCCESS)
}

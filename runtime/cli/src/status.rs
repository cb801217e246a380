//! `ck status`: the fleet's silos, hosts and kernels from `FLEET_STATE` (`ck_control::fleet`),
//! once or as they change (`--watch`).

use std::process::ExitCode;

use anyhow::Result;
use ck_control::fleet::{FleetWatch, fleet_state, fleet_view};

use crate::publish::ClusterArgs;

/// Arguments of `ck status`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Keep showing every change (like `nats kv watch FLEET_STATE`), until interrupted.
    #[arg(long)]
    watch: bool,
}

/// `ck status`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let js = args
            .cluster
            .connect(&crate::publish::Refusals::default())
            .await?;
        let kv = fleet_state(&js).await?;
        if args.watch {
            let mut watch = FleetWatch::open(&kv).await?;
            while let Some(change) = watch.next().await {
                let change = change?;
                match (&change.value, change.operation.as_str()) {
                    (Some(value), _) => println!("PUT   {} {value}", change.key),
                    (None, "PURGE") => println!(
                        "STALE {} (removed by the server: no report within the heartbeat window)",
                        change.key
                    ),
                    (None, op) => println!("{op:<5} {}", change.key),
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        let silos = fleet_view(&kv).await?;
        if silos.is_empty() {
            println!("no silo has reported (hosts report with `ck run --control --silo NAME`)");
        }
        for silo in silos {
            println!("silo {}", silo.silo);
            for host in silo.hosts {
                let seen = host
                    .state
                    .as_ref()
                    .map(|s| s.at.clone())
                    .or_else(|| host.summary.as_ref().map(|s| s.at.clone()))
                    .unwrap_or_default();
                match (&host.state, host.live) {
                    (Some(state), true) => {
                        println!(
                            "  host {} live {} tier {} pid {} boot {} seen {}",
                            host.host,
                            if state.ready { "ready" } else { "not-ready" },
                            state
                                .memory
                                .as_ref()
                                .map(|m| m.tier.as_str())
                                .unwrap_or("?"),
                            state.pid,
                            state.boot_at,
                            seen
                        );
                        for k in &state.kernels {
                            println!(
                                "    kernel {} {} {}{} ok {} errors {}",
                                k.name,
                                k.stable,
                                k.health,
                                k.canary
                                    .as_ref()
                                    .map(|c| format!(" canary {c}"))
                                    .unwrap_or_default(),
                                k.ok,
                                k.errors
                            );
                        }
                    }
                    _ => println!("  host {} STALE last seen {seen}", host.host),
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

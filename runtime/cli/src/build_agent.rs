//! `ck build-agent`: answers the hub's build requests for the kernels it is given
//! (`ck_pipeline`) until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::publish::{ClusterArgs, Refusals};

/// Arguments of `ck build-agent`.
#[derive(clap::Args)]
pub struct Args {
    /// Kernel directories whose TOOL loops it builds from.
    #[arg(value_name = "KERNEL", required = true)]
    kernels: Vec<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `ck build-agent`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let kernels = args
        .kernels
        .iter()
        .map(|k| crate::validate::load_one(k))
        .collect::<Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let refusals = Refusals::default();
        let plane = args
            .cluster
            .open(Some(&ck_control::PlaneConfig::default()), &refusals)
            .await
            .map_err(|e| refusals.explain(e))?;
        let agent = ck_pipeline::BuildAgent::new(plane, kernels);
        for (subject, kernel) in agent.subjects() {
            println!("answering {subject} ({})", kernel.name);
        }
        let stop = tokio_util::sync::CancellationToken::new();
        tracing::info!("build-agent.serving");
        tokio::select! {
            _ = ck_serve::signal::terminated() => stop.cancel(),
            outcome = agent.run(stop.clone()) => {
                outcome.map_err(|e| refusals.explain(e.into())).context("serving build requests")?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

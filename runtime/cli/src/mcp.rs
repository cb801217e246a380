//! `ck mcp`: the read-only MCP server for coding agents (`ck_mcp`), on stdio.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::publish::{ClusterArgs, Refusals};

/// Arguments of `ck mcp`.
#[derive(clap::Args)]
pub struct Args {
    /// Kernel directories (or manifests) to describe.
    #[arg(long = "kernel", value_name = "DIR")]
    kernels: Vec<PathBuf>,
    /// The subscription contracts directory.
    #[arg(long, value_name = "DIR")]
    contracts: Option<PathBuf>,
    /// The subject families file (default: policies/subject-families.yaml as shipped).
    #[arg(long, value_name = "FILE")]
    subject_families: Option<PathBuf>,
    /// Without --nats the tools answer from files only (no stream counts, deliveries or silos).
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `ck mcp` until the client closes stdin.
pub fn run(args: &Args) -> Result<ExitCode> {
    let families = crate::families::load(args.subject_families.as_deref())?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let js = match args.cluster.nats {
            Some(_) => Some(args.cluster.connect(&Refusals::default()).await?),
            None => None,
        };
        ck_mcp::CkMcp::new(ck_mcp::Sources {
            families,
            kernels: args.kernels.clone(),
            contracts: args.contracts.clone(),
            js,
        })
        .serve_stdio()
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

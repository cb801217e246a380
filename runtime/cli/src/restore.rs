//! `ck restore`: rebuild a kernel's DATA tree from the cluster's copy of its sealed instances
//! (`ck_task::restore`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::publish::ClusterArgs;

/// Arguments of `ck restore`.
#[derive(clap::Args)]
pub struct Args {
    /// The kernel: its directory or manifest, or its GUID (its name is then looked up in the
    /// cluster's serving records).
    #[arg(value_name = "KERNEL")]
    kernel: String,
    /// The kernel directory to rebuild `data/` in (created if needed; files already there
    /// with other bytes are refused, never replaced).
    #[arg(long, value_name = "DIR")]
    into: PathBuf,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// `ck restore`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let js = args
            .cluster
            .connect(&crate::publish::Refusals::default())
            .await?;
        let (guid, name) = if Path::new(&args.kernel).exists() {
            let kernel = crate::validate::load_one(Path::new(&args.kernel))?;
            (kernel.guid, kernel.name)
        } else {
            let name = match ck_control::ControlPlane::open(js.clone()).await {
                Ok(plane) => plane
                    .find(&args.kernel)
                    .await
                    .map(|r| r.kernel)
                    .unwrap_or_else(|_| args.kernel.clone()),
                Err(_) => args.kernel.clone(),
            };
            (args.kernel.clone(), name)
        };
        std::fs::create_dir_all(&args.into)
            .with_context(|| format!("creating {}", args.into.display()))?;
        let restored = ck_task::restore::restore(&js, &guid, &name, &args.into).await?;
        println!(
            "restored {} sealed instance(s) of {name} ({guid}) into {} ({} file(s) written){}",
            restored.instances.len(),
            args.into.display(),
            restored.files_written,
            restored
                .commit
                .map(|c| format!(", DATA commit {}", ck_loops::serving::short(&c)))
                .unwrap_or_default()
        );
        println!("check it: ck verify {}", args.into.display());
        Ok(ExitCode::SUCCESS)
    })
}

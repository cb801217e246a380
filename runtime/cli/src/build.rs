//! `ck build`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::validate::load_all;

/// Arguments of `ck build`.
#[derive(clap::Args)]
pub struct Args {
    /// Kernel directories (or manifests) to build.
    #[arg(required = true, value_name = "KERNEL")]
    kernels: Vec<PathBuf>,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let (loaded, problems) = load_all(&args.kernels);
    for p in &problems {
        eprintln!("{p}");
    }
    let mut failed = !problems.is_empty();
    for l in loaded {
        let Some(kernel) = l.kernel else {
            for d in &l.diagnostics {
                eprintln!("{d}");
            }
            failed = true;
            continue;
        };
        let dir = kernel.dir().to_path_buf();
        match ck_build::build_kernel(&kernel, &dir) {
            Ok(report) => println!(
                "built {} ({} bytes, {}) in {:.0?}",
                report.component.display(),
                report.bytes,
                report.method,
                report.duration
            ),
            Err(e) => {
                eprintln!("ck build: {}: {e}", kernel.name);
                failed = true;
            }
        }
    }
    if failed {
        bail!("some kernels did not build");
    }
    Ok(ExitCode::SUCCESS)
}

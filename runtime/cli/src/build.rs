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

/// Records the build in the kernel's CK and TOOL loops (on `develop`) and says so.
fn record(kernel: &ck_manifest::Kernel, component: &std::path::Path) -> Result<()> {
    let loops = ck_loops::state::Loops::open(kernel)?;
    let recorded = loops.record(Some(component), "ck build")?;
    let short = |c: &ck_loops::git::Committed| ck_loops::serving::short(&c.commit).to_owned();
    match (&recorded.ck, &recorded.tool) {
        (None, None) => println!("  loops unchanged (develop already holds this build)"),
        (ck, tool) => println!(
            "  recorded on develop:{}{} (a running host serves it after `ck promote {} develop`)",
            ck.as_ref()
                .map(|c| format!(" ck@{}", short(c)))
                .unwrap_or_default(),
            tool.as_ref()
                .map(|c| format!(" tool@{}", short(c)))
                .unwrap_or_default(),
            kernel.dir().display()
        ),
    }
    Ok(())
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
            Ok(report) => {
                println!(
                    "built {} ({} bytes, {}) in {:.0?}",
                    report.component.display(),
                    report.bytes,
                    report.method,
                    report.duration
                );
                if let Err(e) = record(&kernel, &report.component) {
                    eprintln!("ck build: {}: {e:#}", kernel.name);
                    failed = true;
                }
            }
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

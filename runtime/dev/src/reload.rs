//! One reload: build the kernel as its manifest says, record the build in its loops, and load
//! the resulting `develop` version, ready to be swapped in.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ck_loops::state::{self, Loops};
use ck_manifest::Kernel;
use ck_serve::{Loader, PreparedVersion};

/// A version built and loaded, with its timings.
pub struct Reloaded {
    /// The version built.
    pub version: PreparedVersion,
    /// Time spent building.
    pub build: Duration,
    /// When the build ended and recording, loading and swapping began.
    pub started_swap: Instant,
}

/// The kernel `path` names (a directory or its manifest), or every diagnostic that stops it.
pub fn kernel_at(path: &Path) -> Result<Kernel> {
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

/// Builds the kernel in `dir` as its manifest says, records the build in the loops (`reason`
/// is the commit message) and loads the resulting `develop` version. Every failure leaves the
/// serving version alone. Blocking.
pub fn build_version(dir: &Path, loader: &Loader, reason: &str) -> Result<Reloaded> {
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

//! `ck verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};

/// Arguments of `ck verify`. Exit status: 0 everything verifies, 1 something is broken, 2
/// nothing to verify at the path.
#[derive(clap::Args)]
pub struct Args {
    /// A kernel directory, or its `data/` directory.
    #[arg(value_name = "KERNEL_OR_DATA_DIR")]
    path: PathBuf,
    /// Print every broken link, not only the first.
    #[arg(long)]
    all: bool,
    /// Seconds to wait for sealed instances that are not committed yet (a serving host commits
    /// each within milliseconds); after that they fail. 0: do not wait.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    wait: f64,
}

/// Verifies the DATA tree; exit 0 only when everything verifies, 1 when something is broken,
/// 2 when there is nothing to verify at the path.
pub fn run(args: &Args) -> Result<ExitCode> {
    if !args.path.is_dir() {
        bail!("{}: not a directory", args.path.display());
    }
    let kernel_dir = ck_loops::data::kernel_dir_of(&args.path);
    let wait = std::time::Duration::try_from_secs_f64(args.wait)
        .map_err(|e| anyhow::anyhow!("--wait {}: {e}", args.wait))?;
    let report = ck_loops::data::verify_tree_settled(&kernel_dir, wait, |n| {
        eprintln!(
            "waiting up to {:.1} s for {n} sealed instance(s) to be committed…",
            wait.as_secs_f64()
        )
    });
    for note in &report.notes {
        println!("note: {note}");
    }
    if report.ok() && report.instances == 0 && report.ledger_lines == 0 {
        println!(
            "nothing to verify: {} holds no sealed instance and no audit ledger (is it a kernel directory, or its data/ directory?)",
            args.path.display()
        );
        return Ok(ExitCode::from(2));
    }
    if report.ok() {
        println!(
            "ok: {} sealed instance(s) and {} audit ledger line(s) verified under {}",
            report.instances,
            report.ledger_lines,
            kernel_dir.join("data").display()
        );
        println!(
            "note: an offline check proves the tree agrees with itself and with its history; a consistent rewrite of every hash, the history and the ledger together is not detectable from the tree alone"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let shown = if args.all { report.findings.len() } else { 1 };
    for finding in report.findings.iter().take(shown) {
        println!("FAIL {finding}");
    }
    if !args.all && report.findings.len() > 1 {
        println!(
            "({} more broken link(s); --all lists them)",
            report.findings.len() - 1
        );
    }
    Ok(ExitCode::from(1))
}

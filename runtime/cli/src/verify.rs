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
    /// Also check the tree against what the cluster recorded: every instance announced on the
    /// kernel's DATA event stream (`ck_data_{guid}`, with its hashes) must be in the tree with
    /// those hashes, and every instance in the tree must have been announced. This catches a
    /// consistent rewrite of the tree that an offline check cannot.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// NATS user for --nats (an operator's static user; it reads the stream).
    #[arg(long, requires = "nats")]
    user: Option<String>,
    /// Password for --user (or the environment variable CK_NATS_PASSWORD; used only with
    /// --user, so a password in the environment does not make `ck verify` ask for one).
    #[arg(long, env = "CK_NATS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// The CA file that signs the NATS server's certificate (TLS required).
    #[arg(long, value_name = "FILE", env = "CK_NATS_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

/// The cluster's disagreements with the tree of `kernel_dir` (`--nats`).
fn anchored(args: &Args, url: &str, kernel_dir: &std::path::Path) -> Result<(usize, Vec<String>)> {
    let kernel = crate::validate::load_one(kernel_dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = crate::call::operator_options(
            args.user.as_deref(),
            args.password.as_deref(),
            args.tls_ca.as_deref(),
        )
        .connect(ck_bus::servers(url).as_slice())
        .await
        .map_err(|e| anyhow::anyhow!("--nats {url}: {e}"))?;
        let js = async_nats::jetstream::new(client);
        let recorded = ck_task::anchor::recorded(&js, &kernel.guid).await?;
        let mut findings = ck_task::anchor::disagreements(kernel_dir, &recorded);
        // The cluster's copies of the sealed instances, byte for byte (where it keeps them).
        if let Some(copies) = ck_task::anchor::sealed_copies(&js, &kernel.guid).await? {
            findings.extend(ck_task::anchor::copy_disagreements(kernel_dir, &copies));
        }
        Ok((recorded.len(), findings))
    })
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
    if report.ok()
        && let Some(url) = &args.nats
    {
        let (recorded, findings) = anchored(args, url, &kernel_dir)?;
        if findings.is_empty() {
            println!(
                "ok: {} sealed instance(s) and {} audit ledger line(s) verified under {}, and anchored: they are the {recorded} instance(s) the cluster at {url} recorded, with the same hashes (and the same bytes as its sealed copies, where it keeps them)",
                report.instances,
                report.ledger_lines,
                kernel_dir.join("data").display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        return Ok(print_failures(&findings, args.all));
    }
    if report.ok() {
        println!(
            "ok: {} sealed instance(s) and {} audit ledger line(s) verified under {}",
            report.instances,
            report.ledger_lines,
            kernel_dir.join("data").display()
        );
        println!(
            "note: an offline check proves the tree agrees with itself and with its history; a consistent rewrite of every hash, the history and the ledger together is not detectable from the tree alone (--nats URL checks it against what the cluster recorded)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    Ok(print_failures(&report.findings, args.all))
}

/// Prints the first failure (every one with `all`) and says how many more there are; exit 1.
fn print_failures<T: std::fmt::Display>(findings: &[T], all: bool) -> ExitCode {
    let shown = if all { findings.len() } else { 1 };
    for finding in findings.iter().take(shown) {
        println!("FAIL {finding}");
    }
    if !all && findings.len() > 1 {
        println!(
            "({} more broken link(s); --all lists them)",
            findings.len() - 1
        );
    }
    ExitCode::from(1)
}

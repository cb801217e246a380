//! `ck promote` / `ck canary` / `ck rollback` / `ck versions`: moving and showing the versions
//! a host serves (the serving record and the loops' branches). Running hosts follow the
//! serving record themselves (`ck_serve`). With `--nats`, the record changed is the cluster's
//! (`ck_control`), from any machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use ck_loops::serving::ServingRecord;
use ck_loops::state::{self, Loops};

use crate::publish::ClusterArgs;

/// Arguments naming one kernel.
#[derive(clap::Args)]
pub struct KernelArg {
    /// The kernel directory (or its manifest); with --nats also its name or GUID.
    #[arg(value_name = "KERNEL")]
    pub kernel: PathBuf,
}

/// Arguments of `ck rollback`.
#[derive(clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    kernel: KernelArg,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Arguments of `ck promote`.
#[derive(clap::Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    kernel: KernelArg,
    /// A branch (`develop`, `canary`) or commit id of the CK or TOOL loop.
    #[arg(value_name = "REF")]
    reference: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Arguments of `ck canary`.
#[derive(clap::Args)]
pub struct CanaryArgs {
    #[command(flatten)]
    kernel: KernelArg,
    /// A branch (`develop`) or commit id of the CK or TOOL loop.
    #[arg(value_name = "REF")]
    reference: String,
    /// Percentage of messages the canary answers (1–99; 0 ends the canary).
    #[arg(long)]
    weight: u8,
    #[command(flatten)]
    cluster: ClusterArgs,
}

fn open(path: &Path) -> Result<Loops> {
    let kernel = crate::validate::load_one(path)?;
    Ok(Loops::open(&kernel)?)
}

fn print_record(record: &ServingRecord) {
    println!(
        "{} serving revision {}: stable {}{}",
        record.kernel,
        record.revision,
        record.stable.short(),
        record
            .canary
            .as_ref()
            .map(|c| format!(", canary {} at {}%", c.pin.short(), c.weight))
            .unwrap_or_default()
    );
}

/// The kernel a cluster command names: a kernel directory or manifest (its GUID), else a
/// name or GUID as given.
fn cluster_kernel(arg: &Path) -> Result<String> {
    if arg.exists() {
        return Ok(crate::validate::load_one(arg)?.guid);
    }
    Ok(arg.to_string_lossy().into_owned())
}

/// Changes the cluster's serving record of `kernel` and prints what changed.
fn in_cluster<F>(cluster: &ClusterArgs, kernel: &Path, change: F) -> Result<ExitCode>
where
    F: AsyncFnOnce(
        &ck_control::ControlPlane,
        &str,
    ) -> Result<ck_control::Changed, ck_control::ControlError>,
{
    let kernel = cluster_kernel(kernel)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let refusals = crate::publish::Refusals::default();
        let plane = cluster
            .open(None, &refusals)
            .await
            .map_err(|e| refusals.explain(e))?;
        let changed = change(&plane, &kernel)
            .await
            .map_err(|e| refusals.explain(e.into()))?;
        println!("{}", changed.what);
        print_record(&changed.record);
        Ok(ExitCode::SUCCESS)
    })
}

/// `ck promote`.
pub fn promote(args: &PromoteArgs) -> Result<ExitCode> {
    if args.cluster.nats.is_some() {
        return in_cluster(&args.cluster, &args.kernel.kernel, async |plane, kernel| {
            plane.promote(kernel, &args.reference).await
        });
    }
    let record = open(&args.kernel.kernel)?.promote(&args.reference)?;
    print_record(&record);
    Ok(ExitCode::SUCCESS)
}

/// `ck canary`.
pub fn canary(args: &CanaryArgs) -> Result<ExitCode> {
    if args.cluster.nats.is_some() {
        return in_cluster(&args.cluster, &args.kernel.kernel, async |plane, kernel| {
            plane.canary(kernel, &args.reference, args.weight).await
        });
    }
    let record = open(&args.kernel.kernel)?.canary(&args.reference, args.weight)?;
    print_record(&record);
    Ok(ExitCode::SUCCESS)
}

/// `ck rollback`.
pub fn rollback(args: &RollbackArgs) -> Result<ExitCode> {
    if args.cluster.nats.is_some() {
        return in_cluster(&args.cluster, &args.kernel.kernel, async |plane, kernel| {
            plane.rollback(kernel).await
        });
    }
    let (record, what) = open(&args.kernel.kernel)?.rollback()?;
    println!("{what}");
    print_record(&record);
    Ok(ExitCode::SUCCESS)
}

/// `ck versions`: the serving record and the loops' branches.
pub fn versions(args: &KernelArg) -> Result<ExitCode> {
    let dir = if args.kernel.is_dir() {
        args.kernel.clone()
    } else {
        args.kernel.parent().unwrap_or(Path::new(".")).to_owned()
    };
    if !state::state_dir(&dir).is_dir() {
        println!(
            "{}: nothing recorded yet (`ck build`, `ck run` or `ck dev` record the loops)",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let loops = open(&args.kernel)?;
    match loops.serving()? {
        Some(record) => print_record(&record),
        None => println!("no serving record yet (the first `ck run` pins what it serves)"),
    }
    for (branch, pin) in loops.branches() {
        println!("  {branch:<8} {}", pin_text(&loops, &pin));
    }
    Ok(ExitCode::SUCCESS)
}

fn pin_text(loops: &Loops, pin: &(Option<String>, Option<String>)) -> String {
    let part = |c: &Option<String>, summary: Option<String>| match c {
        Some(c) => format!(
            "{} ({})",
            ck_loops::serving::short(c),
            summary.unwrap_or_default()
        ),
        None => "-".to_owned(),
    };
    format!(
        "ck {}  tool {}",
        part(&pin.0, pin.0.as_deref().and_then(|c| loops.summary_ck(c))),
        part(&pin.1, pin.1.as_deref().and_then(|c| loops.summary_tool(c)))
    )
}

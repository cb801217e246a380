//! `ck acl`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ck_acl::{Policy, compile};
use ck_manifest::{Kernel, KernelSet};

use crate::validate::{load_all, report_failures};

/// Arguments of `ck acl`.
#[derive(clap::Args)]
pub struct Args {
    /// The kernel: a manifest or kernel directory, or the name or GUID of a kernel given with
    /// --with.
    #[arg(value_name = "KERNEL")]
    kernel: String,
    /// Other kernels whose grants and edges count (files or directories; repeatable).
    #[arg(long = "with", value_name = "PATH")]
    with: Vec<PathBuf>,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Format::Both)]
    format: Format,
    /// Evaluate grant expiry at this RFC 3339 instant instead of now.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// The compiled permissions with every rule's reasons.
    Json,
    /// A nats-server `permissions { }` block.
    Nats,
    /// JSON, then the nats-server block.
    Both,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let now = match &args.at {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .with_context(|| format!("--at '{t}' is not an RFC 3339 timestamp"))?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now(),
    };
    let target_path = PathBuf::from(&args.kernel);
    let mut paths = args.with.clone();
    let target_file = if target_path.exists() {
        let found = ck_manifest::discover(&target_path)
            .with_context(|| format!("reading {}", target_path.display()))?;
        match found.as_slice() {
            [one] => {
                paths.insert(0, one.clone());
                Some(one.clone())
            }
            [] => bail!("no conceptkernel.yaml found at {}", target_path.display()),
            _ => bail!(
                "{} holds several kernels; name one manifest or kernel directory",
                target_path.display()
            ),
        }
    } else {
        None
    };
    let (loaded, problems) = load_all(&paths);
    let failed = report_failures(&problems, &loaded);
    if failed {
        eprintln!("ck acl: refusing to compile permissions from invalid manifests");
        return Ok(ExitCode::FAILURE);
    }
    let kernels: Vec<Kernel> = loaded.into_iter().filter_map(|l| l.kernel).collect();
    let target = if let Some(file) = target_file {
        match kernels.iter().find(|k| k.manifest_path == file) {
            Some(k) => k.clone(),
            None => bail!("no kernel loaded from {}", file.display()),
        }
    } else {
        let (set, _) = KernelSet::new(kernels.clone());
        match set.find(&args.kernel) {
            Some(k) => k.clone(),
            None => bail!(
                "'{}' is neither a path nor the name or GUID of exactly one kernel given with --with",
                args.kernel
            ),
        }
    };
    let (set, conflicts) = KernelSet::new(kernels);
    if !conflicts.is_empty() {
        for c in &conflicts {
            eprintln!("{c}");
        }
        eprintln!("ck acl: refusing to compile permissions from conflicting manifests");
        return Ok(ExitCode::FAILURE);
    }
    if set.len() == 1 {
        eprintln!(
            "ck acl: note: no other kernels given (--with); cross-kernel grants and edges are not considered"
        );
    }
    let acl = compile(&target, &set, now, &Policy::default())
        .with_context(|| format!("compiling permissions for {}", target.name))?;
    if matches!(args.format, Format::Json | Format::Both) {
        println!("{}", serde_json::to_string_pretty(&acl)?);
    }
    if matches!(args.format, Format::Nats | Format::Both) {
        if args.format == Format::Both {
            println!(
                "# nats-server permissions for {} ({})",
                acl.kernel,
                acl.spiffe_id.as_deref().unwrap_or(&acl.guid)
            );
        }
        println!("{}", acl.permissions.to_nats_config());
    }
    Ok(ExitCode::SUCCESS)
}

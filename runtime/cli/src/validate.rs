//! `ck validate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use ck_manifest::{Diagnostic, KernelSet, Severity};
use serde::Serialize;

/// Arguments of `ck validate`.
#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or directories.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Print errors only.
    #[arg(long, short)]
    quiet: bool,
    /// The declared subject families to check topics and edge subjects against (default: the
    /// repository's policies/subject-families.yaml, built in).
    #[arg(long, value_name = "FILE")]
    subject_families: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Serialize)]
struct Report {
    manifests: usize,
    errors: usize,
    warnings: usize,
    diagnostics: Vec<Diagnostic>,
}

/// Loads every manifest the paths name; returns the loaded results and path-level problems.
pub fn load_all(paths: &[PathBuf]) -> (Vec<ck_manifest::Loaded>, Vec<Diagnostic>) {
    let now = chrono::Utc::now();
    let mut loaded: Vec<ck_manifest::Loaded> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut problems = Vec::new();
    for path in paths {
        match ck_manifest::discover(path) {
            Ok(found) if found.is_empty() => {
                problems.push(path_problem(path, "no conceptkernel.yaml found here"))
            }
            Ok(found) => {
                // The same manifest named twice (a file and a directory holding it) is read once.
                let fresh = found
                    .into_iter()
                    .filter(|f| seen.insert(f.canonicalize().unwrap_or_else(|_| f.clone())));
                loaded.extend(fresh.map(|f| ck_manifest::load_file(&f, now)));
            }
            Err(e) => problems.push(path_problem(path, &format!("cannot read: {e}"))),
        }
    }
    (loaded, problems)
}

/// Loads the one kernel `path` names (a manifest or a kernel directory), printing its
/// diagnostics if it is invalid.
pub fn load_one(path: &std::path::Path) -> anyhow::Result<ck_manifest::Kernel> {
    let files = ck_manifest::discover(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let [file] = files.as_slice() else {
        anyhow::bail!("{} does not name exactly one kernel", path.display())
    };
    let loaded = ck_manifest::load_file(file, chrono::Utc::now());
    match loaded.kernel {
        Some(kernel) => Ok(kernel),
        None => {
            for d in &loaded.diagnostics {
                eprintln!("{d}");
            }
            anyhow::bail!("invalid manifest {}", file.display())
        }
    }
}

/// Prints path problems and the diagnostics of every manifest that has errors; true when
/// anything failed (callers refuse to go on from invalid manifests).
pub fn report_failures<'a>(
    problems: impl IntoIterator<Item = &'a Diagnostic>,
    loaded: impl IntoIterator<Item = &'a ck_manifest::Loaded>,
) -> bool {
    let mut failed = false;
    for p in problems {
        eprintln!("{p}");
        failed = true;
    }
    for l in loaded.into_iter().filter(|l| l.has_errors()) {
        failed = true;
        for d in &l.diagnostics {
            eprintln!("{d}");
        }
    }
    failed
}

fn path_problem(path: &std::path::Path, message: &str) -> Diagnostic {
    let mut d = ck_manifest::Diagnostics::new(path);
    d.error(None, "", message);
    d.into_vec().remove(0)
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let families = crate::families::load(args.subject_families.as_deref())?;
    let (loaded, mut diagnostics) = load_all(&args.paths);
    let manifests = loaded.len();
    let kernels: Vec<_> = loaded.iter().filter_map(|l| l.kernel.clone()).collect();
    for l in loaded {
        diagnostics.extend(l.diagnostics);
        // Subjects no declared family holds: the ACL compiler would open none of them.
        if let Some(kernel) = &l.kernel {
            let mut d = ck_manifest::Diagnostics::new(&l.path);
            for outside in families.check_kernel(kernel) {
                d.error(None, &outside.field, outside.to_string());
            }
            diagnostics.extend(d.into_vec());
        }
    }
    let (_, conflicts) = KernelSet::new(kernels);
    diagnostics.extend(conflicts);
    if args.quiet {
        diagnostics.retain(|d| d.severity == Severity::Error);
    }
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diagnostics.len() - errors;
    match args.format {
        Format::Text => {
            for d in &diagnostics {
                println!("{d}");
            }
            let verdict = if errors == 0 { "ok" } else { "FAILED" };
            println!(
                "{verdict}: {manifests} manifest(s) checked, {errors} error(s), {warnings} warning(s)"
            );
        }
        Format::Json => {
            let report = Report {
                manifests,
                errors,
                warnings,
                diagnostics,
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

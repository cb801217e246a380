//! Verifying a kernel's whole DATA tree offline: every sealed instance, the DATA repository's
//! history, and the audit ledger's hash chain.

use std::fs;
use std::path::{Path, PathBuf};

use super::instance::{Finding, verify_instance};

/// What verifying a DATA tree found.
#[derive(Debug, Clone, Default)]
pub struct TreeReport {
    /// Sealed instances checked.
    pub instances: usize,
    /// Audit ledger lines walked.
    pub ledger_lines: usize,
    /// Broken links, in the order found (instances by id, then the ledger).
    pub findings: Vec<Finding>,
    /// Things worth knowing that break nothing (a write a crash left unfinished, an instance
    /// directory with nothing sealed in it yet).
    pub notes: Vec<String>,
    /// Sealed instances the DATA history does not hold (each also a finding): a host may be
    /// about to commit them ([`verify_tree_settled`] waits for that).
    pub uncommitted: Vec<String>,
}

impl TreeReport {
    /// Everything verifies.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// The kernel directory for a path naming either it or its `data/` directory.
pub fn kernel_dir_of(path: &Path) -> PathBuf {
    let is_data = path.file_name().is_some_and(|n| n == "data")
        && !path.join("data").is_dir()
        && (path.join("instances").is_dir()
            || path.join("ledger").is_dir()
            || path.join(".git").is_dir()
            || path
                .parent()
                .is_some_and(|p| p.join("conceptkernel.yaml").is_file()));
    match (is_data, path.parent()) {
        (true, Some(parent)) => parent.to_owned(),
        _ => path.to_owned(),
    }
}

/// Verifies every instance under `data/instances/` and the chain of `data/ledger/audit.jsonl`
/// of the kernel in `kernel_dir`.
pub fn verify_tree(kernel_dir: &Path) -> TreeReport {
    let mut report = TreeReport::default();
    let instances = ck_fs::layout::DataLayout::of_kernel(kernel_dir).instances();
    let mut dirs: Vec<PathBuf> = match fs::read_dir(&instances) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            report.findings.push(Finding {
                file: instances.clone(),
                problem: format!("cannot list: {e}"),
            });
            Vec::new()
        }
    };
    dirs.sort();
    for dir in dirs {
        let leftovers: Vec<String> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| super::instance::staging_pid(n).is_some())
            .collect();
        for name in &leftovers {
            report.notes.push(format!(
                "{}: unfinished write left by a crash (never linked into place; removed when the host recovers)",
                dir.join(name).display()
            ));
        }
        if !dir.join("data.json").exists() {
            report.notes.push(format!(
                "{}: nothing sealed yet (an interrupted seal, completed when the host recovers)",
                dir.display()
            ));
            continue;
        }
        report.instances += 1;
        report.findings.extend(verify_instance(&dir));
        report
            .findings
            .extend(super::amend::verify_amendments(&dir));
    }
    // The DATA repository: nothing sealed was rewritten after its seal commit, nothing
    // committed is missing.
    let layout = ck_fs::layout::DataLayout::of_kernel(kernel_dir);
    let (history, uncommitted) = super::repo::verify_history(kernel_dir);
    report.findings.extend(history);
    for id in uncommitted {
        report.uncommitted.push(id.clone());
        report.findings.push(Finding {
            file: instances.join(&id),
            problem: "sealed but not in the DATA history (not committed): nothing proves a host sealed it — if a host is serving this kernel its commit may be moments away; run ck verify again".into(),
        });
    }
    let ledger = layout.audit_ledger();
    let mut seals_in_ledger = 0;
    match fs::read_to_string(&ledger) {
        Ok(text) => {
            report.ledger_lines = text.lines().count();
            // Every seal the ledger records must be in the tree.
            for (n, line) in text.lines().enumerate() {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue; // the chain check below names it
                };
                let Some(id) = value["key"].as_str().and_then(|k| k.strip_prefix("seal:")) else {
                    continue;
                };
                seals_in_ledger += 1;
                if !instances.join(id).join("data.json").is_file() {
                    report.findings.push(Finding {
                        file: instances.join(id),
                        problem: format!(
                            "the audit ledger records its seal (line {}) but the instance is missing from the tree",
                            n + 1
                        ),
                    });
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report.findings.push(Finding {
            file: ledger.clone(),
            problem: format!("cannot read: {e}"),
        }),
    }
    // Sealed instances, or a ledger recording seals, without the history that commits them:
    // the history was removed, and with it the proof that nothing was rewritten.
    let git = layout.dir().join(".git");
    if !git.is_dir() && (report.instances > 0 || seals_in_ledger > 0) {
        report.findings.push(Finding {
            file: git,
            problem: format!(
                "the DATA history is missing ({} sealed instance(s) in the tree, {seals_in_ledger} seal(s) in the audit ledger): nothing proves the instances were not rewritten",
                report.instances
            ),
        });
    }
    match ck_audit::verify_chain(kernel_dir) {
        Ok(None) => {}
        Ok(Some(b)) => report.findings.push(Finding {
            file: ledger,
            problem: format!("line {}: {}", b.line, b.problem),
        }),
        Err(e) => report.findings.push(Finding {
            file: ledger,
            problem: format!("cannot read: {e}"),
        }),
    }
    report
}

/// [`verify_tree`], given up to `wait` for sealed instances the history does not hold yet to be
/// committed (a serving host commits each seal within milliseconds of its answer; a forged or
/// abandoned one never is). `waiting` is told how many it waits for, once.
pub fn verify_tree_settled(
    kernel_dir: &Path,
    wait: std::time::Duration,
    waiting: impl FnOnce(usize),
) -> TreeReport {
    let deadline = std::time::Instant::now() + wait;
    let mut report = verify_tree(kernel_dir);
    let mut waiting = Some(waiting);
    while !report.uncommitted.is_empty() && std::time::Instant::now() < deadline {
        if let Some(tell) = waiting.take() {
            tell(report.uncommitted.len());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        report = verify_tree(kernel_dir);
    }
    report
}

/// Removes the temporary files of seals a crash interrupted (`*.tmp-{pid}` whose process is
/// gone): they were never linked into place, so no sealed file is touched. Returns what it
/// removed.
pub fn remove_leftovers(kernel_dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let instances = ck_fs::layout::DataLayout::of_kernel(kernel_dir).instances();
    for dir in fs::read_dir(&instances).into_iter().flatten().flatten() {
        for entry in fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = super::instance::staging_pid(&name) else {
                continue;
            };
            let alive = pid.parse::<u32>().is_ok_and(|p| {
                p == std::process::id() || Path::new(&format!("/proc/{p}")).exists()
            });
            if !alive && fs::remove_file(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
    }
    removed
}

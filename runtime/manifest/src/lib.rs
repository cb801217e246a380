//! `conceptkernel.yaml`: reading every shape in circulation into one typed [`Kernel`].
//!
//! This crate owns the manifest: locating it ([`discover`]), reading it safely (size limit,
//! UTF-8, one YAML document, duplicate keys refused), normalising the five shapes of
//! ckp-spec §1.1 by their precedence table, resolving topics ([`topics`], the only place subject
//! names are formed), and reporting every problem as a [`Diagnostic`] with file, line, column and
//! field path. It also checks a set of kernels against each other ([`KernelSet`]).
//!
//! It does not compile permissions (that is `ck-acl`), talk to NATS, or load components.

mod diag;
mod model;
mod normalize;
pub mod ontology;
mod set;
pub mod topics;
mod yaml;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use diag::{Diagnostic, Diagnostics, Loc, Severity};
pub use model::{
    ACCESS_VERBS, Access, Action, Conversation, Edge, Edges, Expiry, Governance, Grant,
    GrantIdentity, Kernel, KernelType, Limits, Predicate, Tool, Topics,
};
pub use normalize::ParseOptions;
pub use set::{KernelSet, guid_key};

/// The manifest's file name inside a kernel directory.
pub const MANIFEST_FILE: &str = "conceptkernel.yaml";

/// Amending a sealed instance where `ontology.yaml` allows it (ckp-spec §3.5 names no action;
/// this is ours), served by the host like the lifecycle actions.
pub const AMEND_ACTION: &str = "instance.amend";

/// The task lifecycle actions (ckp-spec §3.1–3.2): a kernel declaring any of them has its tasks
/// served by the host.
pub const TASK_LIFECYCLE_ACTIONS: [&str; 5] = [
    "task.start",
    "task.update",
    "task.complete",
    "task.fail",
    "task.retry",
];
/// The grant verb that lets its grantee read a kernel's result topic (`result.{K}`), where the
/// host broadcasts the successful answers of the kernel's `anon` guest actions (ours: no other
/// grant opens the result topic; answers to `auth`/`owner` actions, task and amend actions and
/// every error go to the caller's inbox only).
pub const READ_RESULTS: &str = "read-results";
/// The grant verb that lets a proven identity act on every task and sealed instance of the
/// kernel (`task.update` / `complete` / `fail` / `retry`, `instance.amend`), not only on those
/// it owns (ours).
pub const MANAGE_TASKS: &str = "manage-tasks";
/// The canonical GUID file beside the manifest.
pub const GUID_FILE: &str = ".ck-guid";
/// Largest manifest read, in bytes. Real manifests are a few KiB; anything near this is an
/// accident or an attack, and is refused before it is parsed.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// The outcome of reading one manifest.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The manifest file.
    pub path: PathBuf,
    /// The kernel, present only when there were no errors.
    pub kernel: Option<Kernel>,
    /// Everything found, errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// The first error found, as a person reads it (empty when there is none).
    pub fn first_error(&self) -> String {
        self.diagnostics
            .iter()
            .find(|d| d.severity == Severity::Error)
            .map(|d| d.to_string())
            .unwrap_or_default()
    }
}

impl Loaded {
    /// True when at least one diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    fn failed(path: &Path, loc: Option<Loc>, message: String) -> Self {
        let mut d = Diagnostics::new(path);
        d.error(loc, "", message);
        Self {
            path: path.to_owned(),
            kernel: None,
            diagnostics: d.into_vec(),
        }
    }
}

/// Parses manifest text. `path` is used in diagnostics only.
pub fn parse_str(text: &str, path: &Path, opts: &ParseOptions) -> Loaded {
    let mut d = Diagnostics::new(path);
    let kernel = match yaml::parse(text) {
        Err(e) => {
            d.error(Some(e.loc), "", format!("invalid YAML: {}", e.message));
            None
        }
        Ok(None) => {
            d.error(None, "", "the manifest is empty");
            None
        }
        Ok(Some(doc)) => normalize::normalize(&doc, opts, &mut d),
    };
    let has_errors = d.has_errors();
    Loaded {
        path: path.to_owned(),
        kernel: kernel.filter(|_| !has_errors),
        diagnostics: d.into_vec(),
    }
}

/// Reads a manifest file (and the `.ck-guid` beside it), refusing oversized or non-UTF-8 input
/// before parsing.
pub fn load_file(path: &Path, now: chrono::DateTime<chrono::Utc>) -> Loaded {
    let text = match read_limited(path) {
        Ok(t) => t,
        Err((loc, msg)) => return Loaded::failed(path, loc, msg),
    };
    let guid_path = path.parent().unwrap_or(Path::new(".")).join(GUID_FILE);
    let ck_guid = match std::fs::read(&guid_path) {
        Ok(bytes) if bytes.len() <= 256 => {
            Some((String::from_utf8_lossy(&bytes).into_owned(), guid_path))
        }
        Ok(_) => {
            return Loaded::failed(
                &guid_path,
                None,
                "`.ck-guid` is larger than 256 bytes".into(),
            );
        }
        Err(_) => None,
    };
    parse_str(&text, path, &ParseOptions { now, ck_guid })
}

fn read_limited(path: &Path) -> Result<String, (Option<Loc>, String)> {
    let file = File::open(path).map_err(|e| (None, format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| (None, format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err((None, "not a regular file".into()));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err((
            None,
            format!(
                "file is {} bytes; manifests are limited to {MAX_MANIFEST_BYTES} bytes",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| (None, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err((
            None,
            format!("file grew past {MAX_MANIFEST_BYTES} bytes while being read"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|b| **b == b'\n').count() + 1;
        let column = good.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        (
            Some(Loc { line, column }),
            "the file is not valid UTF-8".to_owned(),
        )
    })
}

/// Finds the manifests a path names: a file is itself; a directory is its own
/// `conceptkernel.yaml`, or else every `conceptkernel.yaml` below it (hidden directories and
/// `target/` skipped), in sorted order.
pub fn discover(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let own = path.join(MANIFEST_FILE);
    if own.is_file() {
        return Ok(vec![own]);
    }
    let mut found = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let kind = entry.file_type()?;
            if kind.is_dir() && !name.starts_with('.') && name != "target" {
                stack.push(entry.path());
            } else if kind.is_file() && name == MANIFEST_FILE {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// What a registry scan found under one root: every manifest, and the places that could not be
/// read (skipped and reported, never the end of the scan).
#[derive(Debug, Default)]
pub struct RegistryScan {
    /// Every `conceptkernel.yaml` found, in sorted order.
    pub manifests: Vec<PathBuf>,
    /// Directories or entries that could not be read, with the reason.
    pub unreadable: Vec<(PathBuf, std::io::Error)>,
}

/// Finds every manifest under a registry root (a directory of kernel directories), the root's
/// own `conceptkernel.yaml` included: unlike [`discover`], a manifest at the root does not hide
/// the others, and a sub-directory that cannot be read is reported in
/// [`RegistryScan::unreadable`] while the rest is still scanned. Hidden directories and
/// `target/` are skipped; symbolic links are not followed.
pub fn discover_registry(root: &Path) -> RegistryScan {
    let mut scan = RegistryScan::default();
    match std::fs::metadata(root) {
        Ok(meta) if !meta.is_dir() => {
            scan.manifests.push(root.to_owned());
            return scan;
        }
        Ok(_) => {}
        Err(e) => {
            scan.unreadable.push((root.to_owned(), e));
            return scan;
        }
    }
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                scan.unreadable.push((dir, e));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    scan.unreadable.push((dir.clone(), e));
                    continue;
                }
            };
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(e) => {
                    scan.unreadable.push((entry.path(), e));
                    continue;
                }
            };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if kind.is_dir() && !name.starts_with('.') && name != "target" {
                stack.push(entry.path());
            } else if kind.is_file() && name == MANIFEST_FILE {
                scan.manifests.push(entry.path());
            }
        }
    }
    scan.manifests.sort();
    scan
}

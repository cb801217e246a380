//! A kernel's CK and TOOL loops and its versions, kept in the kernel's state directory
//! `{kernel}/.ck/` (outside the CK tree, never part of a snapshot):
//!
//! ```text
//! .ck/ck.git/        bare repository: snapshots of the CK files (manifest, ontology, rules, docs)
//! .ck/tool.git/      bare repository: snapshots of tool/ sources plus tool.json (component digest)
//! .ck/artifacts/     built components by blake3 digest (content-addressed, written once)
//! .ck/serving.json   the serving record: stable (and canary) CK + TOOL commits
//! .ck/events.jsonl   the loop event journal (see `journal`)
//! .ck/lock           held while a loop or the serving record changes
//! ```
//!
//! New snapshots land on the `develop` branch; `stable` and `canary` move only by promote,
//! canary and rollback. Every commit and ref move is journalled as its loop event.
//!
//! Recording a version is `record`'s, moving the served versions `versions`', reading a
//! version back and taking snapshots of a kernel's files `snapshot`'s.

mod record;
mod snapshot;
mod versions;

pub use record::store_artifact;
pub use snapshot::{ck_snapshot, materialize, stable_manifest, tool_snapshot};

use std::path::{Path, PathBuf};

use ck_manifest::Kernel;
use ck_manifest::topics::{LoopEvent, loop_event_subject};
use serde_json::{Value, json};
use thiserror::Error;

use crate::git::{Committed, GitError, LoopRepo};
use crate::journal::Journal;
use crate::serving::{ServingRecord, VersionRef};

/// The state directory's name inside a kernel directory.
pub const STATE_DIR: &str = ".ck";
/// Where new snapshots land.
pub const DEVELOP: &str = "develop";
/// What is served by default.
pub const STABLE: &str = "stable";
/// The canary version.
pub const CANARY: &str = "canary";
/// The TOOL snapshot's description of its component.
pub const TOOL_JSON: &str = "tool.json";
/// Largest file a CK or TOOL snapshot takes (sources and manifests are far smaller; anything
/// this big is a build output or data left in the wrong place).
pub const MAX_SNAPSHOT_FILE: u64 = 8 * 1024 * 1024;

/// Why a loop operation failed.
#[derive(Debug, Error)]
pub enum LoopError {
    /// Git refused.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The request cannot be carried out; the message says why and what to do.
    #[error("{0}")]
    Refused(String),
}

impl From<crate::serving::ServingRefused> for LoopError {
    fn from(refused: crate::serving::ServingRefused) -> Self {
        LoopError::Refused(refused.0)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LoopError + '_ {
    move |source| LoopError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The state directory of the kernel in `kernel_dir`.
pub fn state_dir(kernel_dir: &Path) -> PathBuf {
    kernel_dir.join(STATE_DIR)
}

/// The serving record path of the kernel in `kernel_dir`.
pub fn serving_path(kernel_dir: &Path) -> PathBuf {
    state_dir(kernel_dir).join("serving.json")
}

/// The serving record, if versions were ever pinned.
pub fn serving(kernel_dir: &Path) -> Result<Option<ServingRecord>, LoopError> {
    let path = serving_path(kernel_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| LoopError::Refused(format!("{}: not a serving record: {e}", path.display())))
}

/// One version, read back from the loops: what a host needs to serve it.
#[derive(Debug, Clone)]
pub struct VersionSnapshot {
    /// The commits.
    pub pin: VersionRef,
    /// `conceptkernel.yaml` as committed.
    pub manifest: String,
    /// `.ck-guid` as committed, if there was one.
    pub ck_guid: Option<String>,
    /// The component, in the artifact store (its digest checked).
    pub component: PathBuf,
    /// `blake3:{hex}` of the component.
    pub digest: String,
}

/// What [`Loops::record`] committed.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// The CK commit, when the CK files changed.
    pub ck: Option<Committed>,
    /// The TOOL commit, when the sources or the component changed.
    pub tool: Option<Committed>,
    /// `develop` of both loops afterwards.
    pub develop: Option<VersionRef>,
    /// Names of the events journalled.
    pub events: Vec<String>,
}

/// The loops of one kernel, locked for a change.
pub struct Loops {
    kernel_dir: PathBuf,
    dir: PathBuf,
    guid: String,
    name: String,
    urn: String,
    ck: LoopRepo,
    tool: LoopRepo,
    journal: Journal,
    _lock: std::fs::File,
}

impl std::fmt::Debug for Loops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loops").field("dir", &self.dir).finish()
    }
}

/// Where one branch points in the CK and the TOOL loop.
pub type BranchHeads = (Option<String>, Option<String>);

/// A loop event waiting to be journalled.
type Pending = (String, String, String, Value);

impl Loops {
    /// Opens (creating when needed) the loops of `kernel` and takes the state lock; it is held
    /// until this value is dropped.
    pub fn open(kernel: &Kernel) -> Result<Self, LoopError> {
        let kernel_dir = kernel.dir().to_path_buf();
        let dir = state_dir(&kernel_dir);
        std::fs::create_dir_all(&dir).map_err(|e| {
            LoopError::Refused(format!(
                "cannot create the state directory {}: {e} (the kernel's CK and TOOL history and its serving record live there)",
                dir.display()
            ))
        })?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        Ok(Self {
            ck: LoopRepo::open_or_init(&dir.join("ck.git"))?,
            tool: LoopRepo::open_or_init(&dir.join("tool.git"))?,
            journal: Journal::new(&dir),
            kernel_dir,
            dir,
            guid: kernel.guid.clone(),
            name: kernel.name.clone(),
            urn: kernel.urn.clone(),
            _lock: lock,
        })
    }

    fn event(&self, event: LoopEvent, key: &str, data: Value) -> Pending {
        let name = event.to_string();
        let mut body = json!({
            "event": name,
            "kernel": self.name,
            "kernel_urn": self.urn,
            "guid": self.guid,
        });
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), data) {
            body.extend(extra);
        }
        (
            name.clone(),
            loop_event_subject(&self.guid, event),
            ck_manifest::topics::loop_event_id(&self.guid, event, key),
            body,
        )
    }

    /// `key` makes the message id unique per move: the commit for `develop` (it only moves
    /// forward), the serving record's revision for `stable` and `canary`.
    fn ref_update(
        &self,
        event: LoopEvent,
        branch: &str,
        from: Option<&str>,
        to: &str,
        key: &str,
    ) -> Pending {
        self.event(
            event,
            &format!("{branch}:{key}"),
            json!({"ref": format!("refs/heads/{branch}"), "from": from, "to": to, "commit": to}),
        )
    }

    fn journal(&self, events: Vec<Pending>) -> Result<Vec<String>, LoopError> {
        let names = events.iter().map(|e| e.0.clone()).collect();
        self.journal
            .append(events)
            .map_err(io(self.journal.path()))?;
        Ok(names)
    }

    /// `develop` of both loops (None before both were recorded once).
    pub fn develop(&self) -> Option<VersionRef> {
        Some(VersionRef {
            ck: self.ck.head(DEVELOP)?,
            tool: self.tool.head(DEVELOP)?,
        })
    }

    /// The serving record, if versions were ever pinned.
    pub fn serving(&self) -> Result<Option<ServingRecord>, LoopError> {
        serving(&self.kernel_dir)
    }

    /// `develop`, `stable` and `canary` of the CK and TOOL loops (None where a loop has no
    /// such branch).
    pub fn branches(&self) -> Vec<(&'static str, BranchHeads)> {
        [DEVELOP, STABLE, CANARY]
            .into_iter()
            .map(|b| (b, (self.ck.head(b), self.tool.head(b))))
            .collect()
    }

    /// The first line of a CK commit's message.
    pub fn summary_ck(&self, commit: &str) -> Option<String> {
        self.ck.summary(commit)
    }

    /// The first line of a TOOL commit's message.
    pub fn summary_tool(&self, commit: &str) -> Option<String> {
        self.tool.summary(commit)
    }

    /// Reads the version `pin` back from the loops, checking its component against the digest
    /// its TOOL commit recorded.
    pub fn materialize(&self, pin: &VersionRef) -> Result<VersionSnapshot, LoopError> {
        snapshot::materialize_from(&self.dir, &self.ck, &self.tool, pin)
    }

    /// What a build at TOOL ref `spec` (`develop`, a branch, or the start of a commit id)
    /// starts from: the version (`develop`'s CK commit, the TOOL commit `spec` names), the
    /// manifest of that CK commit and the TOOL commit's sources (`tool/…`), and the component
    /// digest the TOOL commit recorded.
    pub fn sources_at(&self, spec: &str) -> Result<SourcesAt, LoopError> {
        let develop = self.develop().ok_or_else(|| {
            LoopError::Refused(format!(
                "{} has no recorded version yet: build it (`ck build {}`) first",
                self.name,
                self.kernel_dir.display()
            ))
        })?;
        let tool = self.tool.resolve(spec).ok_or_else(|| {
            LoopError::Refused(format!(
                "`{spec}` names no commit or branch of {}'s TOOL loop",
                self.name
            ))
        })?;
        let pin = VersionRef {
            ck: develop.ck,
            tool,
        };
        let snapshot = self.materialize(&pin)?;
        let sources = self
            .tool
            .files(&pin.tool)?
            .into_iter()
            .filter(|(path, _)| path != TOOL_JSON)
            .collect();
        Ok(SourcesAt {
            pin,
            manifest: snapshot.manifest,
            ck_guid: snapshot.ck_guid,
            sources,
            recorded_digest: snapshot.digest,
        })
    }
}

/// What [`Loops::sources_at`] read.
#[derive(Debug, Clone)]
pub struct SourcesAt {
    /// The version built.
    pub pin: VersionRef,
    /// The CK commit's manifest.
    pub manifest: String,
    /// The CK commit's `.ck-guid`.
    pub ck_guid: Option<String>,
    /// The TOOL commit's files (paths relative to the kernel directory).
    pub sources: Vec<crate::git::SnapshotFile>,
    /// The component digest the TOOL commit recorded.
    pub recorded_digest: String,
}

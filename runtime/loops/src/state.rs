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

use std::path::{Path, PathBuf};

use ck_manifest::Kernel;
use ck_manifest::topics::{LoopEvent, loop_event_subject};
use serde_json::{Value, json};
use thiserror::Error;

use crate::git::{Committed, GitError, LoopRepo, SnapshotFile};
use crate::journal::Journal;
use crate::serving::{Canary, ServingRecord, VersionRef, short};

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

/// Directories of a kernel that are never part of the CK snapshot.
const NOT_CK: &[&str] = &["tool", "data", STATE_DIR, ".git", "target", "node_modules"];
/// Directories under `tool/` that hold build outputs, not sources.
const NOT_SOURCE: &[&str] = &["__pycache__", "target", "node_modules", ".git"];

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

    /// Commits the kernel's current CK files and, when `component` is given, its TOOL sources
    /// with that component's digest, on `develop`; journals `ck.commit` (with
    /// `ck.schema-change` and `ck.depends-on` when they apply), `tool.commit` and the
    /// `ref-update`s. Unchanged loops get no commit.
    pub fn record(&self, component: Option<&Path>, reason: &str) -> Result<Recorded, LoopError> {
        let mut recorded = Recorded::default();
        let mut events = Vec::new();
        let ck_files = ck_snapshot(&self.kernel_dir)?;
        let message = format!("{reason}\n\nkernel: {}\nguid: {}", self.name, self.guid);
        if let Some(c) = self.ck.commit_snapshot(DEVELOP, &ck_files, &message)? {
            let changed = |path: &str| -> Result<bool, LoopError> {
                let before = match &c.previous {
                    Some(p) => self.ck.read(p, path)?,
                    None => None,
                };
                Ok(before.as_deref() != ck_files.iter().find(|f| f.0 == path).map(|f| &f.1[..]))
            };
            events.push(self.event(
                LoopEvent::CkCommit,
                &c.commit,
                json!({"commit": c.commit, "previous": c.previous, "ref": "refs/heads/develop", "reason": reason}),
            ));
            events.push(self.ref_update(
                LoopEvent::CkRefUpdate,
                DEVELOP,
                c.previous.as_deref(),
                &c.commit,
                &c.commit,
            ));
            let schema = ["ontology.yaml", "rules.shacl"]
                .into_iter()
                .filter_map(|f| changed(f).map(|c| c.then_some(f)).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            if !schema.is_empty() && c.previous.is_some() {
                events.push(self.event(
                    LoopEvent::CkSchemaChange,
                    &c.commit,
                    json!({"commit": c.commit, "files": schema}),
                ));
            }
            let edges = |bytes: Option<&[u8]>| {
                bytes
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|text| {
                        ck_manifest::parse_str(
                            text,
                            &self.kernel_dir.join(ck_manifest::MANIFEST_FILE),
                            &ck_manifest::ParseOptions::default(),
                        )
                        .kernel
                    })
                    .map(|k| serde_json::to_value(&k.edges.outbound).unwrap_or_default())
            };
            let before = match &c.previous {
                Some(p) => self.ck.read(p, ck_manifest::MANIFEST_FILE)?,
                None => None,
            };
            let now = ck_files
                .iter()
                .find(|f| f.0 == ck_manifest::MANIFEST_FILE)
                .map(|f| &f.1[..]);
            let (old_edges, new_edges) = (edges(before.as_deref()), edges(now));
            let has_edges = new_edges
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            if old_edges != new_edges && (c.previous.is_some() || has_edges) {
                events.push(self.event(
                    LoopEvent::CkDependsOn,
                    &c.commit,
                    json!({"commit": c.commit, "edges": new_edges}),
                ));
            }
            recorded.ck = Some(c);
        }
        if let Some(component) = component {
            let (digest, size) = self.store_artifact(component)?;
            let mut files = tool_snapshot(&self.kernel_dir, component)?;
            let relative = component
                .strip_prefix(&self.kernel_dir)
                .unwrap_or(component)
                .to_string_lossy()
                .into_owned();
            let description = json!({
                "component": relative,
                "digest": digest,
                "bytes": size,
            });
            files.push((
                TOOL_JSON.to_owned(),
                serde_json::to_vec_pretty(&description).unwrap_or_default(),
            ));
            files.sort();
            if let Some(c) = self.tool.commit_snapshot(DEVELOP, &files, &message)? {
                events.push(self.event(
                    LoopEvent::ToolCommit,
                    &c.commit,
                    json!({"commit": c.commit, "previous": c.previous, "ref": "refs/heads/develop", "component_digest": digest, "reason": reason}),
                ));
                events.push(self.ref_update(
                    LoopEvent::ToolRefUpdate,
                    DEVELOP,
                    c.previous.as_deref(),
                    &c.commit,
                    &c.commit,
                ));
                recorded.tool = Some(c);
            }
        }
        recorded.develop = self.develop();
        recorded.events = self.journal(events)?;
        Ok(recorded)
    }

    fn develop(&self) -> Option<VersionRef> {
        Some(VersionRef {
            ck: self.ck.head(DEVELOP)?,
            tool: self.tool.head(DEVELOP)?,
        })
    }

    fn store_artifact(&self, component: &Path) -> Result<(String, u64), LoopError> {
        let bytes = std::fs::read(component).map_err(io(component))?;
        let hex = blake3::hash(&bytes).to_hex().to_string();
        let dir = self.dir.join("artifacts");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{hex}.wasm"));
        if !path.is_file() {
            ck_fs::write_atomic(&path, &bytes).map_err(io(&path))?;
        }
        Ok((format!("blake3:{hex}"), bytes.len() as u64))
    }

    fn resolve(&self, spec: &str) -> Result<(Option<String>, Option<String>), LoopError> {
        let found = (self.ck.resolve(spec), self.tool.resolve(spec));
        if found.0.is_none() && found.1.is_none() {
            return Err(LoopError::Refused(format!(
                "`{spec}` names no branch or commit of {}'s CK or TOOL loop (try `develop`, or a commit id)",
                self.name
            )));
        }
        Ok(found)
    }

    /// The serving record, or a first one pinning stable to `develop` (what a host serves
    /// when nothing was pinned yet). Errors when nothing was ever recorded.
    fn current(&self) -> Result<ServingRecord, LoopError> {
        if let Some(record) = serving(&self.kernel_dir)? {
            return Ok(record);
        }
        let develop = self.develop().ok_or_else(|| {
            LoopError::Refused(format!(
                "{} has no recorded version yet: build it (`ck build {}`) or serve it once",
                self.name,
                self.kernel_dir.display()
            ))
        })?;
        Ok(ServingRecord {
            kernel: self.name.clone(),
            guid: self.guid.clone(),
            revision: 0,
            updated_at: String::new(),
            stable: develop,
            canary: None,
            previous: Vec::new(),
        })
    }

    fn save(&self, mut record: ServingRecord) -> Result<ServingRecord, LoopError> {
        record.revision += 1;
        record.updated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let path = serving_path(&self.kernel_dir);
        let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
        ck_fs::write_atomic(&path, &bytes).map_err(io(&path))?;
        Ok(record)
    }

    /// Moves `branch` of both loops to `pin`, returning the ref-update events.
    fn move_branches(
        &self,
        branch: &str,
        pin: &VersionRef,
        why: &str,
        revision: u64,
    ) -> Result<Vec<Pending>, LoopError> {
        let mut events = Vec::new();
        for (repo, commit, event) in [
            (&self.ck, &pin.ck, LoopEvent::CkRefUpdate),
            (&self.tool, &pin.tool, LoopEvent::ToolRefUpdate),
        ] {
            let before = repo.set_branch(branch, commit, why)?;
            if before.as_deref() != Some(commit.as_str()) {
                events.push(self.ref_update(
                    event,
                    branch,
                    before.as_deref(),
                    commit,
                    &format!("rev{revision}"),
                ));
            }
        }
        Ok(events)
    }

    /// Pins the serving record as it stands (creating it from `develop` when absent), without
    /// changing what is served. Returns the record.
    pub fn pin_current(&self) -> Result<ServingRecord, LoopError> {
        if let Some(record) = serving(&self.kernel_dir)? {
            return Ok(record);
        }
        let record = self.current()?;
        let events = self.move_branches(STABLE, &record.stable, "first version served", 1)?;
        let record = self.save(record)?;
        self.journal(events)?;
        Ok(record)
    }

    /// Makes the version `spec` names (a branch or commit of either loop; a loop it does not
    /// name keeps its stable commit) the stable one. A canary of that same version ends.
    pub fn promote(&self, spec: &str) -> Result<ServingRecord, LoopError> {
        let (ck, tool) = self.resolve(spec)?;
        let mut record = self.current()?;
        let to = VersionRef {
            ck: ck.unwrap_or_else(|| record.stable.ck.clone()),
            tool: tool.unwrap_or_else(|| record.stable.tool.clone()),
        };
        self.materialize(&to)?;
        let from = record.stable.clone();
        if from == to && record.revision > 0 {
            return Err(LoopError::Refused(format!(
                "{} already serves {} as stable",
                self.name,
                to.short()
            )));
        }
        let next = record.revision + 1;
        let mut events = self.move_branches(STABLE, &to, &format!("promote {spec}"), next)?;
        if record.canary.as_ref().is_some_and(|c| c.pin == to) {
            record.canary = None;
            self.ck.delete_branch(CANARY)?;
            self.tool.delete_branch(CANARY)?;
        }
        if from != to {
            record.previous.push(from.clone());
        }
        record.stable = to.clone();
        let record = self.save(record)?;
        let key = format!("rev{}", record.revision);
        let data = json!({"from": from, "to": to, "ref": spec, "revision": record.revision});
        events.push(self.event(LoopEvent::CkPromote, &key, data.clone()));
        if from.tool != to.tool {
            events.push(self.event(LoopEvent::ToolPromote, &key, data));
        }
        self.journal(events)?;
        Ok(record)
    }

    /// Sends `weight` percent of the messages to the version `spec` names (0 ends the canary).
    pub fn canary(&self, spec: &str, weight: u8) -> Result<ServingRecord, LoopError> {
        if weight > 99 {
            return Err(LoopError::Refused(format!(
                "a canary takes 1–99 % of the messages (got {weight}); use `ck promote` to serve it for all"
            )));
        }
        let (ck, tool) = self.resolve(spec)?;
        let mut record = self.current()?;
        let pin = VersionRef {
            ck: ck.unwrap_or_else(|| record.stable.ck.clone()),
            tool: tool.unwrap_or_else(|| record.stable.tool.clone()),
        };
        self.materialize(&pin)?;
        let next = record.revision + 1;
        let mut events = if record.revision == 0 {
            self.move_branches(STABLE, &record.stable, "first version served", next)?
        } else {
            Vec::new()
        };
        if weight == 0 {
            record.canary = None;
            self.ck.delete_branch(CANARY)?;
            self.tool.delete_branch(CANARY)?;
        } else {
            events.extend(self.move_branches(
                CANARY,
                &pin,
                &format!("canary {spec} {weight}%"),
                next,
            )?);
            record.canary = Some(Canary {
                pin: pin.clone(),
                weight,
            });
        }
        let record = self.save(record)?;
        events.push(self.event(
            LoopEvent::CkCanary,
            &format!("rev{}", record.revision),
            json!({"canary": pin, "weight": weight, "stable": record.stable, "ref": spec, "revision": record.revision}),
        ));
        self.journal(events)?;
        Ok(record)
    }

    /// Ends a running canary (everything back to stable) or, without one, makes the previous
    /// stable version stable again.
    pub fn rollback(&self) -> Result<(ServingRecord, String), LoopError> {
        let Some(mut record) = serving(&self.kernel_dir)? else {
            return Err(LoopError::Refused(format!(
                "{} has no serving record: nothing was promoted, so there is nothing to roll back",
                self.name
            )));
        };
        let mut events = Vec::new();
        let (from, what) = if let Some(canary) = record.canary.take() {
            self.ck.delete_branch(CANARY)?;
            self.tool.delete_branch(CANARY)?;
            let what = format!(
                "canary {} ({}%) ended; {} answers everything",
                canary.pin.short(),
                canary.weight,
                record.stable.short()
            );
            (canary.pin, what)
        } else {
            let Some(previous) = record.previous.pop() else {
                return Err(LoopError::Refused(format!(
                    "{} serves its first pinned version {}: there is no earlier one to roll back to",
                    self.name,
                    record.stable.short()
                )));
            };
            self.materialize(&previous)?;
            events.extend(self.move_branches(
                STABLE,
                &previous,
                "rollback",
                record.revision + 1,
            )?);
            let from = std::mem::replace(&mut record.stable, previous);
            let what = format!("stable {} → {}", from.short(), record.stable.short());
            (from, what)
        };
        let record = self.save(record)?;
        events.push(self.event(
            LoopEvent::CkRollback,
            &format!("rev{}", record.revision),
            json!({"from": from, "to": record.stable, "revision": record.revision}),
        ));
        self.journal(events)?;
        Ok((record, what))
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
        materialize_from(&self.dir, &self.ck, &self.tool, pin)
    }
}

/// The manifest (and `.ck-guid`) of the stable version of the kernel in `kernel_dir`, when it
/// has a serving record: what the kernel is, as far as anyone deciding about it is concerned
/// (the working files may hold changes nobody promoted). None without a serving record.
pub fn stable_manifest(kernel_dir: &Path) -> Result<Option<(String, Option<String>)>, LoopError> {
    let Some(record) = serving(kernel_dir)? else {
        return Ok(None);
    };
    let dir = state_dir(kernel_dir);
    let ck = LoopRepo::open(&dir.join("ck.git"))
        .ok_or_else(|| LoopError::Refused(format!("{}: no CK repository", dir.display())))?;
    let manifest = ck
        .read(&record.stable.ck, ck_manifest::MANIFEST_FILE)?
        .ok_or_else(|| {
            LoopError::Refused(format!(
                "CK commit {} has no {}",
                short(&record.stable.ck),
                ck_manifest::MANIFEST_FILE
            ))
        })?;
    let guid = ck
        .read(&record.stable.ck, ck_manifest::GUID_FILE)?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(Some((
        String::from_utf8_lossy(&manifest).into_owned(),
        guid,
    )))
}

/// Reads the version `pin` of the kernel in `kernel_dir` (no lock: commits and artifacts are
/// never rewritten).
pub fn materialize(kernel_dir: &Path, pin: &VersionRef) -> Result<VersionSnapshot, LoopError> {
    let dir = state_dir(kernel_dir);
    let missing =
        |what: &str| LoopError::Refused(format!("{}: no {what} repository", dir.display()));
    let ck = LoopRepo::open(&dir.join("ck.git")).ok_or_else(|| missing("CK"))?;
    let tool = LoopRepo::open(&dir.join("tool.git")).ok_or_else(|| missing("TOOL"))?;
    materialize_from(&dir, &ck, &tool, pin)
}

fn materialize_from(
    dir: &Path,
    ck: &LoopRepo,
    tool: &LoopRepo,
    pin: &VersionRef,
) -> Result<VersionSnapshot, LoopError> {
    let manifest = ck
        .read(&pin.ck, ck_manifest::MANIFEST_FILE)?
        .ok_or_else(|| {
            LoopError::Refused(format!(
                "CK commit {} has no {}",
                short(&pin.ck),
                ck_manifest::MANIFEST_FILE
            ))
        })?;
    let manifest = String::from_utf8(manifest).map_err(|_| {
        LoopError::Refused(format!(
            "CK commit {}: the manifest is not UTF-8",
            short(&pin.ck)
        ))
    })?;
    let ck_guid = ck
        .read(&pin.ck, ck_manifest::GUID_FILE)?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let description = tool.read(&pin.tool, TOOL_JSON)?.ok_or_else(|| {
        LoopError::Refused(format!(
            "TOOL commit {} has no {TOOL_JSON}",
            short(&pin.tool)
        ))
    })?;
    let description: Value = serde_json::from_slice(&description).unwrap_or_default();
    let Some(digest) = description["digest"].as_str() else {
        return Err(LoopError::Refused(format!(
            "TOOL commit {}: {TOOL_JSON} names no component digest",
            short(&pin.tool)
        )));
    };
    let hex = digest.strip_prefix("blake3:").unwrap_or(digest);
    let component = dir.join("artifacts").join(format!("{hex}.wasm"));
    let bytes = std::fs::read(&component).map_err(|e| {
        LoopError::Refused(format!(
            "TOOL commit {}: its component {} cannot be read: {e}",
            short(&pin.tool),
            component.display()
        ))
    })?;
    if blake3::hash(&bytes).to_hex().as_str() != hex {
        return Err(LoopError::Refused(format!(
            "{}: the component does not match the digest {digest} recorded by TOOL commit {}",
            component.display(),
            short(&pin.tool)
        )));
    }
    Ok(VersionSnapshot {
        pin: pin.clone(),
        manifest,
        ck_guid,
        component,
        digest: digest.to_owned(),
    })
}

fn read_snapshot_file(path: &Path, name: String) -> Result<SnapshotFile, LoopError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.len() > MAX_SNAPSHOT_FILE {
        return Err(LoopError::Refused(format!(
            "{}: {} bytes is too large for a loop snapshot (limit {MAX_SNAPSHOT_FILE}); move it out of the kernel directory",
            path.display(),
            meta.len()
        )));
    }
    Ok((name, std::fs::read(path).map_err(io(path))?))
}

/// Files under `dir`, as `/`-separated paths relative to `base`, skipping `skip` directories
/// and hidden directories.
fn walk(
    base: &Path,
    dir: &Path,
    skip: &[&str],
    keep: &dyn Fn(&Path) -> bool,
    out: &mut Vec<SnapshotFile>,
) -> Result<(), LoopError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            if !name.starts_with('.') && !skip.contains(&name.as_str()) {
                walk(base, &path, skip, keep, out)?;
            }
        } else if kind.is_file() && keep(&path) {
            let relative = path
                .strip_prefix(base)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(read_snapshot_file(&path, relative)?);
        }
    }
    Ok(())
}

/// The CK files of a kernel: everything in its directory but `tool/`, `data/`, the state
/// directory and hidden or build directories.
pub fn ck_snapshot(kernel_dir: &Path) -> Result<Vec<SnapshotFile>, LoopError> {
    let mut files = Vec::new();
    walk(kernel_dir, kernel_dir, NOT_CK, &|p| !is_temp(p), &mut files)?;
    Ok(files)
}

/// The TOOL sources of a kernel: `tool/` without components and build outputs.
pub fn tool_snapshot(kernel_dir: &Path, component: &Path) -> Result<Vec<SnapshotFile>, LoopError> {
    let mut files = Vec::new();
    let tool = kernel_dir.join("tool");
    if tool.is_dir() {
        let keep = |p: &Path| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
            p != component && !matches!(ext, "wasm" | "cwasm" | "pyc" | "o") && !is_temp(p)
        };
        walk(kernel_dir, &tool, NOT_SOURCE, &keep, &mut files)?;
    }
    Ok(files)
}

fn is_temp(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.ends_with('~') || name.contains(".tmp") || name.starts_with(".#") || name.ends_with(".swp")
}

//! The task lifecycle served on a kernel's input topic.
//!
//! Owns the order that makes write-once hold: a lifecycle message moves the task in JetStream
//! (revision-checked, [`TaskStore`]); only once the broker acknowledged a completion is the
//! instance sealed into the DATA loop (`data.json` create-new, proof, ledger — `ck-loops`) and
//! the caller answered. The committer then records the seal in the audit ledger, commits it to
//! the DATA repository (groups of seals share one audit fsync and one commit) and announces it on
//! `ck.{guid}.data.*` with deterministic `Nats-Msg-Id`s (so JetStream drops the duplicates of a
//! replay). A host that dies anywhere in between finishes on restart ([`Lifecycle::recover`])
//! from the acknowledged record and the repository, byte for byte as it would have. Amendments
//! (`instance.amend`) follow `ontology.yaml`'s `instance_mutability`. Does not run guests and
//! knows nothing of the CLI.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use ck_bus::{Failure, LoopCloudEvent, LoopEventMessage, Outbox, Publisher, Request};
use ck_loops::data::{AmendError, DataRepo, InstanceMutability};
use ck_loops::data::{SealRequest, Transition};
use ck_manifest::Kernel;
use ck_manifest::topics::{self, LoopEvent};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{MessageError, StoreError, TaskAction, TaskRecord, TaskState, TaskStore, read_message};

/// How long the DATA event stream keeps message ids for deduplication: a replay after an
/// outage shorter than this cannot announce an instance twice.
const DEDUP_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Most seals one DATA commit takes.
const MAX_GROUP_COMMIT: usize = 64;

/// How long the committer waits for more seals to join a commit.
const COMMIT_LINGER: Duration = Duration::from_millis(20);

/// The lifecycle of one kernel's tasks, served by one host.
pub struct Lifecycle {
    kernel: String,
    kernel_urn: String,
    guid: String,
    dir: PathBuf,
    svid: String,
    host_id: String,
    publisher: Publisher,
    outbox: Arc<Outbox>,
    repo: Arc<std::sync::Mutex<DataRepo>>,
    mutability: InstanceMutability,
    amending: tokio::sync::Mutex<()>,
    commits: std::sync::Mutex<Option<mpsc::UnboundedSender<Committed>>>,
    commits_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Committed>>>,
    bound: tokio::sync::Mutex<Option<Bound>>,
}

/// A sealed instance on its way into the DATA repository and out as events.
#[derive(Debug, Clone)]
struct Committed {
    instance_id: String,
    task_id: String,
    user: String,
    trace_id: String,
    data_hash: String,
    manifest_hash: String,
    /// Its audit line is still to be written (false when a recovery finds it in the ledger).
    needs_audit: bool,
    /// For an amendment, its file (`data_amendment_{ts}.json`); `None` for a seal.
    amendment: Option<String>,
}

impl Committed {
    /// Rebuilt from a sealed instance's files (recovery knows no request).
    fn from_instance(kernel_dir: &Path, instance_id: &str) -> Option<Self> {
        let dir = ck_loops::data::instance_dir(kernel_dir, instance_id);
        let read = |f: &str| -> Option<Value> {
            serde_json::from_slice(&std::fs::read(dir.join(f)).ok()?).ok()
        };
        let (manifest, proof) = (read("manifest.json")?, read("proof.json")?);
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Some(Self {
            instance_id: instance_id.to_owned(),
            task_id: text(&manifest["task_id"]),
            user: text(&manifest["prov:wasAssociatedWith"]),
            trace_id: "recovery".to_owned(),
            data_hash: text(&manifest["data_hash"]),
            manifest_hash: text(&proof["manifest_hash"]),
            needs_audit: false,
            amendment: None,
        })
    }
}

/// JetStream handles bound to one connection of the publisher.
#[derive(Clone)]
struct Bound {
    generation: u64,
    store: TaskStore,
}

/// What sealing an acknowledged completion produced.
#[derive(Debug, Clone)]
pub struct SealedTask {
    /// The instance id (`i-{task_id}-{epoch}`).
    pub instance_id: String,
    /// `sha256:…` of `data.json`.
    pub data_hash: String,
    /// `sha256:…` of `manifest.json`.
    pub manifest_hash: String,
    /// Whether this call wrote `data.json` (false: a previous attempt had).
    pub wrote_data: bool,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("kernel", &self.kernel)
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

/// The instance a completion seals: deterministic from the acknowledged record, so that a
/// recovery seals the same instance.
pub fn instance_id(record: &TaskRecord) -> String {
    let at = record
        .transitions
        .iter()
        .rev()
        .find(|t| t.to == TaskState::Completed)
        .map_or(record.at.as_str(), |t| t.at.as_str());
    let epoch = chrono::DateTime::parse_from_rfc3339(at)
        .map(|t| t.timestamp())
        .unwrap_or_default();
    format!("i-{}-{epoch}", record.task_id)
}

/// The host's identity for one kernel directory, created once: the sealer of a completion is
/// recorded by it, so a restarted host recognises the seals it still owes.
fn host_id(dir: &Path) -> std::io::Result<String> {
    let layout = ck_fs::layout::DataLayout::of_kernel(dir);
    let path = layout.host_id();
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    std::fs::create_dir_all(layout.dir())?;
    let id = format!("host-{}", uuid::Uuid::new_v4());
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut f) => {
            use std::io::Write;
            f.write_all(id.as_bytes())?;
            f.sync_all()?;
            Ok(id)
        }
        // Another host process on the same directory created it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().to_owned())
        }
        Err(e) => Err(e),
    }
}

/// The machine key of the audit line for a seal (`seal:{id}`) or an amendment
/// (`amend:{id}:{file}`): recovery finds the lines it needs by it.
fn audit_key_of(c: &Committed) -> String {
    match &c.amendment {
        None => format!("seal:{}", c.instance_id),
        Some(file) => format!("amend:{}:{file}", c.instance_id),
    }
}

/// The reason of the audit line for a seal or an amendment (prose for people; ledgers written
/// before lines had a key are read back by [`audit_key`]).
fn audit_reason(c: &Committed) -> String {
    match &c.amendment {
        None => format!(
            "sealed instance {} of task {} ({})",
            c.instance_id, c.task_id, c.data_hash
        ),
        Some(file) => format!(
            "amended instance {} with {file} ({})",
            c.instance_id, c.data_hash
        ),
    }
}

/// The key of an audit line written for a seal (`seal:{id}`) or an amendment
/// (`amend:{id}:{file}`) before lines carried it, from its reason ([`audit_reason`]).
fn audit_key(reason: &str) -> Option<String> {
    if let Some(rest) = reason.strip_prefix("sealed instance ") {
        return rest.split_once(' ').map(|(id, _)| format!("seal:{id}"));
    }
    let rest = reason.strip_prefix("amended instance ")?;
    let (id, rest) = rest.split_once(" with ")?;
    let (file, _) = rest.split_once(' ')?;
    Some(format!("amend:{id}:{file}"))
}

fn failure(e: StoreError) -> Failure {
    match e {
        StoreError::Illegal(e) => Failure::new(409, "illegal_transition", e.to_string()),
        StoreError::Unavailable(why) => Failure::new(
            503,
            "task_store_unavailable",
            format!("{why}; nothing was changed or sealed"),
        ),
        corrupt @ StoreError::Corrupt { .. } => {
            Failure::new(500, "task_state_corrupt", corrupt.to_string())
        }
    }
}

/// Why a kernel's task lifecycle cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its DATA repository cannot be opened or created.
    #[error(transparent)]
    Repo(#[from] ck_loops::data::RepoError),
    /// Its `ontology.yaml` is unreadable or invalid.
    #[error(transparent)]
    Ontology(#[from] ck_manifest::ontology::OntologyError),
    /// A file of its DATA tree cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Lifecycle {
    /// The lifecycle of `kernel`'s tasks, with state in JetStream over `publisher`'s connection
    /// and sealed instances under the kernel's `data/` (a git repository, created if needed).
    /// Seals are committed and announced by the committer ([`Lifecycle::spawn_committer`]).
    pub fn new(kernel: &Kernel, publisher: Publisher) -> Result<Self, StartError> {
        let dir = kernel.dir().to_path_buf();
        let repo = DataRepo::open_or_init(&dir)?;
        let mutability = ck_manifest::ontology::instance_mutability(&dir)?;
        let layout = ck_fs::layout::DataLayout::of_kernel(&dir);
        let (commits, commits_rx) = mpsc::unbounded_channel();
        Ok(Self {
            repo: Arc::new(std::sync::Mutex::new(repo)),
            mutability,
            amending: tokio::sync::Mutex::new(()),
            commits: std::sync::Mutex::new(Some(commits)),
            commits_rx: std::sync::Mutex::new(Some(commits_rx)),
            host_id: host_id(&dir).map_err(|source| StartError::Io {
                path: layout.host_id(),
                source,
            })?,
            kernel: kernel.name.clone(),
            kernel_urn: kernel.urn.clone(),
            guid: kernel.guid.clone(),
            svid: kernel
                .spiffe_id()
                .unwrap_or_else(|| "unavailable".to_owned()),
            outbox: Arc::new(
                Outbox::open(&dir, &kernel.guid, &kernel.urn, publisher.clone()).map_err(
                    |source| StartError::Io {
                        path: layout.pending_events(),
                        source,
                    },
                )?,
            ),
            dir,
            publisher,
            bound: tokio::sync::Mutex::new(None),
        })
    }

    /// The kernel's confirmed event path (its queue is replayed by [`Outbox::replay_until`]).
    pub fn outbox(&self) -> Arc<Outbox> {
        self.outbox.clone()
    }

    /// This host's identity for the kernel (the `sealer` of its completions).
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The JetStream handles for the current connection: the bucket and the event stream are
    /// created on first use (file storage).
    async fn bound(&self) -> Result<Bound, Failure> {
        let generation = self.publisher.generation();
        let mut bound = self.bound.lock().await;
        if let Some(b) = bound.as_ref().filter(|b| b.generation == generation) {
            return Ok(b.clone());
        }
        let js = jetstream::new(self.publisher.client());
        let store = TaskStore::open(&js, &self.guid).await.map_err(failure)?;
        let stream = topics::data_event_stream(&self.guid);
        js.get_or_create_stream(jetstream::stream::Config {
            name: stream.clone(),
            description: Some(format!("DATA loop events of kernel {}", self.kernel)),
            subjects: vec![topics::loop_namespace(&self.guid, topics::Loop::Data)],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: DEDUP_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            Failure::new(
                503,
                "event_stream_unavailable",
                format!("JetStream stream {stream}: {e}"),
            )
        })?;
        let b = Bound { generation, store };
        *bound = Some(b.clone());
        Ok(b)
    }

    /// Answers one lifecycle message. Refusals change nothing: 400 for an unusable message, 409
    /// for a transition the task's state forbids (naming task, state and action), 503 when the
    /// broker did not acknowledge.
    pub async fn handle(&self, action: TaskAction, request: &Request) -> Result<Value, Failure> {
        let data: Value = serde_json::from_str(&request.data)
            .map_err(|e| Failure::new(400, "bad_task_message", e.to_string()))?;
        let message = read_message(action, &data)
            .map_err(|e: MessageError| Failure::new(400, "bad_task_message", e.to_string()))?;
        let bound = self.bound().await?;
        let started = std::time::Instant::now();
        let done = bound
            .store
            .apply(&message, &request.user, &self.host_id)
            .await
            .map_err(failure)?;
        let record = &done.record;
        tracing::info!(task_id = %record.task_id, from = %done.before.map_or("none", TaskState::as_str), to = %record.state, revision = done.revision, "task.transition");
        let mut answer = json!({
            "task_id": record.task_id,
            "state": record.state,
            "previous": done.before.unwrap_or(TaskState::Pending),
            "revision": done.revision,
            "retries": record.retries,
        });
        if record.state == TaskState::Completed {
            let acknowledged = started.elapsed();
            let sealed = self.seal(record).await?;
            tracing::debug!(task_id = %record.task_id, acknowledged_us = acknowledged.as_micros() as u64, total_us = started.elapsed().as_micros() as u64, "task.sealed");
            self.queue_commit(Committed {
                instance_id: sealed.instance_id.clone(),
                task_id: record.task_id.clone(),
                user: record.by.clone(),
                trace_id: request.trace_id.clone(),
                data_hash: sealed.data_hash.clone(),
                manifest_hash: sealed.manifest_hash.clone(),
                needs_audit: true,
                amendment: None,
            });
            answer["instance_id"] = json!(sealed.instance_id);
            answer["data_hash"] = json!(sealed.data_hash);
            answer["manifest_hash"] = json!(sealed.manifest_hash);
        }
        Ok(answer)
    }

    /// Amends a sealed instance (`instance.amend` with `{instance_id, amendment}`) as far as
    /// `ontology.yaml`'s `instance_mutability` allows: 409 for a sealed kernel or a field that
    /// exists (`amendments_allowed` adds only), 404 for an instance not in this host's DATA
    /// tree. The amendment is committed and announced (`data.amended`) by the committer.
    pub async fn amend(&self, request: &Request) -> Result<Value, Failure> {
        let bad = |m: String| Failure::new(400, "bad_amendment", m);
        let data: Value = serde_json::from_str(&request.data).map_err(|e| bad(e.to_string()))?;
        let Some(instance_id) = data["instance_id"].as_str().map(str::to_owned) else {
            return Err(bad(format!(
                "`{}` needs a string `instance_id` and an `amendment` object",
                ck_manifest::AMEND_ACTION
            )));
        };
        let amendment = data.get("amendment").cloned().unwrap_or(Value::Null);
        let _one_at_a_time = self.amending.lock().await;
        let (dir, id, policy, actor) = (
            self.dir.clone(),
            instance_id.clone(),
            self.mutability,
            request.user.clone(),
        );
        let at = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
        let amended = tokio::task::spawn_blocking(move || {
            ck_loops::data::amend(&dir, &id, policy, &amendment, &actor, at)
        })
        .await
        .map_err(|e| Failure::new(500, "amend_failed", e.to_string()))?
        .map_err(|e| match e {
            AmendError::NotFound(_) => Failure::new(404, "unknown_instance", e.to_string()),
            AmendError::Forbidden { .. } | AmendError::NotAnAddition { .. } => {
                Failure::new(409, "amendment_refused", e.to_string())
            }
            AmendError::NotAnObject => bad(e.to_string()),
            AmendError::Io { .. } => Failure::new(500, "amend_failed", e.to_string()),
        })?;
        tracing::info!(instance_id = %instance_id, file = %amended.file, "data.amended");
        self.queue_commit(Committed {
            instance_id: instance_id.clone(),
            task_id: String::new(),
            user: request.user.clone(),
            trace_id: request.trace_id.clone(),
            data_hash: amended.amendment_hash.clone(),
            manifest_hash: String::new(),
            needs_audit: true,
            amendment: Some(amended.file.clone()),
        });
        Ok(json!({
            "instance_id": instance_id,
            "amendment": amended.file,
            "amendment_hash": amended.amendment_hash,
            "proof": amended.proof,
            "instance_mutability": self.mutability,
        }))
    }

    /// Seals what this host acknowledged but did not seal (it died in between): every completed
    /// task whose sealer is this host and whose instance lacks its proof. Returns the instances
    /// sealed now.
    pub async fn recover(&self) -> Result<Vec<SealedTask>, Failure> {
        let bound = self.bound().await?;
        let dir = self.dir.clone();
        let removed = tokio::task::spawn_blocking(move || ck_loops::data::remove_leftovers(&dir))
            .await
            .unwrap_or_default();
        for path in removed {
            tracing::warn!(path = %path.display(), "task.recover: removed an unfinished write");
        }
        // What reached the audit ledger: lines keyed `seal:{id}` / `amend:{id}:{file}` (older
        // ledgers: their "sealed instance {id} …" / "amended instance {id} with {file} …"
        // reasons).
        let ledger_dir = self.dir.clone();
        let audited: std::collections::HashSet<String> =
            tokio::task::spawn_blocking(move || ck_audit::read(&ledger_dir).unwrap_or_default())
                .await
                .unwrap_or_default()
                .iter()
                .filter_map(|l| match l["key"].as_str() {
                    Some(key) => Some(key.to_owned()),
                    None => l["reason"].as_str().and_then(audit_key),
                })
                .collect();
        let mut sealed = Vec::new();
        for task_id in bound.store.task_ids().await.map_err(failure)? {
            let Some((record, _)) = bound.store.get(&task_id).await.map_err(failure)? else {
                continue;
            };
            if record.state != TaskState::Completed
                || record.sealer.as_deref() != Some(self.host_id.as_str())
            {
                continue;
            }
            let instance = instance_id(&record);
            let dir = ck_loops::data::instance_dir(&self.dir, &instance);
            if dir.join("proof.json").is_file() {
                continue;
            }
            tracing::warn!(task_id = %task_id, "task.recover: completion acknowledged but not sealed; sealing now");
            sealed.push(self.seal(&record).await?);
        }
        // Seals not committed yet are committed now; the last commit's events are announced
        // again (a crash may have cut them short; the stream drops duplicates by message id).
        let repo = self.repo.clone();
        let found = tokio::task::spawn_blocking(move || {
            let repo = repo
                .lock()
                .map_err(|_| "DATA repository lock poisoned".to_owned())?;
            let head = repo.head_instances().map_err(|e| e.to_string())?;
            let uncommitted = repo.uncommitted_instances().map_err(|e| e.to_string())?;
            Ok::<_, String>((head, uncommitted))
        })
        .await
        .map_err(|e| Failure::new(500, "recovery_failed", e.to_string()))?
        .map_err(|e| Failure::new(500, "recovery_failed", e))?;
        let (head, uncommitted) = found;
        if let Some((commit, added)) = head {
            let batch = self.recovered(&added, &audited, false);
            self.announce(&batch, &commit).await;
        }
        let batch = self.recovered(&uncommitted, &audited, true);
        if !batch.is_empty() {
            tracing::warn!(
                entries = batch.len(),
                "task.recover: committing seals and amendments a crash left uncommitted"
            );
            self.commit_and_announce(batch).await;
        }
        Ok(sealed)
    }

    /// The seals and amendments among `files` per instance, as the committer takes them
    /// (`audit`: write the audit lines the ledger does not have yet).
    fn recovered(
        &self,
        files: &[(String, Vec<String>)],
        audited: &std::collections::HashSet<String>,
        audit: bool,
    ) -> Vec<Committed> {
        let mut batch = Vec::new();
        for (id, files) in files {
            let Some(seal) = Committed::from_instance(&self.dir, id) else {
                continue;
            };
            for file in files {
                let (amendment, key) = if file == "proof.json" {
                    (None, format!("seal:{id}"))
                } else if file.starts_with("data_amendment_") {
                    (Some(file.clone()), format!("amend:{id}:{file}"))
                } else {
                    continue;
                };
                let data_hash = match &amendment {
                    None => seal.data_hash.clone(),
                    Some(f) => ck_loops::data::file_sha256(
                        &ck_loops::data::instance_dir(&self.dir, id).join(f),
                    )
                    .unwrap_or_default(),
                };
                batch.push(Committed {
                    needs_audit: audit && !audited.contains(&key),
                    amendment,
                    data_hash,
                    ..seal.clone()
                });
            }
        }
        batch
    }

    fn queue_commit(&self, sealed: Committed) {
        let sender = self.commits.lock().ok().and_then(|s| s.clone());
        match sender {
            Some(tx) if tx.send(sealed).is_ok() => {}
            // Closed: the seal stays on disk uncommitted; the next start commits it.
            _ => tracing::warn!(
                "task.commit: committer stopped; the seal is committed at the next start"
            ),
        }
    }

    /// Starts the committer: seals are committed to the DATA repository (those that arrive
    /// together share a commit) and then announced. It stops after [`Lifecycle::close`], once
    /// every queued seal is committed.
    pub fn spawn_committer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let rx = self.commits_rx.lock().ok().and_then(|mut r| r.take());
        tokio::spawn(async move {
            let Some(mut rx) = rx else { return };
            while let Some(first) = rx.recv().await {
                // Linger briefly so seals close together share a commit: the answers do not
                // wait for it, and a commit costs about the same for one seal as for many.
                let mut batch = vec![first];
                let linger = tokio::time::sleep(COMMIT_LINGER);
                tokio::pin!(linger);
                while batch.len() < MAX_GROUP_COMMIT {
                    tokio::select! {
                        next = rx.recv() => match next {
                            Some(next) => batch.push(next),
                            None => break,
                        },
                        _ = &mut linger => break,
                    }
                }
                this.commit_and_announce(batch).await;
            }
        })
    }

    /// Stops taking seals for the committer; it finishes what is queued and ends.
    pub fn close(&self) {
        if let Ok(mut sender) = self.commits.lock() {
            sender.take();
        }
    }

    async fn commit_and_announce(&self, batch: Vec<Committed>) {
        let ids: Vec<String> = batch.iter().map(|c| c.instance_id.clone()).collect();
        let message = match ids.as_slice() {
            [one] => match &batch[0].amendment {
                None => format!("seal {one} (task {})", batch[0].task_id),
                Some(file) => format!("amend {one} ({file})"),
            },
            many => format!(
                "seal or amend {} instances\n\n{}",
                many.len(),
                many.join("\n")
            ),
        };
        let (repo, host) = (self.repo.clone(), self.host_id.clone());
        // One audit group commit for the batch, then one DATA commit that includes it.
        let lines: Vec<ck_audit::AuditRecord> = batch
            .iter()
            .filter(|c| c.needs_audit)
            .map(|c| {
                let (action, file) = match &c.amendment {
                    None => ("task.complete", "data.json".to_owned()),
                    Some(file) => (ck_manifest::AMEND_ACTION, file.clone()),
                };
                let reason = audit_reason(c);
                let mut line = ck_audit::AuditRecord::now(
                    &c.user,
                    action,
                    ck_audit::Verdict::Allow,
                    reason,
                    "ck host",
                )
                .keyed(audit_key_of(c));
                line.path = Some(format!("data/instances/{}/{file}", c.instance_id));
                line
            })
            .collect();
        let (dir, kernel) = (self.dir.clone(), self.kernel.clone());
        let started = std::time::Instant::now();
        let committed = tokio::task::spawn_blocking(move || {
            ck_audit::append_all(&dir, &kernel, &lines)
                .map_err(|e| format!("{}: {e}", ck_audit::ledger_path(&dir).display()))?;
            let repo = repo
                .lock()
                .map_err(|_| "DATA repository lock poisoned".to_owned())?;
            repo.commit_instances(&ids, &host, &message)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match committed {
            Ok(Some(commit)) => {
                tracing::debug!(commit = %commit, instances = batch.len(), commit_us = started.elapsed().as_micros() as u64, "data.committed");
                self.announce(&batch, &commit).await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, instances = batch.len(), "data.commit-failed: the seals stay on disk and are committed at the next start")
            }
        }
    }

    /// Seals an acknowledged completion: the instance files, written once (sealing again after
    /// an interruption completes the same seal). The audit line, the commit and the events are
    /// the committer's.
    async fn seal(&self, record: &TaskRecord) -> Result<SealedTask, Failure> {
        let instance = instance_id(record);
        let output = record.output.clone().unwrap_or_else(|| json!({}));
        let transitions: Vec<Transition> = record
            .transitions
            .iter()
            .map(|t| Transition {
                from: t.from.to_string(),
                to: t.to.to_string(),
                action: t.action.to_string(),
                by: t.by.clone(),
                at: t.at.clone(),
            })
            .collect();
        let (dir, kernel, urn, svid) = (
            self.dir.clone(),
            self.kernel.clone(),
            self.kernel_urn.clone(),
            self.svid.clone(),
        );
        let (task_id, actor, id) = (record.task_id.clone(), record.by.clone(), instance.clone());
        let failed = |e: String| {
            Failure::new(
                500,
                "seal_failed",
                format!(
                    "task {} was completed (acknowledged) but sealing failed: {e}; this host seals it when it restarts",
                    record.task_id
                ),
            )
        };
        let sealed = tokio::task::spawn_blocking(move || {
            ck_loops::data::seal(&SealRequest {
                kernel_dir: &dir,
                kernel: &kernel,
                kernel_urn: &urn,
                svid: &svid,
                instance_id: &id,
                task_id: Some(&task_id),
                actor: &actor,
                data: &output,
                transitions: &transitions,
            })
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(e.to_string()))?;
        let done = SealedTask {
            instance_id: instance,
            data_hash: sealed.data_hash,
            manifest_hash: sealed.manifest_hash,
            wrote_data: sealed.wrote_data,
        };
        Ok(done)
    }

    /// Sends `data.written`, `data.proof-generated` and `data.ledger-entry` for each sealed
    /// instance of `commit` through the outbox, each with the message id
    /// `{guid}:{event}:{instance}`.
    async fn announce(&self, batch: &[Committed], commit: &str) {
        let at = ck_bus::cloudevent::now();
        let events: Vec<LoopEventMessage> = batch
            .iter()
            .flat_map(|sealed| {
                let events: &[LoopEvent] = match sealed.amendment {
                    None => &[
                        LoopEvent::DataWritten,
                        LoopEvent::DataProofGenerated,
                        LoopEvent::DataLedgerEntry,
                    ],
                    Some(_) => &[LoopEvent::DataAmended, LoopEvent::DataLedgerEntry],
                };
                events.iter().map(move |event| (sealed, *event))
            })
            .map(|(sealed, event)| {
                let key = match &sealed.amendment {
                    None => sealed.instance_id.clone(),
                    Some(file) => format!("{}:{file}", sealed.instance_id),
                };
                let cloud_event = LoopCloudEvent {
                    guid: &self.guid,
                    source: &self.kernel_urn,
                    event,
                    key: &key,
                    about: Some(&sealed.instance_id),
                    time: &at,
                    data: json!({
                            "event": event.to_string(),
                            "kernel": self.kernel,
                            "kernel_urn": self.kernel_urn,
                            "guid": self.guid,
                            "trace_id": sealed.trace_id,
                            "timestamp": at,
                            "instance_id": sealed.instance_id,
                            "task_id": sealed.task_id,
                            "commit": commit,
                            "amendment": sealed.amendment,
                            "data_hash": sealed.data_hash,
                            "manifest_hash": sealed.manifest_hash,
                            "proof": format!("data/instances/{}/proof.json", sealed.instance_id),
                    }),
                };
                LoopEventMessage {
                    subject: cloud_event.nats_subject(),
                    msg_id: cloud_event.id(),
                    trace_id: sealed.trace_id.clone(),
                    user: sealed.user.clone(),
                    body: cloud_event.body(),
                }
            })
            .collect();
        if let Err(e) = self.outbox.send(events).await {
            tracing::error!(instances = batch.len(), path = %ck_bus::outbox::pending_path(&self.dir).display(), error = %e, "event.lost: cannot queue on disk");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_reasons_read_back_as_their_keys() {
        let seal = Committed {
            instance_id: "i-t-1-17".into(),
            task_id: "t-1".into(),
            user: "u".into(),
            trace_id: "tx".into(),
            data_hash: "sha256:ab".into(),
            manifest_hash: "sha256:cd".into(),
            needs_audit: true,
            amendment: None,
        };
        assert_eq!(
            audit_key(&audit_reason(&seal)).as_deref(),
            Some("seal:i-t-1-17")
        );
        assert_eq!(audit_key_of(&seal), "seal:i-t-1-17");
        let amend = Committed {
            amendment: Some("data_amendment_5.json".into()),
            ..seal
        };
        assert_eq!(
            audit_key(&audit_reason(&amend)).as_deref(),
            Some("amend:i-t-1-17:data_amendment_5.json")
        );
        assert_eq!(audit_key("refused connect"), None);
        // The key written now is the one older reasons read back as.
        assert_eq!(audit_key_of(&amend), "amend:i-t-1-17:data_amendment_5.json");
    }
}

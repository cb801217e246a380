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

mod committer;
mod recovery;
mod seal;

pub use recovery::Recovery;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_nats::jetstream;
use ck_bus::{Failure, Outbox, Publisher, Request};
use ck_loops::data::{Actor, AmendError, DataRepo, InstanceMutability};
use ck_manifest::Kernel;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{MessageError, StoreError, TaskAction, TaskRecord, TaskState, TaskStore, read_message};

use committer::Committed;

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
    /// Sealed instances whose copy the cluster did not take yet (an outage): stored by
    /// [`Lifecycle::replicate_pending`].
    unreplicated: std::sync::Mutex<std::collections::BTreeSet<String>>,
}
/// JetStream handles bound to one connection of the publisher.
#[derive(Clone)]
struct Bound {
    generation: u64,
    store: TaskStore,
    /// The cluster's copy of every sealed instance.
    sealed: async_nats::jetstream::object_store::ObjectStore,
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
fn failure(e: StoreError) -> Failure {
    match e {
        StoreError::Illegal(e) => Failure::new(409, "illegal_transition", e.to_string()),
        StoreError::Unavailable(why) => Failure::new(
            503,
            "task_store_unavailable",
            format!("{why}; nothing was changed or sealed"),
        ),
        owned @ StoreError::NotOwner { .. } => {
            Failure::new(403, "not_task_owner", owned.to_string())
        }
        large @ StoreError::TooLarge { .. } => {
            Failure::new(413, "task_record_too_large", large.to_string())
        }
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
            unreplicated: std::sync::Mutex::new(Default::default()),
        })
    }

    /// The completion of `task_id` this host owes a seal for, if the stored record (read from
    /// the leader) says this host completed it and its instance is not sealed here.
    async fn owed_completion(&self, bound: &Bound, task_id: &str) -> Option<crate::Transitioned> {
        // Long enough to outlast a leader election (the caller's answer may be lost by then;
        // the seal is not).
        for _ in 0..50 {
            match bound.store.get(task_id).await {
                Ok(Some((record, revision))) => {
                    let owed = record.state == TaskState::Completed
                        && record.sealer.as_deref() == Some(self.host_id.as_str())
                        && !ck_loops::data::instance_dir(&self.dir, &instance_id(&record))
                            .join("proof.json")
                            .is_file();
                    if owed {
                        tracing::warn!(
                            task_id,
                            revision,
                            "task.ack-recovered: the completion landed though its acknowledgement was lost; sealing it"
                        );
                    }
                    return owed.then_some(crate::Transitioned {
                        before: Some(TaskState::InProgress),
                        record,
                        revision,
                    });
                }
                Ok(None) => return None,
                // The leader is being elected: ask again shortly.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
        None
    }

    /// Stores the sealed instances the cluster did not take when they were sealed; returns how
    /// many are still waiting. Run periodically with the event replay.
    pub async fn replicate_pending(&self) -> usize {
        let pending: Vec<String> = self
            .unreplicated
            .lock()
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default();
        if pending.is_empty() {
            return 0;
        }
        let Ok(bound) = self.bound().await else {
            return pending.len();
        };
        for id in pending {
            if self.replicate(&bound.sealed, &id).await.is_ok()
                && let Ok(mut p) = self.unreplicated.lock()
            {
                p.remove(&id);
                tracing::info!(instance_id = %id, "task.replicated-late");
            }
        }
        self.unreplicated.lock().map(|p| p.len()).unwrap_or(0)
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
        crate::provision::data_stream(&js, &self.guid, &self.kernel)
            .await
            .map_err(|e| {
                Failure::new(
                    503,
                    "event_stream_unavailable",
                    format!(
                        "{e} (under the auth callout `ck authz` provisions it when the kernel connects)"
                    ),
                )
            })?;
        let sealed = crate::provision::sealed_store(&js, &self.guid)
            .await
            .map_err(|e| {
                Failure::new(
                    503,
                    "sealed_store_unavailable",
                    format!(
                        "{e} (under the auth callout `ck authz` provisions it when the kernel connects)"
                    ),
                )
            })?;
        let b = Bound {
            generation,
            store,
            sealed,
        };
        *bound = Some(b.clone());
        Ok(b)
    }

    /// Answers one lifecycle message. Refusals change nothing: 400 for an unusable message, 409
    /// for a transition the task's state forbids (naming task, state and action), 503 when the
    /// broker did not acknowledge.
    pub async fn handle(
        &self,
        action: TaskAction,
        request: &Request,
        actor: &Actor,
    ) -> Result<Value, Failure> {
        let data: Value = serde_json::from_str(&request.data)
            .map_err(|e| Failure::new(400, "bad_task_message", e.to_string()))?;
        let message = read_message(action, &data).map_err(|e: MessageError| {
            let kind = match e.code() {
                413 => "task_message_too_large",
                _ => "bad_task_message",
            };
            Failure::new(e.code(), kind, e.to_string())
        })?;
        let bound = self.bound().await?;
        let started = std::time::Instant::now();
        let done = match bound.store.apply(&message, actor, &self.host_id).await {
            Ok(done) => done,
            // A completion whose acknowledgement was lost (a timeout while the cluster elects
            // a leader) may have landed all the same: if the stored record says this host
            // completed it and it is not sealed here, it is this host's to seal — now, not at
            // its next start. (Only the request that wrote it: a retry finding it completed
            // is a 409, and whoever wrote it seals it.)
            Err(e @ StoreError::Unavailable(_)) if action == TaskAction::Complete => {
                match self.owed_completion(&bound, &message.task_id).await {
                    Some(done) => done,
                    None => return Err(failure(e)),
                }
            }
            Err(e) => return Err(failure(e)),
        };
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
            // In the cluster before the answer: a host whose disk is lost loses no
            // acknowledged instance (`ck restore`). Committed and announced either way (it
            // is sealed); a copy the cluster did not take is stored once it can.
            if let Err(e) = self.replicate(&bound.sealed, &sealed.instance_id).await {
                if let Ok(mut p) = self.unreplicated.lock() {
                    p.insert(sealed.instance_id.clone());
                }
                return Err(e);
            }
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
    pub async fn amend(&self, request: &Request, actor: &Actor) -> Result<Value, Failure> {
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
        let (dir, id, policy, amender) = (
            self.dir.clone(),
            instance_id.clone(),
            self.mutability,
            actor.clone(),
        );
        let at = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
        let amended = tokio::task::spawn_blocking(move || {
            ck_loops::data::amend(&dir, &id, policy, &amendment, &amender, at)
        })
        .await
        .map_err(|e| Failure::new(500, "amend_failed", e.to_string()))?
        .map_err(|e| match e {
            AmendError::NotFound(_) => Failure::new(404, "unknown_instance", e.to_string()),
            AmendError::NotOwner { .. } => Failure::new(403, "not_instance_owner", e.to_string()),
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
            user: actor.written.clone(),
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
}

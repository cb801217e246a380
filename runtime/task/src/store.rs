//! Task state in a JetStream key-value bucket, changed only by revision-checked writes: of two
//! hosts racing to move the same task, exactly one write lands; the other re-reads, finds the
//! new state, and gets the refusal that state implies (a 409 for a second `task.complete`).
//! A transition counts only once the broker has acknowledged it.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use serde_json::Value;

use ck_loops::data::Actor;

use crate::{IllegalTransition, TaskAction, TaskMessage, TaskState, transition};

/// What the bucket holds per task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task.
    pub task_id: String,
    /// Its state.
    pub state: TaskState,
    /// The action that produced this state.
    pub last_action: TaskAction,
    /// Who did it (host or caller identity).
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
    /// How many times the task was retried.
    pub retries: u32,
    /// Every transition so far, oldest first (it becomes the instance's `ledger.json`).
    #[serde(default)]
    pub transitions: Vec<TransitionEntry>,
    /// `task.complete`'s output: what the sealed `data.json` holds. Kept in the acknowledged
    /// record so that a host dying between acknowledgement and seal can seal it on restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The host that completed the task and owes its seal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealer: Option<String>,
    /// The proven SPIFFE ID that started the task, if a JWT-SVID proved one: only it (or a
    /// holder of the kernel's `manage-tasks` grant) may move the task on. `None`: started
    /// without proof, so anyone the kernel lets call the actions may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One acknowledged transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionEntry {
    /// State before (`pending` for a task that did not exist).
    pub from: TaskState,
    /// State after.
    pub to: TaskState,
    /// The action.
    pub action: TaskAction,
    /// Who asked.
    pub by: String,
    /// When (RFC 3339, microseconds).
    pub at: String,
    /// `task.update`'s delta or `task.fail`'s error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

/// A transition the broker acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct Transitioned {
    /// State before (`None`: the task did not exist).
    pub before: Option<TaskState>,
    /// The stored record after.
    pub record: TaskRecord,
    /// The bucket revision that holds it (the broker's acknowledgement).
    pub revision: u64,
}

/// Why a transition did not happen.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Not allowed from the current state (409).
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// The broker did not acknowledge; nothing may be sealed.
    #[error("task state store unavailable: {0}")]
    Unavailable(String),
    /// The new record would exceed [`MAX_TASK_RECORD`] (413): the task has recorded too much
    /// (too many updates, or too large ones) to take this one.
    #[error(
        "task {task_id}: its record would be {size} bytes with this change, more than is kept per task (it can still be completed; send smaller deltas)"
    )]
    TooLarge {
        /// The task.
        task_id: String,
        /// The record's size with the change.
        size: usize,
    },
    /// The task is owned by another identity (403).
    #[error(
        "task {task_id} is owned by {owner}; only that identity (proven by a JWT-SVID) or a holder of the kernel's `manage-tasks` grant may act on it"
    )]
    NotOwner {
        /// The task.
        task_id: String,
        /// Its owner.
        owner: String,
    },
    /// A stored record is unreadable.
    #[error("task {task_id}: stored state is corrupt: {why}")]
    Corrupt {
        /// The task.
        task_id: String,
        /// What is wrong.
        why: String,
    },
}

/// The lifecycle state of one kernel's tasks.
#[derive(Clone)]
pub struct TaskStore {
    kv: kv::Store,
}

impl std::fmt::Debug for TaskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskStore").finish_non_exhaustive()
    }
}

/// Largest stored task record (bytes): well under nats-server's default `max_payload` (1 MiB),
/// which a record must fit in to be read back at all.
pub const MAX_TASK_RECORD: usize = 512 * 1024;

/// Room kept beyond the largest output for the completion's own transition entry.
const COMPLETION_ROOM: usize = 8 * 1024;

/// Largest task bucket (bytes) this host creates; the server refuses writes beyond it.
pub const MAX_BUCKET_BYTES: i64 = 1024 * 1024 * 1024;

/// The bucket name for a kernel GUID.
pub fn bucket_for(guid: &str) -> String {
    ck_manifest::topics::task_bucket(guid)
}

impl TaskStore {
    /// Opens the bucket of kernel `guid`, creating it ([`crate::provision::bucket_config`])
    /// when it does not exist and this connection may (a kernel's connection under the
    /// callout may not: the callout provisions it).
    pub async fn open(js: &jetstream::Context, guid: &str) -> Result<Self, StoreError> {
        let kv = crate::provision::task_bucket(js, guid).await.map_err(|e| {
            StoreError::Unavailable(format!(
                "{e}; under the auth callout `ck authz` provisions it when the kernel connects"
            ))
        })?;
        Ok(Self { kv })
    }

    /// Every task id in the bucket, read from the stream's subjects (`STREAM.INFO` with a
    /// subject filter): no consumer is created, so the kernel's connection needs no consumer
    /// permission (a push consumer could deliver anywhere).
    pub async fn task_ids(&self) -> Result<Vec<String>, StoreError> {
        use futures::TryStreamExt;
        let prefix = format!("$KV.{}.", self.kv.name);
        let subjects = self
            .kv
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let subjects: Vec<(String, usize)> = subjects
            .try_collect()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut ids: Vec<String> = subjects
            .into_iter()
            .filter_map(|(subject, _)| subject.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The current record of `task_id` and its revision.
    pub async fn get(&self, task_id: &str) -> Result<Option<(TaskRecord, u64)>, StoreError> {
        // From the stream's leader, not a direct get: with replicas a direct get may be
        // answered by a follower that has not applied the last write yet, and a task started
        // a moment ago on another host would read as never started.
        let subject = format!("{}{task_id}", self.kv.prefix);
        let message = match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(m) => m,
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                return Ok(None);
            }
            Err(e) => return Err(StoreError::Unavailable(e.to_string())),
        };
        let removed = message
            .headers
            .get("KV-Operation")
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        if removed {
            return Ok(None);
        }
        let record: TaskRecord =
            serde_json::from_slice(&message.payload).map_err(|why| StoreError::Corrupt {
                task_id: task_id.to_owned(),
                why: why.to_string(),
            })?;
        Ok(Some((record, message.sequence)))
    }

    /// Applies `message` as `actor`, on behalf of host `host` (recorded as the sealer of a
    /// completion). Returns once the broker acknowledged the new state; refuses (changing
    /// nothing) what the state machine refuses, and any action on a task owned by another
    /// identity than the actor's proven one.
    pub async fn apply(
        &self,
        message: &TaskMessage,
        actor: &Actor,
        host: &str,
    ) -> Result<Transitioned, StoreError> {
        let (task_id, action) = (message.task_id.as_str(), message.action);
        let by = actor.written.as_str();
        loop {
            let current = self.get(task_id).await?;
            let owner = match &current {
                Some((record, _)) => record.owner.clone(),
                None => actor.proven.clone(),
            };
            if !actor.may_act_on(owner.as_deref()) {
                return Err(StoreError::NotOwner {
                    task_id: task_id.to_owned(),
                    owner: owner.unwrap_or_default(),
                });
            }
            let before = current.as_ref().map(|(r, _)| r.state);
            let state = transition(task_id, before, action)?;
            let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let mut transitions = current
                .as_ref()
                .map(|(r, _)| r.transitions.clone())
                .unwrap_or_default();
            transitions.push(TransitionEntry {
                from: before.unwrap_or(TaskState::Pending),
                to: state,
                action,
                by: by.to_owned(),
                at: at.clone(),
                detail: match action {
                    TaskAction::Update => message.delta.clone(),
                    TaskAction::Fail => message.error.clone(),
                    _ => None,
                },
            });
            let record = TaskRecord {
                task_id: task_id.to_owned(),
                state,
                last_action: action,
                by: by.to_owned(),
                at,
                retries: current.as_ref().map_or(0, |(r, _)| r.retries)
                    + u32::from(action == TaskAction::Retry),
                transitions,
                output: (action == TaskAction::Complete)
                    .then(|| message.output.clone())
                    .flatten(),
                sealer: (action == TaskAction::Complete).then(|| host.to_owned()),
                owner: owner.clone(),
            };
            let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
            // Every action but the completion leaves room for the largest completion, so a
            // task whose record is full can still be completed (or it would be stuck).
            let limit = match action {
                TaskAction::Complete => MAX_TASK_RECORD,
                _ => MAX_TASK_RECORD - crate::MAX_OUTPUT - COMPLETION_ROOM,
            };
            if value.len() > limit {
                return Err(StoreError::TooLarge {
                    task_id: task_id.to_owned(),
                    size: value.len(),
                });
            }
            let written = match &current {
                None => self
                    .kv
                    .create(task_id, value)
                    .await
                    .map_err(|e| match e.kind() {
                        kv::CreateErrorKind::AlreadyExists => None,
                        _ => Some(StoreError::Unavailable(e.to_string())),
                    }),
                Some((_, revision)) => {
                    self.kv
                        .update(task_id, value, *revision)
                        .await
                        .map_err(|e| match e.kind() {
                            kv::UpdateErrorKind::WrongLastRevision => None,
                            _ => Some(StoreError::Unavailable(e.to_string())),
                        })
                }
            };
            match written {
                Ok(revision) => {
                    return Ok(Transitioned {
                        before,
                        record,
                        revision,
                    });
                }
                // Someone else moved the task first: decide again on what they wrote.
                Err(None) => continue,
                Err(Some(e)) => return Err(e),
            }
        }
    }
}

//! The committer: seals and amendments, in groups, into the audit ledger and the DATA
//! repository, then announced on `ck.{guid}.data.*` through the outbox.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ck_bus::LoopEventMessage;
use ck_events::LoopCloudEvent;
use ck_manifest::topics::LoopEvent;
use serde_json::{Value, json};

use super::Lifecycle;

/// Most seals one DATA commit takes.
const MAX_GROUP_COMMIT: usize = 64;

/// How long the committer waits for more seals to join a commit.
const COMMIT_LINGER: Duration = Duration::from_millis(20);

/// A sealed instance on its way into the DATA repository and out as events.
#[derive(Debug, Clone)]
pub(super) struct Committed {
    pub(super) instance_id: String,
    pub(super) task_id: String,
    pub(super) user: String,
    pub(super) trace_id: String,
    pub(super) data_hash: String,
    pub(super) manifest_hash: String,
    /// Its audit line is still to be written (false when a recovery finds it in the ledger).
    pub(super) needs_audit: bool,
    /// For an amendment, its file (`data_amendment_{ts}.json`); `None` for a seal.
    pub(super) amendment: Option<String>,
}

impl Committed {
    /// Rebuilt from a sealed instance's files (recovery knows no request).
    pub(super) fn from_instance(kernel_dir: &Path, instance_id: &str) -> Option<Self> {
        let dir = ck_loops::data::instance_dir(kernel_dir, instance_id);
        let hashes = ck_loops::data::SealedHashes::read(&dir)?;
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Some(Self {
            instance_id: instance_id.to_owned(),
            task_id: text(&manifest["task_id"]),
            user: text(&manifest["prov:wasAssociatedWith"]),
            trace_id: "recovery".to_owned(),
            data_hash: hashes.data_hash,
            manifest_hash: hashes.manifest_hash,
            needs_audit: false,
            amendment: None,
        })
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
pub(super) fn audit_key(reason: &str) -> Option<String> {
    if let Some(rest) = reason.strip_prefix("sealed instance ") {
        return rest.split_once(' ').map(|(id, _)| format!("seal:{id}"));
    }
    let rest = reason.strip_prefix("amended instance ")?;
    let (id, rest) = rest.split_once(" with ")?;
    let (file, _) = rest.split_once(' ')?;
    Some(format!("amend:{id}:{file}"))
}
impl Lifecycle {
    pub(super) fn queue_commit(&self, sealed: Committed) {
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

    pub(super) async fn commit_and_announce(&self, batch: Vec<Committed>) {
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
    /// Sends `data.written`, `data.proof-generated` and `data.ledger-entry` for each sealed
    /// instance of `commit` through the outbox, each with the message id
    /// `{guid}:{event}:{instance}`.
    pub(super) async fn announce(&self, batch: &[Committed], commit: &str) {
        let at = ck_events::now();
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
            .filter_map(|(sealed, event)| {
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
                let body = cloud_event
                    .body()
                    .map_err(|e| tracing::error!(instance = %sealed.instance_id, error = %e, "event.unformable"))
                    .ok()?;
                Some(LoopEventMessage {
                    subject: cloud_event.nats_subject(),
                    msg_id: cloud_event.id(),
                    trace_id: sealed.trace_id.clone(),
                    user: sealed.user.clone(),
                    body,
                })
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

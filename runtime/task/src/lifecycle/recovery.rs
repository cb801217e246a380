//! Recovery at start: what a host killed anywhere between acknowledgement and announcement
//! still owes is sealed, audited, committed and announced, byte for byte as it would have been.

use ck_bus::Failure;

use super::committer::{Committed, audit_key};
use super::{Lifecycle, SealedTask, failure, instance_id};
use crate::{StoreError, TaskState};

/// What [`Lifecycle::recover`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Completions acknowledged but not sealed, sealed now.
    pub sealed: Vec<SealedTask>,
    /// Task ids whose stored state is not a task record (kept, skipped).
    pub quarantined: Vec<String>,
}

impl Lifecycle {
    /// Seals what this host acknowledged but did not seal (it died in between): every completed
    /// task whose sealer is this host and whose instance lacks its proof. A stored record that
    /// is not a task record (written by someone else) is quarantined: kept in the bucket,
    /// skipped, logged (`task.quarantined`) and audited, so one bad key never stops a kernel
    /// from starting. Returns what was sealed and what was quarantined.
    pub async fn recover(&self) -> Result<Recovery, Failure> {
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
        let (mut sealed, mut quarantined) = (Vec::new(), Vec::new());
        for task_id in bound.store.task_ids().await.map_err(failure)? {
            let record = match bound.store.get(&task_id).await {
                Ok(Some((record, _))) => record,
                Ok(None) => continue,
                Err(StoreError::Corrupt { task_id, why }) => {
                    self.quarantine(&task_id, &why);
                    quarantined.push(task_id);
                    continue;
                }
                Err(e) => return Err(failure(e)),
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
        let recovery_failed = |e: String| Failure::new(500, "recovery_failed", e);
        let (head, uncommitted) = tokio::task::spawn_blocking(move || {
            let repo = repo
                .lock()
                .map_err(|_| recovery_failed("DATA repository lock poisoned".to_owned()))?;
            let head = repo
                .head_instances()
                .map_err(|e| recovery_failed(e.to_string()))?;
            let uncommitted = repo
                .uncommitted_instances()
                .map_err(|e| recovery_failed(e.to_string()))?;
            Ok::<_, Failure>((head, uncommitted))
        })
        .await
        .map_err(|e| recovery_failed(e.to_string()))??;
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
        // Every sealed instance is in the cluster too: those a crash (or an outage) kept from
        // it are stored now.
        let local = ck_loops::data::sealed_instances(&self.dir);
        let mut replicated = 0;
        for id in local {
            if bound.sealed.info(&id).await.is_ok() {
                continue;
            }
            self.replicate(&bound.sealed, &id).await?;
            replicated += 1;
        }
        if replicated > 0 {
            tracing::warn!(
                replicated,
                "task.recover: sealed instances stored in the cluster"
            );
        }
        Ok(Recovery {
            sealed,
            quarantined,
        })
    }

    /// Reports a stored value that is not a task record: it stays where it is (evidence), the
    /// task id answers `task_state_corrupt`, and the rest of the kernel serves.
    fn quarantine(&self, task_id: &str, why: &str) {
        tracing::error!(kernel = %self.kernel, task_id, why, "task.quarantined: stored state is not a task record; kept, skipped");
        let record = ck_audit::AuditRecord::now(
            "unknown",
            "task.recover",
            ck_audit::Verdict::Deny,
            format!("task {task_id}: stored state is not a task record ({why}); quarantined: kept in the bucket, not served"),
            "ck host",
        )
        .keyed(format!("quarantine:{task_id}"));
        ck_audit::append_detached(self.dir.clone(), self.kernel.clone(), record);
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
}

//! Recovery at start: what a host killed anywhere between acknowledgement and announcement
//! still owes is sealed, audited, committed and announced, byte for byte as it would have been.

use ck_bus::Failure;

use super::committer::{Committed, audit_key};
use super::{Lifecycle, SealedTask, failure, instance_id};
use crate::TaskState;

impl Lifecycle {
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
}

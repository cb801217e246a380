//! Sealing an acknowledged completion into the DATA tree (write-once files, `ck-loops`).

use ck_bus::Failure;
use ck_loops::data::{SealRequest, Transition};
use serde_json::json;

use super::{Lifecycle, SealedTask, instance_id};
use crate::TaskRecord;

impl Lifecycle {
    /// Seals an acknowledged completion: the instance files, written once (sealing again after
    /// an interruption completes the same seal). The audit line, the commit and the events are
    /// the committer's.
    pub(super) async fn seal(&self, record: &TaskRecord) -> Result<SealedTask, Failure> {
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
        // The provenance names who completed the task as recorded (`claimed:…` unless proven);
        // the owner is the proven identity that started it, if any.
        let (task_id, actor, id) = (record.task_id.clone(), record.by.clone(), instance.clone());
        let owner = record.owner.clone();
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
                owner: owner.as_deref(),
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

    /// Stores sealed instance `instance_id` in the cluster's sealed-instance store (one object
    /// per instance, written once) and returns once the cluster has it.
    pub(super) async fn replicate(
        &self,
        store: &async_nats::jetstream::object_store::ObjectStore,
        instance_id: &str,
    ) -> Result<(), Failure> {
        if store.info(instance_id).await.is_ok_and(|i| !i.deleted) {
            return Ok(());
        }
        let failed = |e: String| {
            Failure::new(
                503,
                "replication_failed",
                format!(
                    "instance {instance_id} is sealed on this host but not stored in the cluster: {e}; it is stored when this host restarts, and the completion may be retried"
                ),
            )
        };
        let (dir, id) = (self.dir.clone(), instance_id.to_owned());
        let bundle =
            tokio::task::spawn_blocking(move || ck_loops::data::InstanceBundle::read(&dir, &id))
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(|e| failed(e.to_string()))?;
        let bytes = serde_json::to_vec(&bundle).unwrap_or_default();
        store
            .put(instance_id, &mut bytes.as_slice())
            .await
            .map_err(|e| failed(e.to_string()))?;
        tracing::debug!(instance_id, bytes = bytes.len(), "task.replicated");
        Ok(())
    }
}

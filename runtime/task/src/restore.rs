//! Rebuilding a kernel's DATA tree from the cluster after its disk is lost (`ck restore`):
//! every sealed instance from the kernel's sealed-instance store (`ck_sealed_{guid}`, written
//! before each completion was answered), byte for byte under the seal's write-once rules; an
//! audit ledger recording each restore (hash-chained, keyed `seal:{id}` as a seal's line is);
//! and a DATA commit of them all — so `ck verify` (and `ck verify --nats`) accept the result.
//!
//! The original ledger lines and commits are not in the cluster (they are written after the
//! answer): the restored ledger says that each instance was restored, from which copy, and
//! what its own manifest records of the seal.

use std::path::{Path, PathBuf};

use async_nats::jetstream;
use ck_loops::data::DataRepo;
use ck_manifest::topics;

/// What [`restore`] rebuilt.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Instances restored, by id.
    pub instances: Vec<String>,
    /// Files written (files already there with the same bytes are kept).
    pub files_written: usize,
    /// The DATA commit made, if any.
    pub commit: Option<String>,
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The cluster could not be read.
    #[error("reading {store}: {why}")]
    Nats {
        /// The store.
        store: String,
        /// What failed.
        why: String,
    },
    /// What the cluster holds is not a sealed instance.
    #[error("{store} object {name}: {why}")]
    Invalid {
        /// The store.
        store: String,
        /// The object.
        name: String,
        /// Why.
        why: String,
    },
    /// The tree could not be written.
    #[error("{}: {why}", path.display())]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// Restores kernel `guid`'s (named `kernel`) sealed instances into the kernel directory `into`.
pub async fn restore(
    js: &jetstream::Context,
    guid: &str,
    kernel: &str,
    into: &Path,
) -> Result<Restored, RestoreError> {
    let store_name = topics::sealed_store(guid);
    let copies = crate::anchor::sealed_copies(js, guid)
        .await
        .map_err(|e| RestoreError::Nats {
            store: e.stream,
            why: e.why,
        })?
        .ok_or_else(|| RestoreError::Nats {
            store: store_name.clone(),
            why: "the kernel has no sealed-instance store in this cluster".into(),
        })?;
    let mut restored = Restored::default();
    let mut records = Vec::new();
    for (name, bundle) in copies {
        let invalid = |why: String| RestoreError::Invalid {
            store: store_name.clone(),
            name: name.clone(),
            why,
        };
        let (dir, b) = (into.to_path_buf(), bundle.clone());
        let written = tokio::task::spawn_blocking(move || b.write(&dir))
            .await
            .map_err(|e| invalid(e.to_string()))?
            .map_err(|e| invalid(e.to_string()))?;
        restored.files_written += written;
        let manifest: serde_json::Value = bundle
            .files
            .get("manifest.json")
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        let field = |k: &str| manifest[k].as_str().unwrap_or("?").to_owned();
        records.push(
            ck_audit::AuditRecord::now(
                field("prov:wasAssociatedWith"),
                "restore",
                ck_audit::Verdict::Allow,
                format!(
                    "restored sealed instance {name} of task {} ({}, sealed {}) from the cluster's copy in {store_name}",
                    field("task_id"),
                    field("data_hash"),
                    field("created_at"),
                ),
                "ck restore",
            )
            .keyed(format!("seal:{name}")),
        );
        restored.instances.push(name);
    }
    let (dir, kernel_name, ids) = (
        into.to_path_buf(),
        kernel.to_owned(),
        restored.instances.clone(),
    );
    let commit = tokio::task::spawn_blocking(move || {
        let write = |why: String| RestoreError::Write {
            path: dir.clone(),
            why,
        };
        ck_audit::append_all(&dir, &kernel_name, &records).map_err(|e| write(e.to_string()))?;
        let repo = DataRepo::open_or_init(&dir).map_err(|e| write(e.to_string()))?;
        repo.commit_instances(
            &ids,
            "ck restore",
            &format!("restored {} sealed instance(s) from the cluster", ids.len()),
        )
        .map_err(|e| write(e.to_string()))
    })
    .await
    .map_err(|e| RestoreError::Write {
        path: into.to_path_buf(),
        why: e.to_string(),
    })??;
    restored.commit = commit;
    Ok(restored)
}

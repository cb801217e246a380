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
use ck_loops::data::{DataRepo, InstanceBundle, MAX_BUNDLE};
use ck_manifest::topics;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

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
    let nats = |why: String| RestoreError::Nats {
        store: store_name.clone(),
        why,
    };
    let store = js
        .get_object_store(&store_name)
        .await
        .map_err(|e| nats(e.to_string()))?;
    let mut names = Vec::new();
    let mut list = store.list().await.map_err(|e| nats(e.to_string()))?;
    while let Some(info) = list.next().await {
        let info = info.map_err(|e| nats(e.to_string()))?;
        if !info.deleted {
            names.push((info.name, info.size));
        }
    }
    names.sort();
    let mut restored = Restored::default();
    let mut records = Vec::new();
    for (name, size) in names {
        let invalid = |why: String| RestoreError::Invalid {
            store: store_name.clone(),
            name: name.clone(),
            why,
        };
        if size > MAX_BUNDLE {
            return Err(invalid(format!(
                "{size} bytes is over the {MAX_BUNDLE}-byte limit"
            )));
        }
        let mut object = store.get(&name).await.map_err(|e| nats(e.to_string()))?;
        let mut bytes = Vec::with_capacity(size);
        // The reader checks the store's SHA-256 digest at the end.
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let bundle: InstanceBundle =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if bundle.instance_id != name {
            return Err(invalid(format!(
                "it holds instance {}, not the one it is named after",
                bundle.instance_id
            )));
        }
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

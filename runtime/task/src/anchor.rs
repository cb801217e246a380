//! What the cluster recorded of a kernel's sealed instances, checked against its DATA tree
//! (`ck verify --nats`). The tree alone proves only that it agrees with itself: proofs are
//! hashes of its own files, so a consistent rewrite of every hash, the history and the ledger
//! passes. The `data.written` events the committer announced on `ck.{guid}.data.written` are
//! kept by the kernel's DATA event stream (`ck_data_{guid}`) outside the tree, with each
//! instance's `data_hash` and `manifest_hash`: an instance the stream records must be in the
//! tree with those hashes, and an instance in the tree must be recorded.

use std::collections::BTreeMap;
use std::path::Path;

use async_nats::jetstream;
use ck_loops::data::SealedHashes;
use ck_manifest::topics::{self, LoopEvent};
use serde_json::Value;

/// The hashes the cluster recorded for one instance (the same pair a tree holds).
pub use ck_loops::data::SealedHashes as Recorded;

/// Why the cluster's record could not be read (`stream`: the DATA event stream or the
/// sealed-instance store).
#[derive(Debug, thiserror::Error)]
#[error("reading {stream}: {why}")]
pub struct AnchorError {
    /// The stream.
    pub stream: String,
    /// What failed.
    pub why: String,
}

/// Every instance the DATA event stream of kernel `guid` recorded as written, with its hashes
/// (the last record of an instance wins; replays carry the same).
pub async fn recorded(
    js: &jetstream::Context,
    guid: &str,
) -> Result<BTreeMap<String, Recorded>, AnchorError> {
    let name = topics::data_event_stream(guid);
    let fail = |why: String| AnchorError {
        stream: format!("the DATA event stream {name}"),
        why,
    };
    let mut stream = js
        .get_stream(&name)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let state = stream
        .info()
        .await
        .map_err(|e| fail(e.to_string()))?
        .state
        .clone();
    let written = topics::loop_event_subject(guid, LoopEvent::DataWritten);
    let mut found = BTreeMap::new();
    if state.messages == 0 {
        return Ok(found);
    }
    for seq in state.first_sequence..=state.last_sequence {
        let message = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            // A sequence removed by limits or deletes is a gap, not an error.
            Err(_) => continue,
        };
        if message.subject.as_str() != written {
            continue;
        }
        let body: Value = serde_json::from_slice(&message.payload)
            .map_err(|e| fail(format!("message {seq} is not JSON: {e}")))?;
        let data = &body["data"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        if data["amendment"].is_null() && data["instance_id"].is_string() {
            found.insert(
                text(&data["instance_id"]),
                Recorded {
                    data_hash: text(&data["data_hash"]),
                    manifest_hash: text(&data["manifest_hash"]),
                },
            );
        }
    }
    Ok(found)
}

/// What disagrees between the tree under `kernel_dir` and what the cluster `recorded`: each
/// finding names the instance and what differs. Empty: every instance is anchored.
pub fn disagreements(kernel_dir: &Path, recorded: &BTreeMap<String, Recorded>) -> Vec<String> {
    let mut findings = Vec::new();
    let mut in_tree = BTreeMap::new();
    for id in ck_loops::data::sealed_instances(kernel_dir) {
        let hashes = SealedHashes::read(&ck_loops::data::instance_dir(kernel_dir, &id)).unwrap_or(
            SealedHashes {
                data_hash: String::new(),
                manifest_hash: String::new(),
            },
        );
        in_tree.insert(id, hashes);
    }
    for (id, theirs) in recorded {
        match in_tree.get(id) {
            None => findings.push(format!(
                "instance {id} was announced by the host (DATA event stream) but is missing from the tree"
            )),
            Some(ours) if ours != theirs => findings.push(format!(
                "instance {id}: the tree has data_hash {} and manifest_hash {}, the cluster recorded {} and {}",
                ours.data_hash, ours.manifest_hash, theirs.data_hash, theirs.manifest_hash
            )),
            Some(_) => {}
        }
    }
    for id in in_tree.keys().filter(|id| !recorded.contains_key(*id)) {
        findings.push(format!(
            "instance {id} is in the tree but the cluster never recorded it (data.written)"
        ));
    }
    findings
}

/// Every sealed instance kept in kernel `guid`'s sealed-instance store, by id (each checked by
/// the store's SHA-256 as it is read, bounded, and named after the instance it holds); None
/// when the kernel has no such store (a deployment from before it existed). The one reader of
/// the store: `ck verify --nats` and `ck restore` both use it.
pub async fn sealed_copies(
    js: &jetstream::Context,
    guid: &str,
) -> Result<Option<BTreeMap<String, ck_loops::data::InstanceBundle>>, AnchorError> {
    use futures::StreamExt;
    use tokio::io::AsyncReadExt;
    let name = topics::sealed_store(guid);
    let fail = |why: String| AnchorError {
        stream: format!("the sealed-instance store {name}"),
        why,
    };
    let Ok(store) = js.get_object_store(&name).await else {
        return Ok(None);
    };
    let mut list = store.list().await.map_err(|e| fail(e.to_string()))?;
    let mut names = Vec::new();
    while let Some(info) = list.next().await {
        let info = info.map_err(|e| fail(e.to_string()))?;
        if info.deleted {
            continue;
        }
        if info.size > ck_loops::data::MAX_BUNDLE {
            return Err(fail(format!(
                "{}: {} bytes is over the {}-byte limit of a sealed instance",
                info.name,
                info.size,
                ck_loops::data::MAX_BUNDLE
            )));
        }
        names.push(info.name);
    }
    let mut copies = BTreeMap::new();
    for object in names {
        let mut reader = store.get(&object).await.map_err(|e| fail(e.to_string()))?;
        let mut bytes = Vec::new();
        // The reader checks the store's SHA-256 digest at the end.
        reader
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| fail(format!("{object}: {e}")))?;
        let bundle: ck_loops::data::InstanceBundle = serde_json::from_slice(&bytes)
            .map_err(|e| fail(format!("{object}: not a sealed instance: {e}")))?;
        if bundle.instance_id != object {
            return Err(fail(format!(
                "{object}: it holds instance {}, not the one it is named after",
                bundle.instance_id
            )));
        }
        copies.insert(object, bundle);
    }
    Ok(Some(copies))
}

/// What disagrees between the tree under `kernel_dir` and the cluster's copies of its sealed
/// instances: an instance without a copy, a copy without its instance, a file that differs.
pub fn copy_disagreements(
    kernel_dir: &Path,
    copies: &BTreeMap<String, ck_loops::data::InstanceBundle>,
) -> Vec<String> {
    let mut findings = Vec::new();
    let in_tree = ck_loops::data::sealed_instances(kernel_dir);
    for id in &in_tree {
        let Some(copy) = copies.get(id) else {
            findings.push(format!(
                "instance {id} is in the tree but not in the cluster's sealed-instance store"
            ));
            continue;
        };
        match ck_loops::data::InstanceBundle::read(kernel_dir, id) {
            Ok(ours) => {
                for (file, text) in &copy.files {
                    if ours.files.get(file) != Some(text) {
                        findings.push(format!(
                            "instance {id}: {file} differs from the cluster's copy"
                        ));
                    }
                }
            }
            Err(e) => findings.push(format!("instance {id}: {e}")),
        }
    }
    for id in copies.keys().filter(|id| !in_tree.contains(*id)) {
        findings.push(format!(
            "instance {id} is in the cluster's sealed-instance store but missing from the tree"
        ));
    }
    findings
}

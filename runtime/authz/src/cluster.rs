//! The callout's registry from the cluster's control plane: every serving record in
//! `CK_SERVING`, each kernel counted as the manifest of its stable CK commit in `CK_REGISTRY`,
//! kept current by a watch (a promote reaches the next connect's decision in milliseconds), and
//! checked by the same rule as a directory registry (`KernelSet::new`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ck_control::{ControlError, ControlPlane, ServingFeed};
use ck_loops::serving::ServingRecord;
use ck_manifest::{Kernel, KernelSet};
use tokio_util::sync::CancellationToken;

/// How long after a failed or ended watch it is opened again.
const REWATCH_AFTER: Duration = Duration::from_secs(1);

/// The records seen and the manifests parsed (per GUID and CK commit: commits never change).
#[derive(Default)]
struct View {
    records: BTreeMap<String, ServingRecord>,
    parsed: HashMap<(String, String), Option<Kernel>>,
}

impl View {
    async fn kernel(&mut self, plane: &ControlPlane, record: &ServingRecord) -> Option<Kernel> {
        let key = (record.guid.clone(), record.stable.ck.clone());
        if let Some(parsed) = self.parsed.get(&key) {
            return parsed.clone();
        }
        let parsed = match plane.ck_commit(&record.guid, &record.stable.ck).await {
            Ok(doc) => {
                // A manifest from the cluster stands nowhere on disk: it is named by its key.
                let path = PathBuf::from(format!(
                    "{}/{}/{}",
                    ck_manifest::topics::REGISTRY_BUCKET,
                    record.guid,
                    ck_manifest::MANIFEST_FILE
                ));
                let loaded = ck_manifest::parse_str(
                    &doc.manifest,
                    &path,
                    &ck_manifest::ParseOptions {
                        now: chrono::Utc::now(),
                        ck_guid: doc
                            .ck_guid
                            .map(|g| (g, path.with_file_name(ck_manifest::GUID_FILE))),
                    },
                );
                if loaded.kernel.is_none() {
                    let first = loaded.first_error();
                    tracing::warn!(target: "ck::authz", guid = %record.guid, problem = %first, "registry.invalid-manifest; its kernel cannot connect");
                }
                loaded.kernel
            }
            Err(e) => {
                // Not cached: a record may name a commit a moment before it is readable.
                tracing::warn!(target: "ck::authz", guid = %record.guid, problem = %e, "registry.unreadable-manifest; its kernel cannot connect");
                return None;
            }
        };
        self.parsed.insert(key, parsed.clone());
        parsed
    }

    async fn set(&mut self, plane: &ControlPlane) -> KernelSet {
        let mut kernels = Vec::new();
        for record in self.records.clone().values() {
            kernels.extend(self.kernel(plane, record).await);
        }
        let (set, problems) = KernelSet::new(kernels);
        for p in problems {
            tracing::error!(target: "ck::authz", manifest = %p.file.display(), problem = %p, "registry.conflict; refused");
        }
        set
    }
}

/// Applies `feed` until it is current (or ends); returns whether it is still open.
async fn catch_up(feed: &mut ServingFeed, view: &mut View) -> Result<bool, ControlError> {
    loop {
        // An empty bucket delivers nothing at all: its current state is reached at once.
        let next = match tokio::time::timeout(Duration::from_millis(500), feed.next()).await {
            Ok(next) => next,
            Err(_) => return Ok(true),
        };
        let Some(update) = next else {
            return Ok(false);
        };
        let update = update?;
        apply(view, update.guid, update.record);
        if update.current {
            return Ok(true);
        }
    }
}

fn apply(view: &mut View, guid: String, record: Option<ServingRecord>) {
    match record {
        Some(record) => {
            view.records.insert(guid, record);
        }
        None => {
            view.records.remove(&guid);
        }
    }
}

/// Loads the current records and follows them in a task of its own until `shutdown`.
pub(crate) async fn follow(
    plane: ControlPlane,
    shutdown: CancellationToken,
) -> Result<Arc<Mutex<Arc<KernelSet>>>, ControlError> {
    let mut view = View::default();
    let mut feed = plane.watch_serving().await?;
    let open = catch_up(&mut feed, &mut view).await?;
    let set = view.set(&plane).await;
    tracing::info!(target: "ck::authz", kernels = set.iter().count(), source = "cluster", "registry.loaded");
    let shared = Arc::new(Mutex::new(Arc::new(set)));
    let writer = shared.clone();
    tokio::spawn(async move {
        let mut feed = open.then_some(feed);
        loop {
            let next = match &mut feed {
                Some(f) => tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = f.next() => next,
                },
                None => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(REWATCH_AFTER) => {}
                    }
                    match plane.watch_serving().await {
                        Ok(f) => {
                            // A fresh watch replays every current record: start over.
                            view.records.clear();
                            feed = Some(f);
                        }
                        Err(e) => {
                            tracing::warn!(target: "ck::authz", error = %e, "registry.watch-failed");
                        }
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(update)) => {
                    let guid = update.guid.clone();
                    apply(&mut view, update.guid, update.record);
                    let set = view.set(&plane).await;
                    tracing::info!(target: "ck::authz", kernels = set.iter().count(), changed = %guid, source = "cluster", "registry.reloaded");
                    if let Ok(mut shared) = writer.lock() {
                        *shared = Arc::new(set);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(target: "ck::authz", error = %e, "registry.watch-failed");
                    feed = None;
                }
                None => feed = None,
            }
        }
    });
    Ok(shared)
}

//! The registry of kernel manifests the callout decides from: one or more directories, rescanned
//! when a manifest or a serving record changes (so a new grant takes effect at the next
//! connect, without a restart) — or the cluster's control plane, followed through a watch of
//! its serving records (`ck authz serve --control`; `cluster`). A kernel with a serving record
//! counts as its promoted stable version (its CK commit), not as whatever its working files
//! say: a grant takes effect when it is promoted.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ck_manifest::KernelSet;

/// How often the directories are checked for changed manifests at most.
const RESCAN_INTERVAL: Duration = Duration::from_millis(200);

struct Snapshot {
    set: Arc<KernelSet>,
    fingerprint: blake3::Hash,
    checked: Instant,
}

/// A connect naming a kernel not in the set forces a rescan (so a manifest registered a moment
/// ago is found), but at most once per this interval whoever asks: a flood of made-up users
/// costs at most 100 scans per second, not one each.
const FORCED_RESCAN_INTERVAL: Duration = Duration::from_millis(10);

/// The negative cache: a user a forced rescan did not find forces no other rescan for this
/// long (its retries cost nothing).
const UNKNOWN_TTL: Duration = Duration::from_secs(1);

/// Users remembered as unknown at most (the cache is emptied when full).
const MAX_UNKNOWN: usize = 4096;

/// Kernel manifests found under some directories, or published in the cluster.
pub struct Registry {
    roots: Vec<PathBuf>,
    snapshot: Mutex<Snapshot>,
    unknown: Mutex<std::collections::HashMap<String, Instant>>,
    /// The set the cluster's serving records name, kept current by a watch; None for
    /// directories.
    cluster: Option<Arc<Mutex<Arc<KernelSet>>>>,
}

fn manifests(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for root in roots {
        let scan = ck_manifest::discover_registry(root);
        for (path, error) in &scan.unreadable {
            tracing::warn!(target: "ck::authz", root = %root.display(), path = %path.display(), error = %error, "registry.unreadable; skipped, the rest of the root is used");
        }
        files.extend(scan.manifests);
    }
    files
}

fn fingerprint(files: &[PathBuf]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    for file in files {
        hasher.update(file.as_os_str().as_encoded_bytes());
        let serving = file
            .parent()
            .map(ck_loops::state::serving_path)
            .unwrap_or_default();
        for meta in [std::fs::metadata(file), std::fs::metadata(&serving)]
            .into_iter()
            .flatten()
        {
            let modified = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            hasher.update(&modified.to_le_bytes());
            hasher.update(&meta.len().to_le_bytes());
        }
    }
    hasher.finalize()
}

fn load(files: &[PathBuf]) -> KernelSet {
    let now = chrono::Utc::now();
    let mut kernels = Vec::new();
    for file in files {
        let dir = file.parent().unwrap_or(std::path::Path::new("."));
        let loaded = match ck_loops::state::stable_manifest(dir) {
            Ok(Some((text, guid))) => ck_manifest::parse_str(
                &text,
                file,
                &ck_manifest::ParseOptions {
                    now,
                    ck_guid: guid.map(|g| (g, dir.join(ck_manifest::GUID_FILE))),
                },
            ),
            Ok(None) => ck_manifest::load_file(file, now),
            Err(e) => {
                tracing::warn!(target: "ck::authz", manifest = %file.display(), problem = %e, "registry.unreadable-serving-record; its kernel cannot connect");
                continue;
            }
        };
        match loaded.kernel {
            Some(kernel) => kernels.push(kernel),
            None => {
                let first = loaded.first_error();
                tracing::warn!(target: "ck::authz", manifest = %file.display(), problem = %first, "registry.invalid-manifest; its kernel cannot connect");
            }
        }
    }
    // The same rule as `ck run`: every kernel involved in a conflict is left out, so none of
    // them can connect until the conflict is resolved.
    let (set, problems) = KernelSet::new(kernels);
    for p in problems {
        tracing::error!(target: "ck::authz", manifest = %p.file.display(), problem = %p, "registry.conflict; refused");
    }
    set
}

impl Registry {
    /// Loads every kernel manifest under `roots`.
    pub fn open(roots: Vec<PathBuf>) -> Self {
        let files = manifests(&roots);
        let set = load(&files);
        tracing::info!(target: "ck::authz", kernels = set.iter().count(), roots = ?roots, "registry.loaded");
        Self {
            snapshot: Mutex::new(Snapshot {
                set: Arc::new(set),
                fingerprint: fingerprint(&files),
                checked: Instant::now(),
            }),
            roots,
            unknown: Mutex::new(std::collections::HashMap::new()),
            cluster: None,
        }
    }

    /// A registry of the kernels the cluster's serving records name (their stable manifests
    /// as published), following every change until `shutdown`. Returns once the current
    /// records are loaded.
    pub async fn follow_cluster(
        plane: ck_control::ControlPlane,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Self, ck_control::ControlError> {
        let shared = crate::cluster::follow(plane, shutdown).await?;
        Ok(Self {
            roots: Vec::new(),
            snapshot: Mutex::new(Snapshot {
                set: Arc::new(KernelSet::new(Vec::new()).0),
                fingerprint: blake3::hash(b""),
                checked: Instant::now(),
            }),
            unknown: Mutex::new(std::collections::HashMap::new()),
            cluster: Some(shared),
        })
    }

    /// Where the manifests come from, for messages.
    pub fn describe(&self) -> String {
        match &self.cluster {
            Some(_) => format!(
                "the cluster's serving records, {}",
                ck_manifest::topics::SERVING_BUCKET
            ),
            None => self
                .roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// The current kernel set, reloaded first if a manifest was added, removed or changed
    /// (checked at most every 200 ms; the cluster's is kept current by its watch).
    pub fn current(&self) -> Arc<KernelSet> {
        if let Some(shared) = &self.cluster {
            return shared
                .lock()
                .map(|s| s.clone())
                .unwrap_or_else(|_| Arc::new(KernelSet::new(Vec::new()).0));
        }
        self.scan(false)
    }

    /// The current kernel set for `user`, a user the current set does not know: checked
    /// against the directories now (a manifest registered a moment ago must not be refused;
    /// within 10 ms of the last check it waits for the rest of those 10 ms), unless a rescan
    /// for this user found nothing
    /// less than a second ago (the negative cache), so a flood of unknown users does not
    /// rescan for each one. `known` says whether a set knows the user.
    pub fn rescan_for(&self, user: &str, known: impl Fn(&KernelSet) -> bool) -> Arc<KernelSet> {
        if self.cluster.is_some() {
            // The watch delivers a change within milliseconds; nothing to rescan.
            return self.current();
        }
        let recently_unknown = self
            .unknown
            .lock()
            .is_ok_and(|u| u.get(user).is_some_and(|t| t.elapsed() < UNKNOWN_TTL));
        if recently_unknown {
            return self.current();
        }
        let set = self.scan(true);
        if !known(&set)
            && let Ok(mut unknown) = self.unknown.lock()
        {
            if unknown.len() >= MAX_UNKNOWN {
                unknown.clear();
            }
            unknown.insert(user.to_owned(), Instant::now());
        }
        set
    }

    fn scan(&self, forced: bool) -> Arc<KernelSet> {
        let Ok(mut snapshot) = self.snapshot.lock() else {
            return Arc::new(KernelSet::new(Vec::new()).0);
        };
        let due = if forced {
            // A forced rescan always scans: one asked for a moment after the last check waits
            // out the rest of the interval (≤ 10 ms, holding the lock, which is what bounds a
            // flood) rather than answering from a set read before the manifest was written.
            let since = snapshot.checked.elapsed();
            if since < FORCED_RESCAN_INTERVAL {
                std::thread::sleep(FORCED_RESCAN_INTERVAL - since);
            }
            FORCED_RESCAN_INTERVAL
        } else {
            RESCAN_INTERVAL
        };
        if snapshot.checked.elapsed() >= due {
            let files = manifests(&self.roots);
            let now = fingerprint(&files);
            if now != snapshot.fingerprint {
                snapshot.set = Arc::new(load(&files));
                snapshot.fingerprint = now;
                tracing::info!(target: "ck::authz", kernels = snapshot.set.iter().count(), "registry.reloaded");
            }
            snapshot.checked = Instant::now();
        }
        snapshot.set.clone()
    }
}

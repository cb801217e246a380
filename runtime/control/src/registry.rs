//! The registry: every published CK commit (the manifest as committed) and TOOL commit (the
//! component's digest and size) of every kernel, and each kernel's newest published `develop`,
//! in the KV bucket `CK_REGISTRY`; components beside them in the object store. Publishing
//! reads the kernel's local loops; reading back writes the component into the kernel's local
//! artifact store, so a host serves exactly what was published.

use std::path::Path;

use async_nats::jetstream::kv;
use ck_loops::serving::{ServingRecord, VersionRef};
use ck_loops::state::{self, Loops, VersionSnapshot};
use ck_manifest::Kernel;
use ck_manifest::topics::{self, Loop};
use serde::{Deserialize, Serialize};

use crate::{ControlError, ControlPlane, MAX_REGISTRY_VALUE};

/// A published CK commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CkCommitDoc {
    /// The kernel's name.
    pub kernel: String,
    /// Its GUID.
    pub guid: String,
    /// Its URN (the source of its loop events).
    pub urn: String,
    /// The CK commit.
    pub commit: String,
    /// `conceptkernel.yaml` as committed.
    pub manifest: String,
    /// `.ck-guid` as committed, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ck_guid: Option<String>,
}

/// A published TOOL commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCommitDoc {
    /// The kernel's name.
    pub kernel: String,
    /// Its GUID.
    pub guid: String,
    /// The TOOL commit.
    pub commit: String,
    /// `blake3:{hex}` of its component (the object's name in the component store).
    pub digest: String,
    /// The component's size in bytes.
    pub size: u64,
}

/// What [`ControlPlane::publish`] did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The versions published (develop and every version of the local serving record).
    pub versions: Vec<VersionRef>,
    /// Components uploaded (the others were in the store already).
    pub uploaded: usize,
    /// The cluster's serving record of the kernel.
    pub record: ServingRecord,
    /// Whether this publish created it (from the local record, or pinning `develop`).
    pub created_record: bool,
    /// Loop events of the local journal published (to the loop event stream, which keeps
    /// each once).
    pub events: usize,
}

/// What a registry document says it describes: a kernel's GUID and a commit.
trait CommitDoc {
    fn names(&self) -> (&str, &str);
}

impl CommitDoc for CkCommitDoc {
    fn names(&self) -> (&str, &str) {
        (&self.guid, &self.commit)
    }
}

impl CommitDoc for ToolCommitDoc {
    fn names(&self) -> (&str, &str) {
        (&self.guid, &self.commit)
    }
}

fn encode<T: Serialize>(value: &T, key: &str) -> Result<bytes::Bytes, ControlError> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    if bytes.len() > MAX_REGISTRY_VALUE {
        return Err(ControlError::Refused(format!(
            "registry value {key} would be {} bytes, over the {MAX_REGISTRY_VALUE}-byte limit",
            bytes.len()
        )));
    }
    Ok(bytes.into())
}

/// Writes `value` under `key` unless the key exists (commits are written once: what a key
/// names never changes).
async fn create_once(kv: &kv::Store, key: &str, value: bytes::Bytes) -> Result<(), ControlError> {
    match kv.create(key, value).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(ControlError::Nats {
            what: format!("writing {key} in {}", topics::REGISTRY_BUCKET),
            why: e.to_string(),
        }),
    }
}

impl ControlPlane {
    /// Publishes `kernel`'s versions from its local loops: `develop` and every version its
    /// local serving record names (manifests and digests into the registry, components into
    /// the store). When the cluster has no serving record for it yet, one is created from the
    /// local record (or pinning `develop`).
    pub async fn publish(&self, kernel: &Kernel) -> Result<Published, ControlError> {
        let (develop, local, snapshots) = {
            let loops = Loops::open(kernel)?;
            let develop = loops.develop().ok_or_else(|| {
                ControlError::Refused(format!(
                    "{} has no recorded version yet: build it (`ck build {}`) first",
                    kernel.name,
                    kernel.dir().display()
                ))
            })?;
            let local = loops.serving()?;
            let mut versions = vec![develop.clone()];
            if let Some(record) = &local {
                versions.extend(record.versions().into_iter().cloned());
            }
            versions.dedup();
            let mut snapshots = Vec::new();
            for v in &versions {
                if !snapshots.iter().any(|s: &VersionSnapshot| s.pin == *v) {
                    snapshots.push(loops.materialize(v)?);
                }
            }
            (develop, local, snapshots)
        };
        let mut uploaded = 0;
        for snapshot in &snapshots {
            uploaded += usize::from(self.publish_version(kernel, snapshot).await?);
        }
        let develop_key = topics::registry_develop_key(&kernel.guid);
        self.registry
            .put(&develop_key, encode(&develop, &develop_key)?)
            .await
            .map_err(|e| ControlError::Nats {
                what: format!("writing {develop_key} in {}", topics::REGISTRY_BUCKET),
                why: e.to_string(),
            })?;
        let journal = ck_loops::journal::Journal::new(&state::state_dir(kernel.dir()));
        let events = crate::publish_journal(&self.js, &journal, &kernel.guid, &kernel.urn, |seq| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(ck_bus::envelope::TRACE_ID, format!("loop-{seq}").as_str());
            headers.insert(ck_bus::envelope::KERNEL_ID, "ck publish");
            headers
        })
        .await?;
        let (record, created_record) = match self.record(&kernel.guid).await? {
            Some((record, _)) => (record, false),
            None => {
                let mut record = local.unwrap_or_else(|| ServingRecord {
                    kernel: kernel.name.clone(),
                    guid: kernel.guid.clone(),
                    revision: 0,
                    updated_at: String::new(),
                    stable: develop.clone(),
                    canary: None,
                    previous: Vec::new(),
                });
                record.revision = 0;
                record.stamp();
                (self.create_record(&record).await?, true)
            }
        };
        Ok(Published {
            versions: snapshots.into_iter().map(|s| s.pin).collect(),
            uploaded,
            record,
            created_record,
            events,
        })
    }

    /// Publishes the recorded version `pin` of `kernel` (a build agent's build): its manifest
    /// and digest into the registry, its component into the store. Returns whether the
    /// component was uploaded (false: the store had it).
    pub async fn publish_pin(
        &self,
        kernel: &Kernel,
        pin: &VersionRef,
    ) -> Result<bool, ControlError> {
        let snapshot = state::materialize(kernel.dir(), pin)?;
        self.publish_version(kernel, &snapshot).await
    }

    /// Publishes one version; returns whether its component was uploaded.
    async fn publish_version(
        &self,
        kernel: &Kernel,
        snapshot: &VersionSnapshot,
    ) -> Result<bool, ControlError> {
        let bytes = std::fs::read(&snapshot.component)
            .map_err(|e| ControlError::Refused(format!("{}: {e}", snapshot.component.display())))?;
        // Component first: a TOOL commit in the registry always has its component stored.
        let uploaded = self.put_component(&bytes).await?;
        let ck = CkCommitDoc {
            kernel: kernel.name.clone(),
            guid: kernel.guid.clone(),
            urn: kernel.urn.clone(),
            commit: snapshot.pin.ck.clone(),
            manifest: snapshot.manifest.clone(),
            ck_guid: snapshot.ck_guid.clone(),
        };
        let tool = ToolCommitDoc {
            kernel: kernel.name.clone(),
            guid: kernel.guid.clone(),
            commit: snapshot.pin.tool.clone(),
            digest: snapshot.digest.clone(),
            size: bytes.len() as u64,
        };
        self.put_commit_docs(&ck, &tool).await?;
        Ok(uploaded)
    }

    /// Writes one version's CK and TOOL documents, each once (an existing one is kept). The
    /// component must be stored first: a TOOL commit in the registry always has its component.
    pub(crate) async fn put_commit_docs(
        &self,
        ck: &CkCommitDoc,
        tool: &ToolCommitDoc,
    ) -> Result<(), ControlError> {
        let ck_key = topics::registry_commit_key(&ck.guid, Loop::Ck, &ck.commit);
        create_once(&self.registry, &ck_key, encode(ck, &ck_key)?).await?;
        let tool_key = topics::registry_commit_key(&tool.guid, Loop::Tool, &tool.commit);
        create_once(&self.registry, &tool_key, encode(tool, &tool_key)?).await
    }

    async fn registry_doc<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, ControlError> {
        let entry = self
            .registry
            .get(key)
            .await
            .map_err(|e| ControlError::Nats {
                what: format!("reading {key} from {}", topics::REGISTRY_BUCKET),
                why: e.to_string(),
            })?;
        entry
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| {
                    ControlError::Integrity(format!(
                        "{} {key}: not a registry document: {e}",
                        topics::REGISTRY_BUCKET
                    ))
                })
            })
            .transpose()
    }

    /// The published commit `commit` of kernel `guid` in loop `lp`, checked to describe
    /// what its key names.
    async fn commit_doc<T: for<'de> Deserialize<'de> + CommitDoc>(
        &self,
        guid: &str,
        lp: Loop,
        commit: &str,
    ) -> Result<T, ControlError> {
        let key = topics::registry_commit_key(guid, lp, commit);
        let doc: T = self.registry_doc(&key).await?.ok_or_else(|| {
            ControlError::Refused(format!(
                "{} commit {} of kernel {guid} was never published ({} has no {key})",
                lp.as_str().to_uppercase(),
                ck_loops::serving::short(commit),
                topics::REGISTRY_BUCKET
            ))
        })?;
        let (doc_guid, doc_commit) = doc.names();
        if doc_guid != guid || doc_commit != commit {
            return Err(ControlError::Integrity(format!(
                "{} {key} describes {doc_guid}@{doc_commit}, not what its key names",
                topics::REGISTRY_BUCKET,
            )));
        }
        Ok(doc)
    }

    /// The published CK commit `commit` of kernel `guid`.
    pub async fn ck_commit(&self, guid: &str, commit: &str) -> Result<CkCommitDoc, ControlError> {
        self.commit_doc(guid, Loop::Ck, commit).await
    }

    /// The published TOOL commit `commit` of kernel `guid`.
    pub async fn tool_commit(
        &self,
        guid: &str,
        commit: &str,
    ) -> Result<ToolCommitDoc, ControlError> {
        self.commit_doc(guid, Loop::Tool, commit).await
    }

    /// Kernel `guid`'s newest published `develop`.
    pub async fn develop(&self, guid: &str) -> Result<Option<VersionRef>, ControlError> {
        self.registry_doc(&topics::registry_develop_key(guid)).await
    }

    /// Reads version `pin` of kernel `guid` back from the cluster: its manifest from the
    /// registry, its component from the store (checked by SHA-256 and blake3, then kept in the
    /// local artifact store of the kernel in `kernel_dir`, where it is not fetched again).
    pub async fn materialize(
        &self,
        kernel_dir: &Path,
        guid: &str,
        pin: &VersionRef,
    ) -> Result<VersionSnapshot, ControlError> {
        let ck = self.ck_commit(guid, &pin.ck).await?;
        let tool = self.tool_commit(guid, &pin.tool).await?;
        let hex = tool.digest.strip_prefix("blake3:").unwrap_or(&tool.digest);
        let local = state::state_dir(kernel_dir)
            .join("artifacts")
            .join(format!("{hex}.wasm"));
        let cached = std::fs::read(&local)
            .ok()
            .filter(|b| blake3::hash(b).to_hex().as_str() == hex);
        let component = match cached {
            Some(_) => local,
            None => {
                let bytes = self.fetch_component(&tool.digest).await?;
                state::store_artifact(kernel_dir, &bytes)?.1
            }
        };
        Ok(VersionSnapshot {
            pin: pin.clone(),
            manifest: ck.manifest,
            ck_guid: ck.ck_guid,
            component,
            digest: tool.digest,
        })
    }

    /// Every published commit of kernel `guid` whose id starts with `prefix`, by loop.
    pub(crate) async fn commits_with_prefix(
        &self,
        guid: &str,
        prefix: &str,
    ) -> Result<(Vec<String>, Vec<String>), ControlError> {
        use futures::TryStreamExt;
        let keys: Vec<String> = self
            .registry
            .keys()
            .await
            .map_err(|e| ControlError::Nats {
                what: format!("listing {}", topics::REGISTRY_BUCKET),
                why: e.to_string(),
            })?
            .try_collect()
            .await
            .map_err(|e| ControlError::Nats {
                what: format!("listing {}", topics::REGISTRY_BUCKET),
                why: e.to_string(),
            })?;
        let mut found = (Vec::new(), Vec::new());
        for key in keys {
            let mut parts = key.splitn(3, '.');
            let (Some(g), Some(lp), Some(commit)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if g != guid || !commit.starts_with(prefix) {
                continue;
            }
            match lp {
                "ck" => found.0.push(commit.to_owned()),
                "tool" => found.1.push(commit.to_owned()),
                _ => {}
            }
        }
        Ok(found)
    }
}

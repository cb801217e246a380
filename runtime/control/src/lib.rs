//! The control plane on JetStream: the state every host of a cluster follows, kept where the
//! cluster keeps it (replicated, fsynced), so any number of hosts on any number of machines
//! agree and losing one machine loses nothing.
//!
//! | state | where | written by |
//! |---|---|---|
//! | published CK and TOOL commits (manifest; component digest) | KV `CK_REGISTRY` | operators (`ck publish`) |
//! | components, named by blake3 digest | object store `CK_ARTIFACTS` (its own SHA-256 beside) | operators (`ck publish`) |
//! | serving records (stable, canary and weight, previous) | KV `CK_SERVING`, key `{guid}` | operators (`ck promote`, `ck canary`, `ck rollback`), revision-checked |
//! | CK and TOOL loop events | stream `CK_LOOP_EVENTS`, deduplicated by `Nats-Msg-Id` | whoever changed a loop |
//! | a fleet site's install requests and reports, across its leaf link | streams `FLEET_INSTALL_{silo}`, `FLEET_REPORTS_{silo}`, `FLEET_REPORTS` ([`link`]) | the hub's operator and the site |
//! | what a site serves, and the requests it took on | KV `CK_SITE` in the site's domain ([`install`]) | the site's hosts |
//!
//! This crate owns those buckets' configuration ([`PlaneConfig`]), publishing a kernel's
//! versions from its loops ([`ControlPlane::publish`]), reading a version back checked by both
//! digests into the kernel's local artifact store ([`ControlPlane::materialize`]), changing a
//! serving record by the one rule of `ck_loops::serving` under a revision check
//! ([`ControlPlane::change`]) and following one ([`ControlPlane::watch`]).
//!
//! It may not serve kernels, decide connects, or form subject, bucket or key names itself
//! (those are `ck_manifest::topics`'). Who may write what is not decided here: the server
//! enforces it through the permissions of the identity a command connects as.

mod artifacts;
mod events;
pub mod fleet;
pub mod install;
pub mod link;
mod registry;
mod serving;

use async_nats::jetstream::{self, kv, object_store, stream};
use ck_manifest::topics;

pub use events::{
    LOOP_EVENT_DEDUP_WINDOW, loop_event_stream_config, publish_journal, publish_loop_event,
};
pub use registry::{CkCommitDoc, Published, ToolCommitDoc};
pub use serving::{Changed, ServingFeed, ServingUpdate, ServingWatch};

/// Why a control-plane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The server refused or did not answer.
    #[error("{what}: {why}")]
    Nats {
        /// What was being done (names the bucket or key).
        what: String,
        /// The server's or the client's answer.
        why: String,
    },
    /// The request cannot be carried out; the message says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// What the cluster holds does not match its digest.
    #[error("{0}")]
    Integrity(String),
    /// The kernel has no serving record in the cluster.
    #[error(
        "kernel {guid} has no serving record in {bucket}: publish it first (`ck publish KERNEL_DIR --nats URL`)",
        bucket = topics::SERVING_BUCKET
    )]
    NotPublished {
        /// The kernel's GUID.
        guid: String,
    },
    /// Reading the kernel's local loops failed.
    #[error(transparent)]
    Loops(#[from] ck_loops::state::LoopError),
}

pub(crate) fn nats_error(what: impl Into<String>) -> impl FnOnce(String) -> ControlError {
    let what = what.into();
    move |why| ControlError::Nats { what, why }
}

/// How the control plane's buckets are created (an existing bucket keeps its configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneConfig {
    /// Replicas of every bucket, store and stream: 3 on a 3-node cluster, 1 on one server.
    pub replicas: usize,
    /// The fleet policy `FLEET_STATE`'s max age comes from (its heartbeat window).
    pub fleet: fleet::FleetPolicy,
}

impl Default for PlaneConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            fleet: fleet::FleetPolicy::shipped(),
        }
    }
}

/// Largest registry value: a manifest (at most 1 MiB as a file) must fit in one message with
/// its envelope, under nats-server's default 1 MiB payload.
pub const MAX_REGISTRY_VALUE: usize = 960 * 1024;

/// How long creating the control plane waits for a young cluster to know enough peers.
const PLACEMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Largest serving record.
pub const MAX_SERVING_RECORD: usize = 64 * 1024;

impl PlaneConfig {
    /// The registry bucket: one value per key (commits are written once), file storage.
    pub fn registry(&self) -> kv::Config {
        kv::Config {
            bucket: topics::REGISTRY_BUCKET.into(),
            description: "ck kernel registry: published CK and TOOL commits".into(),
            history: 1,
            max_value_size: MAX_REGISTRY_VALUE as i32,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// The serving bucket: the last 16 records of each kernel kept (what changed, and when).
    pub fn serving(&self) -> kv::Config {
        kv::Config {
            bucket: topics::SERVING_BUCKET.into(),
            description: "ck serving records: stable, canary and previous versions per kernel"
                .into(),
            history: 16,
            max_value_size: MAX_SERVING_RECORD as i32,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// The component store.
    pub fn artifacts(&self) -> object_store::Config {
        object_store::Config {
            bucket: topics::ARTIFACT_STORE.into(),
            description: Some("ck components, named by blake3 digest".into()),
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// The bucket `config` names, created with `config` when it does not exist (an existing
/// bucket keeps its configuration).
pub(crate) async fn open_or_create_kv(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, ControlError> {
    if let Ok(kv) = js.get_key_value(&config.bucket).await {
        return Ok(kv);
    }
    let what = format!("creating {}", config.bucket);
    js.create_key_value(config)
        .await
        .map_err(|e| e.to_string())
        .map_err(nats_error(what))
}

/// The control plane, as seen over one connection.
#[derive(Clone)]
pub struct ControlPlane {
    js: jetstream::Context,
    registry: kv::Store,
    serving: kv::Store,
    artifacts: object_store::ObjectStore,
}

impl ControlPlane {
    /// Opens the control plane, creating what does not exist yet with `config` (an operator's
    /// first `ck publish`).
    pub async fn create(
        js: jetstream::Context,
        config: &PlaneConfig,
    ) -> Result<Self, ControlError> {
        // A cluster that has just started may not know all its peers yet (`no suitable peers
        // for placement`): that passes within seconds, so it is retried for a while.
        let deadline = std::time::Instant::now() + PLACEMENT_WAIT;
        loop {
            match Self::try_create(&js, config).await {
                Err(ControlError::Nats { why, .. })
                    if why.contains("10005") && std::time::Instant::now() < deadline =>
                {
                    tracing::info!(target: "ck::control", why = %why, "control.waiting-for-peers");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                outcome => return outcome,
            }
        }
    }

    async fn try_create(
        js: &jetstream::Context,
        config: &PlaneConfig,
    ) -> Result<Self, ControlError> {
        let js = js.clone();
        let registry = open_or_create_kv(&js, config.registry()).await?;
        let serving = open_or_create_kv(&js, config.serving()).await?;
        let artifacts = match js.get_object_store(topics::ARTIFACT_STORE).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(config.artifacts())
                .await
                .map_err(|e| e.to_string())
                .map_err(nats_error(format!("creating {}", topics::ARTIFACT_STORE)))?,
        };
        open_or_create_kv(&js, config.fleet.bucket(config.replicas)).await?;
        js.get_or_create_stream(loop_event_stream_config(config))
            .await
            .map_err(|e| e.to_string())
            .map_err(nats_error(format!(
                "creating {}",
                topics::LOOP_EVENT_STREAM
            )))?;
        Ok(Self {
            js,
            registry,
            serving,
            artifacts,
        })
    }

    /// Opens the control plane as it exists (a host, which may read it but not create it).
    pub async fn open(js: jetstream::Context) -> Result<Self, ControlError> {
        let missing = |what: &str| {
            let what = what.to_owned();
            move |e: String| ControlError::Nats {
                what: format!("opening {what}"),
                why: format!("{e} (an operator's `ck publish` creates it)"),
            }
        };
        let registry = js
            .get_key_value(topics::REGISTRY_BUCKET)
            .await
            .map_err(|e| e.to_string())
            .map_err(missing(topics::REGISTRY_BUCKET))?;
        let serving = js
            .get_key_value(topics::SERVING_BUCKET)
            .await
            .map_err(|e| e.to_string())
            .map_err(missing(topics::SERVING_BUCKET))?;
        let artifacts = js
            .get_object_store(topics::ARTIFACT_STORE)
            .await
            .map_err(|e| e.to_string())
            .map_err(missing(topics::ARTIFACT_STORE))?;
        Ok(Self {
            js,
            registry,
            serving,
            artifacts,
        })
    }

    /// The JetStream context it works through.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
}

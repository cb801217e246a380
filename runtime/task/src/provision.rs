//! The JetStream state a kernel's task lifecycle lives in — its task bucket `ck_tasks_{guid}`,
//! its DATA event stream `ck_data_{guid}` and its sealed-instance store `ck_sealed_{guid}` —
//! and the one configuration each is created with: file storage, and 3 replicas on a
//! clustered server (1 on a lone one).
//!
//! A kernel's own connection may not create streams (issue 14 point 4: a `STREAM.CREATE` grant
//! cannot be limited by configuration, so it could name foreign `subjects`, a `mirror` or
//! `sources`). In a secured deployment the callout provisions both, over its own provisioning
//! connection, before it admits the kernel ([`provision`]); a host on a server without
//! authentication creates them itself with the same function. Either way the configuration is
//! this module's.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use ck_manifest::topics;

use crate::store::{MAX_BUCKET_BYTES, MAX_TASK_RECORD};

/// How long the DATA event stream keeps message ids for deduplication: a replay after an
/// outage shorter than this cannot announce an instance twice.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Replicas of a kernel's JetStream state on the server `js` talks to: 3 when it is part of
/// a cluster (losing one node loses nothing), 1 on a lone server.
pub fn replicas(js: &jetstream::Context) -> usize {
    if js.client().server_info().cluster.is_some() {
        3
    } else {
        1
    }
}

/// Creates with `create(replicas(js))`. A lone server announcing a cluster name (a site's
/// server with leaf-node links does) refuses more than one replica — nats-server's error
/// 10074, "replicas > 1 not supported in non-clustered mode" — and is then given one: the
/// server, not a guess from its INFO, says whether it is clustered.
async fn create_replicated<T, E, Fut>(
    js: &jetstream::Context,
    mut create: impl FnMut(usize) -> Fut,
) -> Result<T, E>
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let wanted = replicas(js);
    match create(wanted).await {
        Err(e) if wanted > 1 && e.to_string().contains("10074") => {
            tracing::info!(target: "ck::task", replicas = 1, "provision.not-clustered");
            create(1).await
        }
        outcome => outcome,
    }
}

/// The sealed-instance store's configuration for kernel `guid`.
pub fn sealed_store_config(guid: &str, replicas: usize) -> object_store::Config {
    object_store::Config {
        bucket: topics::sealed_store(guid),
        description: Some(format!("ck sealed instances of kernel {guid}")),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Kernel `guid`'s sealed-instance store, created when it does not exist yet.
pub async fn sealed_store(
    js: &jetstream::Context,
    guid: &str,
) -> Result<object_store::ObjectStore, ProvisionError> {
    let name = topics::sealed_store(guid);
    if let Ok(store) = js.get_object_store(&name).await {
        return Ok(store);
    }
    create_replicated(js, |n| js.create_object_store(sealed_store_config(guid, n)))
        .await
        .map_err(|e| ProvisionError {
            guid: guid.to_owned(),
            what: format!("sealed-instance store {name}"),
            why: e.to_string(),
        })
}

/// The task bucket's configuration for kernel `guid`: file storage, one value per key kept with
/// its history of transitions, bounded per value and in total.
pub fn bucket_config(guid: &str) -> kv::Config {
    kv::Config {
        bucket: topics::task_bucket(guid),
        description: format!("ck task lifecycle of kernel {guid}"),
        history: 64,
        max_value_size: MAX_TASK_RECORD as i32,
        max_bytes: MAX_BUCKET_BYTES,
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    }
}

/// The DATA event stream's configuration for kernel `guid` (`name`: the kernel's name, for the
/// description): `ck.{guid}.data.>`, file storage, deduplicated by `Nats-Msg-Id`.
pub fn data_stream_config(guid: &str, name: &str) -> stream::Config {
    stream::Config {
        name: topics::data_event_stream(guid),
        description: Some(format!("DATA loop events of kernel {name}")),
        subjects: vec![topics::loop_namespace(guid, topics::Loop::Data)],
        storage: stream::StorageType::File,
        duplicate_window: DEDUP_WINDOW,
        ..Default::default()
    }
}

/// Why a kernel's JetStream state could not be provisioned.
#[derive(Debug, thiserror::Error)]
#[error("provisioning {what} of kernel {guid}: {why}")]
pub struct ProvisionError {
    /// The kernel.
    pub guid: String,
    /// The bucket or stream.
    pub what: String,
    /// The server's answer.
    pub why: String,
}

/// Kernel `guid`'s task bucket, created with [`bucket_config`] when it does not exist yet (an
/// existing one is left as it is).
pub async fn task_bucket(js: &jetstream::Context, guid: &str) -> Result<kv::Store, ProvisionError> {
    let bucket = topics::task_bucket(guid);
    if let Ok(kv) = js.get_key_value(&bucket).await {
        return Ok(kv);
    }
    create_replicated(js, |n| {
        js.create_key_value(kv::Config {
            num_replicas: n,
            ..bucket_config(guid)
        })
    })
    .await
    .map_err(|e| ProvisionError {
        guid: guid.to_owned(),
        what: format!("task bucket {bucket}"),
        why: e.to_string(),
    })
}

/// Kernel `guid`'s DATA event stream, created with [`data_stream_config`] when it does not
/// exist yet.
pub async fn data_stream(
    js: &jetstream::Context,
    guid: &str,
    name: &str,
) -> Result<stream::Stream, ProvisionError> {
    let stream_name = topics::data_event_stream(guid);
    create_replicated(js, |n| {
        js.get_or_create_stream(stream::Config {
            num_replicas: n,
            ..data_stream_config(guid, name)
        })
    })
    .await
    .map_err(|e| ProvisionError {
        guid: guid.to_owned(),
        what: format!("DATA event stream {stream_name}"),
        why: e.to_string(),
    })
}

/// Creates kernel `guid`'s task bucket and DATA event stream where they do not exist yet (an
/// existing one is left as it is).
pub async fn provision(
    js: &jetstream::Context,
    guid: &str,
    name: &str,
) -> Result<(), ProvisionError> {
    task_bucket(js, guid).await?;
    data_stream(js, guid, name).await?;
    sealed_store(js, guid).await?;
    Ok(())
}

//! Serving from the cluster's control plane (`ck_control`): the host's own connection to it,
//! and a kernel's serving record read back from it — versions from the registry, components
//! from the store (checked by both digests), loaded like versions from the loops.

use std::path::Path;

use ck_control::ControlPlane;
use ck_loops::serving::ServingRecord;

use crate::config::ControlConfig;
use crate::error::{Kinded, ServeError, ServeErrorKind};
use crate::version::{Loader, PreparedVersion};

/// Opens the control plane over a connection of the host's own (its replies on `inbox`
/// when given: a fleet site's own prefix).
pub(crate) async fn open(
    config: &ControlConfig,
    tls_ca: Option<&Path>,
    inbox: Option<String>,
) -> Result<ControlPlane, ServeError> {
    let mut options = async_nats::ConnectOptions::new()
        .name("ck host (control plane)")
        .connection_timeout(std::time::Duration::from_secs(5))
        .retry_on_initial_connect();
    if let Some(prefix) = inbox {
        options = options.custom_inbox_prefix(prefix);
    }
    if let Some((user, password)) = &config.user {
        options = options.user_and_password(user.clone(), password.clone());
    }
    let options = ck_bus::with_tls(options, tls_ca);
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        options.connect(ck_bus::servers(&config.nats).as_slice()),
    )
    .await
    .map_err(|_| {
        ServeError::new(
            ServeErrorKind::Control,
            format!(
                "connecting to the control plane at {}: no server answered within 30 s",
                config.nats
            ),
        )
    })?
    .kinded(ServeErrorKind::Control, || {
        format!("connecting to the control plane at {}", config.nats)
    })?;
    ControlPlane::open(async_nats::jetstream::new(client))
        .await
        .kinded(ServeErrorKind::Control, || {
            format!("opening the control plane at {}", config.nats)
        })
}

/// Reads `record`'s versions back from the cluster and loads them (off the async workers).
pub(crate) async fn load_record(
    control: &ControlPlane,
    loader: &Loader,
    kernel_dir: &Path,
    record: &ServingRecord,
) -> anyhow::Result<(PreparedVersion, Option<(PreparedVersion, u8)>)> {
    let stable = control
        .materialize(kernel_dir, &record.guid, &record.stable)
        .await?;
    let canary = match &record.canary {
        Some(c) => Some((
            control
                .materialize(kernel_dir, &record.guid, &c.pin)
                .await?,
            c.weight,
        )),
        None => None,
    };
    let (loader, dir) = (loader.clone(), kernel_dir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        loader.load_versions(&dir, &stable, canary.as_ref().map(|(v, w)| (v, *w)))
    })
    .await
    .map_err(|e| anyhow::anyhow!("loading panicked: {e}"))?
}

//! Provisioning a kernel's JetStream state before it is admitted: the callout, not the kernel,
//! creates the task bucket and DATA event stream (`ck_task::provision`, the one configuration),
//! over its own connection as the provisioning user (`ck-provision` in the kernels' account:
//! it may only ask for JetStream stream info and stream creation, and read its own replies).
//! Kernel connections get no JetStream administration at all (issue 14 point 4).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream;

/// The NATS user the callout provisions as (a static user of the kernels' account).
pub const PROVISION_USER: &str = "ck-provision";

/// The provisioning connection's private reply prefix (the only subjects it may subscribe to).
pub const PROVISION_INBOX: &str = "_INBOX_ck-provision";

/// How long provisioning may hold a connect: the server waits 2 s for the whole answer.
const PROVISION_BUDGET: Duration = Duration::from_millis(1000);

/// After a failed provisioning, how long the kernel's connects go on without trying again (a
/// server without JetStream must not cost every connect the budget).
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Creates kernels' buckets and streams, once per kernel per process.
pub struct Provisioner {
    js: jetstream::Context,
    /// Per GUID: provisioned (`None`), or the time of the last failure.
    done: Mutex<HashMap<String, Option<Instant>>>,
}

impl Provisioner {
    /// Connects to `url` as the provisioning user with `password` (TLS against `tls_ca` when
    /// given).
    pub async fn connect(
        url: &str,
        password: &str,
        tls_ca: Option<&std::path::Path>,
    ) -> Result<Self, async_nats::ConnectError> {
        let options = async_nats::ConnectOptions::with_user_and_password(
            PROVISION_USER.to_owned(),
            password.to_owned(),
        );
        let client = ck_bus::with_tls(options, tls_ca)
            .name("ck-authz-provision")
            .custom_inbox_prefix(PROVISION_INBOX)
            .connect(ck_bus::servers(url).as_slice())
            .await?;
        Ok(Self {
            js: jetstream::new(client),
            done: Mutex::new(HashMap::new()),
        })
    }

    /// Its JetStream context (the callout's APP-side connection, which also reads the
    /// control plane's published manifests).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The provisioner of a callout deployment: connected when its secrets hold a
    /// provisioning password, `None` (logged `authz.no-provisioning`) for an older directory.
    pub async fn for_secrets(
        url: &str,
        secrets: &crate::setup::CalloutSecrets,
        tls_ca: Option<&std::path::Path>,
    ) -> Result<Option<std::sync::Arc<Self>>, async_nats::ConnectError> {
        match &secrets.provision_password {
            Some(password) => Ok(Some(std::sync::Arc::new(
                Self::connect(url, password, tls_ca).await?,
            ))),
            None => {
                tracing::warn!(target: "ck::authz", "authz.no-provisioning; this callout directory has no provision.password (made by an older `ck authz init`): task kernels' buckets and streams must be created by an operator");
                Ok(None)
            }
        }
    }

    /// Makes sure kernel `guid`'s bucket and stream exist (created with the host's
    /// configuration where missing), within one second. A failure is logged
    /// (`authz.provision-failed`) and tried again at a connect 30 s later; the kernel is
    /// admitted all the same, and its task actions answer 503 naming the bucket until it
    /// exists.
    pub async fn ensure(&self, guid: &str, name: &str) {
        let skip = self.done.lock().is_ok_and(|d| match d.get(guid) {
            Some(None) => true,
            Some(Some(failed)) => failed.elapsed() < RETRY_AFTER,
            None => false,
        });
        if skip {
            return;
        }
        let outcome = tokio::time::timeout(
            PROVISION_BUDGET,
            ck_task::provision::provision(&self.js, guid, name),
        )
        .await;
        let failed = match outcome {
            Ok(Ok(())) => {
                tracing::info!(target: "ck::authz", kernel = %name, guid = %guid, "authz.provisioned");
                None
            }
            Ok(Err(e)) => {
                tracing::error!(target: "ck::authz", kernel = %name, guid = %guid, error = %e, "authz.provision-failed");
                Some(Instant::now())
            }
            Err(_) => {
                tracing::error!(target: "ck::authz", kernel = %name, guid = %guid, error = "no answer from JetStream within 1 s", "authz.provision-failed");
                Some(Instant::now())
            }
        };
        if let Ok(mut done) = self.done.lock() {
            done.insert(guid.to_owned(), failed);
        }
    }
}

//! How a served kernel connects: the credentials it presents (its SPIFFE ID with a JWT-SVID,
//! a `LOCAL.*` name, or none), what the server refuses on its connection (audited), and
//! connecting with backoff while NATS is unreachable.

use std::sync::Arc;
use std::time::Duration;

use ck_bus::{ConnectSpec, CredentialSource, Credentials, CredentialsUnavailable};
use ck_manifest::Kernel;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::access::{CallerRejected, CallerVerifier};
use crate::error::{ServeError, ServeErrorKind};

/// Presents a kernel's SPIFFE ID and current JWT-SVID.
struct SpiffeCredentials {
    client: ck_identity::IdentityClient,
    spiffe_id: String,
    audience: String,
}

impl CredentialSource for SpiffeCredentials {
    fn credentials(&self) -> BoxFuture<'static, Result<Credentials, CredentialsUnavailable>> {
        let (client, id, audience) = (
            self.client.clone(),
            self.spiffe_id.clone(),
            self.audience.clone(),
        );
        Box::pin(async move {
            let svid = client
                .svid(&id, &audience)
                .await
                .map_err(|e| CredentialsUnavailable {
                    identity: id.clone(),
                    source: Box::new(e),
                })?;
            Ok(Credentials {
                user: id,
                password: Some(svid.token),
                renew_at: Some(svid.refresh_at),
            })
        })
    }
}

/// A LOCAL.* kernel's name, without proof.
struct LocalCredentials(String);

impl CredentialSource for LocalCredentials {
    fn credentials(&self) -> BoxFuture<'static, Result<Credentials, CredentialsUnavailable>> {
        let user = self.0.clone();
        Box::pin(async move {
            Ok(Credentials {
                user,
                password: None,
                renew_at: None,
            })
        })
    }
}

/// How `kernel` connects to `url`: with `identity` (a Workload API client) as its SPIFFE ID,
/// as its `LOCAL.*` name when `allow_local`, or without identity when `insecure`.
pub(crate) fn connect_spec(
    url: &str,
    identity: Option<&ck_identity::IdentityClient>,
    allow_local: bool,
    insecure: bool,
    kernel: &Kernel,
) -> Result<ConnectSpec, ServeError> {
    let credentials: Option<Arc<dyn CredentialSource>> =
        if kernel.name.starts_with("LOCAL.") && allow_local {
            Some(Arc::new(LocalCredentials(kernel.name.clone())))
        } else if let Some(client) = identity {
            let Some(spiffe_id) = kernel.spiffe_id() else {
                return Err(ServeError::new(
                    ServeErrorKind::Identity,
                    format!(
                        "{}: {} has no `domain`, so it has no SPIFFE ID to connect as",
                        kernel.manifest_path.display(),
                        kernel.name
                    ),
                ));
            };
            let domain = kernel.domain.clone().unwrap_or_default();
            Some(Arc::new(SpiffeCredentials {
                client: client.clone(),
                spiffe_id,
                audience: ck_identity::nats_audience(&domain),
            }))
        } else if insecure {
            tracing::warn!(kernel = %kernel.name, "connecting without identity (insecure)");
            None
        } else if kernel.name.starts_with("LOCAL.") {
            return Err(ServeError::new(
                ServeErrorKind::Identity,
                format!(
                    "{}: LOCAL kernels connect without SPIFFE only with --allow-local",
                    kernel.name
                ),
            ));
        } else {
            return Err(ServeError::new(
                ServeErrorKind::Identity,
                format!(
                    "{}: kernels connect as their SPIFFE ID; give the Workload API socket with \
                 --spiffe-socket or SPIFFE_ENDPOINT_SOCKET (or --insecure-no-identity for a \
                 nats-server without authentication)",
                    kernel.name
                ),
            ));
        };
    // What the server refuses on this connection goes to the kernel's audit ledger too.
    let dir = kernel.dir().to_path_buf();
    let (name, identity) = (
        kernel.name.clone(),
        kernel.spiffe_id().unwrap_or_else(|| kernel.name.clone()),
    );
    let on_violation: Arc<dyn Fn(String) + Send + Sync> = Arc::new(move |error: String| {
        let subject = error.split('"').nth(1).unwrap_or_default().to_owned();
        let action = if error.contains("Subscription") {
            "subscribe"
        } else {
            "publish"
        };
        let record = ck_audit::AuditRecord::now(
            &identity,
            action,
            ck_audit::Verdict::Deny,
            error,
            "nats-server (seen by ck host)",
        )
        .subject(subject);
        ck_audit::append_detached(dir.clone(), name.clone(), record);
    });
    Ok(ConnectSpec {
        url: url.to_owned(),
        name: format!("ck:{}:{}", kernel.name, kernel.guid),
        inbox_prefix: ck_manifest::topics::inbox_prefix(&kernel.guid),
        credentials,
        on_violation: Some(on_violation),
        renew_now: None,
        tls_ca: None,
    })
}

/// Connects with backoff while NATS is unreachable or refuses (a kernel does not report ready
/// before it is connected), until `shutdown`.
pub async fn retry_connect<F, Fut>(
    shutdown: &CancellationToken,
    url: &str,
    attempt: F,
) -> Result<async_nats::Client, ServeError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<async_nats::Client, async_nats::ConnectError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(client) => return Ok(client),
            Err(e) => {
                tracing::warn!(url, error = %e, retry_in_ms = delay.as_millis() as u64, "nats.unreachable");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Err(ServeError::new(
                        ServeErrorKind::Stopped,
                        format!("stopped before NATS at {url} was reachable"),
                    )),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Verifies callers' bearer JWT-SVIDs against the trust bundles streamed from the Workload
/// API, for the trust domains of the kernels served (which grow as kernels are added).
pub(crate) struct SvidVerifier {
    pub(crate) bundles: ck_identity::TrustBundles,
    pub(crate) trust_domains: std::sync::RwLock<Vec<ck_identity::TrustDomain>>,
}

impl SvidVerifier {
    /// Accepts callers from `kernel`'s trust domain from now on.
    pub(crate) fn admit_domain_of(&self, kernel: &Kernel) -> Result<(), ServeError> {
        let Some(domain) = kernel.domain.as_deref() else {
            return Ok(());
        };
        let td = ck_identity::TrustDomain::new(domain).map_err(|e| {
            ServeError::with_source(
                ServeErrorKind::Identity,
                format!(
                    "{}: trust domain '{domain}'",
                    kernel.manifest_path.display()
                ),
                e,
            )
        })?;
        let mut domains = self
            .trust_domains
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !domains.contains(&td) {
            domains.push(td);
        }
        Ok(())
    }
}

impl CallerVerifier for SvidVerifier {
    fn verify(&self, token: &str, audience: &str) -> Result<String, CallerRejected> {
        let domains = self
            .trust_domains
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ck_identity::verify_bearer(token, audience, &domains, &self.bundles)
            .map(|v| v.spiffe_id.to_string())
            .map_err(|r| CallerRejected(r.to_string()))
    }
}

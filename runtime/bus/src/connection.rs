//! A kernel's NATS connection: its name, its private inbox prefix, the credentials it presents
//! (fetched afresh on every connect and reconnect), and make-before-break rotation so that
//! short-lived credentials never cost a message.
//!
//! nats-server closes a connection when its user JWT expires. Waiting for that would drop what
//! is in flight and leave the input topic without a subscriber for a reconnect. Instead, when
//! the credentials come due, a second connection is opened with fresh ones, the input topic is
//! subscribed on it (queue groups make the two subscriptions share, not duplicate, deliveries),
//! publishing switches to it, and only then the old subscription drains and the old connection
//! closes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::{Client, ConnectOptions};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::serve::{Endpoint, Handler, ServeOptions, ServeReport, serve_signalling};

/// What a connection presents.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The NATS user (a SPIFFE ID, or a `LOCAL.*` kernel name).
    pub user: String,
    /// The password (a JWT-SVID), if any.
    pub password: Option<String>,
    /// When to move to a connection with fresh credentials (`None`: never).
    pub renew_at: Option<SystemTime>,
}

/// Why a kernel's credentials cannot be produced now (the Workload API is down, the SVID was
/// refused, …), with its cause.
#[derive(Debug, thiserror::Error)]
#[error("no credentials for {identity}: {source}")]
pub struct CredentialsUnavailable {
    /// Whose credentials.
    pub identity: String,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Produces the current credentials of one kernel.
pub trait CredentialSource: Send + Sync + 'static {
    /// The credentials to present now.
    fn credentials(&self) -> BoxFuture<'static, Result<Credentials, CredentialsUnavailable>>;
}

/// The servers of a URL list (`nats://a:4222,nats://b:4222`): every connection in `ck` takes
/// several, so a client fails over between the nodes of a cluster (async-nats takes a list,
/// not a comma-separated string).
pub fn servers(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// How to connect as one kernel.
#[derive(Clone)]
pub struct ConnectSpec {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Connection name shown by the server.
    pub name: String,
    /// The kernel's private inbox prefix.
    pub inbox_prefix: String,
    /// Credentials, or none for a server without authentication.
    pub credentials: Option<Arc<dyn CredentialSource>>,
    /// Told of every `Permissions Violation` the server reports on this connection (the server
    /// drops such a publish or subscribe silently as far as the call is concerned).
    pub on_violation: Option<Arc<dyn Fn(String) + Send + Sync>>,
    /// Notified when the connection must be renewed before its credentials come due (the
    /// kernel's permissions changed: only a new connection gets them from the auth callout).
    pub renew_now: Option<Arc<tokio::sync::Notify>>,
    /// The CA that signs the server's certificate: TLS is required and the server verified
    /// against it (a `tls://` URL requires TLS too, against the system's roots).
    pub tls_ca: Option<std::path::PathBuf>,
}

/// TLS for a connection the runtime makes: with a CA file, TLS is required and the server's
/// certificate must chain to that CA (the one rule every `ck` connection uses: kernels, the
/// callout and its provisioner, `ck call`, `ck verify --nats`). Credentials — JWT-SVIDs as
/// passwords — then never cross the network in clear.
pub fn with_tls(options: ConnectOptions, ca: Option<&std::path::Path>) -> ConnectOptions {
    match ca {
        Some(ca) => options
            .add_root_certificates(ca.to_owned())
            .require_tls(true),
        None => options,
    }
}

impl std::fmt::Debug for ConnectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectSpec")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("authenticated", &self.credentials.is_some())
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

/// Connects once as `spec` describes. Every connect and reconnect of the returned client asks
/// the credential source again, so a reconnect never presents an expired token.
pub async fn connect(spec: &ConnectSpec) -> Result<Client, async_nats::ConnectError> {
    let options = match &spec.credentials {
        Some(source) => {
            let source = source.clone();
            ConnectOptions::with_auth_callback(move |_nonce| {
                // The callback's future must be Sync; a spawned task's handle is.
                let fetch = tokio::spawn(source.credentials());
                async move {
                    let credentials = fetch
                        .await
                        .map_err(|e| async_nats::AuthError::new(e.to_string()))?
                        .map_err(|e| async_nats::AuthError::new(e.to_string()))?;
                    let mut auth = async_nats::Auth::new();
                    auth.username = Some(credentials.user);
                    auth.password = credentials.password;
                    Ok(auth)
                }
            })
        }
        None => ConnectOptions::new(),
    };
    let options = with_tls(options, spec.tls_ca.as_deref());
    let name = spec.name.clone();
    let on_violation = spec.on_violation.clone();
    options
        .event_callback(move |event| {
            let (name, on_violation) = (name.clone(), on_violation.clone());
            async move {
                match event {
                    async_nats::Event::ServerError(async_nats::ServerError::Other(e))
                        if e.contains("Permissions Violation") =>
                    {
                        tracing::warn!(connection = %name, error = %e, "nats.permission-violation");
                        if let Some(report) = on_violation {
                            report(e);
                        }
                    }
                    async_nats::Event::Connected | async_nats::Event::Disconnected => {
                        tracing::info!(connection = %name, event = %event, "nats.connection")
                    }
                    other => tracing::warn!(connection = %name, event = %other, "nats.event"),
                }
            }
        })
        .name(spec.name.clone())
        .custom_inbox_prefix(spec.inbox_prefix.clone())
        .connect(servers(&spec.url).as_slice())
        .await
}

/// When the credentials of `spec` come due, if ever.
async fn renew_at(spec: &ConnectSpec) -> Option<SystemTime> {
    match &spec.credentials {
        Some(source) => match source.credentials().await {
            Ok(c) => c.renew_at,
            Err(e) => {
                tracing::warn!(connection = %spec.name, error = %e, retry_in_ms = 1000, "credentials.unavailable");
                Some(SystemTime::now() + Duration::from_secs(1))
            }
        },
        None => None,
    }
}

/// Serves `endpoint` over `client`, moving to a fresh connection (see the module doc) whenever
/// the credentials come due, until `shutdown`. `subscribed` is told once the first
/// subscription is registered; `on_connection` is told of every new connection before the
/// previous one starts draining (so publishes move over first). Every wait observes
/// `shutdown`: with the server or the Workload API gone, stopping is not held up.
#[allow(clippy::too_many_arguments)]
pub async fn serve_rotating<H: Handler>(
    spec: ConnectSpec,
    client: Client,
    endpoint: Endpoint,
    handler: Arc<H>,
    options: ServeOptions,
    shutdown: CancellationToken,
    subscribed: Option<tokio::sync::oneshot::Sender<()>>,
    on_connection: impl Fn(&Client) + Send,
) -> Result<ServeReport, async_nats::SubscribeError> {
    let kernel = endpoint.responder.kernel.clone();
    let start = |client: Client| {
        let token = shutdown.child_token();
        let (tx, subscribed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve_signalling(
            client,
            endpoint.clone(),
            handler.clone(),
            options,
            token.clone(),
            Some(tx),
        ));
        (token, task, subscribed)
    };
    let mut total = ServeReport::default();
    let (mut token, mut task, first) = start(client);
    if let Some(tx) = subscribed {
        tokio::spawn(async move {
            if first.await.is_ok() {
                let _ = tx.send(());
            }
        });
    }
    let mut rotations = 0u64;
    loop {
        let due = tokio::select! {
            _ = shutdown.cancelled() => break,
            due = renew_at(&spec) => due,
        };
        let wait = due.map(|t| t.duration_since(SystemTime::now()).unwrap_or_default());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = async {
                match &spec.renew_now {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let started = std::time::Instant::now();
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => break,
            attempt = connect(&spec) => attempt,
        };
        let fresh = match attempt {
            Ok(c) => c,
            Err(e) => {
                // Keep serving on the old connection (its credentials are still valid until
                // they expire) and try again shortly.
                tracing::warn!(kernel = %kernel, error = %e, retry_in_ms = 1000, "credentials.rotate-failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        on_connection(&fresh);
        let (old_token, old_task) = (token, task);
        let subscribed;
        (token, task, subscribed) = start(fresh);
        // The old subscription drains only once the new one is registered: no gap.
        let _ = subscribed.await;
        old_token.cancel();
        match old_task.await {
            Ok(Ok(report)) => total.answered += report.answered,
            Ok(Err(e)) => tracing::warn!(kernel = %kernel, error = %e, "rotation.old-subscription"),
            Err(e) => tracing::error!(kernel = %kernel, error = %e, "rotation.old-task"),
        }
        rotations += 1;
        tracing::info!(kernel = %kernel, rotation = rotations, switch_ms = started.elapsed().as_secs_f64() * 1e3, "credentials.rotated");
    }
    token.cancel();
    match task.await {
        Ok(Ok(report)) => total.answered += report.answered,
        Ok(Err(e)) => return Err(e),
        Err(e) => tracing::error!(kernel = %kernel, error = %e, "serve.task"),
    }
    Ok(total)
}

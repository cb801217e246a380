//! The dev identity provider: a SPIFFE Workload API on a unix socket that issues JWT-SVIDs
//! signed by a local ES256 key and streams the matching JWT bundle — the protocol SPIRE's agent
//! speaks, so hosts and `ck authz` run the production code path against it.
//!
//! It does not attest workloads: any process that can open the socket (created `0600`, so only
//! the same user) gets any SPIFFE ID in the configured trust domains. That is what a laptop
//! needs and what production must not use.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::ecdsa::SigningKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use spiffe::{SpiffeId, TrustDomain};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::IdentityError;
use crate::workload_api::{
    JwtBundlesRequest, JwtBundlesResponse, JwtSvidMessage, JwtSvidRequest, JwtSvidResponse,
    JwtWorkloadApi, WorkloadApiServer, check_security_header,
};

/// The default SVID lifetime, SPIRE's default for JWT-SVIDs.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// How the provider is set up.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Where signing keys persist (created if missing).
    pub key_dir: PathBuf,
    /// Trust domains it issues SVIDs for.
    pub trust_domains: Vec<TrustDomain>,
    /// Lifetime of every SVID.
    pub ttl: Duration,
}

struct SigningEntry {
    kid: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

/// A running (or ready to run) dev provider.
pub struct DevProvider {
    config: ProviderConfig,
    // Every key stays in the bundle so SVIDs signed before a rotation keep verifying; the last
    // one signs.
    keys: RwLock<Vec<SigningEntry>>,
    bundle: watch::Sender<Vec<u8>>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn entry_for(key: &SigningKey) -> Result<SigningEntry, IdentityError> {
    let point = key.verifying_key().to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return Err(IdentityError::Key(
            "public key has no affine coordinates".into(),
        ));
    };
    let kid = blake3::hash(point.as_bytes()).to_hex()[..16].to_owned();
    let der = key
        .to_pkcs8_der()
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "jwt-svid", "alg": "ES256",
        "x": b64url(x), "y": b64url(y),
    });
    Ok(SigningEntry {
        kid,
        encoding: EncodingKey::from_ec_der(der.as_bytes()),
        jwk,
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DevProvider {
    /// Opens the provider: loads every `jwt-*.pem` key in `config.key_dir`, creating one when
    /// there is none.
    pub fn open(config: ProviderConfig) -> Result<Self, IdentityError> {
        if config.trust_domains.is_empty() {
            return Err(IdentityError::Config(
                "the provider needs at least one trust domain".into(),
            ));
        }
        fs::create_dir_all(&config.key_dir).map_err(|e| io(&config.key_dir, e))?;
        let _ = fs::set_permissions(&config.key_dir, fs::Permissions::from_mode(0o700));
        let mut names: Vec<PathBuf> = fs::read_dir(&config.key_dir)
            .map_err(|e| io(&config.key_dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("jwt-") && n.ends_with(".pem"))
            })
            .collect();
        names.sort();
        let mut keys = Vec::new();
        for path in &names {
            let pem = fs::read_to_string(path).map_err(|e| io(path, e))?;
            let key = SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| IdentityError::Key(format!("{}: {e}", path.display())))?;
            keys.push(entry_for(&key)?);
        }
        let provider = Self {
            bundle: watch::channel(Vec::new()).0,
            keys: RwLock::new(keys),
            config,
        };
        if names.is_empty() {
            provider.rotate()?;
        } else {
            provider.publish_bundle();
        }
        Ok(provider)
    }

    /// Adds a new signing key (persisted first) and makes it the one that signs; older keys stay
    /// in the bundle. Returns the new key id.
    pub fn rotate(&self) -> Result<String, IdentityError> {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let entry = entry_for(&key)?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = self
            .config
            .key_dir
            .join(format!("jwt-{millis:015}-{}.pem", entry.kid));
        write_private(&path, pem.as_bytes())?;
        let kid = entry.kid.clone();
        self.keys.write().map_err(poisoned)?.push(entry);
        self.publish_bundle();
        tracing::info!(target: "ck::identity", kid = %kid, path = %path.display(), "identity.key-rotated");
        Ok(kid)
    }

    fn publish_bundle(&self) {
        let keys: Vec<serde_json::Value> = self
            .keys
            .read()
            .map(|k| k.iter().map(|e| e.jwk.clone()).collect())
            .unwrap_or_default();
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default();
        self.bundle.send_replace(jwks);
    }

    /// The JWKS document every trust domain's bundle carries.
    pub fn jwks(&self) -> Vec<u8> {
        self.bundle.borrow().clone()
    }

    /// The configured SVID lifetime.
    pub fn ttl(&self) -> Duration {
        self.config.ttl
    }

    /// Issues a JWT-SVID for `spiffe_id` with `audience`; the ID must be in a served trust domain.
    pub fn issue(&self, spiffe_id: &str, audience: &[String]) -> Result<String, IdentityError> {
        let id = SpiffeId::new(spiffe_id).map_err(|e| {
            IdentityError::Refused(format!("'{spiffe_id}' is not a SPIFFE ID: {e}"))
        })?;
        if !self.config.trust_domains.contains(id.trust_domain()) {
            return Err(IdentityError::Refused(format!(
                "this provider does not issue SVIDs in trust domain '{}'",
                id.trust_domain()
            )));
        }
        if audience.is_empty() {
            return Err(IdentityError::Refused("an audience is required".into()));
        }
        let now = now_secs();
        let claims = serde_json::json!({
            "sub": spiffe_id,
            "aud": audience,
            "iat": now,
            "exp": now + self.config.ttl.as_secs().max(1),
        });
        let keys = self.keys.read().map_err(poisoned)?;
        let signer = keys
            .last()
            .ok_or_else(|| IdentityError::Key("no signing key".into()))?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(signer.kid.clone());
        jsonwebtoken::encode(&header, &claims, &signer.encoding)
            .map_err(|e| IdentityError::Key(e.to_string()))
    }

    /// Serves the Workload API on the unix socket `socket` until `shutdown` is cancelled.
    pub async fn serve(
        self: Arc<Self>,
        socket: &Path,
        shutdown: CancellationToken,
    ) -> Result<(), IdentityError> {
        let listener = bind_socket(socket)?;
        tracing::info!(target: "ck::identity", socket = %socket.display(), trust_domains = ?self.config.trust_domains.iter().map(|t| t.to_string()).collect::<Vec<_>>(), ttl_s = self.config.ttl.as_secs(), "identity.serving");
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let server = tonic::transport::Server::builder().serve_with_incoming_shutdown(
            WorkloadApiServer::new(self),
            incoming,
            shutdown.clone().cancelled_owned(),
        );
        // Bundle streams stay open for as long as their clients live, so a graceful stop would
        // wait for every client: give them a second, then stop regardless.
        let result = tokio::select! {
            r = server => r.map_err(|e| IdentityError::Serve(e.to_string())),
            _ = async {
                shutdown.cancelled().await;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            } => Ok(()),
        };
        let _ = fs::remove_file(socket);
        tracing::info!(target: "ck::identity", "identity.stopped");
        result
    }
}

#[tonic::async_trait]
impl JwtWorkloadApi for DevProvider {
    async fn fetch_jwt_svid(
        &self,
        request: Request<JwtSvidRequest>,
    ) -> Result<Response<JwtSvidResponse>, Status> {
        check_security_header(&request)?;
        let request = request.into_inner();
        if request.spiffe_id.is_empty() {
            return Err(Status::invalid_argument(
                "ck's provider has no default identity: ask for a SPIFFE ID",
            ));
        }
        match self.issue(&request.spiffe_id, &request.audience) {
            Ok(svid) => {
                tracing::debug!(target: "ck::identity", spiffe_id = %request.spiffe_id, audience = ?request.audience, "identity.issued");
                Ok(Response::new(JwtSvidResponse {
                    svids: vec![JwtSvidMessage {
                        spiffe_id: request.spiffe_id,
                        svid,
                        hint: String::new(),
                    }],
                }))
            }
            Err(IdentityError::Refused(why)) => {
                tracing::warn!(target: "ck::identity", spiffe_id = %request.spiffe_id, reason = %why, "identity.refused");
                Err(Status::permission_denied(why))
            }
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<BoxStream<JwtBundlesResponse>>, Status> {
        check_security_header(&request)?;
        let domains: Vec<String> = self
            .config
            .trust_domains
            .iter()
            .map(|t| t.id_string())
            .collect();
        // The current bundle at once, then one message per rotation; the stream stays open
        // (a closed stream makes clients reconnect).
        let stream = futures::stream::unfold(
            (self.bundle.subscribe(), domains, true),
            |(mut rx, domains, first)| async move {
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let jwks = rx.borrow_and_update().clone();
                let bundles = domains.iter().map(|d| (d.clone(), jwks.clone())).collect();
                Some((Ok(JwtBundlesResponse { bundles }), (rx, domains, false)))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

fn bind_socket(socket: &Path) -> Result<tokio::net::UnixListener, IdentityError> {
    if let Some(dir) = socket.parent() {
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    if socket.exists() {
        // A socket nobody answers on is left over from a crash; a live one is another provider.
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(IdentityError::Config(format!(
                "{} is in use by a running provider",
                socket.display()
            )));
        }
        fs::remove_file(socket).map_err(|e| io(socket, e))?;
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(|e| io(socket, e))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600)).map_err(|e| io(socket, e))?;
    Ok(listener)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    ck_fs::write_atomic_private(path, bytes).map_err(|e| io(path, e))
}

fn io(path: &Path, e: std::io::Error) -> IdentityError {
    IdentityError::Io(format!("{}: {e}", path.display()))
}

fn poisoned<T>(_: T) -> IdentityError {
    IdentityError::Key("key store lock poisoned".into())
}

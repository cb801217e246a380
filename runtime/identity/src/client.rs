//! Fetching JWT-SVIDs from a Workload API (SPIRE's agent or `ck identity serve`), cached and
//! refreshed at half-life.
//!
//! Many kernels in one host start together; their SVIDs would all come due at the same instant
//! and hit the agent together. Each cached SVID therefore comes due at a point spread between
//! 40 % and 50 % of its lifetime (derived from its SPIFFE ID, so it is stable and needs no
//! randomness), and one fetch per identity is in flight at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use spiffe::{SpiffeId, WorkloadApiClient};

use crate::IdentityError;

/// A JWT-SVID as issued.
#[derive(Clone, Debug)]
pub struct Svid {
    /// The encoded token (what a NATS connection presents as its password).
    pub token: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// When it stops being valid.
    pub expires_at: SystemTime,
    /// When it was fetched.
    pub fetched_at: SystemTime,
    /// When this cache fetches a new one.
    pub refresh_at: SystemTime,
}

impl Svid {
    /// Whether it is still valid at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Svid>>>;

/// A Workload API client with an SVID cache. Cheap to clone.
#[derive(Clone)]
pub struct IdentityClient {
    endpoint: String,
    client: WorkloadApiClient,
    slots: Arc<Mutex<HashMap<(String, String), Slot>>>,
}

impl std::fmt::Debug for IdentityClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityClient")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// `unix:/path` for a socket path given bare; other forms are passed through.
pub fn endpoint_for(socket: &str) -> String {
    if socket.starts_with('/') {
        format!("unix:{socket}")
    } else {
        socket.to_owned()
    }
}

/// The fraction of its lifetime after which an SVID is refreshed: 0.40–0.50, stable per ID.
fn refresh_fraction(spiffe_id: &str) -> f64 {
    let spread = blake3::hash(spiffe_id.as_bytes()).as_bytes()[0] as f64 / 255.0;
    0.40 + 0.10 * spread
}

impl IdentityClient {
    /// Connects to the Workload API at `endpoint` (`unix:/path`, `unix:///path` or a bare
    /// absolute socket path).
    pub async fn connect(endpoint: &str) -> Result<Self, IdentityError> {
        let endpoint = endpoint_for(endpoint);
        let client = WorkloadApiClient::connect_to(&endpoint)
            .await
            .map_err(|e| IdentityError::WorkloadApi(format!("{endpoint}: {e}")))?;
        Ok(Self {
            endpoint,
            client,
            slots: Arc::default(),
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The current SVID for `spiffe_id` with `audience`: the cached one until its refresh
    /// point, a fresh one after. When the agent is unreachable, a cached SVID that is still valid
    /// is returned (with a warning) rather than failing the caller.
    pub async fn svid(&self, spiffe_id: &str, audience: &str) -> Result<Svid, IdentityError> {
        let slot = {
            let mut slots = self
                .slots
                .lock()
                .map_err(|_| IdentityError::WorkloadApi("SVID cache lock poisoned".into()))?;
            slots
                .entry((spiffe_id.to_owned(), audience.to_owned()))
                .or_default()
                .clone()
        };
        // One fetch per identity at a time: concurrent callers wait and share its result.
        let mut cached = slot.lock().await;
        let now = SystemTime::now();
        if let Some(svid) = cached.as_ref()
            && now < svid.refresh_at
        {
            return Ok(svid.clone());
        }
        match self.fetch(spiffe_id, audience).await {
            Ok(svid) => {
                *cached = Some(svid.clone());
                Ok(svid)
            }
            Err(e) => match cached.as_ref() {
                Some(svid) if svid.valid_at(now) => {
                    tracing::warn!(target: "ck::identity", spiffe_id, error = %e, "identity.refresh-failed; using the cached SVID until it expires");
                    Ok(svid.clone())
                }
                _ => Err(e),
            },
        }
    }

    /// Fetches a new SVID, bypassing the cache.
    pub async fn fetch(&self, spiffe_id: &str, audience: &str) -> Result<Svid, IdentityError> {
        let id = SpiffeId::new(spiffe_id).map_err(|e| {
            IdentityError::Refused(format!("'{spiffe_id}' is not a SPIFFE ID: {e}"))
        })?;
        let svid = self
            .client
            .fetch_jwt_svid(&[audience], Some(&id))
            .await
            .map_err(|e| {
                IdentityError::WorkloadApi(format!(
                    "fetching a JWT-SVID for {spiffe_id} from {}: {e}",
                    self.endpoint
                ))
            })?;
        let fetched_at = SystemTime::now();
        let expires_at = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(svid.claims().exp()).unwrap_or(0));
        let lifetime = expires_at
            .duration_since(fetched_at)
            .unwrap_or(Duration::ZERO);
        let refresh_at = fetched_at + lifetime.mul_f64(refresh_fraction(spiffe_id));
        tracing::debug!(target: "ck::identity", spiffe_id, lifetime_s = lifetime.as_secs(), "identity.svid-fetched");
        Ok(Svid {
            token: svid.token().to_owned(),
            spiffe_id: spiffe_id.to_owned(),
            expires_at,
            fetched_at,
            refresh_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_points_spread_between_40_and_50_percent() {
        let fractions: Vec<f64> = (0..200)
            .map(|i| refresh_fraction(&format!("spiffe://t/ck/K/{i}")))
            .collect();
        assert!(fractions.iter().all(|f| (0.40..=0.50).contains(f)));
        let distinct: std::collections::BTreeSet<u64> =
            fractions.iter().map(|f| (f * 1000.0) as u64).collect();
        assert!(
            distinct.len() > 50,
            "refresh points must spread: {distinct:?}"
        );
    }

    #[test]
    fn bare_socket_paths_become_unix_endpoints() {
        assert_eq!(endpoint_for("/run/agent.sock"), "unix:/run/agent.sock");
        assert_eq!(endpoint_for("unix:///a.sock"), "unix:///a.sock");
    }
}

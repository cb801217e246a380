//! SPIFFE identities for kernels.
//!
//! Owns: fetching and caching JWT-SVIDs from a SPIFFE Workload API ([`IdentityClient`]),
//! verifying a presented JWT-SVID against trust bundles ([`verify_svid`]), and the dev identity
//! provider ([`DevProvider`]) that serves the same Workload API on a unix socket.
//!
//! Does not touch NATS, manifests or permissions: which kernel an identity belongs to and what
//! it may do is decided by `ck-authz` and `ck-acl`.

mod client;
mod provider;
mod verify;
pub mod workload_api;

pub use client::{IdentityClient, Svid, endpoint_for};
pub use provider::{DEFAULT_TTL, DevProvider, ProviderConfig};
pub use spiffe::{JwtSource, SpiffeId, TrustDomain};
pub use verify::{
    Rejection, VerifiedSvid, nats_audience, verify_bearer, verify_bearer_at, verify_svid,
};

use thiserror::Error;

/// The environment variable naming the Workload API socket (SPIFFE standard).
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// What went wrong obtaining or issuing an identity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    /// The Workload API could not be reached or refused the call.
    #[error("workload API: {0}")]
    WorkloadApi(String),
    /// The provider refuses to issue this identity.
    #[error("refused: {0}")]
    Refused(String),
    /// A signing key could not be created, read or used.
    #[error("signing key: {0}")]
    Key(String),
    /// A file or socket operation failed.
    #[error("{0}")]
    Io(String),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The server stopped with an error.
    #[error("serving the workload API: {0}")]
    Serve(String),
}

/// A bundle source that follows the Workload API's bundle stream (rotations included).
pub async fn bundle_source(endpoint: &str) -> Result<JwtSource, IdentityError> {
    let endpoint = endpoint_for(endpoint);
    JwtSource::builder()
        .endpoint(&endpoint)
        .initial_sync_timeout(std::time::Duration::from_secs(10))
        .build()
        .await
        .map_err(|e| IdentityError::WorkloadApi(format!("JWT bundles from {endpoint}: {e}")))
}

/// Where JWT bundles come from when verifying SVIDs: a live Workload API stream, or a fixed set
/// (for offline checks and tests).
pub enum TrustBundles {
    /// Follows the Workload API's bundle stream (rotations included).
    Live(JwtSource),
    /// A fixed set.
    Fixed(spiffe::JwtBundleSet),
}

/// A bundle source failed.
#[derive(Debug, Clone, Error)]
#[error("trust bundles unavailable: {0}")]
pub struct BundleError(String);

impl spiffe::BundleSource for TrustBundles {
    type Item = spiffe::JwtBundle;
    type Error = BundleError;

    fn bundle_for_trust_domain(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<std::sync::Arc<spiffe::JwtBundle>>, BundleError> {
        match self {
            Self::Live(source) => source
                .bundle_for_trust_domain(trust_domain)
                .map_err(|e| BundleError(e.to_string())),
            Self::Fixed(set) => Ok(set.get(trust_domain)),
        }
    }
}

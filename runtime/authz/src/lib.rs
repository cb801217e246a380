//! `ck authz`: the NATS auth callout (nats-server ≥ 2.10 `authorization { auth_callout }`).
//!
//! Owns: decoding and verifying authorization requests, deciding them (JWT-SVID verification
//! through `ck-identity`, kernel lookup in a manifest [`Registry`], permissions from the same
//! `ck-acl` compiler the host uses), encoding the signed user JWT and response, and serving the
//! callout subject in a queue group. Denies are logged and appended to the claimed kernel's
//! audit ledger; grants marked `audit: true` leave an allow line in the grantor's ledger.
//!
//! It also provisions each admitted task kernel's JetStream bucket and stream ([`Provisioner`]),
//! so that kernel connections need no JetStream administration.
//!
//! Does not run kernels or hold kernel connections; does not issue SVIDs.

mod callout;
mod cluster;
pub mod natsjwt;
mod provision;
mod registry;
mod service;
pub mod setup;

pub use callout::{
    Authorizer, AuthorizerConfig, CALLOUT_SUBJECT, CalloutRequest, Decision, permissions_json,
};
pub use provision::{PROVISION_INBOX, PROVISION_USER, Provisioner};
pub use registry::Registry;
pub use service::{QUEUE_GROUP, serve};

use thiserror::Error;

/// Why a request could not be handled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthzError {
    /// A JWT could not be encoded, decoded or verified.
    #[error("JWT: {0}")]
    Jwt(String),
    /// The authorization request is unusable.
    #[error("authorization request: {0}")]
    Request(String),
    /// Permissions could not be expressed safely.
    #[error("permissions: {0}")]
    Acl(String),
}

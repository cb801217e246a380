//! Verifying a presented JWT-SVID offline against JWT bundles, with a reason for every refusal.

use std::time::{Duration, SystemTime};

use spiffe::{
    BundleSource, JwtBundle, JwtSvid, JwtSvidError, JwtVerificationErrorKind, SpiffeId, TrustDomain,
};
use thiserror::Error;

/// The NATS audience kernels of `domain` present their SVIDs for (ckp-spec §6).
pub fn nats_audience(trust_domain: &str) -> String {
    format!("nats.{trust_domain}")
}

/// A JWT-SVID that verified.
#[derive(Debug, Clone)]
pub struct VerifiedSvid {
    /// The SPIFFE ID it proves.
    pub spiffe_id: SpiffeId,
    /// When it expires.
    pub expires_at: SystemTime,
}

/// Why a presented SVID is refused. The message is what `ck authz` logs and audits.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    /// The claimed user is not a SPIFFE ID.
    #[error("claimed user '{0}' is not a SPIFFE ID")]
    NotASpiffeId(String),
    /// The claimed identity is outside the accepted trust domains.
    #[error("trust domain '{0}' is not accepted here")]
    ForeignTrustDomain(String),
    /// No token was presented.
    #[error("no JWT-SVID presented (the connection password must carry it)")]
    Missing,
    /// Not a well-formed JWT-SVID.
    #[error("malformed JWT-SVID: {0}")]
    Malformed(String),
    /// No bundle for the token's trust domain.
    #[error("no JWT bundle for trust domain '{0}'")]
    NoBundle(String),
    /// Signed by a key the bundle does not hold.
    #[error("signing key '{0}' is not in the trust bundle")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("signature does not verify against the trust bundle (forged or altered token)")]
    BadSignature,
    /// Past `exp`.
    #[error("JWT-SVID expired")]
    Expired,
    /// Not yet valid.
    #[error("JWT-SVID not yet valid (nbf)")]
    NotYetValid,
    /// `aud` does not contain the expected audience.
    #[error("JWT-SVID audience does not include '{0}'")]
    WrongAudience(String),
    /// The token proves a different SPIFFE ID than the one claimed.
    #[error("JWT-SVID subject '{proven}' differs from the claimed user '{claimed}'")]
    SubjectMismatch {
        /// The `sub` of the token.
        proven: String,
        /// The user the connection claimed.
        claimed: String,
    },
    /// Anything else the validator refused.
    #[error("JWT-SVID refused: {0}")]
    Other(String),
}

/// Verifies `token` as proof that the caller is `claimed` (a SPIFFE ID in one of
/// `trust_domains`), for the NATS audience of its trust domain, against `bundles`.
pub fn verify_svid<B>(
    token: &str,
    claimed: &str,
    trust_domains: &[TrustDomain],
    bundles: &B,
) -> Result<VerifiedSvid, Rejection>
where
    B: BundleSource<Item = JwtBundle>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let claimed_id =
        SpiffeId::new(claimed).map_err(|_| Rejection::NotASpiffeId(claimed.to_owned()))?;
    if !trust_domains.contains(claimed_id.trust_domain()) {
        return Err(Rejection::ForeignTrustDomain(
            claimed_id.trust_domain_name().to_owned(),
        ));
    }
    let audience = nats_audience(claimed_id.trust_domain_name());
    let verified = verify_bearer(token, &audience, trust_domains, bundles)?;
    if verified.spiffe_id != claimed_id {
        return Err(Rejection::SubjectMismatch {
            proven: verified.spiffe_id.to_string(),
            claimed: claimed.to_owned(),
        });
    }
    Ok(verified)
}

/// Verifies `token` as a JWT-SVID addressed to `audience` (for a call to a kernel: that kernel's
/// SPIFFE ID, so the token cannot be replayed to NATS or to another kernel), issued in one of
/// `trust_domains`; returns who it proves.
pub fn verify_bearer<B>(
    token: &str,
    audience: &str,
    trust_domains: &[TrustDomain],
    bundles: &B,
) -> Result<VerifiedSvid, Rejection>
where
    B: BundleSource<Item = JwtBundle>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if token.is_empty() {
        return Err(Rejection::Missing);
    }
    let audience = audience.to_owned();
    let svid = JwtSvid::parse_and_validate(token, bundles, std::slice::from_ref(&audience))
        .map_err(|e| classify(e, &audience))?;
    // The bundle lookup is keyed by the token's own trust domain; a token from a domain we do
    // not accept must not pass just because a bundle for it happens to be loaded.
    if !trust_domains.contains(svid.spiffe_id().trust_domain()) {
        return Err(Rejection::ForeignTrustDomain(
            svid.spiffe_id().trust_domain_name().to_owned(),
        ));
    }
    Ok(VerifiedSvid {
        spiffe_id: svid.spiffe_id().clone(),
        expires_at: SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(svid.claims().exp()).unwrap_or(0)),
    })
}

fn classify(error: JwtSvidError, audience: &str) -> Rejection {
    match error {
        JwtSvidError::BundleNotFound(td) => Rejection::NoBundle(td.to_string()),
        JwtSvidError::AuthorityNotFound(kid) => Rejection::UnknownKey(kid),
        JwtSvidError::InvalidAudience(..) => Rejection::WrongAudience(audience.to_owned()),
        JwtSvidError::InvalidToken(e) => match e.kind() {
            JwtVerificationErrorKind::Expired => Rejection::Expired,
            JwtVerificationErrorKind::NotYetValid => Rejection::NotYetValid,
            JwtVerificationErrorKind::AudienceMismatch => {
                Rejection::WrongAudience(audience.to_owned())
            }
            JwtVerificationErrorKind::InvalidSignature => Rejection::BadSignature,
            _ => Rejection::Other(format!("{e}")),
        },
        e @ (JwtSvidError::InvalidJwtFormat
        | JwtSvidError::InvalidBase64
        | JwtSvidError::InvalidJson(_)
        | JwtSvidError::MissingKeyId
        | JwtSvidError::InvalidTyp
        | JwtSvidError::InvalidExpiration
        | JwtSvidError::InvalidSubject(_)
        | JwtSvidError::UnsupportedAlgorithm) => Rejection::Malformed(e.to_string()),
        e => Rejection::Other(e.to_string()),
    }
}

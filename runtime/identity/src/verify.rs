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

/// Verifies `token` as [`verify_bearer`] does, except that it must have been valid at `at`
/// rather than now: for a request a server stored at `at` (a JetStream message's timestamp,
/// set by the server, not by the sender) and handed on later, for example to a site that was
/// cut off for longer than an SVID lives. A token valid now passes as [`verify_bearer`]; an
/// expired one passes only when its signature verifies against the bundle and
/// `nbf <= at < exp`.
pub fn verify_bearer_at<B>(
    token: &str,
    audience: &str,
    trust_domains: &[TrustDomain],
    bundles: &B,
    at: SystemTime,
) -> Result<VerifiedSvid, Rejection>
where
    B: BundleSource<Item = JwtBundle>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match verify_bearer(token, audience, trust_domains, bundles) {
        Err(Rejection::Expired) => verify_expired_at(token, audience, trust_domains, bundles, at),
        other => other,
    }
}

/// The signature algorithms a JWT-SVID may use (SPIFFE JWT-SVID §3: RSA and ECDSA, never
/// HMAC or `none`).
const SVID_ALGORITHMS: [jsonwebtoken::Algorithm; 7] = [
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::RS384,
    jsonwebtoken::Algorithm::RS512,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::ES384,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::PS384,
];

/// The check of an SVID that is expired now against the time `at`. spiffe's validator reads
/// its clock privately, so this path verifies the signature itself with `jsonwebtoken` (the
/// backend spiffe uses) against the key the bundle holds for the token's `kid`, and compares
/// the times itself.
fn verify_expired_at<B>(
    token: &str,
    audience: &str,
    trust_domains: &[TrustDomain],
    bundles: &B,
    at: SystemTime,
) -> Result<VerifiedSvid, Rejection>
where
    B: BundleSource<Item = JwtBundle>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let untrusted = JwtSvid::parse_insecure(token).map_err(|e| classify(e, audience))?;
    let domain = untrusted.spiffe_id().trust_domain();
    if !trust_domains.contains(domain) {
        return Err(Rejection::ForeignTrustDomain(
            untrusted.spiffe_id().trust_domain_name().to_owned(),
        ));
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| Rejection::Malformed(e.to_string()))?;
    if !SVID_ALGORITHMS.contains(&header.alg) {
        return Err(Rejection::Malformed(format!(
            "algorithm {:?} is not one a JWT-SVID may use",
            header.alg
        )));
    }
    let bundle = bundles
        .bundle_for_trust_domain(domain)
        .map_err(|e| Rejection::Other(e.to_string()))?
        .ok_or_else(|| Rejection::NoBundle(domain.to_string()))?;
    let authority = bundle
        .find_jwt_authority(untrusted.key_id())
        .ok_or_else(|| Rejection::UnknownKey(untrusted.key_id().to_owned()))?;
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_slice(authority.jwk_json())
        .map_err(|e| Rejection::Other(format!("the bundle's key: {e}")))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)
        .map_err(|e| Rejection::Other(format!("the bundle's key: {e}")))?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => Rejection::BadSignature,
            jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                Rejection::WrongAudience(audience.to_owned())
            }
            _ => Rejection::Other(e.to_string()),
        })?
        .claims;
    let at_s = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| Rejection::Other("the time to check at precedes 1970".into()))?
        .as_secs_f64();
    let exp = claims["exp"]
        .as_f64()
        .ok_or_else(|| Rejection::Malformed("`exp` is not a number".into()))?;
    if at_s >= exp {
        return Err(Rejection::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf
            .as_f64()
            .ok_or_else(|| Rejection::Malformed("`nbf` is not a number".into()))?;
        if at_s < nbf {
            return Err(Rejection::NotYetValid);
        }
    }
    Ok(VerifiedSvid {
        spiffe_id: untrusted.spiffe_id().clone(),
        expires_at: SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(untrusted.claims().exp()).unwrap_or(0)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DevProvider, ProviderConfig};
    use spiffe::JwtBundleSet;

    const AUDIENCE: &str = "ck-install:ct-fac";

    /// A provider issuing one-second SVIDs in ck.local, and its bundle set.
    fn provider(dir: &std::path::Path) -> (DevProvider, JwtBundleSet, Vec<TrustDomain>) {
        let domain = TrustDomain::new("ck.local").unwrap();
        let provider = DevProvider::open(ProviderConfig {
            key_dir: dir.to_path_buf(),
            trust_domains: vec![domain.clone()],
            ttl: Duration::from_secs(1),
        })
        .unwrap();
        let bundle = JwtBundle::from_jwt_authorities(domain.clone(), &provider.jwks()).unwrap();
        let mut set = JwtBundleSet::new();
        set.add_bundle(bundle);
        (provider, set, vec![domain])
    }

    #[test]
    fn an_expired_svid_verifies_only_at_a_time_it_was_valid() {
        let dir = tempfile::tempdir().unwrap();
        let (provider, bundles, domains) = provider(dir.path());
        let issued = SystemTime::now();
        let token = provider
            .issue("spiffe://ck.local/operator/alice", &[AUDIENCE.to_owned()])
            .unwrap();
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(
            verify_bearer(&token, AUDIENCE, &domains, &bundles).unwrap_err(),
            Rejection::Expired
        );
        let verified = verify_bearer_at(&token, AUDIENCE, &domains, &bundles, issued).unwrap();
        assert_eq!(
            verified.spiffe_id.to_string(),
            "spiffe://ck.local/operator/alice"
        );
        // Stored after it expired: refused.
        assert_eq!(
            verify_bearer_at(&token, AUDIENCE, &domains, &bundles, SystemTime::now()).unwrap_err(),
            Rejection::Expired
        );
        // Addressed elsewhere: refused, also at a time it was valid.
        assert_eq!(
            verify_bearer_at(&token, "ck-install:other", &domains, &bundles, issued).unwrap_err(),
            Rejection::WrongAudience("ck-install:other".into())
        );
        // Altered claims keep the signature of the original: refused.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value =
            serde_json::from_slice(&engine.decode(&parts[1]).unwrap()).unwrap();
        claims["sub"] = "spiffe://ck.local/operator/mallory".into();
        parts[1] = engine.encode(claims.to_string());
        let forged = parts.join(".");
        assert_eq!(
            verify_bearer_at(&forged, AUDIENCE, &domains, &bundles, issued).unwrap_err(),
            Rejection::BadSignature
        );
        // A domain not accepted here: refused before any key is looked at.
        let other = [TrustDomain::new("example.org").unwrap()];
        assert!(matches!(
            verify_bearer_at(&token, AUDIENCE, &other, &bundles, issued).unwrap_err(),
            Rejection::ForeignTrustDomain(_)
        ));
    }
}

//! NATS JWTs (nats-io/jwt v2) encoded and verified by hand: no Rust crate encodes them.
//! `header.claims.signature`, base64url without padding, ed25519 over `header.claims` with the
//! issuer's nkey; the issuer's public key is the `iss` claim.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Map, Value};

use crate::AuthzError;

const HEADER: &[u8] = br#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs `claims` (an object) as `signer`, setting `iss`, `iat` and a `jti`.
pub fn encode(mut claims: Map<String, Value>, signer: &KeyPair) -> Result<String, AuthzError> {
    claims.insert("iss".into(), Value::from(signer.public_key()));
    claims.insert("iat".into(), Value::from(unix_now()));
    claims.remove("jti");
    // The server never checks `jti`; it only has to be unique per token.
    let body = serde_json::to_vec(&claims).map_err(|e| AuthzError::Jwt(e.to_string()))?;
    let jti = blake3::hash(&body).to_hex()[..32].to_uppercase();
    claims.insert("jti".into(), Value::from(jti));
    let body = serde_json::to_vec(&claims).map_err(|e| AuthzError::Jwt(e.to_string()))?;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(body)
    );
    let signature = signer
        .sign(input.as_bytes())
        .map_err(|e| AuthzError::Jwt(e.to_string()))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// Decodes `token` and verifies its signature against its own `iss`; returns the claims.
pub fn decode_verified(token: &str) -> Result<Map<String, Value>, AuthzError> {
    let bad = |why: &str| AuthzError::Jwt(why.to_owned());
    let mut parts = token.trim().split('.');
    let (Some(header), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected three dot-separated parts"));
    };
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| bad("header is not base64url"))?,
    )
    .map_err(|_| bad("header is not JSON"))?;
    if !matches!(header["alg"].as_str(), Some("ed25519-nkey" | "ed25519")) {
        return Err(bad("alg must be ed25519-nkey"));
    }
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad("claims are not base64url"))?,
    )
    .map_err(|_| bad("claims are not JSON"))?;
    let Value::Object(claims) = claims else {
        return Err(bad("claims are not an object"));
    };
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no iss"))?;
    let key = KeyPair::from_public_key(issuer).map_err(|_| bad("iss is not an nkey"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| bad("signature is not base64url"))?;
    let signed = token.trim().rsplit_once('.').map_or("", |(input, _)| input);
    key.verify(signed.as_bytes(), &signature)
        .map_err(|_| bad("signature does not verify"))?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = KeyPair::new_account();
        let mut claims = Map::new();
        claims.insert("sub".into(), "UABC".into());
        let token = encode(claims, &key).unwrap();
        let back = decode_verified(&token).unwrap();
        assert_eq!(back["sub"], "UABC");
        assert_eq!(back["iss"], key.public_key().as_str());
        // Altering the claims breaks the signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut forged = back.clone();
        forged.insert("sub".into(), "UEVIL".into());
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert!(decode_verified(&parts.join(".")).is_err());
    }
}

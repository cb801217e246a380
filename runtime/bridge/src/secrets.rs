//! A subscription's delivery secrets, read from where its contract says (`auth.secretRef`:
//! `env:NAME` or `file:PATH`), never from the contract itself.

use base64::Engine;

/// Why a secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The reference names nothing readable.
    #[error("secretRef `{reference}`: {why}")]
    Unreadable {
        /// The reference.
        reference: String,
        /// Why.
        why: String,
    },
    /// A Standard Webhooks secret that is not `whsec_` + base64 of 24–64 bytes.
    #[error(
        "secretRef `{reference}`: secret {index} is not whsec_ followed by base64 of 24–64 random bytes"
    )]
    BadSigningSecret {
        /// The reference.
        reference: String,
        /// Which (0-based) of the space-separated secrets.
        index: usize,
    },
    /// A bearer token that is empty or holds whitespace.
    #[error("secretRef `{reference}`: a bearer token must be one non-empty word")]
    BadToken {
        /// The reference.
        reference: String,
    },
}

/// Reads the text a `secretRef` names.
pub fn read(reference: &str) -> Result<String, SecretError> {
    let unreadable = |why: String| SecretError::Unreadable {
        reference: reference.to_owned(),
        why,
    };
    if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name).map_err(|e| unreadable(format!("environment variable {name}: {e}")))
    } else if let Some(path) = reference.strip_prefix("file:") {
        std::fs::read_to_string(path).map_err(|e| unreadable(format!("{path}: {e}")))
    } else {
        Err(unreadable("must start with env: or file:".into()))
    }
}

/// The signing keys in `text`: one or more `whsec_…` secrets separated by whitespace (several
/// while a key is rotated: every delivery is signed with each).
pub fn signing_keys(reference: &str, text: &str) -> Result<Vec<Vec<u8>>, SecretError> {
    let keys: Vec<Vec<u8>> = text
        .split_whitespace()
        .enumerate()
        .map(|(index, secret)| {
            secret
                .strip_prefix("whsec_")
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                .filter(|key| (24..=64).contains(&key.len()))
                .ok_or_else(|| SecretError::BadSigningSecret {
                    reference: reference.to_owned(),
                    index,
                })
        })
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err(SecretError::BadSigningSecret {
            reference: reference.to_owned(),
            index: 0,
        });
    }
    Ok(keys)
}

/// The bearer token in `text` (surrounding whitespace dropped).
pub fn bearer_token(reference: &str, text: &str) -> Result<String, SecretError> {
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(SecretError::BadToken {
            reference: reference.to_owned(),
        });
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_secrets_are_whsec_base64_of_24_to_64_bytes_and_may_be_several() {
        let one = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        );
        let two = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([9u8; 24])
        );
        let keys = signing_keys("env:X", &format!(" {one}\n{two} ")).unwrap();
        assert_eq!(keys, vec![vec![7u8; 32], vec![9u8; 24]]);
        let short = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([1u8; 8])
        );
        for bad in ["", "secret", "whsec_!!", short.as_str()] {
            assert!(signing_keys("env:X", bad).is_err(), "{bad}");
        }
        assert_eq!(bearer_token("env:T", " abc\n").unwrap(), "abc");
        assert!(bearer_token("env:T", "a b").is_err());
        assert!(read("vault:x").is_err());
        assert!(read("env:CK_BRIDGE_TEST_SURELY_UNSET").is_err());
    }
}

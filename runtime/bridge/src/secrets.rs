//! A subscription's delivery secrets, read from where its contract says (`auth.secretRef`:
//! `env:NAME` or `file:PATH`), never from the contract itself, and only inside the
//! [`SecretScope`] the operator set.

use std::io::Read;
use std::path::PathBuf;

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
    /// The reference points outside what the operator lets contracts name.
    #[error("secretRef `{reference}` refused: {why}")]
    OutOfScope {
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

/// Where contracts may point their secrets: the operator's choice, not the team's. A contract
/// is written by a team, and a `secretRef` it could aim anywhere would let it have the
/// bridge send any of the bridge's own secrets (an environment variable, a key file) to the
/// team's sink. With neither field set every `secretRef` is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretScope {
    /// `file:` references must lie inside this directory (relative ones are taken from it).
    pub root: Option<PathBuf>,
    /// `env:` references must name variables starting with this prefix.
    pub env_prefix: Option<String>,
}

/// The most bytes a secret file may hold.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

impl SecretScope {
    /// Reads the text `reference` names, if the scope lets contracts name it.
    pub fn read(&self, reference: &str) -> Result<String, SecretError> {
        let unreadable = |why: String| SecretError::Unreadable {
            reference: reference.to_owned(),
            why,
        };
        let out_of_scope = |why: String| SecretError::OutOfScope {
            reference: reference.to_owned(),
            why,
        };
        if let Some(name) = reference.strip_prefix("env:") {
            match &self.env_prefix {
                Some(prefix) if name.starts_with(prefix.as_str()) && name.len() > prefix.len() => {
                    std::env::var(name)
                        .map_err(|e| unreadable(format!("environment variable {name}: {e}")))
                }
                Some(prefix) => Err(out_of_scope(format!(
                    "the bridge reads only environment variables starting with {prefix} (--secret-env-prefix)"
                ))),
                None => Err(out_of_scope(
                    "the bridge reads no environment variable for contracts (set --secret-env-prefix)".into(),
                )),
            }
        } else if let Some(path) = reference.strip_prefix("file:") {
            let Some(root) = &self.root else {
                return Err(out_of_scope(
                    "the bridge reads no secret file for contracts (set --secret-root)".into(),
                ));
            };
            let root = root
                .canonicalize()
                .map_err(|e| unreadable(format!("secret root {}: {e}", root.display())))?;
            let file = root
                .join(path)
                .canonicalize()
                .map_err(|e| unreadable(format!("{path}: {e}")))?;
            if !file.starts_with(&root) {
                return Err(out_of_scope(format!(
                    "{} is outside the secret root {} (--secret-root)",
                    file.display(),
                    root.display()
                )));
            }
            let mut text = String::new();
            std::fs::File::open(&file)
                .and_then(|f| f.take(MAX_SECRET_BYTES).read_to_string(&mut text))
                .map_err(|e| unreadable(format!("{}: {e}", file.display())))?;
            Ok(text)
        } else {
            Err(unreadable("must start with env: or file:".into()))
        }
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
    }

    #[test]
    fn contracts_may_name_only_the_secrets_the_operator_scoped() {
        let dir = std::env::temp_dir().join(format!("ck-bridge-secrets-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("team.secret"), "whsec_x").unwrap();
        std::fs::write(dir.join("host.key"), "the host's own key").unwrap();
        let none = SecretScope::default();
        for reference in ["env:HOME", "file:team.secret", "vault:x"] {
            assert!(none.read(reference).is_err(), "{reference}");
        }
        let scope = SecretScope {
            root: Some(root.clone()),
            env_prefix: Some("CK_BRIDGE_TEST_".into()),
        };
        assert_eq!(scope.read("file:team.secret").unwrap(), "whsec_x");
        let absolute = format!("file:{}", root.join("team.secret").display());
        assert_eq!(scope.read(&absolute).unwrap(), "whsec_x");
        for escape in [
            "file:../host.key",
            &format!("file:{}", dir.join("host.key").display()),
        ] {
            let refused = scope.read(escape).unwrap_err();
            assert!(
                matches!(refused, SecretError::OutOfScope { .. }),
                "{refused}"
            );
        }
        assert!(matches!(
            scope.read("env:HOME"),
            Err(SecretError::OutOfScope { .. })
        ));
        assert!(matches!(
            scope.read("env:CK_BRIDGE_TEST_SURELY_UNSET"),
            Err(SecretError::Unreadable { .. })
        ));
        assert!(matches!(
            scope.read("env:CK_BRIDGE_TEST_"),
            Err(SecretError::OutOfScope { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

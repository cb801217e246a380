//! Subject syntax: what `ck` accepts as a subject, a subscription pattern or a single token.
//!
//! `ck` is deliberately stricter than nats-server: the server accepts tokens such as `foo*`
//! (a literal that merely looks like a wildcard) and control characters; `ck` refuses them in
//! anything it generates or reads from a manifest, because a subject that reads differently from
//! what it matches is a security bug waiting to happen.

use thiserror::Error;

/// The single-token wildcard.
pub const SINGLE_WILDCARD: &str = "*";
/// The full (tail) wildcard; only valid as the last token.
pub const FULL_WILDCARD: &str = ">";
/// Longest subject `ck` accepts, in bytes (nats-server's default `max_payload` is far larger, but
/// subjects this long are never legitimate in CKP and only bloat permission lists).
pub const MAX_SUBJECT_LEN: usize = 512;

/// Why a subject, pattern or token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubjectError {
    /// The subject is the empty string.
    #[error("subject is empty")]
    Empty,
    /// The subject is longer than [`MAX_SUBJECT_LEN`].
    #[error("subject is {len} bytes long; at most {MAX_SUBJECT_LEN} are allowed")]
    TooLong {
        /// Length in bytes.
        len: usize,
    },
    /// Two dots in a row, or a leading or trailing dot.
    #[error("token {index} is empty (leading, trailing or doubled '.')")]
    EmptyToken {
        /// Zero-based index of the empty token.
        index: usize,
    },
    /// A character NATS treats as a separator or that can never be typed safely.
    #[error("token {index} ('{token}') contains {what}")]
    BadCharacter {
        /// Zero-based token index.
        index: usize,
        /// The offending token.
        token: String,
        /// Human description of the character.
        what: &'static str,
    },
    /// A wildcard character inside a longer token, e.g. `foo*` or `a>b`.
    #[error(
        "token {index} ('{token}') mixes a wildcard character with other characters; \
         '*' and '>' must stand alone as whole tokens"
    )]
    EmbeddedWildcard {
        /// Zero-based token index.
        index: usize,
        /// The offending token.
        token: String,
    },
    /// `>` somewhere other than the last token.
    #[error("'>' may only be the last token (found at token {index})")]
    FullWildcardNotLast {
        /// Zero-based token index.
        index: usize,
    },
    /// A wildcard where only a literal subject is allowed (publish subjects, topics).
    #[error("token {index} is the wildcard '{token}', but a literal subject is required here")]
    WildcardInLiteral {
        /// Zero-based token index.
        index: usize,
        /// The wildcard.
        token: String,
    },
}

fn bad_char(c: char) -> Option<&'static str> {
    match c {
        ' ' => Some("a space"),
        '\t' | '\n' | '\r' | '\x0c' => Some("whitespace"),
        c if c.is_control() => Some("a control character"),
        c if c.is_whitespace() => Some("unicode whitespace"),
        _ => None,
    }
}

/// Validates one token (the text between dots) as a literal: non-empty, no whitespace or control
/// characters, no dots and no wildcard characters.
pub fn validate_token(token: &str) -> Result<(), SubjectError> {
    check_token(0, token, false)?;
    if token.contains('.') {
        return Err(SubjectError::BadCharacter {
            index: 0,
            token: token.to_owned(),
            what: "a '.' (tokens are separated by dots)",
        });
    }
    Ok(())
}

fn check_token(index: usize, token: &str, allow_wildcards: bool) -> Result<(), SubjectError> {
    if token.is_empty() {
        return Err(SubjectError::EmptyToken { index });
    }
    if let Some(what) = token.chars().find_map(bad_char) {
        return Err(SubjectError::BadCharacter {
            index,
            token: token.to_owned(),
            what,
        });
    }
    if token == SINGLE_WILDCARD || token == FULL_WILDCARD {
        if !allow_wildcards {
            return Err(SubjectError::WildcardInLiteral {
                index,
                token: token.to_owned(),
            });
        }
        return Ok(());
    }
    if token.contains(['*', '>']) {
        return Err(SubjectError::EmbeddedWildcard {
            index,
            token: token.to_owned(),
        });
    }
    Ok(())
}

fn validate(subject: &str, allow_wildcards: bool) -> Result<(), SubjectError> {
    if subject.is_empty() {
        return Err(SubjectError::Empty);
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong { len: subject.len() });
    }
    let count = subject.split('.').count();
    for (index, token) in subject.split('.').enumerate() {
        check_token(index, token, allow_wildcards)?;
        if token == FULL_WILDCARD && index + 1 != count {
            return Err(SubjectError::FullWildcardNotLast { index });
        }
    }
    Ok(())
}

/// Validates a literal subject: what may be published to or declared as a kernel topic.
pub fn validate_literal(subject: &str) -> Result<(), SubjectError> {
    validate(subject, false)
}

/// Validates a subscription pattern or permission entry: `*` and a final `>` are allowed.
pub fn validate_pattern(subject: &str) -> Result<(), SubjectError> {
    validate(subject, true)
}

/// True when no token of `subject` is a wildcard.
pub fn is_literal(subject: &str) -> bool {
    subject
        .split('.')
        .all(|t| t != SINGLE_WILDCARD && t != FULL_WILDCARD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert!(validate_literal("input.Finance.Employee").is_ok());
        assert!(validate_literal("ck.7f3ea1b2-0000-4000-8000-000000000000.data.written").is_ok());
        assert_eq!(validate_literal(""), Err(SubjectError::Empty));
        assert_eq!(
            validate_literal("a..b"),
            Err(SubjectError::EmptyToken { index: 1 })
        );
        assert_eq!(
            validate_literal(".a"),
            Err(SubjectError::EmptyToken { index: 0 })
        );
        assert_eq!(
            validate_literal("a."),
            Err(SubjectError::EmptyToken { index: 1 })
        );
        assert!(matches!(
            validate_literal("a b"),
            Err(SubjectError::BadCharacter { .. })
        ));
        assert!(matches!(
            validate_literal("a.*"),
            Err(SubjectError::WildcardInLiteral { index: 1, .. })
        ));
        assert!(matches!(
            validate_literal("a.>"),
            Err(SubjectError::WildcardInLiteral { .. })
        ));
        assert!(matches!(
            validate_literal("a.b*"),
            Err(SubjectError::EmbeddedWildcard { .. })
        ));
        assert!(matches!(
            validate_literal(&"a".repeat(600)),
            Err(SubjectError::TooLong { .. })
        ));
    }

    #[test]
    fn patterns() {
        assert!(validate_pattern("a.*.c").is_ok());
        assert!(validate_pattern("a.>").is_ok());
        assert!(validate_pattern(">").is_ok());
        assert_eq!(
            validate_pattern("a.>.c"),
            Err(SubjectError::FullWildcardNotLast { index: 1 })
        );
        assert!(matches!(
            validate_pattern("a\t.b"),
            Err(SubjectError::BadCharacter { .. })
        ));
    }

    #[test]
    fn tokens() {
        assert!(validate_token("7f3e-a1b2").is_ok());
        assert!(validate_token("a.b").is_err());
        assert!(validate_token("*").is_err());
        assert!(validate_token("").is_err());
    }
}

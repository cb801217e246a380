//! Wildcard matching with nats-server's `Sublist.Match` semantics.

use crate::syntax::{FULL_WILDCARD, SINGLE_WILDCARD};

/// Does `pattern` (a permission entry or subscription, may hold `*` and a final `>`) match
/// `subject`?
///
/// For a literal `subject` this is ordinary NATS message matching. When `subject` itself holds
/// wildcards (a subscription being checked against a permission list) it follows what
/// nats-server's sublist does: a pattern `*` matches any one token *including a wildcard token*,
/// a pattern `>` matches one or more remaining tokens of any kind, and a literal pattern token
/// matches only the identical token. One consequence, confirmed against a real server by the
/// differential test: an allow entry `a.*` admits a subscription to `a.>`. The ACL compiler
/// therefore never emits `*` in an allow list.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut pattern_tokens = pattern.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (pattern_tokens.next(), subject_tokens.next()) {
            (Some(FULL_WILDCARD), Some(_)) => return true,
            (Some(SINGLE_WILDCARD), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Alias of [`matches`] named after the server function it mirrors, for call sites that check a
/// wildcard subscription against a permission list.
pub fn sublist_matches(pattern: &str, subject: &str) -> bool {
    matches(pattern, subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_subjects() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.c"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "a"));
        assert!(matches("*.b.>", "x.b.y"));
        assert!(!matches("*.b.>", "x.c.y"));
        assert!(matches("ck.g.>", "ck.g.data.written"));
        assert!(!matches("ck.g.*", "ck.g.data.written"));
    }

    #[test]
    fn wildcard_subjects_follow_the_server() {
        assert!(matches("a.*", "a.*"));
        assert!(matches("a.*", "a.>"));
        assert!(matches("a.>", "a.*"));
        assert!(matches("a.>", "a.>"));
        assert!(!matches("a.b", "a.*"));
        assert!(!matches("a.b.>", "a.>"));
        assert!(matches("*", ">"));
    }
}

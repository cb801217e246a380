//! Who sent a request, and how much of that is proven. A name in `X-User-ID` is the caller's
//! word; a SPIFFE ID is an identity only once a JWT-SVID addressed to the kernel proved it.
//! Everything that records or presents a caller (the guest context, task records, sealed
//! provenance, audit lines) uses [`Caller`]'s one written form, so an unproven claim can never
//! be read as an identity: `spiffe://…` only when proven, `claimed:{name}` otherwise,
//! `anonymous` when nothing was said.

use std::fmt;

/// How an unproven caller is written: `claimed:` and the name as given.
pub const CLAIMED_PREFIX: &str = "claimed:";

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No `X-User-ID` and no proof.
    Anonymous,
    /// A name from `X-User-ID`, unproven (it may look like a SPIFFE ID; it is not one).
    Claimed(String),
    /// A SPIFFE ID proven by a JWT-SVID addressed to this kernel.
    Proven(String),
}

impl Caller {
    /// The caller a request's `X-User-ID` claims (bounded by the header checks).
    pub fn claimed(user: Option<String>) -> Self {
        match user {
            Some(name) if !name.is_empty() => Caller::Claimed(name),
            _ => Caller::Anonymous,
        }
    }

    /// The proven SPIFFE ID, if any.
    pub fn proven(&self) -> Option<&str> {
        match self {
            Caller::Proven(id) => Some(id),
            _ => None,
        }
    }

    /// What is forwarded as `X-User-ID` and echoed in answer headers: the name or SPIFFE ID
    /// itself (a header is a claim to whoever reads it), or `anonymous`.
    pub fn header_value(&self) -> &str {
        match self {
            Caller::Anonymous => crate::envelope::ANONYMOUS,
            Caller::Claimed(name) => name,
            Caller::Proven(id) => id,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Anonymous => f.write_str(crate::envelope::ANONYMOUS),
            Caller::Claimed(name) => write!(f, "{CLAIMED_PREFIX}{name}"),
            Caller::Proven(id) => f.write_str(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_spiffe_id_is_never_written_as_one() {
        let claim = Caller::claimed(Some("spiffe://example.org/ck/Victim/1".into()));
        assert_eq!(
            claim.to_string(),
            "claimed:spiffe://example.org/ck/Victim/1"
        );
        assert_eq!(claim.proven(), None);
        let proven = Caller::Proven("spiffe://example.org/ck/Victim/1".into());
        assert_eq!(proven.to_string(), "spiffe://example.org/ck/Victim/1");
        assert_eq!(Caller::claimed(None).to_string(), "anonymous");
        assert_eq!(Caller::claimed(Some(String::new())), Caller::Anonymous);
    }
}

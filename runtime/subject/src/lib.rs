//! NATS subjects: syntax, wildcard matching and permission evaluation.
//!
//! This crate is the single implementation of NATS subject semantics in `ck`. The manifest
//! validator, the ACL compiler, the host's pre-checks and the auth callout all call it, so what
//! `ck` believes a permission means is what nats-server enforces (a differential test against a
//! real nats-server keeps it that way).
//!
//! It owns: subject and token validation ([`validate_literal`], [`validate_pattern`]), message
//! matching ([`matches`]), and the server's permission decisions ([`Permissions::can_publish`],
//! [`Permissions::can_subscribe`]), and the set questions asked of subject families
//! ([`FamilyPattern`]). It knows nothing about kernels, manifests or grants.

mod family;
mod matching;
mod permissions;
mod syntax;

pub use family::{FamilyError, FamilyPattern, FamilyToken};
pub use matching::{matches, sublist_matches};
pub use permissions::{PermissionList, Permissions, ResponsePermission};
pub use syntax::{
    FULL_WILDCARD, MAX_SUBJECT_LEN, SINGLE_WILDCARD, SubjectError, is_literal, validate_literal,
    validate_pattern, validate_token,
};

//! `ck bridge`'s delivery rules — the webhook projection of the platform lane: what a
//! delivery is signed with ([`signing`]), where its secrets come from ([`secrets`]), what a
//! sink's answer means for the message ([`retry`]), which sinks may be called at all
//! ([`ssrf`]) and where each subscription's consumer starts ([`replay`]).
//!
//! The rules are pure (no connection, no HTTP client) so each is tested on its own; the
//! delivery loop that applies them to a JetStream consumer is not part of this crate yet.

pub mod replay;
pub mod retry;
pub mod secrets;
pub mod signing;
pub mod ssrf;

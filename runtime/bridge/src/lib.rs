//! `ck bridge` — the webhook projection of the platform lane: JetStream is the source of
//! truth, a webhook subscription is a delivery intent. This crate owns the bridge's durable
//! consumers (`bridge_*`) and the HTTP calls to sinks; it reads contracts (`ck-contracts`)
//! and publishes delivery results through `ck-platform`, and touches no other stream's
//! consumers.
//!
//! The rules, each pure and tested on its own: what a delivery is signed with
//! ([`signing`]), where its secrets may come from ([`secrets`]), what a sink's answer means
//! for the message ([`retry`]), which sinks may be called at all ([`ssrf`]) and where each
//! subscription's consumer starts ([`replay`]). [`http`] is the one client that calls sinks;
//! [`deliver`] applies the rules to the consumers.

pub mod deliver;
pub mod http;
pub mod replay;
pub mod retry;
pub mod secrets;
pub mod signing;
pub mod ssrf;

pub use deliver::{Bridge, BridgeConfig, BridgeError, Webhook, prepare};

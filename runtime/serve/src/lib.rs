//! The running ck host as a library.
//!
//! A [`Host`] is built from a plain [`ServeConfig`] (no command-line types) and serves
//! kernels that are added, swapped and removed while it runs:
//!
//! - [`Host::plan_recorded`] turns a kernel into a [`KernelPlan`]: it records what is about
//!   to be served in the CK and TOOL loops, pins `stable` the first time, and loads the
//!   serving record's versions ([`PreparedVersion`]: manifest as committed, permissions
//!   compiled, component compiled). [`Host::plan_working`] serves a kernel's directory as it
//!   stands (benchmarks), [`Host::plan_version`] one prepared version (`ck dev`).
//! - [`Host::add`] connects as the kernel's identity (SPIFFE JWT-SVID, rotated without a
//!   gap), starts its task lifecycle with all its background work (recovery, committer,
//!   outbox replay), subscribes its input topic behind a swappable route, and follows its
//!   serving record and loop journal.
//! - [`Host::swap`] swaps versions in behind the running subscription, [`Host::remove`]
//!   drains and releases one kernel, [`Host::report`] says what is served and how it is
//!   doing, and [`Host::shutdown`] stops everything within the grace period whatever the
//!   state of NATS.
//!
//! `ck run`, `ck dev` and `ck bench` all drive this one `Host`; none of them assembles
//! serving parts itself.
//!
//! It does not parse arguments or print (the CLI does), start nats-server or the auth callout
//! (`ck dev`'s stack does), build components (`ck-build`), or hold the wasm host, the wire
//! format or the lifecycle's rules (`ck-host`, `ck-bus`, `ck-task`): it composes them.

mod access;
mod cluster;
mod config;
mod connection;
mod dispatch;
mod error;
mod fleet;
mod follower;
mod host;
mod install;
mod lifecycle;
mod observe;
mod protocol;
pub mod runtime;
pub mod signal;
mod swap;
mod version;
mod versioned;

pub use access::{CallerRejected, CallerVerifier};
pub use config::{
    ControlConfig, DEFAULT_GRACE, FleetConfig, IdentityMode, ServeConfig, SiteConfig,
};
pub use connection::retry_connect;
pub use dispatch::VersionService;
pub use error::{ServeError, ServeErrorKind};
pub use follower::FOLLOW_INTERVAL;
pub use host::{Health, Host, KernelPlan, KernelReport, Removed};
pub use observe::serve_http;
pub use protocol::VersionStats;
pub use swap::Swapped;
pub use version::{Loader, PreparedVersion, topics_moved};
pub use versioned::{Route, Versioned};

//! A kernel's three loops on disk (ckp-spec §2, §4).
//!
//! - DATA ([`data`]): sealed instances under `data/instances/{instance_id}/` — `data.json`
//!   written once, `manifest.json` with PROV-O fields and the data hash, `proof.json` chaining
//!   both hashes, `ledger.json` with the transitions — their git history and offline
//!   verification.
//! - CK and TOOL ([`state`]): snapshot repositories of the identity files and of the tool
//!   sources with their component's digest, the content-addressed component store, the serving
//!   record ([`serving`]: stable and canary versions) and the loop event journal ([`journal`]).
//!
//! Owns the file formats, the create-once write discipline, the hash chain, and which commits
//! are served. Does not decide when to seal (the task lifecycle and the broker's
//! acknowledgement do), does not load components, and does not talk to NATS (hosts publish the
//! journal).

pub mod data;
pub mod git;
pub mod journal;
pub mod serving;
pub mod state;
pub mod writer_lock;

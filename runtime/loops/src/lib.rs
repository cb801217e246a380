//! A kernel's loops on disk (ckp-spec §2, §4). The DATA loop: sealed instances under
//! `data/instances/{instance_id}/` — `data.json` written once, `manifest.json` with PROV-O
//! fields and the data hash, `proof.json` chaining both hashes, `ledger.json` with the
//! transitions — and their offline verification.
//!
//! Owns the instance file formats, the create-once write discipline and the hash chain. Does not
//! decide when to seal (the task lifecycle and the broker's acknowledgement do) and does not
//! talk to NATS.

pub mod data;

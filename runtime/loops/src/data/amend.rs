//! Amending a sealed instance (ckp-spec §3.5), as far as `instance_mutability` allows — without
//! ever rewriting a file: an amendment is a new `data_amendment_{ts}.json` beside the sealed
//! `data.json`, and a new `proof_amendment_{ts}.json` that chains the previous proof's hash to
//! the amendment's. For `full_versioning` the amendment is the whole new version of the data
//! (the current data is the last one); for `amendments_allowed` it may only add fields.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use thiserror::Error;

use super::Actor;
use super::instance::{
    Finding, OWNER_FIELD, blake3_of, instance_dir, pretty, sha256, stage_and_link, valid_id,
};

pub use ck_manifest::ontology::InstanceMutability;

/// Why an amendment was refused (nothing was written).
#[derive(Debug, Error)]
pub enum AmendError {
    /// The instance does not exist (here).
    #[error("no sealed instance '{0}' in this kernel's DATA tree")]
    NotFound(String),
    /// The kernel's policy forbids it (409).
    #[error(
        "instance {instance} is sealed (ontology.yaml instance_mutability: {policy}); it cannot be amended"
    )]
    Forbidden {
        /// The instance.
        instance: String,
        /// The policy.
        policy: InstanceMutability,
    },
    /// `amendments_allowed` only adds fields (409).
    #[error("instance {instance} allows additions only, and `{field}` is already in its data")]
    NotAnAddition {
        /// The instance.
        instance: String,
        /// The field that exists.
        field: String,
    },
    /// The instance is owned by another identity (403).
    #[error(
        "instance {instance} is owned by {owner}; only that identity (proven by a JWT-SVID) or a holder of the kernel's `manage-tasks` grant may amend it"
    )]
    NotOwner {
        /// The instance.
        instance: String,
        /// Its owner.
        owner: String,
    },
    /// The amendment is not a non-empty JSON object (400).
    #[error("an amendment must be a non-empty JSON object")]
    NotAnObject,
    /// A file operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        error: std::io::Error,
    },
}

/// An amendment written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amended {
    /// The amendment file's name (`data_amendment_{ts}.json`).
    pub file: String,
    /// `sha256:…` of it.
    pub amendment_hash: String,
    /// The new proof's file name.
    pub proof: String,
}

/// The amendment files of an instance, oldest first, as (timestamp, data file, proof file).
pub fn amendments(dir: &Path) -> Vec<(u64, String, String)> {
    let mut found: Vec<(u64, String, String)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ts = name
                .strip_prefix("data_amendment_")?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            Some((ts, name, format!("proof_amendment_{ts}.json")))
        })
        .collect();
    found.sort();
    found
}

fn read_object(path: &Path) -> Option<serde_json::Map<String, Value>> {
    serde_json::from_slice::<Value>(&fs::read(path).ok()?)
        .ok()?
        .as_object()
        .cloned()
}

/// Amends `instance_id` under `policy` with `amendment`, as `actor` at `at_ms` (epoch
/// milliseconds; a later free millisecond is taken if that one is used). An instance whose
/// sealed manifest names an owner (`ck:owner`) is amended only by that owner or a manager.
pub fn amend(
    kernel_dir: &Path,
    instance_id: &str,
    policy: InstanceMutability,
    amendment: &Value,
    actor: &Actor,
    at_ms: u64,
) -> Result<Amended, AmendError> {
    let dir = instance_dir(kernel_dir, instance_id);
    if !valid_id(instance_id) || !dir.join("proof.json").is_file() {
        return Err(AmendError::NotFound(instance_id.to_owned()));
    }
    let owner = read_object(&dir.join("manifest.json")).and_then(|m| {
        m.get(OWNER_FIELD)
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    if !actor.may_act_on(owner.as_deref()) {
        return Err(AmendError::NotOwner {
            instance: instance_id.to_owned(),
            owner: owner.unwrap_or_default(),
        });
    }
    if policy == InstanceMutability::Sealed {
        return Err(AmendError::Forbidden {
            instance: instance_id.to_owned(),
            policy,
        });
    }
    let Some(fields) = amendment.as_object().filter(|o| !o.is_empty()) else {
        return Err(AmendError::NotAnObject);
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |error| AmendError::Io { path, error }
    };
    let previous = amendments(&dir);
    if policy == InstanceMutability::AmendmentsAllowed {
        // The data so far: the sealed original and every addition.
        let mut current = read_object(&dir.join("data.json")).unwrap_or_default();
        for (_, file, _) in &previous {
            current.extend(read_object(&dir.join(file)).unwrap_or_default());
        }
        if let Some(field) = fields.keys().find(|k| current.contains_key(*k)) {
            return Err(AmendError::NotAnAddition {
                instance: instance_id.to_owned(),
                field: field.clone(),
            });
        }
    }
    let previous_proof = previous
        .last()
        .map_or_else(|| "proof.json".to_owned(), |(_, _, p)| p.clone());
    let previous_proof_bytes =
        fs::read(dir.join(&previous_proof)).map_err(io(&dir.join(&previous_proof)))?;
    let data_bytes = fs::read(dir.join("data.json")).map_err(io(&dir.join("data.json")))?;
    let mut ts = at_ms.max(previous.last().map_or(0, |(t, _, _)| t + 1));
    while dir.join(format!("data_amendment_{ts}.json")).exists() {
        ts += 1;
    }
    let file = format!("data_amendment_{ts}.json");
    let proof_file = format!("proof_amendment_{ts}.json");
    let bytes = pretty(amendment);
    let amended_at = chrono::DateTime::from_timestamp_millis(ts as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let proof = pretty(&json!({
        "proof_id": format!("p-{instance_id}-a{ts}"),
        "instance_id": instance_id,
        "kind": match policy {
            InstanceMutability::FullVersioning => "version",
            _ => "addition",
        },
        "amendment": file,
        "amendment_hash": sha256(&bytes),
        "amendment_blake3": blake3_of(&bytes),
        "data_hash": sha256(&data_bytes),
        "previous_proof": previous_proof,
        "previous_proof_hash": sha256(&previous_proof_bytes),
        "amended_at": amended_at,
        "amended_by": actor.written,
        "outcome": "PASS",
    }));
    // The amendment first, its proof (which covers it) last; neither ever replaces a file.
    stage_and_link(
        &dir,
        &[(file.as_str(), &bytes), (proof_file.as_str(), &proof)],
    )
    .map_err(|e| AmendError::Io {
        path: dir.join(&file),
        error: std::io::Error::other(e.to_string()),
    })?;
    super::instance::sync_dir(&dir).map_err(|e| AmendError::Io {
        path: dir.clone(),
        error: std::io::Error::other(e.to_string()),
    })?;
    Ok(Amended {
        amendment_hash: sha256(&bytes),
        file,
        proof: proof_file,
    })
}

/// Checks an instance's amendment chain: each amendment's hash, each proof linked to the one
/// before it, and the sealed data unchanged since.
pub fn verify_amendments(dir: &Path) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut previous = "proof.json".to_owned();
    let data = fs::read(dir.join("data.json")).unwrap_or_default();
    for (_, file, proof_file) in amendments(dir) {
        let fail = |findings: &mut Vec<Finding>, f: &str, problem: String| {
            findings.push(Finding {
                file: dir.join(f),
                problem,
            })
        };
        let Some(proof) = read_object(&dir.join(&proof_file)) else {
            fail(
                &mut findings,
                &proof_file,
                format!("missing or unreadable: the proof of {file}"),
            );
            continue;
        };
        let bytes = fs::read(dir.join(&file)).unwrap_or_default();
        if proof.get("amendment_hash").and_then(Value::as_str) != Some(sha256(&bytes).as_str()) {
            fail(
                &mut findings,
                &file,
                format!(
                    "sha256 is {}, {proof_file} records {}",
                    sha256(&bytes),
                    proof["amendment_hash"]
                ),
            );
        }
        let prev_bytes = fs::read(dir.join(&previous)).unwrap_or_default();
        if proof.get("previous_proof").and_then(Value::as_str) != Some(previous.as_str())
            || proof.get("previous_proof_hash").and_then(Value::as_str)
                != Some(sha256(&prev_bytes).as_str())
        {
            fail(
                &mut findings,
                &proof_file,
                format!(
                    "does not chain to {previous} (its hash differs or another proof is named)"
                ),
            );
        }
        if proof.get("data_hash").and_then(Value::as_str) != Some(sha256(&data).as_str()) {
            fail(
                &mut findings,
                &proof_file,
                "data_hash is not data.json's".into(),
            );
        }
        previous = proof_file;
    }
    findings
}

//! Sealing one instance, and checking one.
//!
//! Write discipline: every file is written to a temporary file, fsynced, made read-only, and
//! then hard-linked to its final name — a link never replaces an existing file, so a sealed
//! `data.json` can never be overwritten, and a crash leaves either no `data.json` or a complete
//! one. The other files are derived from it and linked after it; a seal interrupted after
//! `data.json` is completed by sealing the same data again.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// One lifecycle transition recorded in `ledger.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: String,
    /// State after.
    pub to: String,
    /// The action.
    pub action: String,
    /// Who.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

/// The two hashes a seal announces for an instance (`data.written`): `data_hash` from its
/// `manifest.json`, `manifest_hash` from its `proof.json`, as written (not recomputed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedHashes {
    /// `sha256:…` of `data.json`.
    pub data_hash: String,
    /// `sha256:…` of `manifest.json`.
    pub manifest_hash: String,
}

impl SealedHashes {
    /// Reads them from the instance directory `dir`; `None` when either file is unreadable.
    pub fn read(dir: &Path) -> Option<Self> {
        let read = |f: &str| -> Option<Value> {
            serde_json::from_slice(&std::fs::read(dir.join(f)).ok()?).ok()
        };
        let (manifest, proof) = (read("manifest.json")?, read("proof.json")?);
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Some(Self {
            data_hash: text(&manifest["data_hash"]),
            manifest_hash: text(&proof["manifest_hash"]),
        })
    }
}

/// The field of a sealed instance's `manifest.json` naming the proven identity that owns it
/// (`null` when the task was started without proof).
pub const OWNER_FIELD: &str = "ck:owner";

/// What to seal.
#[derive(Debug, Clone)]
pub struct SealRequest<'a> {
    /// The kernel's directory.
    pub kernel_dir: &'a Path,
    /// Kernel name (`CS.Voting`).
    pub kernel: &'a str,
    /// Kernel URN (`ckp://Kernel#CS.Voting:v1.0`), the PROV attribution.
    pub kernel_urn: &'a str,
    /// Who seals, for the proof (SPIFFE ID, or `unavailable`).
    pub svid: &'a str,
    /// The instance id (`i-{slug}-{epoch}`).
    pub instance_id: &'a str,
    /// The task it completes, if any.
    pub task_id: Option<&'a str>,
    /// The actor as written (`spiffe://…` only when proven, `claimed:{name}`, `anonymous`).
    pub actor: &'a str,
    /// The proven SPIFFE ID that owns the task, if it was started by one (`ck:owner`).
    pub owner: Option<&'a str>,
    /// The data (an object), sealed as `data.json`.
    pub data: &'a Value,
    /// The lifecycle so far.
    pub transitions: &'a [Transition],
}

/// A sealed instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Its directory.
    pub dir: PathBuf,
    /// `sha256:…` of `data.json`.
    pub data_hash: String,
    /// `sha256:…` of `manifest.json`.
    pub manifest_hash: String,
    /// Whether this call wrote `data.json` (false: it was sealed before with the same bytes and
    /// this call completed or confirmed the rest).
    pub wrote_data: bool,
}

/// Why sealing failed. Nothing already sealed is ever changed.
#[derive(Debug, Error)]
pub enum SealError {
    /// The instance was sealed before with different data.
    #[error("instance {0} is already sealed with different data")]
    AlreadySealed(String),
    /// The instance id could escape its directory.
    #[error("instance id '{0}' must be [A-Za-z0-9._-], not start with '.'")]
    BadId(String),
    /// The data is not a JSON object.
    #[error("instance data must be a JSON object")]
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

/// One broken link found by verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file at fault.
    pub file: PathBuf,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.problem)
    }
}

/// The ids of the kernel's sealed instances — those whose `proof.json` is in place, what
/// recovery and the checks against the cluster count as sealed — sorted.
pub fn sealed_instances(kernel_dir: &Path) -> Vec<String> {
    let root = ck_fs::layout::DataLayout::of_kernel(kernel_dir).instances();
    let mut ids: Vec<String> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().join("proof.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

/// `data/instances/{instance_id}` of a kernel.
pub fn instance_dir(kernel_dir: &Path, instance_id: &str) -> PathBuf {
    ck_fs::layout::DataLayout::of_kernel(kernel_dir).instance(instance_id)
}

/// `sha256:{hex}` of a file's bytes, the form every proof records.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    Ok(sha256(&fs::read(path)?))
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

pub(crate) fn blake3_of(bytes: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(bytes).to_hex())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SealError + '_ {
    move |error| SealError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Writes `files` into `dir` once each: all staged at once, in parallel (temporary, fsynced,
/// read-only — their fsyncs share journal commits), then linked into place in the order given,
/// never replacing a file. Returns whether the first file was linked by this call (false: it
/// was there with the same bytes). A file there with other bytes is `AlreadyExists`.
pub(crate) fn stage_and_link(dir: &Path, files: &[(&str, &[u8])]) -> Result<bool, SealError> {
    let staged: Vec<Result<Option<PathBuf>, SealError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|(name, bytes)| {
                let path = dir.join(name);
                scope.spawn(move || stage(&path, bytes))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SealError::Io {
                        path: dir.to_owned(),
                        error: std::io::Error::other("a staging thread panicked"),
                    })
                })
            })
            .collect()
    });
    let mut temps = Vec::new();
    let mut first_error = None;
    for result in staged {
        match result {
            Ok(tmp) => temps.push(tmp),
            Err(e) => {
                temps.push(None);
                first_error.get_or_insert(e);
            }
        }
    }
    let cleanup = |temps: &[Option<PathBuf>]| {
        for tmp in temps.iter().flatten() {
            let _ = fs::remove_file(tmp);
        }
    };
    if let Some(e) = first_error {
        cleanup(&temps);
        return Err(e);
    }
    let mut wrote_first = false;
    for (i, ((name, bytes), tmp)) in files.iter().zip(&temps).enumerate() {
        let Some(tmp) = tmp else { continue };
        match link_once(tmp, &dir.join(name), bytes) {
            Ok(linked) => wrote_first |= i == 0 && linked,
            Err(e) => {
                cleanup(&temps[i..]);
                return Err(e);
            }
        }
    }
    Ok(wrote_first)
}

/// What a staging file's name carries before the writing process's id: `data.tmp-{pid}` for
/// `data.json`. Such a file was never linked into place.
const STAGING: &str = "tmp-";

/// The writing process's id if `name` is a staging file's name (`*.tmp-{pid}`).
pub(crate) fn staging_pid(name: &str) -> Option<&str> {
    name.rsplit_once(&format!(".{STAGING}")[..])
        .map(|(_, pid)| pid)
}

/// Prepares `bytes` for `path`: a temporary file beside it, written, fsynced and read-only.
/// `None` if `path` already holds exactly these bytes; an existing file with other bytes is
/// `AlreadyExists`.
pub(crate) fn stage(path: &Path, bytes: &[u8]) -> Result<Option<PathBuf>, SealError> {
    if let Ok(existing) = fs::read(path) {
        return if existing == bytes {
            Ok(None)
        } else {
            Err(SealError::Io {
                path: path.to_owned(),
                error: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            })
        };
    }
    let tmp = path.with_extension(format!("{STAGING}{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444))
    };
    match write() {
        Ok(()) => Ok(Some(tmp)),
        Err(error) => {
            let _ = fs::remove_file(&tmp);
            Err(SealError::Io { path: tmp, error })
        }
    }
}

/// Links the staged `tmp` as `path` (never replacing it) and removes `tmp`. Returns false if
/// another sealer linked the same bytes first; other bytes are `AlreadyExists`.
pub(crate) fn link_once(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<bool, SealError> {
    let linked = fs::hard_link(tmp, path);
    let _ = fs::remove_file(tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match fs::read(path) {
            Ok(existing) if existing == bytes => Ok(false),
            _ => Err(SealError::Io {
                path: path.to_owned(),
                error: e,
            }),
        },
        Err(e) => Err(SealError::Io {
            path: path.to_owned(),
            error: e,
        }),
    }
}

pub(crate) fn pretty(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

pub(crate) use ck_fs::layout::valid_instance_id as valid_id;

/// Seals an instance: `data.json` (once), then `manifest.json` (PROV-O fields, data hash),
/// `proof.json` (data and manifest hashes, SHA-256 as the CKP docs require, blake3 beside),
/// `ledger.json` (transitions). Sealing the same data again completes an interrupted seal and
/// changes nothing that exists.
pub fn seal(request: &SealRequest<'_>) -> Result<Sealed, SealError> {
    if !valid_id(request.instance_id) {
        return Err(SealError::BadId(request.instance_id.to_owned()));
    }
    if !request.data.is_object() {
        return Err(SealError::NotAnObject);
    }
    let dir = instance_dir(request.kernel_dir, request.instance_id);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let data = pretty(request.data);
    let data_hash = sha256(&data);
    // Timestamps come from the ledger (the completion), so re-sealing is byte-identical.
    let sealed_at = request
        .transitions
        .last()
        .map(|t| t.at.clone())
        .unwrap_or_default();
    let millis = chrono::DateTime::parse_from_rfc3339(&sealed_at)
        .map(|t| t.timestamp_millis())
        .unwrap_or_default();
    let manifest = json!({
        "instance_id": request.instance_id,
        "kernel": request.kernel,
        "task_id": request.task_id,
        "status": "sealed",
        "mutability": "sealed",
        "data_hash": data_hash,
        "data_blake3": blake3_of(&data),
        "created_at": sealed_at,
        "sealed_by_svid": request.svid,
        "prov:wasGeneratedBy": format!("ckp://Action#{}/task.complete-{millis}", request.kernel),
        "prov:wasAttributedTo": request.kernel_urn,
        "prov:generatedAtTime": sealed_at,
        "prov:wasAssociatedWith": request.actor,
        OWNER_FIELD: request.owner,
        "prov:wasStartedBy": request.task_id.map(|t| format!("ckp://Task#{t}")),
        "prov:used": [],
    });
    let manifest = pretty(&manifest);
    let manifest_hash = sha256(&manifest);
    let transitions: Vec<Value> = request
        .transitions
        .iter()
        .map(|t| json!({"from": t.from, "to": t.to, "action": t.action, "by": t.by, "timestamp": t.at}))
        .collect();
    let ledger = pretty(&json!({
        "transitions": transitions,
        "current_status": request.transitions.last().map_or("completed", |t| t.to.as_str()),
    }));
    let proof = pretty(&proof_for(&ProofInputs {
        instance_id: request.instance_id,
        kernel: request.kernel,
        kernel_urn: request.kernel_urn,
        svid: request.svid,
        sealed_at: &sealed_at,
        data: &data,
        manifest: &manifest,
        ledger: &ledger,
    }));
    // The proof is last: it covers the three files before it.
    let files: [(&str, &[u8]); 4] = [
        ("data.json", &data),
        ("manifest.json", &manifest),
        ("ledger.json", &ledger),
        ("proof.json", &proof),
    ];
    let wrote_data = stage_and_link(&dir, &files).map_err(|e| match e {
        SealError::Io { error, .. } if error.kind() == std::io::ErrorKind::AlreadyExists => {
            SealError::AlreadySealed(request.instance_id.to_owned())
        }
        other => other,
    })?;
    sync_dir(&dir)?;
    Ok(Sealed {
        dir,
        data_hash,
        manifest_hash,
        wrote_data,
    })
}

/// What `proof.json` is computed from.
struct ProofInputs<'a> {
    instance_id: &'a str,
    kernel: &'a str,
    kernel_urn: &'a str,
    svid: &'a str,
    sealed_at: &'a str,
    data: &'a [u8],
    manifest: &'a [u8],
    ledger: &'a [u8],
}

/// The proof of an instance: a pure function of its files and identity, so a verifier can
/// recompute it byte for byte.
fn proof_for(p: &ProofInputs<'_>) -> Value {
    let (data_hash, manifest_hash, ledger_hash) =
        (sha256(p.data), sha256(p.manifest), sha256(p.ledger));
    let millis = chrono::DateTime::parse_from_rfc3339(p.sealed_at)
        .map(|t| t.timestamp_millis())
        .unwrap_or_default();
    let check = |name: &str, kind: &str, value: &str| json!({"check_name": name, "check_type": kind, "expected": value, "actual": value, "passed": true});
    json!({
        "proof_id": format!("p-{}-{}", p.instance_id, millis / 1000),
        "instance_id": p.instance_id,
        "data_hash": data_hash,
        "manifest_hash": manifest_hash,
        "ledger_hash": ledger_hash,
        "data_blake3": blake3_of(p.data),
        "manifest_blake3": blake3_of(p.manifest),
        "ledger_blake3": blake3_of(p.ledger),
        "outcome": "PASS",
        "checked_by_kernel": p.kernel,
        "checked_by_identity": p.kernel_urn,
        "checked_at": p.sealed_at,
        "svid": p.svid,
        "checks": [
            check("data-hash-integrity", "INTEGRITY", &data_hash),
            check("manifest-hash-integrity", "INTEGRITY", &manifest_hash),
            check("ledger-hash-integrity", "INTEGRITY", &ledger_hash),
            check("provenance-present", "PROVENANCE", p.kernel_urn),
        ],
    })
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), SealError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

fn read_json(path: &Path, findings: &mut Vec<Finding>) -> Option<(Vec<u8>, Value)> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            findings.push(Finding {
                file: path.to_owned(),
                problem: format!("cannot read: {e}"),
            });
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some((bytes, v)),
        Err(e) => {
            findings.push(Finding {
                file: path.to_owned(),
                problem: format!("not JSON: {e}"),
            });
            None
        }
    }
}

/// Checks one sealed instance offline: every hash recomputed, the chain data → manifest →
/// proof, the PROV-O fields, and that `data.json` is read-only. Returns every broken link, first
/// one first (empty: it verifies).
pub fn verify_instance(dir: &Path) -> Vec<Finding> {
    let mut findings = Vec::new();
    let at = |file: &str| dir.join(file);
    let data = fs::read(at("data.json"));
    let manifest = read_json(&at("manifest.json"), &mut findings);
    let proof = read_json(&at("proof.json"), &mut findings);
    let mut fail = |file: &str, problem: String| {
        findings.push(Finding {
            file: at(file),
            problem,
        })
    };
    let data = match data {
        Ok(d) => d,
        Err(e) => {
            fail("data.json", format!("cannot read: {e}"));
            return findings;
        }
    };
    if let Ok(meta) = fs::metadata(at("data.json"))
        && meta.permissions().mode() & 0o222 != 0
    {
        fail(
            "data.json",
            "is writable; a sealed data.json is read-only".into(),
        );
    }
    let data_hash = sha256(&data);
    if let Some((manifest_bytes, manifest)) = &manifest {
        if manifest["data_hash"] != data_hash.as_str() {
            fail(
                "data.json",
                format!(
                    "sha256 is {data_hash}, manifest.json records {}",
                    manifest["data_hash"]
                ),
            );
        }
        if manifest["data_blake3"] != blake3_of(&data).as_str() {
            fail(
                "data.json",
                "blake3 differs from manifest.json's data_blake3".into(),
            );
        }
        for field in [
            "prov:wasGeneratedBy",
            "prov:wasAttributedTo",
            "prov:generatedAtTime",
        ] {
            if manifest[field].as_str().is_none_or(str::is_empty) {
                fail("manifest.json", format!("missing PROV-O field `{field}`"));
            }
        }
        if !manifest["prov:wasGeneratedBy"]
            .as_str()
            .is_some_and(|s| s.starts_with("ckp://Action#"))
        {
            fail(
                "manifest.json",
                "`prov:wasGeneratedBy` is not a ckp://Action# URN".into(),
            );
        }
        if let Some((proof_bytes, proof)) = &proof {
            // File by file before the recomputed proof, so the first finding names the file
            // that changed.
            let manifest_hash = sha256(manifest_bytes);
            if proof["manifest_hash"] != manifest_hash.as_str() {
                fail(
                    "manifest.json",
                    format!(
                        "sha256 is {manifest_hash}, proof.json records {}",
                        proof["manifest_hash"]
                    ),
                );
            }
            let ledger = fs::read(at("ledger.json")).unwrap_or_default();
            if proof["ledger_hash"] != sha256(&ledger).as_str() {
                fail(
                    "ledger.json",
                    format!(
                        "sha256 is {}, proof.json records {}",
                        sha256(&ledger),
                        proof["ledger_hash"]
                    ),
                );
            }
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let expected = pretty(&proof_for(&ProofInputs {
                instance_id: &text(&manifest["instance_id"]),
                kernel: &text(&manifest["kernel"]),
                kernel_urn: &text(&manifest["prov:wasAttributedTo"]),
                svid: &text(&manifest["sealed_by_svid"]),
                sealed_at: &text(&manifest["created_at"]),
                data: &data,
                manifest: manifest_bytes,
                ledger: &ledger,
            }));
            if &expected != proof_bytes {
                fail(
                    "proof.json",
                    "differs from the proof recomputed from data.json, manifest.json and ledger.json"
                        .into(),
                );
            }
            if proof["data_hash"] != data_hash.as_str() {
                fail(
                    "proof.json",
                    format!(
                        "data_hash {} is not data.json's {data_hash}",
                        proof["data_hash"]
                    ),
                );
            }
            if proof["checked_by_identity"] != manifest["prov:wasAttributedTo"] {
                fail(
                    "proof.json",
                    "checked_by_identity differs from the manifest's prov:wasAttributedTo".into(),
                );
            }
            if proof["outcome"] != "PASS" {
                fail("proof.json", format!("outcome is {}", proof["outcome"]));
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(
        dir: &'a Path,
        data: &'a Value,
        transitions: &'a [Transition],
    ) -> SealRequest<'a> {
        SealRequest {
            kernel_dir: dir,
            kernel: "CS.Voting",
            kernel_urn: "ckp://Kernel#CS.Voting:v1.0",
            svid: "spiffe://example.org/ck/CS.Voting/5c4d",
            instance_id: "i-t1-1795720000",
            task_id: Some("t1"),
            actor: "ckp://Actor#tester",
            owner: None,
            data,
            transitions,
        }
    }

    fn transitions() -> Vec<Transition> {
        vec![
            Transition {
                from: "pending".into(),
                to: "in_progress".into(),
                action: "task.start".into(),
                by: "tester".into(),
                at: "2026-11-26T20:00:00.000000Z".into(),
            },
            Transition {
                from: "in_progress".into(),
                to: "completed".into(),
                action: "task.complete".into(),
                by: "tester".into(),
                at: "2026-11-26T20:00:01.000000Z".into(),
            },
        ]
    }

    #[test]
    fn a_sealed_instance_verifies_and_cannot_be_resealed_differently() {
        let dir = tempfile::tempdir().unwrap();
        let (data, t) = (json!({"winner": "ada"}), transitions());
        let sealed = seal(&request(dir.path(), &data, &t)).unwrap();
        assert!(sealed.wrote_data);
        assert_eq!(verify_instance(&sealed.dir), Vec::<Finding>::new());
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(sealed.dir.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(manifest.get(OWNER_FIELD), Some(&Value::Null), "{manifest}");
        // The same seal again confirms and changes nothing.
        let again = seal(&request(dir.path(), &data, &t)).unwrap();
        assert!(!again.wrote_data);
        assert_eq!(
            again,
            Sealed {
                wrote_data: false,
                ..sealed.clone()
            }
        );
        // Different data: refused, nothing changed.
        let other = json!({"winner": "grace"});
        assert!(matches!(
            seal(&request(dir.path(), &other, &t)),
            Err(SealError::AlreadySealed(_))
        ));
        assert_eq!(verify_instance(&sealed.dir), Vec::<Finding>::new());
        let mode = fs::metadata(sealed.dir.join("data.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o222, 0, "data.json is read-only");
    }

    #[test]
    fn one_changed_byte_anywhere_in_any_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (data, t) = (json!({"winner": "ada", "n": 12}), transitions());
        let sealed = seal(&request(dir.path(), &data, &t)).unwrap();
        for file in ["data.json", "manifest.json", "proof.json", "ledger.json"] {
            let path = sealed.dir.join(file);
            let original = fs::read(&path).unwrap();
            // Every position of small files, a spread of positions of larger ones.
            let step = (original.len() / 64).max(1);
            for i in (0..original.len()).step_by(step) {
                let mut bytes = original.clone();
                bytes[i] ^= 0x01;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
                fs::write(&path, &bytes).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap();
                let findings = verify_instance(&sealed.dir);
                assert!(
                    findings.iter().any(|f| f.file.ends_with(file)),
                    "{file} byte {i}: not named in {findings:?}"
                );
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            fs::write(&path, &original).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap();
            assert_eq!(verify_instance(&sealed.dir), Vec::<Finding>::new());
        }
    }

    #[test]
    fn a_crash_after_data_json_is_completed_by_sealing_again() {
        let dir = tempfile::tempdir().unwrap();
        let (data, t) = (json!({"x": 1}), transitions());
        let sealed = seal(&request(dir.path(), &data, &t)).unwrap();
        for f in ["manifest.json", "proof.json", "ledger.json"] {
            fs::remove_file(sealed.dir.join(f)).unwrap();
        }
        assert!(!verify_instance(&sealed.dir).is_empty());
        let again = seal(&request(dir.path(), &data, &t)).unwrap();
        assert!(!again.wrote_data);
        assert_eq!(
            again.manifest_hash, sealed.manifest_hash,
            "re-sealing is byte-identical"
        );
        assert_eq!(verify_instance(&sealed.dir), Vec::<Finding>::new());
    }

    #[test]
    fn ids_that_could_escape_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (data, t) = (json!({}), transitions());
        for id in ["../x", ".hidden", "a/b", ""] {
            let mut r = request(dir.path(), &data, &t);
            r.instance_id = id;
            assert!(matches!(seal(&r), Err(SealError::BadId(_))), "{id}");
        }
    }
}

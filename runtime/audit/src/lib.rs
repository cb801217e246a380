//! The audit ledger of a kernel: `data/ledger/audit.jsonl` (ckp-spec §6), one JSON line per
//! denied connect, denied publish/subscribe, and access through a grant marked `audit: true`:
//! `{timestamp, caller_svid, action, subject | path, result: allow|deny, reason, recorded_by}`,
//! hash-chained: each line carries `seq`, `prev_hash` and its own `hash` ([`verify_chain`]).
//!
//! Owns the file format and the append. Does not decide anything: callers (`ck authz`, the host)
//! say what happened. Every line is also emitted as a `ck::audit` tracing event, so a deny is
//! visible even where the kernel directory is not writable.

pub mod coalesce;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Access granted.
    Allow,
    /// Access refused.
    Deny,
}

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC, microseconds.
    pub timestamp: String,
    /// The SPIFFE ID (or claimed user) of the caller.
    pub caller_svid: String,
    /// What was attempted: `connect`, `publish`, `request`, `subscribe`, or a grant verb.
    pub action: String,
    /// The NATS subject involved, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The file path involved, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The verdict.
    pub result: Verdict,
    /// Why.
    pub reason: String,
    /// Which component decided (`ck authz`, `ck host`).
    pub recorded_by: String,
    /// A machine key for what the line records, for readers that must find it again (e.g.
    /// `seal:{instance}` for a seal's line, which recovery looks for); the reason is prose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For a coalesced refusal ([`coalesce`]): how many like it were counted, not written,
    /// since the previous line of its kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesced: Option<u64>,
}

/// Longest value of a field of an audit line (bytes); `reason` may be longer.
pub const MAX_FIELD: usize = 1024;
/// Longest `reason` of an audit line (bytes).
pub const MAX_REASON: usize = 4096;

/// `field` cut to at most `max` bytes (at a character boundary), marked with how much was cut.
fn bound(field: &mut String, max: usize) {
    if field.len() <= max {
        return;
    }
    let mut end = max;
    while !field.is_char_boundary(end) {
        end -= 1;
    }
    let cut = field.len() - end;
    field.truncate(end);
    field.push_str(&format!("…[cut {cut} bytes]"));
}

impl AuditRecord {
    /// A record stamped now.
    pub fn now(
        caller_svid: impl Into<String>,
        action: impl Into<String>,
        result: Verdict,
        reason: impl Into<String>,
        recorded_by: impl Into<String>,
    ) -> Self {
        Self {
            timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            caller_svid: caller_svid.into(),
            action: action.into(),
            subject: None,
            path: None,
            result,
            reason: reason.into(),
            recorded_by: recorded_by.into(),
            key: None,
            coalesced: None,
        }
    }

    /// This record with every field within its bound ([`MAX_FIELD`], [`MAX_REASON`]): a
    /// caller's strings (a claimed user, a subject) cannot make a line of any size.
    pub fn bounded(&self) -> Self {
        let mut r = self.clone();
        for field in [&mut r.caller_svid, &mut r.action, &mut r.recorded_by] {
            bound(field, MAX_FIELD);
        }
        for field in [&mut r.subject, &mut r.path, &mut r.key]
            .into_iter()
            .flatten()
        {
            bound(field, MAX_FIELD);
        }
        bound(&mut r.reason, MAX_REASON);
        r
    }

    /// With a machine key (see [`AuditRecord::key`]).
    pub fn keyed(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// With the subject involved.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }
}

/// Where a kernel's audit ledger lives.
pub fn ledger_path(kernel_dir: &Path) -> PathBuf {
    ck_fs::layout::DataLayout::of_kernel(kernel_dir).audit_ledger()
}

/// The `prev_hash` of the first line of a ledger.
pub const GENESIS: &str = "blake3:genesis";

/// The hash of one ledger line: blake3 over the line's JSON object without its `hash` field,
/// keys sorted (serde_json's map order), compact.
fn line_hash(line: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut unhashed = line.clone();
    unhashed.remove("hash");
    let bytes = serde_json::to_vec(&unhashed).unwrap_or_default();
    format!("blake3:{}", blake3::hash(&bytes).to_hex())
}

/// The last line's `seq` and `hash` (`None` for an empty ledger), however long the line.
fn last_link(file: &mut std::fs::File) -> std::io::Result<Option<(u64, String)>> {
    let Some(last) = ck_fs::jsonl::last_line(file)? else {
        return Ok(None);
    };
    let value: serde_json::Value = serde_json::from_slice(&last).map_err(std::io::Error::other)?;
    Ok(Some((
        value["seq"].as_u64().unwrap_or(0),
        value["hash"].as_str().unwrap_or_default().to_owned(),
    )))
}

/// Appends `record` to the audit ledger of the kernel in `kernel_dir` (created if missing) and
/// logs it. Each line carries `seq`, the previous line's hash (`prev_hash`) and its own `hash`,
/// so editing or removing a line breaks the chain. Writers (several `ck authz`, the host) take
/// an exclusive lock on the file for the read-last-line-then-append, so the chain stays linear.
pub fn append(kernel_dir: &Path, kernel: &str, record: &AuditRecord) -> std::io::Result<()> {
    append_all(kernel_dir, kernel, std::slice::from_ref(record))
}

/// [`append`] for several records at once: one lock, one write, one fsync (a group commit).
pub fn append_all(kernel_dir: &Path, kernel: &str, records: &[AuditRecord]) -> std::io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let records: Vec<AuditRecord> = records.iter().map(AuditRecord::bounded).collect();
    let records = records.as_slice();
    for record in records {
        let result = match record.result {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        };
        // Refusals are worth a warning; allowed accesses are the ledger's routine.
        match record.result {
            Verdict::Deny => {
                tracing::warn!(target: "ck::audit", kernel, caller = %record.caller_svid, action = %record.action, subject = record.subject.as_deref(), result, reason = %record.reason, "audit")
            }
            Verdict::Allow => {
                tracing::info!(target: "ck::audit", kernel, caller = %record.caller_svid, action = %record.action, subject = record.subject.as_deref(), result, reason = %record.reason, "audit")
            }
        }
    }
    let path = ledger_path(kernel_dir);
    let write = || -> std::io::Result<()> {
        let mut file = ck_fs::jsonl::open_for_append(&path)?;
        file.lock()?;
        // A last line a crash left unfinished was never a whole record: a chain cannot
        // continue from it.
        ck_fs::jsonl::cut_torn_tail(&mut file, &path)?;
        let (mut seq, mut prev) = match last_link(&mut file)? {
            Some((seq, hash)) => (seq, hash),
            None => (0, GENESIS.to_owned()),
        };
        let mut bytes = Vec::new();
        for record in records {
            let serde_json::Value::Object(mut line) =
                serde_json::to_value(record).map_err(std::io::Error::other)?
            else {
                return Err(std::io::Error::other("audit record is not an object"));
            };
            seq += 1;
            line.insert("seq".into(), seq.into());
            line.insert("prev_hash".into(), prev.clone().into());
            let hash = line_hash(&line);
            line.insert("hash".into(), hash.clone().into());
            serde_json::to_writer(&mut bytes, &line).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
            prev = hash;
        }
        // One write: a crash leaves whole lines or none of this group's.
        ck_fs::jsonl::append_bytes(&mut file, &bytes)?;
        file.unlock()
    };
    write().inspect_err(|e| {
        FAILED_APPENDS.fetch_add(1, Ordering::Relaxed);
        tracing::error!(target: "ck::audit", kernel, path = %path.display(), error = %e, lines = records.len(), "audit.write-failed");
    })
}

static FAILED_APPENDS: AtomicU64 = AtomicU64::new(0);

/// Appends that failed since this process started (each also logged as `audit.write-failed`):
/// a host reports itself degraded while this is not zero.
pub fn failed_appends() -> u64 {
    FAILED_APPENDS.load(Ordering::Relaxed)
}

/// A break in a ledger's hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// 1-based line number in `audit.jsonl`.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// Walks a kernel's audit ledger: every line's hash recomputed, every `prev_hash` equal to the
/// hash of the line before, `seq` consecutive. Returns the first break (`None`: intact).
pub fn verify_chain(kernel_dir: &Path) -> std::io::Result<Option<ChainBreak>> {
    let text = match std::fs::read_to_string(ledger_path(kernel_dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut prev = GENESIS.to_owned();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let broken = |problem: String| Ok(Some(ChainBreak { line, problem }));
        let Ok(serde_json::Value::Object(value)) = serde_json::from_str(raw) else {
            return broken("not a JSON object".into());
        };
        if value["seq"].as_u64() != Some(line as u64) {
            return broken(format!("seq is {}, expected {line}", value["seq"]));
        }
        if value["prev_hash"].as_str() != Some(prev.as_str()) {
            return broken(format!(
                "prev_hash {} is not the previous line's hash {prev}",
                value["prev_hash"]
            ));
        }
        let hash = line_hash(&value);
        if value["hash"].as_str() != Some(hash.as_str()) {
            return broken(format!(
                "hash {} does not match the line's content ({hash})",
                value["hash"]
            ));
        }
        prev = hash;
    }
    Ok(None)
}

/// [`append`] on a blocking thread of the current tokio runtime, for callers on an async
/// worker (an fsync must not stall other work). Failures are logged by `append`; without a
/// runtime the append happens inline.
pub fn append_detached(kernel_dir: PathBuf, kernel: String, record: AuditRecord) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || append(&kernel_dir, &kernel, &record));
        }
        Err(_) => {
            let _ = append(&kernel_dir, &kernel, &record);
        }
    }
}

/// Reads every record of a kernel's audit ledger (for tests and `ck verify`).
pub fn read(kernel_dir: &Path) -> std::io::Result<Vec<serde_json::Value>> {
    let text = match std::fs::read_to_string(ledger_path(kernel_dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_are_bounded_whatever_a_caller_sends() {
        let dir = tempfile::tempdir().unwrap();
        // Multi-byte characters across every cut point.
        let huge = "é".repeat(40_000);
        let record = super::AuditRecord::now(
            huge.clone(),
            "request",
            super::Verdict::Deny,
            huge.clone(),
            "test",
        )
        .subject(huge);
        super::append(dir.path(), "K", &record).unwrap();
        super::append(dir.path(), "K", &record).unwrap();
        let text = std::fs::read_to_string(super::ledger_path(dir.path())).unwrap();
        for line in text.lines() {
            assert!(line.len() < 8 * 1024, "{} bytes", line.len());
            assert!(line.contains("…[cut "), "{line}");
        }
        assert_eq!(super::verify_chain(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        let record = |n: u32| {
            super::AuditRecord::now("me", format!("a{n}"), super::Verdict::Allow, "ok", "test")
        };
        super::append_all(dir.path(), "K", &[record(1), record(2)]).unwrap();
        let path = super::ledger_path(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(b"{\"seq\":3,\"timest");
        std::fs::write(&path, &bytes).unwrap();
        assert!(super::verify_chain(dir.path()).unwrap().is_some());
        super::append(dir.path(), "K", &record(3)).unwrap();
        assert_eq!(super::verify_chain(dir.path()).unwrap(), None);
        let lines = super::read(dir.path()).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["seq"], 3);
        assert!(std::fs::read(&path).unwrap().len() > whole);
    }

    use super::*;

    #[test]
    fn appends_whole_lines_that_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = AuditRecord::now(
            "spiffe://t/ck/A/1",
            "subscribe",
            Verdict::Deny,
            "no grant",
            "ck host",
        )
        .subject("ck.b.data.>");
        append(dir.path(), "A", &a).unwrap();
        append(
            dir.path(),
            "A",
            &AuditRecord::now("x", "connect", Verdict::Allow, "ok", "ck authz"),
        )
        .unwrap();
        let lines = read(dir.path()).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["result"], "deny");
        assert_eq!(lines[0]["subject"], "ck.b.data.>");
        assert_eq!(lines[1]["result"], "allow");
        assert!(lines[1].get("subject").is_none());
        assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
        assert_eq!(verify_chain(dir.path()).unwrap(), None);
    }

    #[test]
    fn an_edited_or_removed_line_breaks_the_chain_at_that_line() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let r = AuditRecord::now(format!("caller-{i}"), "publish", Verdict::Deny, "no", "t");
            append(dir.path(), "K", &r).unwrap();
        }
        let path = ledger_path(dir.path());
        let original = std::fs::read_to_string(&path).unwrap();
        // One byte changed in line 3.
        let lines: Vec<&str> = original.lines().collect();
        let edited = lines[2].replace("caller-2", "caller-9");
        let text = [&lines[..2], &[edited.as_str()], &lines[3..]]
            .concat()
            .join("\n")
            + "\n";
        std::fs::write(&path, text).unwrap();
        assert_eq!(verify_chain(dir.path()).unwrap().map(|b| b.line), Some(3));
        // Line 2 removed: line 2 is now the old line 3, whose seq is 3.
        let text = [&lines[..1], &lines[2..]].concat().join("\n") + "\n";
        std::fs::write(&path, text).unwrap();
        assert_eq!(verify_chain(dir.path()).unwrap().map(|b| b.line), Some(2));
    }

    #[test]
    fn concurrent_writers_keep_one_linear_chain() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let dir = dir.path().to_owned();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let r = AuditRecord::now(
                            format!("w{t}-{i}"),
                            "connect",
                            Verdict::Allow,
                            "ok",
                            "t",
                        );
                        append(&dir, "K", &r).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(read(dir.path()).unwrap().len(), 100);
        assert_eq!(verify_chain(dir.path()).unwrap(), None);
    }
}

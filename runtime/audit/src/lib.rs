//! The audit ledger of a kernel: `data/ledger/audit.jsonl` (ckp-spec §6), one JSON line per
//! denied connect, denied publish/subscribe, and access through a grant marked `audit: true`:
//! `{timestamp, caller_svid, action, subject | path, result: allow|deny, reason, recorded_by}`.
//!
//! Owns the file format and the append. Does not decide anything: callers (`ck authz`, the host)
//! say what happened. Every line is also emitted as a `ck::audit` tracing event, so a deny is
//! visible even where the kernel directory is not writable.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

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
        }
    }

    /// With the subject involved.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }
}

/// Where a kernel's audit ledger lives.
pub fn ledger_path(kernel_dir: &Path) -> PathBuf {
    kernel_dir.join("data").join("ledger").join("audit.jsonl")
}

/// Appends `record` to the audit ledger of the kernel in `kernel_dir` (created if missing) and
/// logs it. One `write` of a whole line on an `O_APPEND` file, so concurrent writers (several
/// `ck authz` processes, the host) never interleave within a line.
pub fn append(kernel_dir: &Path, kernel: &str, record: &AuditRecord) -> std::io::Result<()> {
    let result = match record.result {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
    };
    tracing::warn!(target: "ck::audit", kernel, caller = %record.caller_svid, action = %record.action, subject = record.subject.as_deref(), result, reason = %record.reason, "audit");
    let path = ledger_path(kernel_dir);
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.write_all(&line)?;
        file.sync_data()
    };
    write().inspect_err(|e| {
        tracing::error!(target: "ck::audit", kernel, path = %path.display(), error = %e, "audit.write-failed");
    })
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
    }
}

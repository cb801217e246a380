//! The CK and TOOL loops' event journal: `.ck/events.jsonl`, one line per loop event, appended
//! (and fsynced) by whoever changes a loop — `ck build`, `ck promote`, the `ck dev` runner —
//! and published on NATS by the host serving the kernel, which keeps how far it got in
//! `.ck/events.published`. Commands that change a loop therefore need no NATS credentials, and
//! an event recorded while no host runs is published when one starts. Every entry carries a
//! deterministic message id, so publishing an entry twice is recognisable downstream.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One recorded loop event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Position in the journal, from 1.
    pub seq: u64,
    /// `ck.commit`, `tool.promote`, ...
    pub event: String,
    /// `ck.{guid}.{loop}.{event}`.
    pub subject: String,
    /// The deterministic `Nats-Msg-Id`.
    pub msg_id: String,
    /// When it was recorded (RFC 3339).
    pub time: String,
    /// The event's data (the CloudEvent `data`).
    pub data: Value,
}

/// The journal of one kernel's state directory.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
    cursor: PathBuf,
}

impl Journal {
    /// The journal kept in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("events.jsonl"),
            cursor: state_dir.join("events.published"),
        }
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry, in order. A last line cut short by a crash is skipped (its change was not
    /// completed either: entries are appended after the change they report).
    pub fn entries(&self) -> std::io::Result<Vec<JournalEntry>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Appends events (event name, subject, message id, data); the caller holds the state lock.
    pub fn append(&self, events: Vec<(String, String, String, Value)>) -> std::io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let last = self.entries()?.last().map_or(0, |e| e.seq);
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut bytes = Vec::new();
        for (seq, (event, subject, msg_id, data)) in (last + 1..).zip(events) {
            let entry = JournalEntry {
                seq,
                event,
                subject,
                msg_id,
                time: time.clone(),
                data,
            };
            serde_json::to_writer(&mut bytes, &entry)?;
            bytes.push(b'\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(&bytes)?;
        file.sync_data()
    }

    /// The last sequence number a host published.
    pub fn published(&self) -> u64 {
        std::fs::read_to_string(&self.cursor)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Entries not yet published.
    pub fn unpublished(&self) -> std::io::Result<Vec<JournalEntry>> {
        let done = self.published();
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| e.seq > done)
            .collect())
    }

    /// Records that every entry up to `seq` was published.
    pub fn mark_published(&self, seq: u64) -> std::io::Result<()> {
        crate::state::write_atomically(&self.cursor, seq.to_string().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_numbered_and_the_cursor_moves() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        let ev = |n: &str| {
            (
                n.to_owned(),
                format!("ck.g.{n}"),
                format!("g:{n}"),
                Value::Null,
            )
        };
        journal
            .append(vec![ev("ck.commit"), ev("tool.commit")])
            .unwrap();
        journal.append(vec![ev("ck.promote")]).unwrap();
        let all = journal.entries().unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        journal.mark_published(2).unwrap();
        let left = journal.unpublished().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].event, "ck.promote");
        // A torn last line is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(journal.path())
            .unwrap()
            .write_all(b"{\"seq\":4,\"ev")
            .unwrap();
        assert_eq!(journal.entries().unwrap().len(), 3);
    }
}

//! The CK and TOOL loops' event journal: `.ck/events.jsonl`, one line per loop event, appended
//! (and fsynced) by whoever changes a loop — `ck build`, `ck promote`, the `ck dev` runner —
//! and published on NATS by the host serving the kernel, which keeps how far it got in
//! `.ck/events.published`. Commands that change a loop therefore need no NATS credentials, and
//! an event recorded while no host runs is published when one starts. Every entry carries a
//! deterministic message id, so publishing an entry twice is recognisable downstream.

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
        ck_fs::jsonl::read(&self.path)
    }

    /// Appends events (event name, subject, message id, data); the caller holds the state lock.
    pub fn append(&self, events: Vec<(String, String, String, Value)>) -> std::io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut file = ck_fs::jsonl::open_for_append(&self.path)?;
        ck_fs::jsonl::cut_torn_tail(&mut file, &self.path)?;
        // Numbering continues from the last whole entry (only the end of the file is read).
        let last = match ck_fs::jsonl::last_line(&mut file)? {
            Some(line) => {
                serde_json::from_slice::<JournalEntry>(&line)
                    .map_err(std::io::Error::other)?
                    .seq
            }
            None => 0,
        };
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let entries = (last + 1..)
            .zip(events)
            .map(|(seq, (event, subject, msg_id, data))| JournalEntry {
                seq,
                event,
                subject,
                msg_id,
                time: time.clone(),
                data,
            });
        ck_fs::jsonl::append_bytes(&mut file, &ck_fs::jsonl::encode(entries)?)
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
        ck_fs::write_atomic(&self.cursor, seq.to_string().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        // The next append is not lost to the torn line, and continues the numbering.
        journal.append(vec![ev("tool.promote")]).unwrap();
        let all = journal.entries().unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(all[3].event, "tool.promote");
    }

    #[test]
    fn numbering_continues_past_a_long_journal() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        // Entries well past the tail chunk, some larger than it.
        for n in 0..300 {
            let size = if n % 100 == 7 { 70_000 } else { 500 };
            let data = Value::String("x".repeat(size));
            journal
                .append(vec![(
                    "ck.commit".into(),
                    "s".into(),
                    format!("g:{n}"),
                    data,
                )])
                .unwrap();
        }
        let big = Value::String("y".repeat(100_000));
        journal
            .append(vec![("ck.commit".into(), "s".into(), "g:big".into(), big)])
            .unwrap();
        journal
            .append(vec![(
                "ck.promote".into(),
                "s".into(),
                "g:last".into(),
                Value::Null,
            )])
            .unwrap();
        let seqs: Vec<u64> = journal.entries().unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=302).collect::<Vec<_>>());
    }
}

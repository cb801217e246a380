//! Durable files: the one implementation of each crash-safety rule ck relies on.
//!
//! - [`write_atomic`]: a file is replaced whole or not at all — written beside its target,
//!   fsynced, renamed over it, and the directory fsynced so the rename itself survives a
//!   power cut. [`write_atomic_private`] does the same for secrets (mode 0600 from the start).
//! - [`jsonl`]: JSON-lines logs (the audit ledger, the DATA outbox, the loop journal) with one
//!   policy for a last line a crash cut short: it was never completely written (its fsync did
//!   not return), so it is cut off before the next append, and readers skip it.
//! - [`layout`]: where the files of a kernel's DATA tree live, and which instance ids are safe
//!   path components. Every crate asks it instead of joining `data/…` by hand.
//!
//! It knows nothing of kernels, NATS or formats beyond "one JSON value per line".

pub mod jsonl;
pub mod layout;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `bytes` atomically and durably (see the crate doc).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, bytes, &OpenOptions::new())
}

/// [`write_atomic`] for a secret: the file is created with mode 0600 (never readable by
/// others, not even between its creation and the rename).
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    write_atomic_with(path, bytes, &options)
}

fn write_atomic_with(path: &Path, bytes: &[u8], options: &OpenOptions) -> std::io::Result<()> {
    let tmp = staging_path(path);
    let write = || -> std::io::Result<()> {
        let mut file = options.clone().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path)
}

/// A fresh staging name beside `path`, `{name}.tmp-{pid}-{n}`: unique within this process and
/// across processes, and of the one shape every reader of a directory ignores (the DATA
/// repository, `ck dev`'s watcher), so a crash's leftovers are never taken for real files.
pub fn staging_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!("{name}.tmp-{}-{n}", std::process::id()))
}

/// Fsyncs the directory holding `path`, so that a rename or a new link into it is durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// Fsyncs a directory.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The contents of `path`, or `None` when it does not exist (any other failure is an error).
pub fn read_if_exists(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_whole_file_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        write_atomic(&path, b"first, and longer").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["record.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_private_write_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_atomic_private(&path, b"secret").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("f");
        assert!(write_atomic(&path, b"x").is_err());
        assert!(read_if_exists(&dir.path().join("f")).unwrap().is_none());
    }
}

//! Where the files of a kernel's DATA tree live (`{kernel}/data/`), formed in one place, and
//! which instance ids may become a path component.

use std::path::{Path, PathBuf};

/// The instances' directory inside `data/` (also their path inside the DATA repository).
pub const INSTANCES_DIR: &str = "instances";

/// The DATA tree of one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLayout {
    data: PathBuf,
}

impl DataLayout {
    /// The DATA tree of the kernel whose directory is `kernel_dir`.
    pub fn of_kernel(kernel_dir: &Path) -> Self {
        Self {
            data: kernel_dir.join("data"),
        }
    }

    /// The DATA tree at `data_dir` itself.
    pub fn at(data_dir: &Path) -> Self {
        Self {
            data: data_dir.to_path_buf(),
        }
    }

    /// `data/`: the DATA git repository's work tree.
    pub fn dir(&self) -> &Path {
        &self.data
    }

    /// `data/instances/`.
    pub fn instances(&self) -> PathBuf {
        self.data.join(INSTANCES_DIR)
    }

    /// `data/instances/{id}/` (check the id with [`valid_instance_id`] first when it comes
    /// from outside).
    pub fn instance(&self, id: &str) -> PathBuf {
        self.instances().join(id)
    }

    /// `data/ledger/`.
    pub fn ledger_dir(&self) -> PathBuf {
        self.data.join("ledger")
    }

    /// `data/ledger/audit.jsonl`: the hash-chained audit ledger.
    pub fn audit_ledger(&self) -> PathBuf {
        self.ledger_dir().join("audit.jsonl")
    }

    /// `data/ledger/pending_events.jsonl`: DATA events the broker has not confirmed yet.
    pub fn pending_events(&self) -> PathBuf {
        self.ledger_dir().join("pending_events.jsonl")
    }

    /// `data/.host-id`: which host owes the seals it acknowledged.
    pub fn host_id(&self) -> PathBuf {
        self.data.join(".host-id")
    }
}

/// Whether `id` is safe as one path component under `data/instances/`: not empty, at most
/// 200 bytes, only ASCII letters, digits, `-`, `_` and `.`, and not starting with `.` (no
/// `.`, `..` or hidden names).
pub fn valid_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_the_kernels_data_directory() {
        let layout = DataLayout::of_kernel(Path::new("/k"));
        assert_eq!(
            layout.audit_ledger(),
            Path::new("/k/data/ledger/audit.jsonl")
        );
        assert_eq!(
            layout.pending_events(),
            Path::new("/k/data/ledger/pending_events.jsonl")
        );
        assert_eq!(layout.instance("i-1"), Path::new("/k/data/instances/i-1"));
        assert_eq!(layout.host_id(), Path::new("/k/data/.host-id"));
        assert_eq!(DataLayout::at(Path::new("/k/data")), layout);
    }

    #[test]
    fn instance_ids_cannot_leave_their_directory() {
        assert!(valid_instance_id("i-round-1-1795731508"));
        for bad in ["", ".", "..", "../x", ".hidden", "a/b", "a\\b", "a b", "é"] {
            assert!(!valid_instance_id(bad), "{bad:?}");
        }
        assert!(!valid_instance_id(&"x".repeat(201)));
    }
}

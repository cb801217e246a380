//! One writer at a time per loop repository, and the git lock files a killed writer leaves.
//!
//! libgit2 takes `index.lock`, `HEAD.lock` and `refs/…/name.lock` with `O_EXCL` while it writes
//! and deletes them when done. A host killed (`kill -9`, power loss) between the two leaves the
//! file behind, and every later commit fails with "failed to create locked file" — the seals
//! stay uncommitted forever. Every writer of a loop repository first takes [`WriterLock`], an
//! advisory lock on `{git_dir}/ck-writer.lock` that the kernel releases when its holder dies.
//! Whoever holds it is the only live writer, so any git lock file found then is a dead
//! writer's and is removed (and reported).

use std::fs::File;
use std::path::{Path, PathBuf};

/// Name of the advisory lock file inside a repository's git directory.
const WRITER_LOCK: &str = "ck-writer.lock";

/// The repository's writer lock, held until dropped.
#[derive(Debug)]
pub struct WriterLock {
    file: File,
    removed: Vec<PathBuf>,
}

impl WriterLock {
    /// Waits for the writer lock of the repository whose git directory is `git_dir`, then
    /// removes the git lock files a dead writer left there.
    pub fn take(git_dir: &Path) -> std::io::Result<Self> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(git_dir.join(WRITER_LOCK))?;
        file.lock()?;
        let mut removed = Vec::new();
        let mut candidates = vec![
            git_dir.join("index.lock"),
            git_dir.join("HEAD.lock"),
            git_dir.join("packed-refs.lock"),
            git_dir.join("config.lock"),
        ];
        ref_locks(&git_dir.join("refs"), &mut candidates);
        for path in candidates {
            if path.is_file() && std::fs::remove_file(&path).is_ok() {
                tracing::warn!(path = %path.display(), "git.stale-lock-removed: a writer died while committing");
                removed.push(path);
            }
        }
        Ok(Self { file, removed })
    }

    /// The stale git lock files removed when the lock was taken.
    pub fn removed(&self) -> &[PathBuf] {
        &self.removed
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// Every `*.lock` file under `refs/`.
fn ref_locks(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => ref_locks(&path, found),
            Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "lock") => {
                found.push(path)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_what_a_dead_writer_left_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let git = tmp.path();
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        for f in [
            "index.lock",
            "refs/heads/main.lock",
            "refs/heads/main",
            "index",
        ] {
            std::fs::write(git.join(f), b"x").unwrap();
        }
        let lock = WriterLock::take(git).unwrap();
        assert_eq!(lock.removed().len(), 2, "{:?}", lock.removed());
        assert!(!git.join("index.lock").exists());
        assert!(!git.join("refs/heads/main.lock").exists());
        assert!(git.join("refs/heads/main").exists() && git.join("index").exists());
    }
}

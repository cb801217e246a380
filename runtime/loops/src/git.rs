//! Snapshot repositories of the CK and TOOL loops: bare git repositories whose commits are whole
//! snapshots of a set of files, built without a work tree or an on-disk index (the files stay
//! where the author keeps them; the repository only records them).

use std::path::{Path, PathBuf};

use git2::{IndexEntry, IndexTime, Oid, Repository, Signature};
use thiserror::Error;

/// A git operation on a loop repository failed.
#[derive(Debug, Error)]
#[error("{repo}: {message}")]
pub struct GitError {
    /// The repository.
    pub repo: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// One file of a snapshot: its path inside the tree (`/`-separated) and its bytes.
pub type SnapshotFile = (String, Vec<u8>);

/// A bare repository holding one loop's history.
pub struct LoopRepo {
    repo: Repository,
    path: PathBuf,
}

impl std::fmt::Debug for LoopRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopRepo")
            .field("path", &self.path)
            .finish()
    }
}

/// A commit this repository made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The new commit.
    pub commit: String,
    /// The branch head before it, if the branch existed.
    pub previous: Option<String>,
}

impl LoopRepo {
    /// Opens the bare repository at `path`, creating it when absent.
    pub fn open_or_init(path: &Path) -> Result<Self, GitError> {
        let repo = match Repository::open_bare(path) {
            Ok(r) => r,
            Err(_) => Repository::init_bare(path).map_err(|e| GitError {
                repo: path.to_owned(),
                message: format!("cannot create the repository: {}", e.message()),
            })?,
        };
        Ok(Self {
            repo,
            path: path.to_owned(),
        })
    }

    /// Opens an existing repository (None when there is none at `path`).
    pub fn open(path: &Path) -> Option<Self> {
        Repository::open_bare(path).ok().map(|repo| Self {
            repo,
            path: path.to_owned(),
        })
    }

    /// The repository's writer lock (see [`crate::writer_lock`]), taken before every write.
    fn writer(&self) -> Result<crate::writer_lock::WriterLock, GitError> {
        crate::writer_lock::WriterLock::take(&self.path).map_err(|e| GitError {
            repo: self.path.clone(),
            message: format!("taking the writer lock: {e}"),
        })
    }

    fn err(&self, what: &str, e: git2::Error) -> GitError {
        GitError {
            repo: self.path.clone(),
            message: format!("{what}: {}", e.message()),
        }
    }

    /// The commit `branch` (`refs/heads/{branch}`) points to.
    pub fn head(&self, branch: &str) -> Option<String> {
        self.repo
            .refname_to_id(&format!("refs/heads/{branch}"))
            .ok()
            .map(|o| o.to_string())
    }

    /// Resolves a branch name, `refs/…` name or (abbreviated) commit id to a commit id.
    pub fn resolve(&self, spec: &str) -> Option<String> {
        for name in [format!("refs/heads/{spec}"), spec.to_owned()] {
            if let Ok(oid) = self.repo.refname_to_id(&name) {
                return Some(oid.to_string());
            }
        }
        let object = self.repo.revparse_single(spec).ok()?;
        let commit = object.peel_to_commit().ok()?;
        Some(commit.id().to_string())
    }

    /// Commits `files` as the whole tree on `branch`, unless the tree is what the branch already
    /// holds (then None: nothing changed).
    pub fn commit_snapshot(
        &self,
        branch: &str,
        files: &[SnapshotFile],
        message: &str,
    ) -> Result<Option<Committed>, GitError> {
        let _writer = self.writer()?;
        let mut index = git2::Index::new().map_err(|e| self.err("index", e))?;
        for (path, bytes) in files {
            let id = self
                .repo
                .blob(bytes)
                .map_err(|e| self.err("writing a blob", e))?;
            index
                .add(&entry(path, id, bytes.len()))
                .map_err(|e| self.err(&format!("adding {path}"), e))?;
        }
        let tree_id = index
            .write_tree_to(&self.repo)
            .map_err(|e| self.err("writing the tree", e))?;
        let refname = format!("refs/heads/{branch}");
        let parent = self
            .repo
            .refname_to_id(&refname)
            .ok()
            .and_then(|id| self.repo.find_commit(id).ok());
        if parent.as_ref().is_some_and(|p| p.tree_id() == tree_id) {
            return Ok(None);
        }
        let tree = self
            .repo
            .find_tree(tree_id)
            .map_err(|e| self.err("reading the tree", e))?;
        let signature =
            Signature::now("ck", "ck@localhost").map_err(|e| self.err("signature", e))?;
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let id = self
            .repo
            .commit(
                Some(&refname),
                &signature,
                &signature,
                message,
                &tree,
                &parents,
            )
            .map_err(|e| self.err("committing", e))?;
        Ok(Some(Committed {
            commit: id.to_string(),
            previous: parent.map(|p| p.id().to_string()),
        }))
    }

    /// Points `branch` at `commit`; returns where it pointed before.
    pub fn set_branch(
        &self,
        branch: &str,
        commit: &str,
        message: &str,
    ) -> Result<Option<String>, GitError> {
        let oid = Oid::from_str(commit).map_err(|e| self.err("commit id", e))?;
        let _writer = self.writer()?;
        let previous = self.head(branch);
        self.repo
            .reference(&format!("refs/heads/{branch}"), oid, true, message)
            .map_err(|e| self.err(&format!("moving {branch}"), e))?;
        Ok(previous)
    }

    /// Removes `branch` (nothing when it does not exist).
    pub fn delete_branch(&self, branch: &str) -> Result<(), GitError> {
        let _writer = self.writer()?;
        if let Ok(mut r) = self.repo.find_reference(&format!("refs/heads/{branch}")) {
            r.delete().map_err(|e| self.err("deleting a branch", e))?;
        }
        Ok(())
    }

    /// The bytes of `path` in `commit`'s tree.
    pub fn read(&self, commit: &str, path: &str) -> Result<Option<Vec<u8>>, GitError> {
        let oid = Oid::from_str(commit).map_err(|e| self.err("commit id", e))?;
        let commit = self
            .repo
            .find_commit(oid)
            .map_err(|e| self.err("finding the commit", e))?;
        let tree = commit.tree().map_err(|e| self.err("reading the tree", e))?;
        let Ok(entry) = tree.get_path(Path::new(path)) else {
            return Ok(None);
        };
        let blob = self
            .repo
            .find_blob(entry.id())
            .map_err(|e| self.err(&format!("reading {path}"), e))?;
        Ok(Some(blob.content().to_vec()))
    }

    /// Every file of `commit`'s tree, with its path (`/`-separated) and bytes.
    pub fn files(&self, commit: &str) -> Result<Vec<SnapshotFile>, GitError> {
        let oid = Oid::from_str(commit).map_err(|e| self.err("commit id", e))?;
        let tree = self
            .repo
            .find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(|e| self.err("reading the tree", e))?;
        let mut files = Vec::new();
        let mut failed = None;
        tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() != Some(git2::ObjectType::Blob) {
                return git2::TreeWalkResult::Ok;
            }
            let path = format!("{dir}{}", entry.name().unwrap_or_default());
            match self.repo.find_blob(entry.id()) {
                Ok(blob) => files.push((path, blob.content().to_vec())),
                Err(e) => {
                    failed = Some(self.err(&format!("reading {path}"), e));
                    return git2::TreeWalkResult::Abort;
                }
            }
            git2::TreeWalkResult::Ok
        })
        .map_err(|e| self.err("walking the tree", e))?;
        match failed {
            Some(e) => Err(e),
            None => Ok(files),
        }
    }

    /// The first line of `commit`'s message.
    pub fn summary(&self, commit: &str) -> Option<String> {
        let commit = self.repo.find_commit(Oid::from_str(commit).ok()?).ok()?;
        commit.summary().map(str::to_owned)
    }
}

fn entry(path: &str, id: Oid, size: usize) -> IndexEntry {
    IndexEntry {
        ctime: IndexTime::new(0, 0),
        mtime: IndexTime::new(0, 0),
        dev: 0,
        ino: 0,
        mode: 0o100644,
        uid: 0,
        gid: 0,
        file_size: u32::try_from(size).unwrap_or(u32::MAX),
        id,
        flags: 0,
        flags_extended: 0,
        path: path.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_commit_only_changes_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo = LoopRepo::open_or_init(&dir.path().join("x.git")).unwrap();
        let files = vec![
            ("a.yaml".to_owned(), b"one".to_vec()),
            ("sub/b.txt".to_owned(), b"two".to_vec()),
        ];
        let first = repo
            .commit_snapshot("develop", &files, "first")
            .unwrap()
            .unwrap();
        assert_eq!(first.previous, None);
        assert!(
            repo.commit_snapshot("develop", &files, "again")
                .unwrap()
                .is_none()
        );
        let changed = vec![("a.yaml".to_owned(), b"three".to_vec())];
        let second = repo
            .commit_snapshot("develop", &changed, "second")
            .unwrap()
            .unwrap();
        assert_eq!(second.previous.as_deref(), Some(first.commit.as_str()));
        assert_eq!(
            repo.read(&first.commit, "sub/b.txt").unwrap().unwrap(),
            b"two"
        );
        assert_eq!(repo.read(&second.commit, "sub/b.txt").unwrap(), None);
        assert_eq!(repo.resolve("develop").unwrap(), second.commit);
        assert_eq!(repo.resolve(&first.commit[..10]).unwrap(), first.commit);
        assert_eq!(repo.set_branch("stable", &first.commit, "m").unwrap(), None);
        assert_eq!(repo.head("stable").unwrap(), first.commit);
        assert_eq!(repo.summary(&second.commit).unwrap(), "second");
    }
}

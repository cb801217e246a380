//! The DATA loop's git repository: a kernel's `data/` directory, where every seal becomes a
//! commit (several seals may share one under load) and history is only ever appended to.

use std::path::{Path, PathBuf};

use git2::{Delta, Repository, Signature};
use thiserror::Error;

use super::instance::Finding;

/// Files of `data/` that are not part of the DATA loop's history: the host's identity, the
/// event queue (transient by nature) and staging files of interrupted seals.
const IGNORED: &str = ".host-id\nledger/pending_events.jsonl\nledger/*.tmp\n*.tmp-*\n";

/// Files of instances, per instance id (`instances/{id}/{file}`).
pub type InstanceFiles = Vec<(String, Vec<String>)>;

/// A git operation on the DATA repository failed.
#[derive(Debug, Error)]
#[error("DATA repository {dir}: {error}")]
pub struct RepoError {
    /// The repository's directory.
    pub dir: PathBuf,
    /// What git said.
    pub error: git2::Error,
}

/// A kernel's DATA repository.
pub struct DataRepo {
    repo: Repository,
    dir: PathBuf,
}

impl std::fmt::Debug for DataRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataRepo").field("dir", &self.dir).finish()
    }
}

fn instance_of(path: &Path) -> Option<String> {
    let mut parts = path.components();
    match (parts.next(), parts.next()) {
        (Some(first), Some(id)) if first.as_os_str() == ck_fs::layout::INSTANCES_DIR => {
            Some(id.as_os_str().to_string_lossy().into_owned())
        }
        _ => None,
    }
}

/// The files of a sealed instance (never a crash's staging leftovers), sorted.
fn instance_files(data_dir: &Path, id: &str) -> Vec<String> {
    let mut files: Vec<String> =
        std::fs::read_dir(data_dir.join(ck_fs::layout::INSTANCES_DIR).join(id))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && super::instance::staging_pid(n).is_none())
            .collect();
    files.sort();
    files
}

impl DataRepo {
    /// Opens the repository in `kernel_dir/data`, creating it (with its ignore list) if needed.
    pub fn open_or_init(kernel_dir: &Path) -> Result<Self, RepoError> {
        let dir = ck_fs::layout::DataLayout::of_kernel(kernel_dir)
            .dir()
            .to_path_buf();
        let err = |error| RepoError {
            dir: dir.clone(),
            error,
        };
        let repo = match Repository::open(&dir) {
            Ok(r) => r,
            Err(_) => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| err(git2::Error::from_str(&e.to_string())))?;
                let repo = Repository::init(&dir).map_err(err)?;
                std::fs::write(dir.join(".gitignore"), IGNORED)
                    .map_err(|e| err(git2::Error::from_str(&e.to_string())))?;
                repo
            }
        };
        Ok(Self { repo, dir })
    }

    fn err(&self, error: git2::Error) -> RepoError {
        RepoError {
            dir: self.dir.clone(),
            error,
        }
    }

    /// Sealed instances (their proof present) with files `HEAD` does not contain yet, each with
    /// those files: a seal not committed (its `proof.json` among them) or amendments written
    /// since.
    pub fn uncommitted_instances(&self) -> Result<InstanceFiles, RepoError> {
        let head = self.repo.head().ok().and_then(|h| h.peel_to_tree().ok());
        let mut found: Vec<(String, Vec<String>)> =
            std::fs::read_dir(self.dir.join(ck_fs::layout::INSTANCES_DIR))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().join("proof.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .map(|id| {
                    let missing: Vec<String> = instance_files(&self.dir, &id)
                        .into_iter()
                        .filter(|f| {
                            head.as_ref().is_none_or(|t| {
                                t.get_path(
                                    &Path::new(ck_fs::layout::INSTANCES_DIR).join(&id).join(f),
                                )
                                .is_err()
                            })
                        })
                        .collect();
                    (id, missing)
                })
                .filter(|(_, missing)| !missing.is_empty())
                .collect();
        found.sort();
        Ok(found)
    }

    /// Commits the files of `instances` and the audit ledger as they are now, in one commit by
    /// `author`. Returns the commit id (`None`: nothing to commit).
    pub fn commit_instances(
        &self,
        instances: &[String],
        author: &str,
        message: &str,
    ) -> Result<Option<String>, RepoError> {
        if instances.is_empty() {
            return Ok(None);
        }
        let _writer = crate::writer_lock::WriterLock::take(self.repo.path()).map_err(|e| {
            self.err(git2::Error::from_str(&format!(
                "taking the writer lock: {e}"
            )))
        })?;
        let mut index = self.repo.index().map_err(|e| self.err(e))?;
        let mut paths = vec![PathBuf::from(".gitignore")];
        for id in instances {
            paths.extend(
                instance_files(&self.dir, id)
                    .into_iter()
                    .map(|f| Path::new(ck_fs::layout::INSTANCES_DIR).join(id).join(f)),
            );
        }
        let add = |index: &mut git2::Index, path: &Path| {
            index.add_path(path).map_err(|e| {
                self.err(git2::Error::from_str(&format!(
                    "adding {}: {}",
                    path.display(),
                    e.message()
                )))
            })
        };
        for path in paths.iter().filter(|p| self.dir.join(p).is_file()) {
            add(&mut index, path)?;
        }
        // The audit ledger grows while we commit: hold its lock (appenders take it
        // exclusively) only while it is read, so the snapshot ends on a whole line.
        let ledger = Path::new("ledger/audit.jsonl");
        if let Ok(file) = std::fs::File::open(self.dir.join(ledger))
            && file.lock_shared().is_ok()
        {
            let added = add(&mut index, ledger);
            let _ = file.unlock();
            added?;
        }
        index.write().map_err(|e| self.err(e))?;
        let tree_id = index.write_tree().map_err(|e| self.err(e))?;
        let tree = self.repo.find_tree(tree_id).map_err(|e| self.err(e))?;
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        if parent.as_ref().is_some_and(|p| p.tree_id() == tree_id) {
            return Ok(None);
        }
        let signature =
            Signature::now("ck host", &format!("{author}@ck.local")).map_err(|e| self.err(e))?;
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let id = self
            .repo
            .commit(
                Some("HEAD"),
                &signature,
                &signature,
                message,
                &tree,
                &parents,
            )
            .map_err(|e| self.err(e))?;
        Ok(Some(id.to_string()))
    }

    /// The `HEAD` commit and, per instance, the files it added.
    pub fn head_instances(&self) -> Result<Option<(String, InstanceFiles)>, RepoError> {
        let Some(head) = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok()) else {
            return Ok(None);
        };
        let tree = head.tree().map_err(|e| self.err(e))?;
        let parent_tree = match head.parent(0) {
            Ok(p) => Some(p.tree().map_err(|e| self.err(e))?),
            Err(_) => None,
        };
        let diff = self
            .repo
            .diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None)
            .map_err(|e| self.err(e))?;
        let mut added: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for delta in diff.deltas().filter(|d| d.status() == Delta::Added) {
            let Some(path) = delta.new_file().path() else {
                continue;
            };
            if let (Some(id), Some(file)) = (instance_of(path), path.file_name()) {
                added
                    .entry(id)
                    .or_default()
                    .push(file.to_string_lossy().into_owned());
            }
        }
        Ok(Some((head.id().to_string(), added.into_iter().collect())))
    }
}

/// Walks the DATA repository's history: every sealed file was added once and never modified or
/// deleted by a later commit, and each sealed file on disk equals its committed bytes.
/// Instances not committed yet are returned separately (a seal not yet committed is not a
/// failure; the host commits it).
pub fn verify_history(kernel_dir: &Path) -> (Vec<Finding>, Vec<String>) {
    let dir = ck_fs::layout::DataLayout::of_kernel(kernel_dir)
        .dir()
        .to_path_buf();
    let mut findings = Vec::new();
    let mut uncommitted = Vec::new();
    // Without a repository or a first commit, every instance on disk is one the history does
    // not know.
    let sealed_on_disk = || {
        let mut ids: Vec<String> = std::fs::read_dir(dir.join(ck_fs::layout::INSTANCES_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("data.json").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids
    };
    let Ok(repo) = Repository::open(&dir) else {
        return (findings, sealed_on_disk());
    };
    if repo.head().is_err() {
        return (findings, sealed_on_disk());
    }
    let fail = |findings: &mut Vec<Finding>, file: PathBuf, problem: String| {
        findings.push(Finding { file, problem })
    };
    let walked = (|| -> Result<(), git2::Error> {
        let mut walk = repo.revwalk()?;
        walk.push_head()?;
        walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)?;
        for oid in walk {
            let commit = repo.find_commit(oid?)?;
            let tree = commit.tree()?;
            let parent_tree = match commit.parent(0) {
                Ok(p) => Some(p.tree()?),
                Err(_) => None,
            };
            let diff = repo.diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None)?;
            for delta in diff.deltas() {
                let Some(path) = delta.old_file().path().or(delta.new_file().path()) else {
                    continue;
                };
                if instance_of(path).is_some()
                    && matches!(delta.status(), Delta::Modified | Delta::Deleted)
                {
                    let short = &commit.id().to_string()[..12];
                    fail(
                        &mut findings,
                        dir.join(path),
                        format!(
                            "changed after it was sealed: commit {short} ({}) {} it",
                            commit.summary().unwrap_or_default(),
                            if delta.status() == Delta::Deleted {
                                "deletes"
                            } else {
                                "rewrites"
                            }
                        ),
                    );
                }
            }
        }
        // What is on disk must be what was committed.
        let head = repo.head()?.peel_to_tree()?;
        for entry in std::fs::read_dir(dir.join(ck_fs::layout::INSTANCES_DIR))
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !entry.path().join("data.json").exists() {
                continue;
            }
            if head
                .get_path(
                    &Path::new(ck_fs::layout::INSTANCES_DIR)
                        .join(&id)
                        .join("proof.json"),
                )
                .is_err()
            {
                uncommitted.push(id);
                continue;
            }
            for file in instance_files(&dir, &id) {
                let rel = Path::new(ck_fs::layout::INSTANCES_DIR)
                    .join(&id)
                    .join(&file);
                let on_disk = std::fs::read(dir.join(&rel)).unwrap_or_default();
                let committed = head
                    .get_path(&rel)
                    .and_then(|e| e.to_object(&repo))
                    .and_then(|o| o.peel_to_blob())
                    .map(|b| b.content().to_vec());
                match committed {
                    Ok(bytes) if bytes == on_disk => {}
                    Ok(_) => fail(
                        &mut findings,
                        dir.join(&rel),
                        "differs from the bytes committed when it was sealed".into(),
                    ),
                    // Written since the last commit (an amendment): the host commits it.
                    Err(_) => {
                        if uncommitted.last() != Some(&id) {
                            uncommitted.push(id.clone());
                        }
                    }
                }
            }
        }
        // What was committed must still be on disk: a sealed file deleted from the tree (with
        // or without a commit) is a broken link, not a smaller tree.
        let head_id = repo.head()?.peel_to_commit()?.id().to_string();
        if let Some(committed) = head
            .get_name(ck_fs::layout::INSTANCES_DIR)
            .and_then(|e| e.to_object(&repo).ok())
            .and_then(|o| o.into_tree().ok())
        {
            for instance in committed.iter() {
                let id = instance.name().unwrap_or_default().to_owned();
                let Some(files) = instance
                    .to_object(&repo)
                    .ok()
                    .and_then(|o| o.into_tree().ok())
                else {
                    continue;
                };
                for file in files.iter() {
                    let rel = Path::new(ck_fs::layout::INSTANCES_DIR)
                        .join(&id)
                        .join(file.name().unwrap_or_default());
                    if !dir.join(&rel).is_file() {
                        fail(
                            &mut findings,
                            dir.join(&rel),
                            format!(
                                "committed (commit {}) but missing from the tree",
                                &head_id[..12]
                            ),
                        );
                    }
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = walked {
        fail(
            &mut findings,
            dir.join(".git"),
            format!("cannot read history: {e}"),
        );
    }
    uncommitted.sort();
    (findings, uncommitted)
}

//! The DATA repository after a writer was killed mid-commit.

use ck_loops::data::DataRepo;

/// A host killed while libgit2 held its lock files leaves them behind; the next host's commit
/// must still go through (the seals would otherwise stay uncommitted forever).
#[test]
fn a_commit_goes_through_the_locks_a_killed_writer_left() {
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path();
    let repo = DataRepo::open_or_init(kernel).unwrap();
    let instance = kernel.join("data/instances/i-1");
    std::fs::create_dir_all(&instance).unwrap();
    std::fs::write(instance.join("proof.json"), b"{}").unwrap();
    let git = kernel.join("data/.git");
    std::fs::create_dir_all(git.join("refs/heads")).unwrap();
    for stale in [
        "index.lock",
        "HEAD.lock",
        "refs/heads/master.lock",
        "refs/heads/main.lock",
    ] {
        std::fs::write(git.join(stale), b"").unwrap();
    }
    let commit = repo
        .commit_instances(&["i-1".to_owned()], "host", "seal i-1")
        .unwrap();
    assert!(commit.is_some(), "nothing was committed");
    assert!(repo.uncommitted_instances().unwrap().is_empty());
}

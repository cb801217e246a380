//! Sealed instances of the DATA loop, its git repository, and the verification of a whole
//! DATA tree.

mod actor;
mod amend;
mod bundle;
mod instance;
mod repo;
mod tree;

pub use actor::Actor;
pub use amend::{AmendError, Amended, InstanceMutability, amend, amendments, verify_amendments};
pub use bundle::{InstanceBundle, MAX_BUNDLE};
pub use instance::{
    Finding, SealError, SealRequest, Sealed, SealedHashes, Transition, file_sha256, instance_dir,
    seal, sealed_instances, verify_instance,
};
pub use repo::{DataRepo, InstanceFiles, RepoError, verify_history};
pub use tree::{TreeReport, kernel_dir_of, remove_leftovers, verify_tree, verify_tree_settled};

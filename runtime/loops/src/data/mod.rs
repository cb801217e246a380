//! Sealed instances of the DATA loop, its git repository, and the verification of a whole
//! DATA tree.

mod instance;
mod repo;
mod tree;

pub use instance::{
    Finding, SealError, SealRequest, Sealed, Transition, instance_dir, seal, verify_instance,
};
pub use repo::{DataRepo, RepoError, verify_history};
pub use tree::{TreeReport, kernel_dir_of, remove_leftovers, verify_tree};

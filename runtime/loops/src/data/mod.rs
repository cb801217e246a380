//! Sealed instances of the DATA loop, and the verification of a whole DATA tree.

mod instance;
mod tree;

pub use instance::{
    Finding, SealError, SealRequest, Sealed, Transition, instance_dir, seal, verify_instance,
};
pub use tree::{TreeReport, kernel_dir_of, remove_leftovers, verify_tree};

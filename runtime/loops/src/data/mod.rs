//! Sealed instances of the DATA loop.

mod instance;

pub use instance::{
    Finding, SealError, SealRequest, Sealed, Transition, instance_dir, seal, verify_instance,
};

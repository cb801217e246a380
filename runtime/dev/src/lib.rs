//! The hot-reload runner behind `ck dev`.
//!
//! It serves one kernel directory the way production does — through a real nats-server whose
//! every connection goes through the auth callout with the permissions compiled from the
//! kernel's grants, the kernel connecting as its SPIFFE ID with a JWT-SVID from the dev
//! identity provider ([`stack`]) — on the same [`ck_serve::Host`] as `ck run`, so tasks are
//! sealed, committed and announced and `auth` callers verified exactly as in production. On
//! every save ([`watch`]) it rebuilds, records the build as a TOOL (and, when identity files
//! changed, CK) commit, and swaps the new version in behind the same subscription
//! ([`reload`]). A failed build or an invalid manifest is reported and the running version
//! keeps serving.
//!
//! It reports what happens as [`DevEvent`]s and prints nothing itself (the CLI does).

pub mod reload;
mod runner;
pub mod stack;
pub mod watch;

pub use reload::{Reloaded, build_version};
pub use runner::{DevConfig, DevError, DevEvent, run};

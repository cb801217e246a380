//! The NATS side of a kernel.
//!
//! It owns the wire format of the Concept Kernel Protocol (request bodies in `{action, data}` and
//! flat form, result and event bodies, the `Trace-Id` / `X-Kernel-ID` / `X-User-ID` headers:
//! [`envelope`]), the serving loop that subscribes a kernel's input topic and answers every
//! message exactly once ([`serve`]), publishing on behalf of a kernel ([`Publisher`]), and the
//! kernel's connection with credentials fetched on every connect and rotated make-before-break
//! ([`connect`], [`serve_rotating`]), and loop events confirmed by JetStream or queued on disk
//! until they can be ([`outbox`]), all built by the one CloudEvents builder ([`cloudevent`]).
//!
//! It does not know what a kernel is made of: the answer comes from a [`Handler`]. It does not
//! decide permissions either; callers check them before asking it to publish.

mod caller;
pub mod clock;
mod connection;
pub mod envelope;
pub mod metrics;
pub mod outbox;
mod publisher;
mod serve;

pub use caller::{CLAIMED_PREFIX, Caller};
pub use connection::{
    ConnectSpec, CredentialSource, Credentials, CredentialsUnavailable, connect, serve_rotating,
    servers, with_tls,
};
pub use envelope::{Failure, Request, RequestError};
pub use outbox::{LoopEventMessage, Outbox};
pub use publisher::{PublishFailure, Publisher};
pub use serve::{Endpoint, Handler, Refusal, ServeOptions, ServeReport, serve};

//! The NATS side of a kernel.
//!
//! It owns the wire format of the Concept Kernel Protocol (request bodies in `{action, data}` and
//! flat form, result and event bodies, the `Trace-Id` / `X-Kernel-ID` / `X-User-ID` headers:
//! [`envelope`]), the serving loop that subscribes a kernel's input topic and answers every
//! message exactly once ([`serve`]), and publishing on behalf of a kernel ([`Publisher`]).
//!
//! It does not know what a kernel is made of: the answer comes from a [`Handler`]. It does not
//! decide permissions either; callers check them before asking it to publish.

pub mod envelope;
mod publisher;
mod serve;

pub use envelope::{Failure, Request, RequestError};
pub use publisher::{PublishFailure, Publisher};
pub use serve::{Endpoint, Handler, ServeOptions, ServeReport, serve};

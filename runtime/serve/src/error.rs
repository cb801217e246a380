//! The one error type of this crate: what went wrong (a [`ServeErrorKind`] to match on), the
//! context a person reads (which kernel, which file), and the cause, kept as a source chain.

use std::fmt;

/// What kind of failure a [`ServeError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeErrorKind {
    /// A manifest is invalid, or manifests conflict with each other.
    Manifest,
    /// The kernel has nothing to serve (no component, not built).
    Component,
    /// Its CK or TOOL loops could not be read or recorded.
    Loops,
    /// The WebAssembly engine or a version's service could not be built.
    Engine,
    /// Identity: no SPIFFE ID, no Workload API, no way to connect as the kernel.
    Identity,
    /// NATS refused or could not be reached.
    Nats,
    /// The task lifecycle could not start (its JetStream state, its DATA tree).
    Lifecycle,
    /// The kernel is not served by this host.
    UnknownKernel,
    /// The kernel is already served by this host.
    AlreadyServed,
    /// A version cannot be swapped in behind the running subscription (its topics moved).
    TopicsMoved,
    /// The host is stopping or stopped.
    Stopped,
    /// The cluster's control plane refused or holds nothing to serve for the kernel.
    Control,
    /// The compiled-component cache directory is refused (not the host user's, or open to
    /// others).
    Cache,
}

/// A failure of the serving host, with its kind, context and cause.
#[derive(Debug)]
pub struct ServeError {
    kind: ServeErrorKind,
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl ServeError {
    /// A failure of `kind`, described by `context`, without a further cause.
    pub fn new(kind: ServeErrorKind, context: impl Into<String>) -> Self {
        Self {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// A failure of `kind`, described by `context`, caused by `source`.
    pub fn with_source(
        kind: ServeErrorKind,
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ServeErrorKind {
        self.kind
    }
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Adds a kind and context to a failure (the `anyhow::Context` of this crate's seam).
pub(crate) trait Kinded<T> {
    /// The failure as `kind`, described by `context()`.
    fn kinded<C: Into<String>>(
        self,
        kind: ServeErrorKind,
        context: impl FnOnce() -> C,
    ) -> Result<T, ServeError>;
}

impl<T, E> Kinded<T> for Result<T, E>
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    fn kinded<C: Into<String>>(
        self,
        kind: ServeErrorKind,
        context: impl FnOnce() -> C,
    ) -> Result<T, ServeError> {
        self.map_err(|e| ServeError::with_source(kind, context(), e))
    }
}

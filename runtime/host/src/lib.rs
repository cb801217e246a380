//! The WebAssembly kernel host.
//!
//! It owns the wasmtime engine (one per process: pooling allocator, epoch ticker), the
//! compiled-artifact cache ([`ArtifactCache`]), loading a kernel's component
//! ([`KernelComponent`]), the host side of the kernel contract in `kernels/wit` (publish and
//! request checked against the kernel's compiled permissions, logging, reading its own sealed
//! instances), per-call limits, and the dispatch of one request ([`KernelService`], a
//! [`ck_bus::Handler`]): protocol actions, unknown actions, access levels, then the guest, with
//! the TOOL loop's per-call events; and serving several versions of a kernel at once
//! ([`Versioned`]: stable plus a weighted canary, swapped without touching the subscription).
//!
//! It does not open NATS connections or subscriptions (that is `ck-bus`), compile permissions
//! (that is `ck-acl`; it receives the result), or write the DATA loop.

mod cache;
mod component;
mod engine;
mod imports;
mod service;
mod tool_events;
mod versions;

pub use cache::ArtifactCache;
pub use component::{KernelComponent, LoadError};
pub use engine::{HostConfig, HostEngine};
pub use service::{CallerVerifier, KernelService, ServiceStats, VersionLabel};
pub use tool_events::{Outcome, ToolEvents};
pub use versions::{Route, Versioned};

/// Host bindings generated from `kernels/wit/kernel.wit`.
mod bindings {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        world: "kernel",
        path: "../../kernels/wit/kernel.wit",
        imports: { default: async },
        exports: { default: async },
    });
}

pub(crate) use bindings::{Kernel, KernelPre, conceptkernel};

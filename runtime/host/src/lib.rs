//! The WebAssembly kernel host.
//!
//! It owns the wasmtime engine (one per process: pooling allocator, epoch ticker), the
//! compiled-artifact cache ([`ArtifactCache`]), loading a kernel's component
//! ([`KernelComponent`]), the host side of the kernel contract in `kernels/wit` (publish and
//! request checked against the kernel's compiled permissions, logging, reading its own sealed
//! instances), per-call limits, and calling the guest for one request ([`KernelService`], a
//! [`ck_bus::Handler`]) with the TOOL loop's per-call events.
//!
//! It does not open NATS connections or subscriptions (that is `ck-bus`), route actions or
//! check who may call them (`ck-serve`), compile permissions (that is `ck-acl`; it receives
//! the result), or write the DATA loop.

mod cache;
mod component;
mod engine;
mod imports;
mod label;
mod service;
mod tool_events;

pub use cache::{ArtifactCache, CacheError};
pub use component::{KernelComponent, LoadError};
pub use engine::{HostConfig, HostEngine};
pub use label::VersionLabel;
pub use service::{ENGINE, KernelService, ServiceStats};
pub use tool_events::{Outcome, ToolEvents};

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

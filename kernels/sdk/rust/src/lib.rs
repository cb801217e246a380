//! Write ConceptKernel kernels in Rust.
//!
//! A kernel implements [`Kernel`] and exports it with [`export_kernel!`]; the host calls
//! [`Kernel::handle`] with the action, its JSON data and the call context. Everything the kernel
//! can reach is in [`host`]: publish and request (checked against the kernel's grants before
//! anything reaches NATS), logging, and reading its own sealed instances.
//!
//! ```no_run
//! use ck_guest::{Context, Kernel, KernelError, export_kernel};
//!
//! struct Echo;
//!
//! impl Kernel for Echo {
//!     fn handle(action: String, data: String, _ctx: Context) -> Result<String, KernelError> {
//!         match action.as_str() {
//!             "echo" => Ok(data),
//!             other => Err(KernelError { code: 404, message: format!("no action `{other}`") }),
//!         }
//!     }
//! }
//!
//! export_kernel!(Echo);
//! ```
//!
//! Build for `wasm32-wasip2` (`cargo build --target wasm32-wasip2 --release`), or for
//! `wasm32-unknown-unknown` and turn the module into a component with `wasm-tools component new`.
//! Point `spec.tool.build` in the manifest at that command and `spec.tool.component` at the
//! result; `ck build` runs it. The crate also compiles for the host target, so kernels can be
//! unit-tested with `cargo test` (host imports are unavailable there).

#[doc(hidden)]
pub mod bindings {
    #![allow(missing_docs, unsafe_code)]
    wit_bindgen::generate!({
        world: "kernel",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "ck_guest::bindings",
    });
}

/// The host interface: publish, request, log, read-instance.
pub use bindings::conceptkernel::kernel::host;
/// The call context and the error type.
pub use bindings::conceptkernel::kernel::types::{Context, KernelError};
/// The trait the generated export glue calls.
pub use bindings::exports::conceptkernel::kernel::handler::Guest as Kernel;

/// Exports a type implementing [`Kernel`] as this component's handler.
#[macro_export]
macro_rules! export_kernel {
    ($kernel:ident) => {
        $crate::bindings::export!($kernel with_types_in $crate::bindings);
    };
}

/// A `400` error for bad request data.
pub fn bad_request(message: impl Into<String>) -> KernelError {
    KernelError {
        code: 400,
        message: message.into(),
    }
}

/// Parses request data as JSON, or a `400` error saying why not.
pub fn parse_data(data: &str) -> Result<serde_json::Value, KernelError> {
    serde_json::from_str(data).map_err(|e| bad_request(format!("data is not JSON: {e}")))
}

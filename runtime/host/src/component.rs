//! Loading a kernel's component: read, digest, compile (or load from the cache), link.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;
use wasmtime::component::{Component, HasSelf, Linker};

use crate::cache::ArtifactCache;
use crate::engine::HostEngine;
use crate::imports::State;
use crate::{Kernel, KernelPre};

/// The only non-WASI interface with functions a kernel may import.
pub(crate) const HOST_INTERFACE: &str = "conceptkernel:kernel/host@0.1.0";
/// Type-only interface imported because `handler` uses its types.
const TYPES_INTERFACE: &str = "conceptkernel:kernel/types@0.1.0";

/// Why a component could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The component path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a valid component, or wasmtime could not compile it.
    #[error("cannot compile component {path}: {message}")]
    Compile {
        /// The component path.
        path: PathBuf,
        /// wasmtime's explanation.
        message: String,
    },
    /// It imports something the host does not provide.
    #[error(
        "component {path} imports '{import}', which a kernel may not use (only {HOST_INTERFACE} and wasi:*)"
    )]
    ForbiddenImport {
        /// The component path.
        path: PathBuf,
        /// The import name.
        import: String,
    },
    /// Its imports or exports do not match the kernel contract.
    #[error(
        "component {path} does not fit the kernel contract (kernels/wit/kernel.wit): {message}"
    )]
    Link {
        /// The component path.
        path: PathBuf,
        /// wasmtime's explanation.
        message: String,
    },
    /// The manifest asks for more than this host allows.
    #[error("{0}")]
    Limits(String),
}

/// A compiled, linked kernel component, ready to instantiate.
pub struct KernelComponent {
    pub(crate) pre: KernelPre<State>,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// blake3 of the component file, hex.
    pub digest: String,
    /// Time spent compiling (or loading from the cache).
    pub load_time: Duration,
    /// Loaded from the artifact cache.
    pub from_cache: bool,
    /// Imports WASI (a locked-down context is given: no files, sockets, environment).
    pub uses_wasi: bool,
}

impl KernelComponent {
    /// Loads the component at `path`, using `cache` when given.
    pub fn load(
        engine: &HostEngine,
        path: &Path,
        cache: Option<&ArtifactCache>,
    ) -> Result<Self, LoadError> {
        let started = Instant::now();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let digest = blake3::hash(&bytes);
        let cached = cache.and_then(|c| c.load(&engine.engine, &digest));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(c) => c,
            None => {
                let c = Component::new(&engine.engine, &bytes).map_err(|e| LoadError::Compile {
                    path: path.to_owned(),
                    message: format!("{e:#}"),
                })?;
                if let Some(cache) = cache
                    && let Err(e) = cache.store(&engine.engine, &digest, &c)
                {
                    tracing::warn!(path = %path.display(), error = %e, "component.cache.store_failed");
                }
                c
            }
        };
        let mut uses_wasi = false;
        for (name, _) in component.component_type().imports(&engine.engine) {
            if name.starts_with("wasi:") {
                uses_wasi = true;
            } else if name != HOST_INTERFACE && name != TYPES_INTERFACE {
                return Err(LoadError::ForbiddenImport {
                    path: path.to_owned(),
                    import: name.to_owned(),
                });
            }
        }
        let link = |e: wasmtime::Error| LoadError::Link {
            path: path.to_owned(),
            message: format!("{e:#}"),
        };
        let mut linker: Linker<State> = Linker::new(&engine.engine);
        if uses_wasi {
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
        }
        Kernel::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).map_err(link)?;
        let pre =
            KernelPre::new(linker.instantiate_pre(&component).map_err(link)?).map_err(link)?;
        Ok(Self {
            pre,
            path: path.to_owned(),
            digest: digest.to_hex().to_string(),
            load_time: started.elapsed(),
            from_cache,
            uses_wasi,
        })
    }
}

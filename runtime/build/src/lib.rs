//! Building a kernel's component from its sources.
//!
//! Two ways, chosen from the manifest:
//! - `spec.tool.build` is set: that command runs (`sh -c`, in the kernel directory), and must
//!   leave the component at `spec.tool.component`. This is how kernels in other languages build
//!   (for example Python through `componentize-py`).
//! - otherwise, C sources in `tool/` are built here: C bindings for the kernel contract are
//!   generated with wit-bindgen, clang compiles them with the sources to a core module for
//!   `wasm32-wasi`, and wit-component turns that into a component. The result must import
//!   nothing but the contract's `host` interface: no WASI, so the kernel has no files, clock,
//!   environment or sockets by construction.
//!
//! The component is written atomically (a reader sees the old file or the whole new one). This
//! crate does not load or run components.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ck_manifest::Kernel;
use thiserror::Error;

/// The kernel contract, compiled into the tool so builds never depend on the working directory.
pub const KERNEL_WIT: &str = include_str!("../../../kernels/wit/kernel.wit");
/// The C helper header (`kernels/sdk/c/ck.h`), placed beside the generated bindings.
pub const C_SDK_HEADER: &str = include_str!("../../../kernels/sdk/c/ck.h");
/// The world every kernel implements.
pub const KERNEL_WORLD: &str = "kernel";

/// Why a build failed.
#[derive(Debug, Error)]
pub enum BuildError {
    /// Nothing says how to build this kernel.
    #[error(
        "{dir}: nothing to build: set `spec.tool.build`, or put C sources in tool/ \
         (and `spec.tool.component` says where the component goes)"
    )]
    NothingToBuild {
        /// The kernel directory.
        dir: PathBuf,
    },
    /// The manifest has no component path.
    #[error("{0}: `spec.tool.component` is not set, so there is nowhere to put the component")]
    NoComponentPath(PathBuf),
    /// A build step could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A build step failed; its output is included.
    #[error("{step} failed ({status}):\n{output}")]
    Step {
        /// Which step.
        step: String,
        /// Exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// The result is not an acceptable kernel component.
    #[error("{0}")]
    Invalid(String),
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The component written.
    pub component: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// Wall time of the whole build.
    pub duration: Duration,
    /// How it was built.
    pub method: &'static str,
}

/// Builds the component of `kernel`, whose manifest lives in `kernel_dir`.
pub fn build_kernel(kernel: &Kernel, kernel_dir: &Path) -> Result<BuildReport, BuildError> {
    let started = Instant::now();
    let component = kernel
        .tool
        .component
        .as_ref()
        .map(|c| kernel_dir.join(c))
        .ok_or_else(|| BuildError::NoComponentPath(kernel.manifest_path.clone()))?;
    let method = if let Some(command) = &kernel.tool.build {
        run_step(
            "build command",
            Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(kernel_dir),
        )?;
        "spec.tool.build"
    } else {
        let sources = c_sources(&kernel_dir.join("tool"))?;
        if sources.is_empty() {
            return Err(BuildError::NothingToBuild {
                dir: kernel_dir.to_owned(),
            });
        }
        let bytes = build_c(&sources, &kernel_dir.join("tool"))?;
        write_atomically(&component, &bytes)?;
        "c"
    };
    let bytes = std::fs::metadata(&component).map_err(io(&component))?.len() as usize;
    Ok(BuildReport {
        component,
        bytes,
        duration: started.elapsed(),
        method,
    })
}

fn c_sources(dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut sources: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    sources.sort();
    Ok(sources)
}

/// The clang to use: `$CK_CLANG`, else the first of `clang-16`, `clang` on `PATH`.
pub fn clang() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os("CK_CLANG") {
        return Some(PathBuf::from(c));
    }
    let path = std::env::var_os("PATH")?;
    ["clang-16", "clang"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Builds C `sources` (plus headers in `include_dir`) into a kernel component.
pub fn build_c(sources: &[PathBuf], include_dir: &Path) -> Result<Vec<u8>, BuildError> {
    let work = tempdir()?;
    let result = build_c_in(sources, include_dir, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn build_c_in(sources: &[PathBuf], include_dir: &Path, work: &Path) -> Result<Vec<u8>, BuildError> {
    generate_bindings(work)?;
    let clang = clang().ok_or_else(|| {
        BuildError::Invalid(
            "no clang found (set CK_CLANG, or install Debian's clang-16 lld-16 wasi-libc libclang-rt-16-dev-wasm32)"
                .into(),
        )
    })?;
    let core = work.join("core.wasm");
    let mut cmd = Command::new(&clang);
    cmd.args([
        "--target=wasm32-wasi",
        "-O2",
        // Reactor: `_initialize` runs C constructors once; wit-component calls it at instantiation.
        "-mexec-model=reactor",
        "-Wall",
        "-Werror=implicit-function-declaration",
        "-Wl,--strip-debug",
    ]);
    cmd.arg("-I").arg(work).arg("-I").arg(include_dir);
    cmd.arg(work.join("kernel.c"))
        .args(sources)
        .arg(work.join("kernel_component_type.o"));
    cmd.arg("-o").arg(&core);
    run_step(&format!("{} (compiling C)", clang.display()), &mut cmd)?;
    let core = std::fs::read(&core).map_err(io(&core))?;
    check_core_imports(&core)?;
    let component = wit_component::ComponentEncoder::default()
        .module(&core)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| {
            BuildError::Invalid(format!(
                "turning the core module into a component failed: {e:#}"
            ))
        })?;
    Ok(component)
}

fn generate_bindings(out: &Path) -> Result<(), BuildError> {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str("kernel.wit", KERNEL_WIT)
        .map_err(|e| BuildError::Invalid(format!("kernel contract: {e:#}")))?;
    let world = resolve
        .select_world(&[package], Some(KERNEL_WORLD))
        .map_err(|e| BuildError::Invalid(format!("kernel contract: {e:#}")))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| BuildError::Invalid(format!("generating C bindings: {e:#}")))?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, contents).map_err(io(&path))?;
    }
    let sdk = out.join("ck.h");
    std::fs::write(&sdk, C_SDK_HEADER).map_err(io(&sdk))
}

/// Refuses WASI before componentizing, with a message that says what pulled it in.
fn check_core_imports(core: &[u8]) -> Result<(), BuildError> {
    let mut wasi = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(core) {
        let payload = payload
            .map_err(|e| BuildError::Invalid(format!("clang produced an invalid module: {e}")))?;
        if let wasmparser::Payload::ImportSection(section) = payload {
            for import in section.into_imports() {
                let import = import.map_err(|e| BuildError::Invalid(e.to_string()))?;
                if import.module.starts_with("wasi") {
                    wasi.push(format!("{}::{}", import.module, import.name));
                }
            }
        }
    }
    if wasi.is_empty() {
        Ok(())
    } else {
        Err(BuildError::Invalid(format!(
            "the kernel imports WASI ({}); kernels get no WASI — stdio (printf), time and getenv \
             pull it in: log through the host's `log` import instead",
            wasi.join(", ")
        )))
    }
}

fn run_step(step: &str, cmd: &mut Command) -> Result<(), BuildError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let output = cmd
        .output()
        .map_err(|source| BuildError::Spawn { program, source })?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    Err(BuildError::Step {
        step: step.to_owned(),
        status: output.status.to_string(),
        output: text,
    })
}

fn tempdir() -> Result<PathBuf, BuildError> {
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = base.join(format!("ck-build-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    Ok(dir)
}

/// Writes `bytes` to `path` atomically and durably (`ck_fs::write_atomic`), creating its
/// directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    ck_fs::write_atomic(path, bytes).map_err(io(path))
}

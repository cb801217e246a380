//! Snapshots of a kernel's files (what the CK and TOOL loops commit) and versions read back
//! from the loops (what a host serves).

use std::path::Path;

use serde_json::Value;

use super::{
    LoopError, MAX_SNAPSHOT_FILE, STATE_DIR, TOOL_JSON, VersionSnapshot, io, serving, state_dir,
};
use crate::git::{LoopRepo, SnapshotFile};
use crate::serving::{VersionRef, short};

/// Directories of a kernel that are never part of the CK snapshot.
const NOT_CK: &[&str] = &["tool", "data", STATE_DIR, ".git", "target", "node_modules"];
/// Directories under `tool/` that hold build outputs, not sources.
const NOT_SOURCE: &[&str] = &["__pycache__", "target", "node_modules", ".git"];

/// The manifest (and `.ck-guid`) of the stable version of the kernel in `kernel_dir`, when it
/// has a serving record: what the kernel is, as far as anyone deciding about it is concerned
/// (the working files may hold changes nobody promoted). None without a serving record.
pub fn stable_manifest(kernel_dir: &Path) -> Result<Option<(String, Option<String>)>, LoopError> {
    let Some(record) = serving(kernel_dir)? else {
        return Ok(None);
    };
    let dir = state_dir(kernel_dir);
    let ck = LoopRepo::open(&dir.join("ck.git"))
        .ok_or_else(|| LoopError::Refused(format!("{}: no CK repository", dir.display())))?;
    let manifest = ck
        .read(&record.stable.ck, ck_manifest::MANIFEST_FILE)?
        .ok_or_else(|| {
            LoopError::Refused(format!(
                "CK commit {} has no {}",
                short(&record.stable.ck),
                ck_manifest::MANIFEST_FILE
            ))
        })?;
    let guid = ck
        .read(&record.stable.ck, ck_manifest::GUID_FILE)?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(Some((
        String::from_utf8_lossy(&manifest).into_owned(),
        guid,
    )))
}

/// Reads the version `pin` of the kernel in `kernel_dir` (no lock: commits and artifacts are
/// never rewritten).
pub fn materialize(kernel_dir: &Path, pin: &VersionRef) -> Result<VersionSnapshot, LoopError> {
    let dir = state_dir(kernel_dir);
    let missing =
        |what: &str| LoopError::Refused(format!("{}: no {what} repository", dir.display()));
    let ck = LoopRepo::open(&dir.join("ck.git")).ok_or_else(|| missing("CK"))?;
    let tool = LoopRepo::open(&dir.join("tool.git")).ok_or_else(|| missing("TOOL"))?;
    materialize_from(&dir, &ck, &tool, pin)
}

pub(super) fn materialize_from(
    dir: &Path,
    ck: &LoopRepo,
    tool: &LoopRepo,
    pin: &VersionRef,
) -> Result<VersionSnapshot, LoopError> {
    let manifest = ck
        .read(&pin.ck, ck_manifest::MANIFEST_FILE)?
        .ok_or_else(|| {
            LoopError::Refused(format!(
                "CK commit {} has no {}",
                short(&pin.ck),
                ck_manifest::MANIFEST_FILE
            ))
        })?;
    let manifest = String::from_utf8(manifest).map_err(|_| {
        LoopError::Refused(format!(
            "CK commit {}: the manifest is not UTF-8",
            short(&pin.ck)
        ))
    })?;
    let ck_guid = ck
        .read(&pin.ck, ck_manifest::GUID_FILE)?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let description = tool.read(&pin.tool, TOOL_JSON)?.ok_or_else(|| {
        LoopError::Refused(format!(
            "TOOL commit {} has no {TOOL_JSON}",
            short(&pin.tool)
        ))
    })?;
    let description: Value = serde_json::from_slice(&description).unwrap_or_default();
    let Some(digest) = description["digest"].as_str() else {
        return Err(LoopError::Refused(format!(
            "TOOL commit {}: {TOOL_JSON} names no component digest",
            short(&pin.tool)
        )));
    };
    let hex = digest.strip_prefix("blake3:").unwrap_or(digest);
    let component = dir.join("artifacts").join(format!("{hex}.wasm"));
    let bytes = std::fs::read(&component).map_err(|e| {
        LoopError::Refused(format!(
            "TOOL commit {}: its component {} cannot be read: {e}",
            short(&pin.tool),
            component.display()
        ))
    })?;
    if blake3::hash(&bytes).to_hex().as_str() != hex {
        return Err(LoopError::Refused(format!(
            "{}: the component does not match the digest {digest} recorded by TOOL commit {}",
            component.display(),
            short(&pin.tool)
        )));
    }
    Ok(VersionSnapshot {
        pin: pin.clone(),
        manifest,
        ck_guid,
        component,
        digest: digest.to_owned(),
    })
}

fn read_snapshot_file(path: &Path, name: String) -> Result<SnapshotFile, LoopError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.len() > MAX_SNAPSHOT_FILE {
        return Err(LoopError::Refused(format!(
            "{}: {} bytes is too large for a loop snapshot (limit {MAX_SNAPSHOT_FILE}); move it out of the kernel directory",
            path.display(),
            meta.len()
        )));
    }
    Ok((name, std::fs::read(path).map_err(io(path))?))
}

/// Files under `dir`, as `/`-separated paths relative to `base`, skipping `skip` directories
/// and hidden directories.
fn walk(
    base: &Path,
    dir: &Path,
    skip: &[&str],
    keep: &dyn Fn(&Path) -> bool,
    out: &mut Vec<SnapshotFile>,
) -> Result<(), LoopError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            if !name.starts_with('.') && !skip.contains(&name.as_str()) {
                walk(base, &path, skip, keep, out)?;
            }
        } else if kind.is_file() && keep(&path) {
            let relative = path
                .strip_prefix(base)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(read_snapshot_file(&path, relative)?);
        }
    }
    Ok(())
}

/// The CK files of a kernel: everything in its directory but `tool/`, `data/`, the state
/// directory and hidden or build directories.
pub fn ck_snapshot(kernel_dir: &Path) -> Result<Vec<SnapshotFile>, LoopError> {
    let mut files = Vec::new();
    walk(kernel_dir, kernel_dir, NOT_CK, &|p| !is_temp(p), &mut files)?;
    Ok(files)
}

/// The TOOL sources of a kernel: `tool/` without components and build outputs.
pub fn tool_snapshot(kernel_dir: &Path, component: &Path) -> Result<Vec<SnapshotFile>, LoopError> {
    let mut files = Vec::new();
    let tool = kernel_dir.join("tool");
    if tool.is_dir() {
        let keep = |p: &Path| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
            p != component && !matches!(ext, "wasm" | "cwasm" | "pyc" | "o") && !is_temp(p)
        };
        walk(kernel_dir, &tool, NOT_SOURCE, &keep, &mut files)?;
    }
    Ok(files)
}

fn is_temp(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.ends_with('~') || name.contains(".tmp") || name.starts_with(".#") || name.ends_with(".swp")
}

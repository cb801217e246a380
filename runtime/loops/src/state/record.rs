//! Recording the kernel as it is now on `develop`: its CK files, its TOOL sources and the
//! component they built (stored by digest).

use std::path::{Path, PathBuf};

use ck_manifest::topics::LoopEvent;
use serde_json::{Value, json};

use super::{DEVELOP, LoopError, Loops, Recorded, TOOL_JSON, ck_snapshot, io, tool_snapshot};

impl Loops {
    /// Commits the kernel's current CK files and, when `component` is given, its TOOL sources
    /// with that component's digest, on `develop`; journals `ck.commit` (with
    /// `ck.schema-change` and `ck.depends-on` when they apply), `tool.commit` and the
    /// `ref-update`s. Unchanged loops get no commit.
    pub fn record(&self, component: Option<&Path>, reason: &str) -> Result<Recorded, LoopError> {
        let mut recorded = Recorded::default();
        let mut events = Vec::new();
        let ck_files = ck_snapshot(&self.kernel_dir)?;
        let message = format!("{reason}\n\nkernel: {}\nguid: {}", self.name, self.guid);
        if let Some(c) = self.ck.commit_snapshot(DEVELOP, &ck_files, &message)? {
            let changed = |path: &str| -> Result<bool, LoopError> {
                let before = match &c.previous {
                    Some(p) => self.ck.read(p, path)?,
                    None => None,
                };
                Ok(before.as_deref() != ck_files.iter().find(|f| f.0 == path).map(|f| &f.1[..]))
            };
            events.push(self.event(
                LoopEvent::CkCommit,
                &c.commit,
                json!({"commit": c.commit, "previous": c.previous, "ref": "refs/heads/develop", "reason": reason}),
            ));
            events.push(self.ref_update(
                LoopEvent::CkRefUpdate,
                DEVELOP,
                c.previous.as_deref(),
                &c.commit,
                &c.commit,
            ));
            let schema = ["ontology.yaml", "rules.shacl"]
                .into_iter()
                .filter_map(|f| changed(f).map(|c| c.then_some(f)).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            if !schema.is_empty() && c.previous.is_some() {
                events.push(self.event(
                    LoopEvent::CkSchemaChange,
                    &c.commit,
                    json!({"commit": c.commit, "files": schema}),
                ));
            }
            let edges = |bytes: Option<&[u8]>| {
                bytes
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|text| {
                        ck_manifest::parse_str(
                            text,
                            &self.kernel_dir.join(ck_manifest::MANIFEST_FILE),
                            &ck_manifest::ParseOptions::default(),
                        )
                        .kernel
                    })
                    .map(|k| serde_json::to_value(&k.edges.outbound).unwrap_or_default())
            };
            let before = match &c.previous {
                Some(p) => self.ck.read(p, ck_manifest::MANIFEST_FILE)?,
                None => None,
            };
            let now = ck_files
                .iter()
                .find(|f| f.0 == ck_manifest::MANIFEST_FILE)
                .map(|f| &f.1[..]);
            let (old_edges, new_edges) = (edges(before.as_deref()), edges(now));
            let has_edges = new_edges
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            if old_edges != new_edges && (c.previous.is_some() || has_edges) {
                events.push(self.event(
                    LoopEvent::CkDependsOn,
                    &c.commit,
                    json!({"commit": c.commit, "edges": new_edges}),
                ));
            }
            recorded.ck = Some(c);
        }
        if let Some(component) = component {
            let (digest, size) = self.store_artifact(component)?;
            let mut files = tool_snapshot(&self.kernel_dir, component)?;
            let relative = component
                .strip_prefix(&self.kernel_dir)
                .unwrap_or(component)
                .to_string_lossy()
                .into_owned();
            let description = json!({
                "component": relative,
                "digest": digest,
                "bytes": size,
            });
            files.push((
                TOOL_JSON.to_owned(),
                serde_json::to_vec_pretty(&description).unwrap_or_default(),
            ));
            files.sort();
            if let Some(c) = self.tool.commit_snapshot(DEVELOP, &files, &message)? {
                events.push(self.event(
                    LoopEvent::ToolCommit,
                    &c.commit,
                    json!({"commit": c.commit, "previous": c.previous, "ref": "refs/heads/develop", "component_digest": digest, "reason": reason}),
                ));
                events.push(self.ref_update(
                    LoopEvent::ToolRefUpdate,
                    DEVELOP,
                    c.previous.as_deref(),
                    &c.commit,
                    &c.commit,
                ));
                recorded.tool = Some(c);
            }
        }
        recorded.develop = self.develop();
        recorded.events = self.journal(events)?;
        Ok(recorded)
    }

    fn store_artifact(&self, component: &Path) -> Result<(String, u64), LoopError> {
        let bytes = std::fs::read(component).map_err(io(component))?;
        let (digest, _) = store_artifact(&self.kernel_dir, &bytes)?;
        Ok((digest, bytes.len() as u64))
    }
}

/// Stores a component in the artifact store of the kernel in `kernel_dir` (`.ck/artifacts/`,
/// content-addressed, written once) and returns its digest `blake3:{hex}` and its path.
pub fn store_artifact(kernel_dir: &Path, bytes: &[u8]) -> Result<(String, PathBuf), LoopError> {
    let hex = blake3::hash(bytes).to_hex().to_string();
    let dir = super::state_dir(kernel_dir).join("artifacts");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(format!("{hex}.wasm"));
    if !path.is_file() {
        ck_fs::write_atomic(&path, bytes).map_err(io(&path))?;
    }
    Ok((format!("blake3:{hex}"), path))
}

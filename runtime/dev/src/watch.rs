//! Watching a kernel directory for saves that can change the kernel: its manifest, identity
//! files or sources — not its state, data, build outputs or editor droppings — debounced,
//! because editors write in bursts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use ck_loops::state;
use notify::Watcher;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

/// A recursive watcher of one directory, reporting written paths.
pub struct DirWatcher {
    dir: PathBuf,
    changes: UnboundedReceiver<Vec<PathBuf>>,
    _watcher: notify::RecommendedWatcher,
}

impl DirWatcher {
    /// Starts watching `dir` (absolute, so its paths and the kernel's compare).
    pub fn new(dir: &Path) -> Result<Self> {
        let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                use notify::EventKind;
                use notify::event::ModifyKind;
                // Only writes count: a build reading the sources (access, open,
                // close-nowrite) or a metadata touch must not trigger the next build.
                if let Ok(event) = event
                    && match event.kind {
                        EventKind::Create(_) | EventKind::Remove(_) => true,
                        EventKind::Modify(ModifyKind::Metadata(_)) => false,
                        EventKind::Modify(_) => true,
                        _ => false,
                    }
                {
                    let _ = tx.send(event.paths);
                }
            })?;
        watcher
            .watch(dir, notify::RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            changes,
            _watcher: watcher,
        })
    }

    /// Waits for a relevant change and then for `debounce` of quiet; false on shutdown.
    pub async fn next_change(&mut self, debounce: Duration, shutdown: &CancellationToken) -> bool {
        loop {
            let paths = tokio::select! {
                _ = shutdown.cancelled() => return false,
                p = self.changes.recv() => match p { Some(p) => p, None => return false },
            };
            if paths.iter().any(|p| relevant(&self.dir, p)) {
                break;
            }
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(debounce) => return true,
                p = self.changes.recv() => if p.is_none() { return true },
            }
        }
    }
}

/// Whether a changed path can change the kernel.
pub fn relevant(kernel_dir: &Path, path: &Path) -> bool {
    let Ok(relative) = path.strip_prefix(kernel_dir) else {
        return false;
    };
    let mut parts = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy());
    let first = parts.next().unwrap_or_default();
    if matches!(first.as_ref(), "data" | state::STATE_DIR | "target") {
        return false;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    !(matches!(ext, "wasm" | "cwasm" | "pyc" | "o" | "swp" | "swx")
        || name.ends_with('~')
        || name.starts_with(".#")
        || name.contains(".tmp")
        || relative
            .components()
            .any(|c| c.as_os_str().to_string_lossy() == "__pycache__"))
}

#[cfg(test)]
mod tests {
    use super::relevant;
    use std::path::Path;

    #[test]
    fn sources_and_manifest_count_state_and_droppings_do_not() {
        let dir = Path::new("/k");
        assert!(relevant(dir, Path::new("/k/tool/echo.c")));
        assert!(relevant(dir, Path::new("/k/conceptkernel.yaml")));
        assert!(!relevant(dir, Path::new("/k/data/instances/i-1/data.json")));
        assert!(!relevant(dir, Path::new("/k/.ck/events.jsonl")));
        assert!(!relevant(dir, Path::new("/k/tool/echo.wasm")));
        assert!(!relevant(dir, Path::new("/k/tool/.echo.c.swp")));
        assert!(!relevant(dir, Path::new("/k/tool/echo.c~")));
        assert!(!relevant(dir, Path::new("/elsewhere/echo.c")));
    }
}

//! A sealed instance as one document (`InstanceBundle`): every file of its directory, byte for
//! byte — what the cluster keeps of it (`ck_task`'s sealed-instance store) and what
//! `ck restore` writes back, with the same write-once rules as a seal (each file staged,
//! fsynced, read-only, hard-linked, never replacing a file; the directory fsynced).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::instance::{SealError, instance_dir, link_once, stage, sync_dir, valid_id};

/// Largest instance bundle read back (instances are JSON documents far below this).
pub const MAX_BUNDLE: usize = 64 * 1024 * 1024;

/// Every file of one sealed instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceBundle {
    /// The instance.
    pub instance_id: String,
    /// File name → content (instance files are UTF-8 JSON).
    pub files: BTreeMap<String, String>,
}

impl InstanceBundle {
    /// Reads sealed instance `instance_id` of the kernel in `kernel_dir`. Files being staged
    /// (a seal or an amendment in progress) are left out.
    pub fn read(kernel_dir: &Path, instance_id: &str) -> Result<Self, SealError> {
        let dir = instance_dir(kernel_dir, instance_id);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |error| SealError::Io { path, error }
        };
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type().map_err(io(&dir))?.is_file()
                || super::instance::staging_pid(&name).is_some()
            {
                continue;
            }
            let path = entry.path();
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let text = String::from_utf8(bytes).map_err(|_| SealError::Io {
                path: path.clone(),
                error: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
            })?;
            files.insert(name, text);
        }
        Ok(Self {
            instance_id: instance_id.to_owned(),
            files,
        })
    }

    /// Writes the instance into the DATA tree of `kernel_dir` under the seal's rules; a file
    /// that exists with the same bytes is kept, one with other bytes is refused. Returns how
    /// many files were written.
    pub fn write(&self, kernel_dir: &Path) -> Result<usize, SealError> {
        if !valid_id(&self.instance_id) {
            return Err(SealError::BadId(self.instance_id.clone()));
        }
        let dir = instance_dir(kernel_dir, &self.instance_id);
        std::fs::create_dir_all(&dir).map_err(|error| SealError::Io {
            path: dir.clone(),
            error,
        })?;
        let mut written = 0;
        for (name, text) in &self.files {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(SealError::Io {
                    path: dir.join(name),
                    error: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a file name of a sealed instance",
                    ),
                });
            }
            let path = dir.join(name);
            if let Some(tmp) = stage(&path, text.as_bytes())? {
                written += usize::from(link_once(&tmp, &path, text.as_bytes())?);
            }
        }
        sync_dir(&dir)?;
        Ok(written)
    }
}

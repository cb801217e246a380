//! The part of a kernel's `ontology.yaml` the runtime enforces: `instance_mutability`
//! (ckp-spec §3.5) — whether sealed instances may be amended.

use std::path::Path;

use serde::Serialize;

use crate::yaml::{self, Value};

/// The ontology file beside a kernel's manifest.
pub const ONTOLOGY_FILE: &str = "ontology.yaml";

/// What may happen to a sealed instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceMutability {
    /// Never changes (the default).
    #[default]
    Sealed,
    /// Fields may be added in `data_amendment_{ts}.json` files; the original stays.
    AmendmentsAllowed,
    /// A new version may replace the data, kept beside it with the full history.
    FullVersioning,
}

impl InstanceMutability {
    /// The `ontology.yaml` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sealed => "sealed",
            Self::AmendmentsAllowed => "amendments_allowed",
            Self::FullVersioning => "full_versioning",
        }
    }
}

impl std::fmt::Display for InstanceMutability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why `ontology.yaml` cannot be read: the message names the file and, where it can, the line
/// and column at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OntologyError(pub String);

/// Reads `instance_mutability` from `kernel_dir/ontology.yaml`: `Sealed` when the file or the
/// key is absent; an error naming file, line and the allowed values for anything else.
pub fn instance_mutability(kernel_dir: &Path) -> Result<InstanceMutability, OntologyError> {
    let path = kernel_dir.join(ONTOLOGY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(InstanceMutability::Sealed);
        }
        Err(e) => return Err(OntologyError(format!("{}: {e}", path.display()))),
    };
    let root = yaml::parse(&text).map_err(|e| {
        OntologyError(format!(
            "{}:{}:{}: {}",
            path.display(),
            e.loc.line,
            e.loc.column,
            e.message
        ))
    })?;
    let Some(entry) = root.as_ref().and_then(|r| r.get("instance_mutability")) else {
        return Ok(InstanceMutability::Sealed);
    };
    match &entry.value.value {
        Value::Str(s) if s == "sealed" => Ok(InstanceMutability::Sealed),
        Value::Str(s) if s == "amendments_allowed" => Ok(InstanceMutability::AmendmentsAllowed),
        Value::Str(s) if s == "full_versioning" => Ok(InstanceMutability::FullVersioning),
        other => Err(OntologyError(format!(
            "{}:{}:{}: instance_mutability must be one of sealed, amendments_allowed, full_versioning (found {})",
            path.display(),
            entry.value.loc.line,
            entry.value.loc.column,
            match other {
                Value::Str(s) => format!("'{s}'"),
                v => v.kind().to_owned(),
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_means_sealed_and_bad_values_are_located() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            instance_mutability(dir.path()),
            Ok(InstanceMutability::Sealed)
        );
        std::fs::write(dir.path().join(ONTOLOGY_FILE), "classes: {}\n").unwrap();
        assert_eq!(
            instance_mutability(dir.path()),
            Ok(InstanceMutability::Sealed)
        );
        std::fs::write(
            dir.path().join(ONTOLOGY_FILE),
            "# profile\ninstance_mutability: amendments_allowed\n",
        )
        .unwrap();
        assert_eq!(
            instance_mutability(dir.path()),
            Ok(InstanceMutability::AmendmentsAllowed)
        );
        std::fs::write(
            dir.path().join(ONTOLOGY_FILE),
            "classes: {}\ninstance_mutability: mutable\n",
        )
        .unwrap();
        let e = instance_mutability(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("ontology.yaml:2:22") && e.contains("'mutable'"),
            "{e}"
        );
    }
}

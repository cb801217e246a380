//! The subject families a command works with: the file `--subject-families` names, or the
//! shipped `policies/subject-families.yaml`.

use std::path::Path;

use anyhow::{Context, Result};
use ck_acl::families::Families;

/// The families in `file`, or the shipped ones.
pub fn load(file: Option<&Path>) -> Result<Families> {
    match file {
        None => Ok(Families::builtin()),
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            Families::parse(&text).with_context(|| file.display().to_string())
        }
    }
}

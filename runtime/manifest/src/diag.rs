//! Located diagnostics: every problem names its file, line, column and field path.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// How bad a problem is. Only errors make a manifest unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Suspicious or non-canonical, but the kernel can still be served.
    Warning,
    /// The kernel cannot be served from this manifest.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A position in a source file (both 1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Loc {
    /// Line, starting at 1.
    pub line: usize,
    /// Column, starting at 1.
    pub column: usize,
}

/// One problem found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file the problem is in.
    pub file: PathBuf,
    /// Where in the file, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loc: Option<Loc>,
    /// Path of the field at fault, e.g. `grants[1].identity`; empty for the whole document.
    pub field: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(loc) = self.loc {
            write!(f, ":{}:{}", loc.line, loc.column)?;
        }
        write!(f, ": {}: ", self.severity)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Collects diagnostics for one file.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    file: PathBuf,
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// An empty collector for `file`.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self {
            file: file.into(),
            items: Vec::new(),
        }
    }

    /// The file these diagnostics are about.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Records a problem.
    pub fn push(
        &mut self,
        severity: Severity,
        loc: Option<Loc>,
        field: &str,
        message: impl Into<String>,
    ) {
        self.items.push(Diagnostic {
            severity,
            file: self.file.clone(),
            loc,
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// Records an error.
    pub fn error(&mut self, loc: Option<Loc>, field: &str, message: impl Into<String>) {
        self.push(Severity::Error, loc, field, message);
    }

    /// Records a warning.
    pub fn warn(&mut self, loc: Option<Loc>, field: &str, message: impl Into<String>) {
        self.push(Severity::Warning, loc, field, message);
    }

    /// True when at least one error was recorded.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    /// The recorded diagnostics, in the order found.
    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.items
    }
}

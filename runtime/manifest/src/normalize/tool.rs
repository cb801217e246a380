//! `spec.tool` (component, build, language) and `spec.limits`.

use crate::model::{Limits, Tool};
use crate::yaml::{Node, Value};
use std::path::{Component, PathBuf};

use super::keys::*;
use super::reader::*;

pub(super) fn read_tool(r: &mut Reader<'_>, spec: Option<&Node>) -> Tool {
    let mut tool = Tool::default();
    let Some((node, path)) = r.child(spec, "spec", "tool") else {
        return tool;
    };
    let Some(node) = r.map(node, &path) else {
        return tool;
    };
    r.check_keys(node, &path, TOOL_KEYS);
    let text = |r: &mut Reader<'_>, key: &str| {
        r.child(Some(node), &path, key)
            .and_then(|(n, p)| r.string(n, &p).map(|s| (s, n.loc, p)))
    };
    if let Some((component, loc, p)) = text(r, "component") {
        let cpath = PathBuf::from(&component);
        let escapes = cpath.is_absolute()
            || cpath.components().any(|c| {
                matches!(
                    c,
                    Component::ParentDir | Component::RootDir | Component::Prefix(_)
                )
            });
        if component.is_empty() || escapes {
            r.d.error(Some(loc), &p, format!("component path '{component}' must be relative and stay inside the kernel directory"));
        } else {
            tool.component = Some(cpath);
        }
    }
    tool.build = text(r, "build").map(|(s, ..)| s);
    tool.language = text(r, "language").map(|(s, ..)| s);
    tool.entrypoint = text(r, "entrypoint").map(|(s, ..)| s);
    tool.runtime = text(r, "runtime").map(|(s, ..)| s);
    tool
}

pub(super) fn read_limits(r: &mut Reader<'_>, spec: Option<&Node>) -> Limits {
    let mut limits = Limits::default();
    let Some((node, path)) = r.child(spec, "spec", "limits") else {
        return limits;
    };
    let Some(node) = r.map(node, &path) else {
        return limits;
    };
    r.check_keys(node, &path, LIMIT_KEYS);
    let number = |r: &mut Reader<'_>, key: &str, min: u64, max: u64| -> Option<u64> {
        let (n, p) = r.child(Some(node), &path, key)?;
        let parsed = match &n.value {
            Value::Number(text) => text.parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(v) if (min..=max).contains(&v) => Some(v),
            _ => {
                r.d.error(
                    Some(n.loc),
                    &p,
                    format!("expected a whole number from {min} to {max}"),
                );
                None
            }
        }
    };
    if let Some(v) = number(r, "timeout_ms", 1, Limits::MAX_TIMEOUT_MS) {
        limits.timeout_ms = v;
    }
    if let Some(v) = number(r, "memory_mb", 1, Limits::MAX_MEMORY_MB) {
        limits.memory_mb = v;
    }
    limits.fuel = number(r, "fuel", 1, u64::MAX);
    if let Some(v) = number(r, "max_request_bytes", 64, 64 * 1024 * 1024) {
        limits.max_request_bytes = v;
    }
    if let Some(v) = number(r, "max_result_bytes", 64, 64 * 1024 * 1024) {
        limits.max_result_bytes = v;
    }
    if let Some(v) = number(r, "reuse_instances", 0, 1_000_000) {
        limits.reuse_instances = v;
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn limits_and_the_component_are_read() {
        let k = kernel(
            "spec:\n  tool: {component: tool/t.wasm, language: c}\n  limits: {timeout_ms: 1500, memory_mb: 8}\n",
        );
        assert_eq!(
            k.tool.component,
            Some(std::path::PathBuf::from("tool/t.wasm"))
        );
        assert_eq!(k.limits.timeout_ms, 1500);
        assert_eq!(k.limits.memory_mb, 8);
    }

    #[test]
    fn a_limit_that_is_not_a_number_is_an_error() {
        let e = errors("spec:\n  limits: {timeout_ms: soon}\n");
        assert!(e.iter().any(|m| m.contains("timeout_ms")), "{e:?}");
    }
}

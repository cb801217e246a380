//! The protocol actions every kernel answers without running its guest: `status` (what is
//! served, since when, how it is doing) and `check.identity` (the v3.7 manifest rules,
//! ckp-spec §1.1, as observed on the loaded manifest).

use ck_host::{KernelComponent, VersionLabel};
use ck_manifest::{Diagnostic, Kernel};
use serde_json::{Value, json};

/// Counters of one served version (every action, whichever handler answered).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct VersionStats {
    /// Requests answered with data.
    pub ok: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Guest instances created.
    pub instances: u64,
}

/// The protocol actions, answered by the host for every kernel.
pub(crate) const PROTOCOL_ACTIONS: [&str; 2] = ["status", "check.identity"];

/// `status`.
pub(crate) fn status(
    m: &Kernel,
    version: &VersionLabel,
    component: &KernelComponent,
    uptime_ms: u64,
    stats: VersionStats,
) -> Value {
    json!({
        "kernel": m.name,
        "guid": m.guid,
        "urn": m.urn,
        "version": m.version,
        "spiffe_id": m.spiffe_id(),
        // Degraded while an audit append failed (`audit.write-failed` in the log): the host
        // answers, but cannot record what it refuses.
        "state": if ck_audit::failed_appends() > 0 { "degraded" } else { "ready" },
        "audit": {
            "failed_appends": ck_audit::failed_appends(),
            "coalesced_refusals": ck_audit::coalesce::coalesced_total(),
        },
        "serving": version,
        // Which host process answered (several hosts of a cluster share one queue group).
        "host": { "pid": std::process::id() },
        "uptime_ms": uptime_ms,
        "component": {
            "path": component.path,
            "digest": format!("blake3:{}", component.digest),
            "wasi": component.uses_wasi,
        },
        "runtime": { "host": concat!("ck ", env!("CARGO_PKG_VERSION")), "engine": ck_host::ENGINE },
        "limits": m.limits,
        "topics": m.topics,
        "stats": stats,
    })
}

/// `check.identity`.
pub(crate) fn check_identity(
    m: &Kernel,
    component: &KernelComponent,
    warnings: &[Diagnostic],
) -> Value {
    let declared = |name: &str| m.action(name).is_some();
    let checks = vec![
        check(
            "manifest-valid",
            true,
            format!("{} loaded without errors", m.manifest_path.display()),
        ),
        check(
            "api-version",
            m.api_version
                .as_deref()
                .is_some_and(|v| v.starts_with("conceptkernel/v3")),
            format!("apiVersion {:?}", m.api_version),
        ),
        check("guid-is-uuid", is_uuid(&m.guid), format!("guid {}", m.guid)),
        check(
            "common-actions",
            PROTOCOL_ACTIONS.iter().all(|a| declared(a)),
            "spec.actions.common declares status and check.identity".to_owned(),
        ),
        check(
            "spiffe-identity",
            m.spiffe_id().is_some(),
            m.spiffe_id()
                .unwrap_or_else(|| "no trust domain: no SPIFFE ID".into()),
        ),
        check(
            "component-digest",
            true,
            format!("blake3:{}", component.digest),
        ),
    ];
    let passed = checks.iter().all(|c| c["passed"] == true);
    json!({
        "kernel": m.name,
        "urn": m.urn,
        "passed": passed,
        "checks": checks,
        "warnings": warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn check(name: &str, passed: bool, detail: String) -> Value {
    json!({ "name": name, "passed": passed, "detail": detail })
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuids_are_five_hex_groups_of_the_right_lengths() {
        assert!(super::is_uuid("0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d"));
        assert!(!super::is_uuid("0e1c4a5b-2d3f-4a6b-9c8d"));
        assert!(!super::is_uuid("0e1c4a5b_2d3f-4a6b-9c8d-7e6f5a4b3c2d"));
        assert!(!super::is_uuid("0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2g"));
    }
}

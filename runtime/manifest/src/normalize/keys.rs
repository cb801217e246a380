//! The keys each mapping of a manifest may hold (anything else is a warning with a "did you mean").

pub(super) const TOP_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "qualities",
    "grants",
    "edges",
    "actions",
    "kernel_class",
    "kernel_id",
    "bfo_type",
    "owner",
    "created_at",
    "ontology_uri",
    "namespace_prefix",
    "domain",
    "project",
    "capability",
    "description",
];
pub(super) const METADATA_KEYS: &[&str] = &[
    "name",
    "urn",
    "version",
    "guid",
    "type",
    "governance",
    "created_at",
    "description",
    "authors",
    "tags",
    "port",
    "entrypoint",
];
pub(super) const SPEC_KEYS: &[&str] = &[
    "actions",
    "nats",
    "tool",
    "limits",
    "edges",
    "grants",
    "type",
    "governance_mode",
    "description",
    "urn",
    "web",
    "resources",
    "lifecycle",
    "workspace",
    "storage_medium",
    "deployment_method",
    "serving_dispositions",
];
pub(super) const QUALITIES_KEYS: &[&str] = &[
    "type",
    "governance_mode",
    "nats_subject_input",
    "nats_subject_result",
    "nats_subject_event",
    "nats_subject_stream",
    "max_concurrent_agents",
];
pub(super) const NATS_KEYS: &[&str] = &[
    "input_topic",
    "result_topic",
    "event_topic",
    "stream_topic",
    "format",
    "conversation",
];
pub(super) const ACTION_KEYS: &[&str] =
    &["name", "description", "access", "access_level", "params"];
pub(super) const GRANT_KEYS: &[&str] = &["identity", "actions", "expires", "audit"];
pub(super) const EDGE_KEYS: &[&str] = &[
    "target_kernel",
    "source_kernel",
    "predicate",
    "trigger_action",
    "nats_subject",
    "config",
    "requires_consensus",
    "requires_target_auth",
];
pub(super) const TOOL_KEYS: &[&str] = &["component", "build", "language", "entrypoint", "runtime"];
pub(super) const LIMIT_KEYS: &[&str] = &[
    "timeout_ms",
    "memory_mb",
    "fuel",
    "max_request_bytes",
    "max_result_bytes",
    "reuse_instances",
];

/// Longest kernel name, GUID or action name accepted (they end up inside subjects and IDs).
pub(super) const MAX_NAME_LEN: usize = 128;

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn an_unknown_key_is_a_warning_that_suggests_the_known_one() {
        let w = warnings("spec:\n  limts: {}\n");
        assert!(
            w.iter()
                .any(|m| m.contains("limts") && m.contains("limits")),
            "{w:?}"
        );
        assert!(errors("spec:\n  limts: {}\n").is_empty());
    }
}

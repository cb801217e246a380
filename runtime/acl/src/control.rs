//! Who may read and change the cluster's control plane (`policies/control-plane.yaml`): each
//! role becomes a deny-by-default [`Permissions`] for the users holding it, and everyone else
//! gets [`write_denials`] — so nats-server enforces the file, not the `ck` commands.
//!
//! It reads no files (the caller hands over the policy's text) and forms no subject itself:
//! every subject comes from `ck_manifest::topics::ControlStore`.

use std::collections::BTreeMap;

use ck_manifest::topics::{self, ControlStore};
use ck_subject::{PermissionList, Permissions};
use serde::Deserialize;

/// The policy format's version this compiler reads.
pub const CONTROL_POLICY_VERSION: u32 = 1;

/// The roles of `policies/control-plane.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPolicy {
    /// Format version (1).
    pub version: u32,
    /// Roles by name.
    pub roles: BTreeMap<String, ControlRole>,
}

/// What one role may do.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRole {
    /// Stores it may read.
    #[serde(default)]
    pub read: Vec<ControlStore>,
    /// Stores it may write (writing implies reading).
    #[serde(default)]
    pub write: Vec<ControlStore>,
    /// Whether it may create the stores (the first `ck publish`).
    #[serde(default)]
    pub create: bool,
}

/// A control-plane policy that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlPolicyError {
    /// Not YAML of this format.
    #[error("control-plane policy: {0}")]
    Syntax(String),
    /// A version this compiler does not read.
    #[error(
        "control-plane policy: version {0} is not supported (this ck reads version {CONTROL_POLICY_VERSION})"
    )]
    Version(u32),
    /// A role someone asked for that the policy does not define.
    #[error("control-plane policy defines no role `{role}` (roles: {known})")]
    UnknownRole {
        /// The role asked for.
        role: String,
        /// The roles it has.
        known: String,
    },
}

impl ControlPolicy {
    /// Parses a policy.
    pub fn parse(text: &str) -> Result<Self, ControlPolicyError> {
        let policy: ControlPolicy =
            serde_norway::from_str(text).map_err(|e| ControlPolicyError::Syntax(e.to_string()))?;
        if policy.version != CONTROL_POLICY_VERSION {
            return Err(ControlPolicyError::Version(policy.version));
        }
        Ok(policy)
    }

    /// The permissions of role `name`.
    pub fn permissions(&self, name: &str) -> Result<Permissions, ControlPolicyError> {
        let role = self
            .roles
            .get(name)
            .ok_or_else(|| ControlPolicyError::UnknownRole {
                role: name.to_owned(),
                known: self.roles.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
        Ok(role_permissions(role))
    }
}

/// A role's permissions: its stores' read API and write subjects, replies on the client's
/// inbox, nothing else.
pub fn role_permissions(role: &ControlRole) -> Permissions {
    let mut publish = vec![topics::JS_ACCOUNT_INFO.to_owned()];
    let mut readable: Vec<ControlStore> = role.read.iter().chain(&role.write).copied().collect();
    readable.sort();
    readable.dedup();
    for store in &readable {
        publish.extend(store.read_api());
    }
    for store in &role.write {
        publish.extend(store.write_subjects());
    }
    if role.create {
        publish.extend(ControlStore::ALL.iter().map(|s| s.create_api()));
    }
    publish.dedup();
    Permissions {
        publish: PermissionList::allow_only(publish),
        subscribe: PermissionList::allow_only([topics::CLIENT_INBOX]),
        allow_responses: None,
    }
}

/// What every user holding no control-plane role is denied (it may have no allow list at all,
/// like an operator tool's static user): every store's writes, creation and administration.
pub fn write_denials() -> Vec<String> {
    let mut deny = Vec::new();
    for store in ControlStore::ALL {
        deny.extend(store.write_subjects());
        deny.push(store.create_api());
        deny.extend(store.admin_api());
    }
    // The same through any JetStream domain: at a fleet's site, `$JS.{hub}.API.…` is not the
    // site's own API (which the server maps to `$JS.API.…` before checking), it travels the
    // leaf link to the hub's, and only these denials stop it at the site.
    let through_domains: Vec<String> = deny
        .iter()
        .filter_map(|s| topics::in_domain("*", s))
        .collect();
    deny.extend(through_domains);
    deny
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = include_str!("../../../policies/control-plane.yaml");

    #[test]
    fn the_shipped_policy_lets_operators_write_and_hosts_only_read() {
        let policy = ControlPolicy::parse(POLICY).unwrap();
        let operator = policy.permissions("operator").unwrap();
        let host = policy.permissions("host").unwrap();
        for subject in [
            "$KV.CK_SERVING.g-1",
            "$KV.CK_REGISTRY.g-1.ck.abc",
            "$O.CK_ARTIFACTS.C.x",
            "ck.g-1.ck.promote",
            "$JS.API.STREAM.CREATE.KV_CK_SERVING",
        ] {
            assert!(operator.can_publish(subject), "operator {subject}");
            assert!(!host.can_publish(subject), "host {subject}");
        }
        for subject in [
            "$JS.API.STREAM.INFO.KV_CK_SERVING",
            "$JS.API.CONSUMER.CREATE.KV_CK_SERVING.abc.$KV.CK_SERVING.g-1",
            "$JS.API.DIRECT.GET.OBJ_CK_ARTIFACTS.$O.CK_ARTIFACTS.M.abc",
        ] {
            assert!(host.can_publish(subject), "host {subject}");
        }
        for subject in [
            "$JS.API.STREAM.DELETE.KV_CK_SERVING",
            "$JS.API.STREAM.PURGE.KV_CK_REGISTRY",
            "$JS.API.STREAM.UPDATE.OBJ_CK_ARTIFACTS",
            "ck.g-1.tool.invoked",
            "input.Anything",
        ] {
            assert!(!operator.can_publish(subject), "operator {subject}");
        }
        let callout = policy.permissions("callout").unwrap();
        assert!(!callout.can_publish("$JS.API.STREAM.INFO.OBJ_CK_ARTIFACTS"));
        assert!(callout.can_publish("$JS.API.STREAM.INFO.KV_CK_REGISTRY"));
    }

    #[test]
    fn users_without_a_role_are_denied_every_write() {
        let others = Permissions {
            publish: PermissionList {
                allow: Vec::new(),
                deny: write_denials(),
            },
            ..Permissions::default()
        };
        assert!(others.can_publish("input.Demo.Echo"));
        for subject in [
            "$KV.CK_SERVING.g-1",
            "$KV.CK_REGISTRY.x",
            "$O.CK_ARTIFACTS.M.x",
            "ck.g-1.ck.promote",
            "$JS.API.STREAM.CREATE.KV_CK_REGISTRY",
            "$JS.API.STREAM.DELETE.CK_LOOP_EVENTS",
            "$JS.API.STREAM.MSG.DELETE.KV_CK_SERVING",
        ] {
            assert!(!others.can_publish(subject), "{subject}");
        }
    }

    #[test]
    fn a_bad_policy_is_refused_with_its_reason() {
        let unknown = ControlPolicy::parse("version: 1\nroles:\n  x:\n    write: [everything]\n");
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown variant `everything`")
        );
        assert!(matches!(
            ControlPolicy::parse("version: 2\nroles: {}\n"),
            Err(ControlPolicyError::Version(2))
        ));
        let policy = ControlPolicy::parse(POLICY).unwrap();
        assert!(
            policy
                .permissions("root")
                .unwrap_err()
                .to_string()
                .contains("operator")
        );
    }
}

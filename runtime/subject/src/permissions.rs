//! Publish/subscribe permission lists and the decisions nats-server takes on them.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::matching::matches;

/// An allow list and a deny list, as in a nats-server `permissions` block or a user JWT.
///
/// Server semantics, reproduced exactly: an **empty allow list means no restriction** (the server
/// only builds an allow filter from a non-empty list), and any deny match overrides an allow.
/// Code that wants deny-by-default must therefore never hand the server an empty allow list;
/// [`PermissionList::is_deny_by_default`] tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionList {
    /// Subjects (patterns) that are allowed. Empty: everything not denied is allowed.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Subjects (patterns) that are denied, overriding `allow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl PermissionList {
    /// An allow-only list.
    pub fn allow_only<I, S>(subjects: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            allow: subjects.into_iter().map(Into::into).collect(),
            deny: Vec::new(),
        }
    }

    /// Would the server accept `subject` under this list?
    pub fn allows(&self, subject: &str) -> bool {
        let allowed = self.allow.is_empty() || self.allow.iter().any(|p| matches(p, subject));
        allowed && !self.deny.iter().any(|p| matches(p, subject))
    }

    /// True when something is denied unless explicitly allowed: the allow list is non-empty, or
    /// the deny list contains the full wildcard.
    pub fn is_deny_by_default(&self) -> bool {
        !self.allow.is_empty() || self.deny.iter().any(|d| d == ">")
    }
}

/// Permission for a responder to publish to the reply subject of a request it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponsePermission {
    /// How many responses may be sent per request.
    pub max: u32,
    /// How long after the request a response is still allowed, in milliseconds.
    pub expires_ms: u64,
}

/// A connection's full permission set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// What may be published.
    pub publish: PermissionList,
    /// What may be subscribed to.
    pub subscribe: PermissionList,
    /// Reply permission for request/reply, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_responses: Option<ResponsePermission>,
}

impl Permissions {
    /// Would the server let this connection publish to the literal `subject`?
    ///
    /// Response permissions are dynamic (they depend on requests received, and a tracked reply
    /// subject is allowed even over a deny entry); they are not part of this static decision.
    pub fn can_publish(&self, subject: &str) -> bool {
        // With `allow_responses` set the server turns an absent publish allow list into an empty
        // one, which denies every publish but the tracked replies.
        if self.allow_responses.is_some() && self.publish.allow.is_empty() {
            return false;
        }
        self.publish.allows(subject)
    }

    /// Would the server accept a subscription to `subject` (which may hold wildcards)?
    ///
    /// This is the server's acceptance check. For a wildcard subscription that overlaps a deny
    /// entry the server additionally filters individual messages on delivery; use
    /// [`Permissions::can_receive`] for that.
    pub fn can_subscribe(&self, subject: &str) -> bool {
        self.subscribe.allows(subject)
    }

    /// Would a message published on the literal `message_subject` be delivered to this
    /// connection through an accepted subscription? (Deny entries filter on delivery.)
    pub fn can_receive(&self, message_subject: &str) -> bool {
        !self
            .subscribe
            .deny
            .iter()
            .any(|p| matches(p, message_subject))
    }

    /// Renders a nats-server configuration `permissions { ... }` block.
    ///
    /// Empty allow lists are omitted rather than written as `allow: []`: the server reads both the
    /// same way (no restriction), and omitting it keeps the output honest about that.
    pub fn to_nats_config(&self) -> String {
        let mut out = String::from("permissions {\n");
        for (name, list) in [("publish", &self.publish), ("subscribe", &self.subscribe)] {
            if list.allow.is_empty() && list.deny.is_empty() {
                continue;
            }
            let _ = writeln!(out, "  {name} {{");
            for (key, subjects) in [("allow", &list.allow), ("deny", &list.deny)] {
                if subjects.is_empty() {
                    continue;
                }
                let quoted: Vec<String> = subjects.iter().map(|s| quote(s)).collect();
                let _ = writeln!(out, "    {key}: [{}]", quoted.join(", "));
            }
            out.push_str("  }\n");
        }
        if let Some(resp) = self.allow_responses {
            let _ = writeln!(
                out,
                "  allow_responses {{ max: {}, expires: \"{}ms\" }}",
                resp.max, resp.expires_ms
            );
        }
        out.push('}');
        out
    }
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_allow_means_everything() {
        let list = PermissionList::default();
        assert!(list.allows("anything.at.all"));
        assert!(!list.is_deny_by_default());
    }

    #[test]
    fn deny_overrides_allow() {
        let list = PermissionList {
            allow: vec!["a.>".into()],
            deny: vec!["a.secret".into()],
        };
        assert!(list.allows("a.b"));
        assert!(!list.allows("a.secret"));
        assert!(!list.allows("b"));
        assert!(list.is_deny_by_default());
    }

    #[test]
    fn renders_a_config_block() {
        let perms = Permissions {
            publish: PermissionList::allow_only(["ck.g.>", "result.K"]),
            subscribe: PermissionList {
                allow: vec!["input.K".into()],
                deny: vec!["x".into()],
            },
            allow_responses: Some(ResponsePermission {
                max: 1,
                expires_ms: 120_000,
            }),
        };
        let text = perms.to_nats_config();
        assert_eq!(
            text,
            "permissions {\n  publish {\n    allow: [\"ck.g.>\", \"result.K\"]\n  }\n  subscribe {\n    \
             allow: [\"input.K\"]\n    deny: [\"x\"]\n  }\n  allow_responses { max: 1, expires: \"120000ms\" }\n}"
        );
    }
}

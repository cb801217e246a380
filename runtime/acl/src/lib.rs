//! The ACL compiler: a kernel's identity, topics and edges, plus the grants of every known
//! kernel, become NATS publish/subscribe allow lists. Deny by default.
//!
//! This is the one rule set behind both enforcement points: the auth callout puts its output in
//! the user JWT so nats-server enforces it, and the host pre-checks guest publishes against the
//! same [`Permissions`]. Every subject it emits carries the reasons it was opened
//! ([`CompiledAcl::rules`]), and grants or edges that open nothing are reported
//! ([`CompiledAcl::notes`]), never silently dropped.
//!
//! The rules (ckp-spec §6 [OURS], see `policies/README.md`):
//! - own: publish `ck.{guid}.>` and its result/event/stream topics; subscribe its input topic,
//!   `ck.{guid}.>` and its private reply prefix `_INBOX_{guid}.>` (never `_INBOX.>`); respond to
//!   requests it received (`allow_responses`, one reply each).
//! - a subject of kernel X is opened to K only by X's own manifest: a non-expired grant naming
//!   K's SPIFFE ID (or `auth` in K's trust domain, or `anon`), an action of X open to anon/auth,
//!   or an outbound PRODUCES/TRIGGERS/LOOPS_WITH edge of X towards K.
//! - grant verbs: `invoke-tool` or an action name → publish X's input (and, for a SPIFFE grant,
//!   subscribe X's result); `read-storage|index|ledger|llm|web` → subscribe `ck.{X}.data.>`;
//!   `read-identity|skill|tool-ref` → subscribe `ck.{X}.ck.>` and `ck.{X}.tool.>`; any SPIFFE
//!   grant → subscribe X's event topic.
//! - host, for a kernel declaring task lifecycle actions: publish on the JetStream API of its
//!   own lifecycle bucket and DATA event stream (`topics::host_jetstream_subjects`); the host keeps its guest off them
//!   (`topics::host_reserved`).
//!
//! - only subjects inside the declared subject families ([`families`],
//!   `policies/subject-families.yaml`) are opened; others are noted, never opened.
//!
//! It does not read files or talk to NATS; it never invents a subject outside `ck-manifest`'s
//! topic functions, and it refuses (rather than emits) anything that would widen through a
//! wildcard.

pub mod control;
pub mod families;
pub mod install;
pub mod site;

use chrono::{DateTime, Utc};
use ck_manifest::topics::{self, Loop};
use ck_manifest::{Access, Expiry, GrantIdentity, Kernel, KernelSet, Predicate};
use ck_subject::{PermissionList, Permissions, ResponsePermission};
use serde::Serialize;
use thiserror::Error;

/// Tunables of the compiled permissions that do not come from manifests.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Reply permission given to every kernel for requests it receives.
    pub responses: ResponsePermission,
    /// The declared subject families: nothing outside them is opened.
    pub families: std::sync::Arc<families::Families>,
}

impl Default for Policy {
    fn default() -> Self {
        static BUILTIN: std::sync::OnceLock<std::sync::Arc<families::Families>> =
            std::sync::OnceLock::new();
        // nats-server's own defaults for `allow_responses: true`.
        Self {
            responses: ResponsePermission {
                max: 1,
                expires_ms: 120_000,
            },
            families: BUILTIN
                .get_or_init(|| std::sync::Arc::new(families::Families::builtin()))
                .clone(),
        }
    }
}

/// Publish or subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Publish permission.
    Publish,
    /// Subscribe permission.
    Subscribe,
}

/// One opened subject and every reason it was opened.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    /// Publish or subscribe.
    pub direction: Direction,
    /// The subject or pattern.
    pub subject: String,
    /// Why, e.g. "own input topic" or "CS.Voting grants read-storage (line 12)".
    pub because: Vec<String>,
    /// Covered by a broader entry, so left out of the permission list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub covered_by: Option<String>,
}

/// The compiled permissions of one kernel.
#[derive(Debug, Clone, Serialize)]
pub struct CompiledAcl {
    /// Kernel name.
    pub kernel: String,
    /// Kernel GUID.
    pub guid: String,
    /// SPIFFE ID the connection authenticates as, when the kernel has a trust domain.
    pub spiffe_id: Option<String>,
    /// Inbox prefix the kernel's requests must use.
    pub inbox_prefix: String,
    /// When the earliest applied grant expires; the connection's credentials must not outlive it.
    pub expires_at: Option<DateTime<Utc>>,
    /// What nats-server enforces.
    pub permissions: Permissions,
    /// Every subject with its reasons.
    pub rules: Vec<Rule>,
    /// Grants and edges that opened nothing, and why.
    pub notes: Vec<String>,
    /// Applied grants marked `audit: true`: their use is recorded in the grantor's ledger.
    pub audited: Vec<AuditedGrant>,
}

/// An applied grant whose grantor asked for every access to be audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditedGrant {
    /// The granting kernel's name.
    pub grantor: String,
    /// The granting kernel's GUID.
    pub grantor_guid: String,
    /// The granted actions.
    pub actions: Vec<String>,
    /// Manifest line of the grant.
    pub line: usize,
}

/// Why compilation refused to produce permissions.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AclError {
    /// A subject would admit more than the grant or topic it came from.
    #[error("refusing to emit '{subject}' ({reason}): {why}")]
    Widening {
        /// The subject.
        subject: String,
        /// Why it was being opened.
        reason: String,
        /// What is wrong with it.
        why: String,
    },
    /// The result would not deny by default (an empty allow list means "everything" to NATS).
    #[error("{0} permissions would not be deny-by-default")]
    NotDenyByDefault(&'static str),
}

#[derive(Default)]
struct Builder {
    rules: Vec<Rule>,
    notes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    audited: Vec<AuditedGrant>,
    index: std::collections::HashMap<(Direction, String), usize>,
}

impl Builder {
    fn open(&mut self, direction: Direction, subject: String, because: impl Into<String>) {
        let because = because.into();
        // Indexed: a kernel in a large registry opens one subject per kernel with anon actions.
        match self.index.get(&(direction, subject.clone())) {
            Some(&i) => {
                let rule = &mut self.rules[i];
                if !rule.because.contains(&because) {
                    rule.because.push(because);
                }
            }
            None => {
                self.index
                    .insert((direction, subject.clone()), self.rules.len());
                self.rules.push(Rule {
                    direction,
                    subject,
                    because: vec![because],
                    covered_by: None,
                })
            }
        }
    }

    fn expire_at(&mut self, expiry: Expiry) {
        if let Expiry::At(t) = expiry {
            self.expires_at = Some(self.expires_at.map_or(t, |e| e.min(t)));
        }
    }
}

/// Subjects a kernel owns outright: nobody else may be handed a wildcard into them. Used to
/// check that no compiled wildcard reaches past what its reason justifies.
fn check_wildcard(rule: &Rule) -> Result<(), AclError> {
    let widening = |why: &str| AclError::Widening {
        subject: rule.subject.clone(),
        reason: rule.because.join("; "),
        why: why.to_owned(),
    };
    ck_subject::validate_pattern(&rule.subject).map_err(|e| widening(&e.to_string()))?;
    let tokens: Vec<&str> = rule.subject.split('.').collect();
    if tokens.contains(&ck_subject::SINGLE_WILDCARD) {
        // nats-server lets an allow entry `a.*` admit a subscription to `a.>`.
        return Err(widening(
            "'*' in an allow list admits '>' subscriptions on nats-server",
        ));
    }
    if tokens.last() == Some(&ck_subject::FULL_WILDCARD) {
        let prefix_len = tokens.len() - 1;
        let first = tokens[0];
        let kernel_scoped = first == topics::KERNEL_PREFIX && prefix_len >= 2;
        let inbox_scoped = prefix_len == 1
            && first
                .strip_prefix(topics::PRIVATE_INBOX_STEM)
                .is_some_and(|g| !g.is_empty());
        if !(kernel_scoped || inbox_scoped) {
            return Err(widening(
                "a '>' entry must sit under one kernel's `ck.{guid}` or `_INBOX_{guid}` prefix",
            ));
        }
    }
    Ok(())
}

/// Compiles the permissions of `kernel`, considering the manifests of every kernel in `known`
/// (which may or may not contain `kernel` itself).
pub fn compile(
    kernel: &Kernel,
    known: &KernelSet,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Result<CompiledAcl, AclError> {
    use Direction::{Publish, Subscribe};
    let mut b = Builder::default();
    let g = &kernel.guid;

    b.open(Publish, topics::kernel_namespace(g), "own namespace");
    b.open(Publish, kernel.topics.result.clone(), "own result topic");
    b.open(Publish, kernel.topics.event.clone(), "own event topic");
    b.open(Publish, kernel.topics.stream.clone(), "own stream topic");
    b.open(Subscribe, kernel.topics.input.clone(), "own input topic");
    b.open(Subscribe, topics::kernel_namespace(g), "own namespace");
    b.open(Subscribe, topics::inbox_namespace(g), "private reply inbox");
    let host_jetstream = if kernel.declares_task_lifecycle() {
        topics::host_jetstream_subjects(g)
    } else {
        Vec::new()
    };
    for subject in host_jetstream {
        b.open(
            Publish,
            subject,
            "host: the kernel's task lifecycle bucket and DATA event stream (JetStream)",
        );
    }

    let me = kernel.spiffe_id();
    let my_domain = kernel.domain.as_deref();
    let others: Vec<&Kernel> = known.iter().filter(|x| x.guid != kernel.guid).collect();

    for x in &others {
        // Edges X declares towards K: X consents to K reading its events.
        for edge in x.edges.outbound.iter().filter(|e| e.peer == kernel.name) {
            if matches!(
                edge.predicate,
                Predicate::Produces | Predicate::Triggers | Predicate::LoopsWith
            ) {
                let why = format!("{} declares {} → {}", x.name, edge.predicate, kernel.name);
                b.open(Subscribe, x.topics.event.clone(), why);
            }
        }
        // Actions of X open to everyone or to every authenticated identity.
        for action in &x.actions {
            let open = match action.access {
                Access::Anon => true,
                Access::Auth => {
                    me.is_some() && my_domain.is_some() && my_domain == x.domain.as_deref()
                }
                Access::Owner => false,
            };
            if open {
                let why = format!(
                    "{}'s action `{}` is open to {}",
                    x.name, action.name, action.access
                );
                b.open(Publish, x.topics.input.clone(), why);
            }
        }
        // Grants of X.
        for grant in &x.grants {
            let applies = match &grant.identity {
                GrantIdentity::Spiffe(id) => me.as_deref() == Some(id.as_str()),
                GrantIdentity::Auth => {
                    me.is_some() && my_domain.is_some() && my_domain == x.domain.as_deref()
                }
                GrantIdentity::Anon => true,
                GrantIdentity::Owner => false,
            };
            if !applies {
                continue;
            }
            if grant.expires.is_expired(now) {
                b.notes.push(format!(
                    "{} grants {} to {} (line {}), but it has expired: not applied",
                    x.name,
                    grant.actions.join(", "),
                    grant.identity,
                    grant.line
                ));
                continue;
            }
            if grant.audit {
                b.audited.push(AuditedGrant {
                    grantor: x.name.clone(),
                    grantor_guid: x.guid.clone(),
                    actions: grant.actions.clone(),
                    line: grant.line,
                });
            }
            let named = matches!(grant.identity, GrantIdentity::Spiffe(_));
            let mut opened_any = false;
            for action in &grant.actions {
                let why = format!(
                    "{} grants {} `{}` (line {})",
                    x.name, grant.identity, action, grant.line
                );
                let verb_loop = ck_manifest::ACCESS_VERBS
                    .iter()
                    .find(|(v, _)| v == action)
                    .map(|(_, l)| *l);
                match (action.as_str(), verb_loop) {
                    ("invoke-tool", _) => {
                        b.open(Publish, x.topics.input.clone(), why);
                        opened_any = true;
                    }
                    (ck_manifest::READ_RESULTS, _) => {
                        b.open(Subscribe, x.topics.result.clone(), why);
                        opened_any = true;
                    }
                    (_, Some(Loop::Data)) => {
                        b.open(Subscribe, topics::loop_namespace(&x.guid, Loop::Data), why);
                        opened_any = true;
                    }
                    (_, Some(Loop::Ck)) => {
                        b.open(
                            Subscribe,
                            topics::loop_namespace(&x.guid, Loop::Ck),
                            why.clone(),
                        );
                        b.open(Subscribe, topics::loop_namespace(&x.guid, Loop::Tool), why);
                        opened_any = true;
                    }
                    (name, _)
                        if x.action(name).is_some()
                            || matches!(name, "status" | "check.identity") =>
                    {
                        b.open(Publish, x.topics.input.clone(), why);
                        opened_any = true;
                    }
                    _ => b.notes.push(format!(
                        "{} grants unknown action `{action}` to {} (line {}): opens nothing",
                        x.name, grant.identity, grant.line
                    )),
                }
            }
            if opened_any {
                b.expire_at(grant.expires);
                if named {
                    let why = format!("{} grants {} (line {})", x.name, grant.identity, grant.line);
                    b.open(Subscribe, x.topics.event.clone(), why);
                }
            }
        }
    }

    // K's own outbound edges only work where the target consented above; say so when it did not.
    for edge in &kernel.edges.outbound {
        let targets: Vec<&&Kernel> = others.iter().filter(|x| x.name == edge.peer).collect();
        if targets.is_empty() {
            b.notes.push(format!(
                "edge {} → {}: no such kernel is known; nothing opened",
                edge.predicate, edge.peer
            ));
            continue;
        }
        for t in targets {
            let needed: &[(Direction, &str)] = match edge.predicate {
                // The answers come back to K's own inbox; X's result topic is not needed.
                Predicate::Composes | Predicate::Extends => &[(Publish, t.topics.input.as_str())],
                Predicate::LoopsWith => &[(Subscribe, t.topics.event.as_str())],
                Predicate::Produces | Predicate::Triggers => &[],
            };
            for (direction, subject) in needed {
                if !b
                    .rules
                    .iter()
                    .any(|r| r.direction == *direction && r.subject == *subject)
                {
                    b.notes.push(format!(
                        "edge {} → {} ({}) is not backed by a grant from {}: {} on '{}' stays denied",
                        edge.predicate,
                        t.name,
                        t.guid,
                        t.name,
                        if *direction == Publish { "publish" } else { "subscribe" },
                        subject
                    ));
                }
            }
        }
    }

    finish(kernel, b, policy)
}

fn finish(kernel: &Kernel, mut b: Builder, policy: &Policy) -> Result<CompiledAcl, AclError> {
    // The host's own JetStream subjects are fixed by `topics`, scoped to this kernel's bucket
    // and stream names, and never come from a manifest.
    let host = topics::host_jetstream_subjects(&kernel.guid);
    for rule in b.rules.iter().filter(|r| !host.contains(&r.subject)) {
        check_wildcard(rule)?;
    }
    // Only subjects inside a declared family are opened; NATS's own plumbing (the host's
    // JetStream API subjects, the private inbox) is the protocol's, not a family's.
    let families = &policy.families;
    let (inside, outside): (Vec<Rule>, Vec<Rule>) = b.rules.drain(..).partition(|r| {
        topics::is_system_subject(&r.subject) || families.family_of(&r.subject).is_some()
    });
    b.rules = inside;
    for rule in outside {
        let closest = families
            .closest(&rule.subject)
            .map(|f| format!(" (closest: `{}`, {})", f.name, f.pattern))
            .unwrap_or_default();
        b.notes.push(format!(
            "'{}' ({}) is outside every declared subject family{closest}: not opened",
            rule.subject,
            rule.because.join("; ")
        ));
    }
    // Drop entries a broader entry of the same direction already covers. Only a pattern with a
    // wildcard covers anything but itself, so only those are tried.
    let snapshot: Vec<(Direction, String)> = b
        .rules
        .iter()
        .filter(|r| r.subject.split('.').any(|t| t == "*" || t == ">"))
        .map(|r| (r.direction, r.subject.clone()))
        .collect();
    for rule in &mut b.rules {
        rule.covered_by = snapshot
            .iter()
            .find(|(d, s)| {
                *d == rule.direction && *s != rule.subject && ck_subject::matches(s, &rule.subject)
            })
            .map(|(_, s)| s.clone());
    }
    let list = |dir: Direction| {
        PermissionList::allow_only(
            b.rules
                .iter()
                .filter(|r| r.direction == dir && r.covered_by.is_none())
                .map(|r| r.subject.clone()),
        )
    };
    let permissions = Permissions {
        publish: list(Direction::Publish),
        subscribe: list(Direction::Subscribe),
        allow_responses: Some(policy.responses),
    };
    if !permissions.publish.is_deny_by_default() {
        return Err(AclError::NotDenyByDefault("publish"));
    }
    if !permissions.subscribe.is_deny_by_default() {
        return Err(AclError::NotDenyByDefault("subscribe"));
    }
    Ok(CompiledAcl {
        kernel: kernel.name.clone(),
        guid: kernel.guid.clone(),
        spiffe_id: kernel.spiffe_id(),
        inbox_prefix: topics::inbox_prefix(&kernel.guid),
        expires_at: b.expires_at,
        permissions,
        rules: b.rules,
        notes: b.notes,
        audited: b.audited,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(subject: &str) -> Rule {
        Rule {
            direction: Direction::Subscribe,
            subject: subject.into(),
            because: vec!["test".into()],
            covered_by: None,
        }
    }

    #[test]
    fn wildcards_that_widen_are_refused() {
        assert!(check_wildcard(&rule("ck.g1.>")).is_ok());
        assert!(check_wildcard(&rule("ck.g1.data.>")).is_ok());
        assert!(check_wildcard(&rule("_INBOX_g1.>")).is_ok());
        assert!(check_wildcard(&rule("input.Acme.Store")).is_ok());
        for bad in [
            "_INBOX.>",
            ">",
            "ck.>",
            "ck.*.data.>",
            "input.*",
            "input.>",
            "a.*",
            "_INBOX_.>",
            "ck..>",
        ] {
            assert!(check_wildcard(&rule(bad)).is_err(), "{bad} must be refused");
        }
    }
}

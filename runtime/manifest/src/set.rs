//! A set of kernels known together (one host, one registry): the one rule that decides which
//! manifests may stand side by side, and lookups over the kernels that passed it.
//!
//! `ck run`, `ck authz`, `ck acl` and `ck validate` all build their set here, so a manifest the
//! host refuses is also one the callout refuses. A conflict is never settled by choosing a
//! winner (file order could be arranged by whoever writes the second manifest): every kernel
//! involved in it is left out of the set and reported.

use std::collections::{BTreeMap, BTreeSet};

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{Access, Expiry, GrantIdentity, Kernel, Predicate};
use crate::topics::TopicKind;

/// Kernels known together. Several instances of one class (same name, different GUIDs) are
/// normal when they declare the same access; two manifests with one GUID, two instances of one
/// class that declare different access, or two classes fighting over a topic, are not.
#[derive(Debug, Clone, Default)]
pub struct KernelSet {
    kernels: Vec<Kernel>,
    /// Kernels left out by the rule, each with the first conflict that refused it.
    refused: Vec<(Kernel, Diagnostic)>,
}

/// The key two GUIDs collide on: JetStream bucket and stream names write `-` as `_`, and a
/// case-insensitive file system (or a person) cannot tell `A` from `a`.
pub fn guid_key(guid: &str) -> String {
    guid.to_ascii_lowercase().replace('_', "-")
}

/// Everything of a manifest that opens subjects to other kernels (what the ACL compiler reads
/// of a grantor). Instances of one class must agree on it, or a second "instance" could widen
/// what the class grants.
#[derive(PartialEq)]
struct AccessSignature<'a> {
    domain: Option<&'a str>,
    topics: [&'a str; 4],
    actions: BTreeSet<(&'a str, Access)>,
    grants: Vec<(&'a GrantIdentity, Vec<&'a str>, Expiry, bool)>,
    edges: BTreeSet<(&'a str, Predicate)>,
}

fn signature(k: &Kernel) -> AccessSignature<'_> {
    let mut grants: Vec<_> = k
        .grants
        .iter()
        .map(|g| {
            let mut actions: Vec<&str> = g.actions.iter().map(String::as_str).collect();
            actions.sort_unstable();
            (&g.identity, actions, g.expires, g.audit)
        })
        .collect();
    grants.sort_by(|a, b| (a.0.to_string(), &a.1, a.3).cmp(&(b.0.to_string(), &b.1, b.3)));
    AccessSignature {
        domain: k.domain.as_deref(),
        topics: TopicKind::ALL.map(|kind| k.topics.get(kind)),
        actions: k
            .actions
            .iter()
            .map(|a| (a.name.as_str(), a.access))
            .collect(),
        grants,
        edges: k
            .edges
            .outbound
            .iter()
            .map(|e| (e.peer.as_str(), e.predicate))
            .collect(),
    }
}

impl KernelSet {
    /// Builds the set by the registry rule: kernels involved in a conflict are left out (all of
    /// them, whatever the order given) and each conflict is reported as an error on every
    /// manifest involved. The set holds the kernels that passed, in the order given.
    pub fn new(kernels: Vec<Kernel>) -> (Self, Vec<Diagnostic>) {
        let mut problems = Vec::new();
        let mut refused: Vec<Option<Diagnostic>> = vec![None; kernels.len()];

        let mut by_guid: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut by_name: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut by_topic: BTreeMap<&str, Vec<(usize, TopicKind)>> = BTreeMap::new();
        for (i, k) in kernels.iter().enumerate() {
            by_guid.entry(guid_key(&k.guid)).or_default().push(i);
            by_name.entry(&k.name).or_default().push(i);
            for kind in TopicKind::ALL {
                by_topic
                    .entry(k.topics.get(kind))
                    .or_default()
                    .push((i, kind));
            }
        }
        let mut report = |i: usize, field: &str, message: String| {
            let mut d = Diagnostics::new(&kernels[i].manifest_path);
            d.error(None, field, message);
            let found = d.into_vec();
            if refused[i].is_none() {
                refused[i] = found.first().cloned();
            }
            problems.extend(found);
        };
        let others = |group: &[usize], me: usize| -> String {
            group
                .iter()
                .filter(|j| **j != me)
                .map(|j| kernels[*j].manifest_path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };

        for group in by_guid.values().filter(|g| g.len() > 1) {
            for &i in group {
                let exact = group.iter().all(|j| kernels[*j].guid == kernels[i].guid);
                let how = if exact {
                    String::new()
                } else {
                    " (spelt differently, but naming the same task bucket, stream and identity)"
                        .to_owned()
                };
                report(
                    i,
                    "kernel_id",
                    format!(
                        "guid '{}' is also used by {}{how}; every kernel involved is refused",
                        kernels[i].guid,
                        others(group, i)
                    ),
                );
            }
        }
        for (name, group) in by_name.iter().filter(|(_, g)| g.len() > 1) {
            let first = signature(&kernels[group[0]]);
            if group[1..].iter().all(|j| signature(&kernels[*j]) == first) {
                continue;
            }
            for &i in group {
                report(
                    i,
                    "metadata.name",
                    format!(
                        "kernel '{name}' is also declared by {} with different grants, actions, \
                         edges, topics or domain; instances of one kernel class must declare the \
                         same access, so every instance is refused",
                        others(group, i)
                    ),
                );
            }
        }
        for (topic, users) in &by_topic {
            let names: BTreeSet<&str> = users
                .iter()
                .map(|(i, _)| kernels[*i].name.as_str())
                .collect();
            if names.len() < 2 {
                continue;
            }
            let group: Vec<usize> = users.iter().map(|(i, _)| *i).collect();
            for &(i, kind) in users {
                report(
                    i,
                    &format!("spec.nats.{}_topic", kind.as_str()),
                    format!(
                        "topic '{topic}' is also a topic of {}; every kernel involved is refused",
                        others(&group, i)
                    ),
                );
            }
        }

        let mut kept = Vec::with_capacity(kernels.len());
        let mut left_out = Vec::new();
        for (kernel, why) in kernels.into_iter().zip(refused) {
            match why {
                Some(why) => left_out.push((kernel, why)),
                None => kept.push(kernel),
            }
        }
        (
            Self {
                kernels: kept,
                refused: left_out,
            },
            problems,
        )
    }

    /// All kernels, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = &Kernel> {
        self.kernels.iter()
    }

    /// Why the kernel claiming `user` (a SPIFFE ID, or a `LOCAL.*` name) was left out of the
    /// set, if it was.
    pub fn refusal(&self, user: &str) -> Option<&Diagnostic> {
        self.refused
            .iter()
            .find(|(k, _)| k.spiffe_id().as_deref() == Some(user) || k.name == user)
            .map(|(_, why)| why)
    }

    /// Number of kernels.
    pub fn len(&self) -> usize {
        self.kernels.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.kernels.is_empty()
    }

    /// Every instance of the kernel class called `name`.
    pub fn by_name<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Kernel> + 'a {
        self.kernels.iter().filter(move |k| k.name == name)
    }

    /// The kernel whose SPIFFE ID is `id`.
    pub fn by_spiffe_id(&self, id: &str) -> Option<&Kernel> {
        self.kernels
            .iter()
            .find(|k| k.spiffe_id().as_deref() == Some(id))
    }

    /// A kernel by GUID, or by name when exactly one instance has it.
    pub fn find(&self, key: &str) -> Option<&Kernel> {
        if let Some(k) = self.kernels.iter().find(|k| k.guid == key) {
            return Some(k);
        }
        let mut named = self.kernels.iter().filter(|k| k.name == key);
        let first = named.next()?;
        named.next().is_none().then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VICTIM: &str = "0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d";
    const OTHER: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

    fn kernel(dir: &str, name: &str, guid: &str, more: &str) -> Kernel {
        let text = format!(
            "apiVersion: conceptkernel/v3\nkernel_class: {name}\nkernel_id: {guid}\ndomain: example.org\n\
             spec:\n  actions:\n    common:\n      - {{name: status, access: anon}}\n{more}"
        );
        let path = std::path::PathBuf::from(format!("{dir}/conceptkernel.yaml"));
        let loaded = crate::parse_str(&text, &path, &crate::ParseOptions::default());
        loaded
            .kernel
            .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics))
    }

    fn grant(to: &str) -> String {
        format!(
            "grants:\n  - identity: spiffe://example.org/ck/{to}\n    actions: [status]\n    expires: 2099-01-01\n"
        )
    }

    fn names(set: &KernelSet) -> Vec<String> {
        set.iter()
            .map(|k| k.manifest_path.display().to_string())
            .collect()
    }

    /// Every order of `kernels` gives the same set and refuses the same manifests.
    fn in_every_order(kernels: Vec<Kernel>) -> (Vec<String>, usize) {
        let forward = KernelSet::new(kernels.clone());
        let mut reversed = kernels;
        reversed.reverse();
        let backward = KernelSet::new(reversed);
        let mut a = names(&forward.0);
        let mut b = names(&backward.0);
        a.sort();
        b.sort();
        assert_eq!(a, b, "the order of the manifests decided the outcome");
        assert_eq!(forward.1.len(), backward.1.len());
        (a, forward.1.len())
    }

    #[test]
    fn a_reused_guid_refuses_both_kernels() {
        let (kept, problems) = in_every_order(vec![
            kernel("victim", "Victim", VICTIM, ""),
            kernel("thief", "Thief", VICTIM, &grant("Thief/x")),
            kernel("bystander", "Bystander", OTHER, ""),
        ]);
        assert_eq!(kept, ["bystander/conceptkernel.yaml"]);
        assert_eq!(problems, 2);
    }

    #[test]
    fn a_guid_differing_only_in_case_refuses_both_kernels() {
        let (kept, _) = in_every_order(vec![
            kernel("victim", "Victim", VICTIM, ""),
            kernel("thief", "Thief", &VICTIM.to_ascii_uppercase(), ""),
        ]);
        assert!(kept.is_empty(), "{kept:?}");
        assert_eq!(guid_key("a_B-c"), guid_key("A-b_C"));
    }

    #[test]
    fn an_instance_of_a_class_that_grants_more_refuses_every_instance() {
        let (kept, problems) = in_every_order(vec![
            kernel("victim", "Victim", VICTIM, ""),
            kernel("fake", "Victim", OTHER, &grant("Thief/x")),
        ]);
        assert!(kept.is_empty(), "{kept:?}");
        assert_eq!(problems, 2);
    }

    #[test]
    fn instances_of_a_class_declaring_the_same_access_stand_together() {
        let (kept, problems) = in_every_order(vec![
            kernel("a", "Victim", VICTIM, &grant("Caller/x")),
            kernel("b", "Victim", OTHER, &grant("Caller/x")),
        ]);
        assert_eq!(kept.len(), 2);
        assert_eq!(problems, 0);
    }

    #[test]
    fn two_classes_sharing_a_topic_are_both_refused() {
        let (kept, problems) = in_every_order(vec![
            kernel("victim", "Victim", VICTIM, ""),
            kernel(
                "thief",
                "Thief",
                OTHER,
                &format!("  nats:\n    result_topic: ck.{OTHER}.result\n"),
            ),
        ]);
        // The thief's explicit topic is its own: no conflict.
        assert_eq!((kept.len(), problems), (2, 0));
        let mut thief = kernel("thief", "Thief", OTHER, "");
        thief.topics.input = "input.Victim".to_owned();
        let (kept, problems) = in_every_order(vec![kernel("victim", "Victim", VICTIM, ""), thief]);
        assert!(kept.is_empty(), "{kept:?}");
        assert_eq!(problems, 2);
    }
}

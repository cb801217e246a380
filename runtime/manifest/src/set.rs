//! A set of kernels known together (one host, one registry): cross-manifest checks and lookups.

use std::collections::HashMap;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::Kernel;
use crate::topics::TopicKind;

/// Kernels known together. Several instances of one class (same name, different GUIDs) are
/// normal; two manifests with one GUID, or two classes fighting over a topic, are not.
#[derive(Debug, Clone, Default)]
pub struct KernelSet {
    kernels: Vec<Kernel>,
}

impl KernelSet {
    /// Builds the set and reports conflicts between its members.
    pub fn new(kernels: Vec<Kernel>) -> (Self, Vec<Diagnostic>) {
        let mut problems = Vec::new();
        let mut by_guid: HashMap<&str, &Kernel> = HashMap::new();
        let mut topic_owner: HashMap<&str, &Kernel> = HashMap::new();
        for k in &kernels {
            let mut d = Diagnostics::new(&k.manifest_path);
            if let Some(other) = by_guid.insert(&k.guid, k) {
                d.error(
                    None,
                    "kernel_id",
                    format!(
                        "guid '{}' is also used by {}",
                        k.guid,
                        other.manifest_path.display()
                    ),
                );
            }
            for kind in TopicKind::ALL {
                let topic = k.topics.get(kind);
                match topic_owner.get(topic) {
                    Some(other) if other.name != k.name => d.error(
                        None,
                        &format!("spec.nats.{}_topic", kind.as_str()),
                        format!(
                            "topic '{topic}' is also a topic of kernel '{}' ({})",
                            other.name,
                            other.manifest_path.display()
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        topic_owner.insert(topic, k);
                    }
                }
            }
            problems.extend(d.into_vec());
        }
        (Self { kernels }, problems)
    }

    /// All kernels, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = &Kernel> {
        self.kernels.iter()
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

//! The normalised kernel model: one typed shape, whatever shape the manifest was written in.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::topics::{self, LoopEvent, TopicFormat, TopicKind};

/// A kernel as the runtime understands it.
#[derive(Debug, Clone, Serialize)]
pub struct Kernel {
    /// The manifest file this was read from.
    pub manifest_path: PathBuf,
    /// `apiVersion`, when given.
    pub api_version: Option<String>,
    /// The kernel name used in name-based topics, e.g. `Finance.Employee` or `CS.Voting`.
    pub name: String,
    /// The class used in the SPIFFE ID (`kernel_class`, or the name when there is none).
    pub class: String,
    /// `namespace_prefix`, when given.
    pub namespace_prefix: Option<String>,
    /// The instance GUID (`.ck-guid`, `kernel_id` or `metadata.guid`).
    pub guid: String,
    /// The CKP URN, given or built as `ckp://Kernel#{name}:v{major}.{minor}`.
    pub urn: String,
    /// Kernel version, when known.
    pub version: Option<String>,
    /// Kernel type (`node:hot`, `agent`, ...).
    pub kernel_type: Option<KernelType>,
    /// Governance mode.
    pub governance: Option<Governance>,
    /// SPIFFE trust domain; without it the kernel has no SPIFFE identity.
    pub domain: Option<String>,
    /// Declared actions (common and unique).
    pub actions: Vec<Action>,
    /// Declared edges.
    pub edges: Edges,
    /// Access grants to other identities.
    pub grants: Vec<Grant>,
    /// Resolved NATS topics.
    pub topics: Topics,
    /// `spec.nats.conversation`.
    pub conversation: Conversation,
    /// The TOOL entry: the component and how to build it.
    pub tool: Tool,
    /// `spec.limits`: what one call of the kernel may use.
    pub limits: Limits,
}

impl Kernel {
    /// The kernel's directory: where its manifest is, and its `tool/` and `data/` are.
    pub fn dir(&self) -> &std::path::Path {
        self.manifest_path
            .parent()
            .unwrap_or(std::path::Path::new(""))
    }

    /// `spiffe://{domain}/ck/{class}/{guid}`, when the kernel has a trust domain.
    pub fn spiffe_id(&self) -> Option<String> {
        self.domain
            .as_ref()
            .map(|d| format!("spiffe://{d}/ck/{}/{}", self.class, self.guid))
    }

    /// The subject of one per-loop event of this kernel.
    pub fn loop_subject(&self, event: LoopEvent) -> String {
        topics::loop_event_subject(&self.guid, event)
    }

    /// The declared action called `name`, if any.
    pub fn action(&self, name: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.name == name)
    }

    /// Whether the kernel declares any of the task lifecycle actions (ckp-spec §3.1) or
    /// `instance.amend`, which the host serves itself (state in JetStream, the DATA loop).
    pub fn declares_task_lifecycle(&self) -> bool {
        self.actions.iter().any(|a| {
            crate::TASK_LIFECYCLE_ACTIONS.contains(&a.name.as_str())
                || a.name == crate::AMEND_ACTION
        })
    }

    /// True for `LOCAL.*` kernels, which may run without SPIFFE where configured.
    pub fn is_local(&self) -> bool {
        self.name.starts_with("LOCAL.")
    }
}

/// Resolved topics.
#[derive(Debug, Clone, Serialize)]
pub struct Topics {
    /// How defaults were formed.
    pub format: TopicFormat,
    /// Where requests arrive.
    pub input: String,
    /// Where results go.
    pub result: String,
    /// Where events go.
    pub event: String,
    /// Where streamed output goes.
    pub stream: String,
}

impl Topics {
    /// The topic of `kind`.
    pub fn get(&self, kind: TopicKind) -> &str {
        match kind {
            TopicKind::Input => &self.input,
            TopicKind::Result => &self.result,
            TopicKind::Event => &self.event,
            TopicKind::Stream => &self.stream,
        }
    }
}

/// `spec.nats.conversation`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Conversation {
    /// Conversation mode on.
    pub enabled: bool,
    /// Stream partial responses on the stream topic.
    pub stream_responses: bool,
}

/// Kernel types (v3.7 CRD enum plus LinkML's `service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KernelType {
    /// Always-on subscriber.
    #[serde(rename = "node:hot")]
    NodeHot,
    /// Started on message.
    #[serde(rename = "node:cold")]
    NodeCold,
    /// LinkML `service`.
    #[serde(rename = "service")]
    Service,
    /// Agent kernel (streams).
    #[serde(rename = "agent")]
    Agent,
    /// Browser-side kernel.
    #[serde(rename = "inline")]
    Inline,
    /// No NATS at all.
    #[serde(rename = "static")]
    Static,
}

impl KernelType {
    /// Parses the manifest spelling; legacy ck-core-rs forms map to hot/cold.
    pub fn parse(s: &str) -> Option<(KernelType, bool)> {
        Some(match s {
            "node:hot" => (KernelType::NodeHot, false),
            "node:cold" => (KernelType::NodeCold, false),
            "service" => (KernelType::Service, false),
            "agent" => (KernelType::Agent, false),
            "inline" => (KernelType::Inline, false),
            "static" => (KernelType::Static, false),
            "python:hot" | "rust:hot" => (KernelType::NodeHot, true),
            "python:cold" | "rust:cold" | "node:manual" => (KernelType::NodeCold, true),
            _ => return None,
        })
    }

    /// Accepted spellings, for messages.
    pub const SPELLINGS: &'static str = "node:hot, node:cold, service, agent, inline, static";
}

/// Governance modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Governance {
    /// JWT required.
    Strict,
    /// Anonymous allowed.
    Relaxed,
    /// SVID required.
    Autonomous,
}

/// Access level of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone, unauthenticated.
    Anon,
    /// Any authenticated identity.
    Auth,
    /// The kernel's owner only.
    Owner,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Anon => "anon",
            Access::Auth => "auth",
            Access::Owner => "owner",
        })
    }
}

/// A declared action.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// Action name, e.g. `employee.create`.
    pub name: String,
    /// Human description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who may call it.
    pub access: Access,
    /// Free-text parameter signature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
    /// Listed under `common` (protocol actions) rather than `unique`.
    pub common: bool,
}

/// The closed set of edge predicates (v3.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Predicate {
    /// Hub calls spoke.
    Composes,
    /// Target runs an action on source events.
    Triggers,
    /// Target consumes source events.
    Produces,
    /// Source forwards actions to target.
    Extends,
    /// Mutual event subscription.
    LoopsWith,
}

impl Predicate {
    /// Parses the manifest spelling.
    pub fn parse(s: &str) -> Option<Predicate> {
        Some(match s {
            "COMPOSES" => Predicate::Composes,
            "TRIGGERS" => Predicate::Triggers,
            "PRODUCES" => Predicate::Produces,
            "EXTENDS" => Predicate::Extends,
            "LOOPS_WITH" => Predicate::LoopsWith,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Predicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Predicate::Composes => "COMPOSES",
            Predicate::Triggers => "TRIGGERS",
            Predicate::Produces => "PRODUCES",
            Predicate::Extends => "EXTENDS",
            Predicate::LoopsWith => "LOOPS_WITH",
        })
    }
}

/// One edge.
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    /// The other kernel's name (`target_kernel` outbound, `source_kernel` inbound).
    pub peer: String,
    /// The relation.
    pub predicate: Predicate,
    /// TRIGGERS: the action to run on the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_action: Option<String>,
    /// Explicit subject (LinkML `nats_subject`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_subject: Option<String>,
    /// EXTENDS: actions the edge adds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extends_actions: Vec<Action>,
}

/// Outbound and inbound edges.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Edges {
    /// Edges this kernel declares towards others.
    pub outbound: Vec<Edge>,
    /// Edges others declare towards this kernel (informational).
    pub inbound: Vec<Edge>,
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum GrantIdentity {
    /// A SPIFFE ID (`spiffe://{domain}/ck/{class}/{guid}` or `/agent/{name}`).
    Spiffe(String),
    /// Anyone.
    Anon,
    /// Any authenticated identity.
    Auth,
    /// The kernel's owner.
    Owner,
}

impl std::fmt::Display for GrantIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantIdentity::Spiffe(id) => f.write_str(id),
            GrantIdentity::Anon => f.write_str("anon"),
            GrantIdentity::Auth => f.write_str("auth"),
            GrantIdentity::Owner => f.write_str("owner"),
        }
    }
}

/// When a grant stops applying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expiry {
    /// `never`.
    Never,
    /// At this instant.
    At(DateTime<Utc>),
}

impl Expiry {
    /// True when the grant no longer applies at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        matches!(self, Expiry::At(t) if *t <= now)
    }
}

/// Grantable access verbs (v3.7) and the loop each reads or operates.
pub const ACCESS_VERBS: [(&str, crate::topics::Loop); 9] = {
    use crate::topics::Loop::{Ck, Data, Tool};
    [
        ("read-identity", Ck),
        ("read-skill", Ck),
        ("read-tool-ref", Ck),
        ("read-storage", Data),
        ("read-index", Data),
        ("read-ledger", Data),
        ("read-llm", Data),
        ("read-web", Data),
        ("invoke-tool", Tool),
    ]
};

/// One grant entry.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    /// Who.
    pub identity: GrantIdentity,
    /// Access verbs and kernel action names.
    pub actions: Vec<String>,
    /// Until when.
    pub expires: Expiry,
    /// Log every access to the ledger.
    pub audit: bool,
    /// Manifest line of the entry, for explanations.
    pub line: usize,
}

/// The TOOL entry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tool {
    /// Path of the WebAssembly component, relative to the kernel directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<PathBuf>,
    /// Shell command that builds the component, run in the kernel directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// Source language (informational).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// LinkML entrypoint (informational for WebAssembly kernels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// LinkML runtime (informational).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// Per-call resource limits (`spec.limits`, ours: the CKP docs define none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Wall-clock deadline of one call, in milliseconds.
    pub timeout_ms: u64,
    /// Cap on the kernel's linear memory, in MiB.
    pub memory_mb: u64,
    /// Instruction budget per call (wasmtime fuel); none when absent.
    pub fuel: Option<u64>,
    /// Largest request payload accepted, in bytes (larger ones are answered 413).
    pub max_request_bytes: u64,
    /// Largest result a call may return, in bytes.
    pub max_result_bytes: u64,
    /// 0: a fresh instance per message (the default, full isolation); N: an instance is reused
    /// for up to N messages and dropped after any failure.
    pub reuse_instances: u64,
}

impl Limits {
    /// Upper bounds a manifest may ask for.
    pub const MAX_TIMEOUT_MS: u64 = 10 * 60 * 1000;
    /// Largest memory cap, in MiB (the wasm32 address space).
    pub const MAX_MEMORY_MB: u64 = 4096;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            memory_mb: 64,
            fuel: None,
            max_request_bytes: 1024 * 1024,
            max_result_bytes: 1024 * 1024,
            reuse_instances: 0,
        }
    }
}

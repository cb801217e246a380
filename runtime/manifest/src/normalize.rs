//! From a located YAML tree, in any of the shapes of ckp-spec §1.1, to one [`Kernel`].
//!
//! Each logical field is resolved by the precedence table of ckp-spec §1.1 [OURS]; when a field
//! is set in two places with different values the winner is used and the loser is reported.
//! Every problem becomes a located [`Diagnostic`](crate::Diagnostic); nothing here panics on
//! input.

use std::path::{Component, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use ck_subject::{validate_literal, validate_token};

use crate::diag::{Diagnostics, Loc};
use crate::model::{
    ACCESS_VERBS, Access, Action, Conversation, Edge, Edges, Expiry, Governance, Grant,
    GrantIdentity, Kernel, KernelType, Limits, Predicate, Tool, Topics,
};
use crate::topics::{self, TopicFormat, TopicKind};
use crate::yaml::{Node, Value};

/// Inputs to normalisation that do not come from the manifest text.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// "Now", for grant expiry.
    pub now: DateTime<Utc>,
    /// Contents of a `.ck-guid` file beside the manifest, with its path.
    pub ck_guid: Option<(String, PathBuf)>,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            now: Utc::now(),
            ck_guid: None,
        }
    }
}

const TOP_KEYS: &[&str] = &[
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
const METADATA_KEYS: &[&str] = &[
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
const SPEC_KEYS: &[&str] = &[
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
const QUALITIES_KEYS: &[&str] = &[
    "type",
    "governance_mode",
    "nats_subject_input",
    "nats_subject_result",
    "nats_subject_event",
    "nats_subject_stream",
    "max_concurrent_agents",
];
const NATS_KEYS: &[&str] = &[
    "input_topic",
    "result_topic",
    "event_topic",
    "stream_topic",
    "format",
    "conversation",
];
const ACTION_KEYS: &[&str] = &["name", "description", "access", "access_level", "params"];
const GRANT_KEYS: &[&str] = &["identity", "actions", "expires", "audit"];
const EDGE_KEYS: &[&str] = &[
    "target_kernel",
    "source_kernel",
    "predicate",
    "trigger_action",
    "nats_subject",
    "config",
    "requires_consensus",
    "requires_target_auth",
];
const TOOL_KEYS: &[&str] = &["component", "build", "language", "entrypoint", "runtime"];
const LIMIT_KEYS: &[&str] = &[
    "timeout_ms",
    "memory_mb",
    "fuel",
    "max_request_bytes",
    "max_result_bytes",
    "reuse_instances",
];

/// Longest kernel name, GUID or action name accepted (they end up inside subjects and IDs).
const MAX_NAME_LEN: usize = 128;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Small edit distance, for "did you mean" on unknown keys.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

struct Reader<'d> {
    d: &'d mut Diagnostics,
}

impl Reader<'_> {
    fn type_error(&mut self, node: &Node, path: &str, expected: &str) {
        self.d.error(
            Some(node.loc),
            path,
            format!("expected {expected}, found {}", node.value.kind()),
        );
    }

    fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n Node> {
        match node.value {
            Value::Map(_) => Some(node),
            Value::Null => None,
            _ => {
                self.type_error(node, path, "a mapping");
                None
            }
        }
    }

    fn seq<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            Value::Null => None,
            _ => {
                self.type_error(node, path, "a list");
                None
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) | Value::Number(s) => Some(s.clone()),
            _ => {
                self.type_error(node, path, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.type_error(node, path, "true or false");
                None
            }
        }
    }

    /// A child of a mapping node, with its path. Absent or explicit null both read as absent.
    fn child<'n>(
        &mut self,
        parent: Option<&'n Node>,
        path: &str,
        key: &str,
    ) -> Option<(&'n Node, String)> {
        let entry = parent?.get(key)?;
        if matches!(entry.value.value, Value::Null) {
            return None;
        }
        Some((&entry.value, join(path, key)))
    }

    fn check_keys(&mut self, node: &Node, path: &str, known: &[&str]) {
        for entry in node.entries() {
            if known.contains(&entry.key.as_str()) {
                continue;
            }
            let hint = known
                .iter()
                .map(|k| (distance(&entry.key, k), k))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map(|(_, k)| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            self.d.warn(
                Some(entry.key_loc),
                &join(path, &entry.key),
                format!("unknown key, ignored{hint}"),
            );
        }
    }

    /// First present string among `candidates`; later ones that disagree are reported.
    fn first_string(
        &mut self,
        candidates: &[(Option<&Node>, &str, &str)],
    ) -> Option<(String, Loc, String)> {
        let mut winner: Option<(String, Loc, String)> = None;
        for (parent, parent_path, key) in candidates {
            let Some((node, path)) = self.child(*parent, parent_path, key) else {
                continue;
            };
            let Some(value) = self.string(node, &path) else {
                continue;
            };
            match &winner {
                None => winner = Some((value, node.loc, path)),
                Some((won, _, won_path)) if *won != value => {
                    let msg =
                        format!("differs from `{won_path}` ('{won}'), which takes precedence");
                    self.d.warn(Some(node.loc), &path, msg);
                }
                Some(_) => {}
            }
        }
        winner
    }

    /// The first present node among `candidates` (for structured fields).
    fn first_node<'n>(
        &mut self,
        candidates: &[(Option<&'n Node>, &str, &str)],
    ) -> Option<(&'n Node, String)> {
        let mut found: Option<(&'n Node, String)> = None;
        for (parent, parent_path, key) in candidates {
            if let Some((node, path)) = self.child(*parent, parent_path, key) {
                if let Some((_, won)) = &found {
                    let msg = format!("ignored: `{won}` is also set and takes precedence");
                    self.d.warn(Some(node.loc), &path, msg);
                } else {
                    found = Some((node, path));
                }
            }
        }
        found
    }
}

/// A name made of NATS-safe tokens (`Finance.Employee`), also used for action names.
fn check_dotted_name(r: &mut Reader<'_>, value: &str, loc: Loc, path: &str, what: &str) -> bool {
    if value.len() > MAX_NAME_LEN {
        r.d.error(
            Some(loc),
            path,
            format!(
                "{what} is {} bytes long; at most {MAX_NAME_LEN} are allowed",
                value.len()
            ),
        );
        return false;
    }
    if let Err(e) = validate_literal(value) {
        r.d.error(
            Some(loc),
            path,
            format!("{what} '{value}' cannot be used in NATS subjects: {e}"),
        );
        return false;
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        r.d.error(
            Some(loc),
            path,
            format!("{what} '{value}' contains '{bad}'; use letters, digits, '_', '-' and '.' between parts"),
        );
        return false;
    }
    true
}

/// Normalises one manifest document.
pub(crate) fn normalize(doc: &Node, opts: &ParseOptions, d: &mut Diagnostics) -> Option<Kernel> {
    let mut r = Reader { d };
    let Value::Map(_) = doc.value else {
        r.d.error(
            Some(doc.loc),
            "",
            format!(
                "a manifest must be a mapping of keys, found {}",
                doc.value.kind()
            ),
        );
        return None;
    };
    r.check_keys(doc, "", TOP_KEYS);

    let root = Some(doc);
    let metadata = r
        .child(root, "", "metadata")
        .and_then(|(n, p)| r.map(n, &p));
    let spec = r.child(root, "", "spec").and_then(|(n, p)| r.map(n, &p));
    let qualities = r
        .child(root, "", "qualities")
        .and_then(|(n, p)| r.map(n, &p));
    if let Some(m) = metadata {
        r.check_keys(m, "metadata", METADATA_KEYS);
    }
    if let Some(s) = spec {
        r.check_keys(s, "spec", SPEC_KEYS);
    }
    if let Some(q) = qualities {
        r.check_keys(q, "qualities", QUALITIES_KEYS);
    }

    let api_version = read_api_version(&mut r, root);
    if let Some((kind, loc, path)) = r.first_string(&[(root, "", "kind")])
        && kind != "Kernel"
        && kind != "ConceptKernel"
    {
        r.d.warn(
            Some(loc),
            &path,
            format!("kind '{kind}' is neither `Kernel` nor `ConceptKernel`"),
        );
    }
    if let Some((bfo, loc, path)) = r.first_string(&[(root, "", "bfo_type")])
        && bfo != "BFO:0000040"
    {
        r.d.warn(
            Some(loc),
            &path,
            format!("v3.7 requires `BFO:0000040`, found '{bfo}'"),
        );
    }

    let namespace_prefix =
        r.first_string(&[(root, "", "namespace_prefix")])
            .and_then(|(p, loc, path)| {
                check_dotted_name(&mut r, &p, loc, &path, "namespace prefix").then_some(p)
            });
    let (name, class) = read_name(&mut r, root, metadata, namespace_prefix.as_deref(), doc.loc)?;
    let guid = read_guid(&mut r, root, metadata, opts, doc.loc);
    let domain = read_domain(&mut r, root, metadata);
    let (urn, version) = read_urn(&mut r, metadata, spec, &name);
    let kernel_type = read_enum(
        &mut r,
        &[
            (qualities, "qualities", "type"),
            (spec, "spec", "type"),
            (metadata, "metadata", "type"),
        ],
        KernelType::parse,
        KernelType::SPELLINGS,
    )
    .map(|(t, legacy, loc, path)| {
        if legacy {
            r.d.warn(
                Some(loc),
                &path,
                "legacy ck-core-rs kernel type; read as node:hot / node:cold",
            );
        }
        t
    });
    let governance = read_enum(
        &mut r,
        &[
            (qualities, "qualities", "governance_mode"),
            (spec, "spec", "governance_mode"),
            (metadata, "metadata", "governance"),
        ],
        |s| {
            Some((
                match s.to_ascii_uppercase().as_str() {
                    "STRICT" => Governance::Strict,
                    "RELAXED" => Governance::Relaxed,
                    "AUTONOMOUS" => Governance::Autonomous,
                    _ => return None,
                },
                false,
            ))
        },
        "STRICT, RELAXED, AUTONOMOUS",
    )
    .map(|(g, ..)| g);

    let actions = read_actions(&mut r, root, spec);
    let edges = read_edges(&mut r, root, spec, &name);
    let guid_str = guid.clone().unwrap_or_default();
    let (topics, conversation) = read_topics(&mut r, spec, qualities, &name, guid.as_deref());
    let tool = read_tool(&mut r, spec);
    let limits = read_limits(&mut r, spec);
    let own_spiffe = domain
        .as_ref()
        .map(|dm| format!("spiffe://{dm}/ck/{class}/{guid_str}"));
    let grants = read_grants(
        &mut r,
        root,
        spec,
        &actions,
        own_spiffe.as_deref(),
        opts.now,
    );

    let guid = guid?;
    Some(Kernel {
        manifest_path: r.d.file().to_path_buf(),
        api_version,
        name,
        class,
        namespace_prefix,
        guid,
        urn,
        version,
        kernel_type,
        governance,
        domain,
        actions,
        edges,
        grants,
        topics,
        conversation,
        tool,
        limits,
    })
}

fn read_api_version(r: &mut Reader<'_>, root: Option<&Node>) -> Option<String> {
    let (v, loc, path) = r.first_string(&[(root, "", "apiVersion")])?;
    let Some(rest) = v.strip_prefix("conceptkernel/") else {
        r.d.error(
            Some(loc),
            &path,
            format!("unknown apiVersion '{v}'; expected `conceptkernel/v3`"),
        );
        return Some(v);
    };
    if rest == "v3" || rest.starts_with("v3.") {
    } else if rest == "v1" || rest == "v2" || rest.starts_with("v2.") {
        r.d.warn(
            Some(loc),
            &path,
            format!("'{v}' is deprecated; v3.7 expects `conceptkernel/v3`"),
        );
    } else {
        r.d.error(
            Some(loc),
            &path,
            format!("unknown apiVersion '{v}'; expected `conceptkernel/v3`"),
        );
    }
    Some(v)
}

fn read_name(
    r: &mut Reader<'_>,
    root: Option<&Node>,
    metadata: Option<&Node>,
    prefix: Option<&str>,
    doc_loc: Loc,
) -> Option<(String, String)> {
    let class = r.first_string(&[(root, "", "kernel_class")]);
    let meta_name = r.first_string(&[(metadata, "metadata", "name")]);
    if let (Some((n, _, _)), Some((c, loc, path))) = (&meta_name, &class)
        && n != c
        && !n.ends_with(&format!(".{c}"))
    {
        let msg = format!("differs from `metadata.name` ('{n}'), which names the kernel's topics");
        r.d.warn(Some(*loc), path, msg);
    }
    let (name, loc, path) = match (meta_name, &class) {
        (Some(found), _) => found,
        (None, Some((c, loc, path))) => {
            let full = match prefix {
                Some(p) if !c.starts_with(&format!("{p}.")) => format!("{p}.{c}"),
                _ => c.clone(),
            };
            (full, *loc, path.clone())
        }
        (None, None) => {
            r.d.error(
                Some(doc_loc),
                "metadata.name",
                "missing kernel name: set `metadata.name` (or `kernel_class` in the flat v3.7 form)",
            );
            return None;
        }
    };
    if name.is_empty() {
        r.d.error(Some(loc), &path, "kernel name is empty");
        return None;
    }
    if !check_dotted_name(r, &name, loc, &path, "kernel name") {
        return None;
    }
    if name.starts_with("CK.") {
        r.d.warn(
            Some(loc),
            &path,
            "the `CK.` prefix is reserved for platform kernels",
        );
    }
    let class = class.map(|(c, ..)| c).unwrap_or_else(|| name.clone());
    Some((name, class))
}

fn check_guid(r: &mut Reader<'_>, guid: &str, loc: Option<Loc>, path: &str) -> bool {
    if guid.is_empty() {
        r.d.error(loc, path, "kernel guid is empty");
        return false;
    }
    if guid.len() > MAX_NAME_LEN
        || validate_token(guid).is_err()
        || !guid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        r.d.error(
            loc,
            path,
            format!(
                "invalid kernel guid '{guid}': it becomes one NATS token and one SPIFFE path segment, \
                 so only letters, digits, '-' and '_' are allowed (a UUID is expected)"
            ),
        );
        return false;
    }
    if uuid::Uuid::try_parse(guid).is_err() {
        r.d.warn(
            loc,
            path,
            format!("guid '{guid}' is not a UUID; v3.7 requires `kernel_id` to be one"),
        );
    }
    true
}

fn read_guid(
    r: &mut Reader<'_>,
    root: Option<&Node>,
    metadata: Option<&Node>,
    opts: &ParseOptions,
    doc_loc: Loc,
) -> Option<String> {
    let from_yaml = r.first_string(&[(root, "", "kernel_id"), (metadata, "metadata", "guid")]);
    if let Some((file_guid, file)) = &opts.ck_guid {
        let file_guid = file_guid.trim().to_owned();
        let mut file_diag = Diagnostics::new(file.clone());
        let ok = check_guid(
            &mut Reader { d: &mut file_diag },
            &file_guid,
            None,
            ".ck-guid",
        );
        for diag in file_diag.into_vec() {
            r.d.push(
                diag.severity,
                None,
                &format!("{} (.ck-guid)", file.display()),
                diag.message,
            );
        }
        if let Some((yaml_guid, loc, path)) = &from_yaml
            && *yaml_guid != file_guid
        {
            let msg =
                format!("differs from the `.ck-guid` file ('{file_guid}'), which is canonical");
            r.d.warn(Some(*loc), path, msg);
        }
        return ok.then_some(file_guid);
    }
    match from_yaml {
        Some((guid, loc, path)) => check_guid(r, &guid, Some(loc), &path).then_some(guid),
        None => {
            r.d.error(
                Some(doc_loc),
                "kernel_id",
                "missing kernel guid: set `kernel_id` (or `metadata.guid`, or put a `.ck-guid` file \
                 beside the manifest)",
            );
            None
        }
    }
}

fn read_domain(r: &mut Reader<'_>, root: Option<&Node>, metadata: Option<&Node>) -> Option<String> {
    let Some((domain, loc, path)) =
        r.first_string(&[(root, "", "domain"), (metadata, "metadata", "domain")])
    else {
        r.d.warn(
            None,
            "domain",
            "no `domain`: the kernel has no SPIFFE identity, so no other kernel's grant can name it",
        );
        return None;
    };
    match spiffe::TrustDomain::new(&domain) {
        Ok(td) if td.to_string() != domain => {
            r.d.error(
                Some(loc),
                &path,
                format!("trust domain '{domain}' is not in canonical form; write '{td}'"),
            );
            None
        }
        Ok(_) => Some(domain),
        Err(e) => {
            r.d.error(
                Some(loc),
                &path,
                format!("'{domain}' is not a valid SPIFFE trust domain: {e}"),
            );
            None
        }
    }
}

fn read_urn(
    r: &mut Reader<'_>,
    metadata: Option<&Node>,
    spec: Option<&Node>,
    name: &str,
) -> (String, Option<String>) {
    let version = r
        .first_string(&[(metadata, "metadata", "version")])
        .map(|(v, ..)| v);
    let urn = r.first_string(&[(metadata, "metadata", "urn"), (spec, "spec", "urn")]);
    match urn {
        Some((urn, loc, path)) => {
            if !urn.starts_with("ckp://") {
                r.d.error(
                    Some(loc),
                    &path,
                    format!("URN '{urn}' must start with `ckp://`"),
                );
            } else if !urn.starts_with("ckp://Kernel#") {
                r.d.warn(
                    Some(loc),
                    &path,
                    "legacy URN form; v3.7 uses `ckp://Kernel#{Name}:v{major}.{minor}`",
                );
            }
            let from_urn = urn.rsplit_once(":v").map(|(_, v)| v.to_owned());
            (urn, version.or(from_urn))
        }
        None => {
            let v = version.clone().unwrap_or_else(|| "1.0".into());
            let mut parts = v.trim_start_matches('v').split('.');
            let major = parts.next().filter(|s| !s.is_empty()).unwrap_or("1");
            let minor = parts.next().unwrap_or("0");
            (format!("ckp://Kernel#{name}:v{major}.{minor}"), version)
        }
    }
}

type EnumParse<T> = fn(&str) -> Option<(T, bool)>;

fn read_enum<T>(
    r: &mut Reader<'_>,
    candidates: &[(Option<&Node>, &str, &str)],
    parse: EnumParse<T>,
    spellings: &str,
) -> Option<(T, bool, Loc, String)> {
    let (value, loc, path) = r.first_string(candidates)?;
    match parse(&value) {
        Some((t, legacy)) => Some((t, legacy, loc, path)),
        None => {
            r.d.error(
                Some(loc),
                &path,
                format!("unknown value '{value}'; expected one of {spellings}"),
            );
            None
        }
    }
}

fn parse_access(r: &mut Reader<'_>, item: &Node, path: &str) -> Access {
    let Some((node, p)) = r.first_node(&[
        (Some(item), path, "access"),
        (Some(item), path, "access_level"),
    ]) else {
        r.d.warn(
            Some(item.loc),
            &join(path, "access"),
            "no access level; defaults to `owner` (deny by default)",
        );
        return Access::Owner;
    };
    let Some(level) = r.string(node, &p) else {
        return Access::Owner;
    };
    match level.as_str() {
        "anon" => Access::Anon,
        "auth" => Access::Auth,
        "owner" => Access::Owner,
        "admin" => {
            r.d.warn(Some(node.loc), &p, "`admin` (LinkML) is read as `owner`");
            Access::Owner
        }
        other => {
            r.d.error(
                Some(node.loc),
                &p,
                format!("unknown access level '{other}'; expected anon, auth or owner"),
            );
            Access::Owner
        }
    }
}

fn read_action_list(
    r: &mut Reader<'_>,
    list: &Node,
    path: &str,
    common: bool,
    out: &mut Vec<Action>,
) {
    let Some(items) = r.seq(list, path) else {
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let ipath = index(path, i);
        // A bare string is a name with default access.
        if let Value::Str(name) = &item.value {
            if check_dotted_name(r, name, item.loc, &ipath, "action name") {
                r.d.warn(
                    Some(item.loc),
                    &ipath,
                    "action without access level; defaults to `owner`",
                );
                out.push(Action {
                    name: name.clone(),
                    description: None,
                    access: Access::Owner,
                    params: None,
                    common,
                });
            }
            continue;
        }
        let Some(item) = r.map(item, &ipath) else {
            continue;
        };
        r.check_keys(item, &ipath, ACTION_KEYS);
        let Some((name_node, npath)) = r.child(Some(item), &ipath, "name") else {
            r.d.error(
                Some(item.loc),
                &join(&ipath, "name"),
                "action has no `name`",
            );
            continue;
        };
        let Some(name) = r.string(name_node, &npath) else {
            continue;
        };
        if !check_dotted_name(r, &name, name_node.loc, &npath, "action name") {
            continue;
        }
        let access = parse_access(r, item, &ipath);
        let description = r
            .child(Some(item), &ipath, "description")
            .and_then(|(n, p)| r.string(n, &p));
        let params = r
            .child(Some(item), &ipath, "params")
            .and_then(|(n, p)| r.string(n, &p));
        if out.iter().any(|a| a.name == name) {
            r.d.error(
                Some(name_node.loc),
                &npath,
                format!("action '{name}' is declared twice"),
            );
            continue;
        }
        out.push(Action {
            name,
            description,
            access,
            params,
            common,
        });
    }
}

fn read_actions(r: &mut Reader<'_>, root: Option<&Node>, spec: Option<&Node>) -> Vec<Action> {
    let mut actions = Vec::new();
    let Some((node, path)) = r.first_node(&[(spec, "spec", "actions"), (root, "", "actions")])
    else {
        r.d.warn(
            None,
            "spec.actions",
            "no actions declared; only the protocol's `status` and `check.identity` will answer",
        );
        return actions;
    };
    let Some(node) = r.map(node, &path) else {
        return actions;
    };
    r.check_keys(node, &path, &["common", "unique"]);
    for (key, common) in [("common", true), ("unique", false)] {
        if let Some((list, lpath)) = r.child(Some(node), &path, key) {
            read_action_list(r, list, &lpath, common, &mut actions);
        }
    }
    for required in ["status", "check.identity"] {
        if !actions.iter().any(|a| a.name == required) {
            r.d.warn(
                Some(node.loc),
                &join(&path, "common"),
                format!(
                    "v3.7 requires the common action `{required}`; the runtime answers it anyway"
                ),
            );
        }
    }
    actions
}

fn read_edge(
    r: &mut Reader<'_>,
    item: &Node,
    path: &str,
    peer_key: &str,
    own_name: &str,
) -> Option<Edge> {
    let item = r.map(item, path)?;
    r.check_keys(item, path, EDGE_KEYS);
    let Some((peer_node, ppath)) = r.child(Some(item), path, peer_key) else {
        r.d.error(
            Some(item.loc),
            &join(path, peer_key),
            format!("edge has no `{peer_key}`"),
        );
        return None;
    };
    let peer = r.string(peer_node, &ppath)?;
    if !check_dotted_name(r, &peer, peer_node.loc, &ppath, "kernel name") {
        return None;
    }
    let Some((pred_node, prpath)) = r.child(Some(item), path, "predicate") else {
        r.d.error(
            Some(item.loc),
            &join(path, "predicate"),
            "edge has no `predicate`",
        );
        return None;
    };
    let pred = r.string(pred_node, &prpath)?;
    let predicate = match Predicate::parse(&pred) {
        Some(p) => p,
        None if matches!(pred.as_str(), "REQUIRES" | "VALIDATES" | "TRANSFORMS") => {
            r.d.warn(
                Some(pred_node.loc),
                &prpath,
                format!("'{pred}' (LinkML) is outside v3.7's closed set of five; edge ignored"),
            );
            return None;
        }
        None => {
            r.d.error(
                Some(pred_node.loc),
                &prpath,
                format!("unknown predicate '{pred}'; expected COMPOSES, TRIGGERS, PRODUCES, EXTENDS or LOOPS_WITH"),
            );
            return None;
        }
    };
    if peer == own_name && predicate != Predicate::LoopsWith {
        r.d.warn(
            Some(peer_node.loc),
            &ppath,
            "edge points at the kernel itself",
        );
    }
    let trigger_action = r
        .child(Some(item), path, "trigger_action")
        .and_then(|(n, p)| {
            let a = r.string(n, &p)?;
            check_dotted_name(r, &a, n.loc, &p, "action name").then_some(a)
        });
    if predicate == Predicate::Triggers && trigger_action.is_none() {
        r.d.warn(
            Some(item.loc),
            &join(path, "trigger_action"),
            "TRIGGERS edge without `trigger_action`; the target's default action runs",
        );
    }
    let nats_subject = r
        .child(Some(item), path, "nats_subject")
        .and_then(|(n, p)| {
            let s = r.string(n, &p)?;
            match validate_literal(&s) {
                Ok(()) => Some(s),
                Err(e) => {
                    r.d.error(Some(n.loc), &p, format!("invalid subject '{s}': {e}"));
                    None
                }
            }
        });
    let mut extends_actions = Vec::new();
    if let Some((config, cpath)) = r.child(Some(item), path, "config")
        && let Some(config) = r.map(config, &cpath)
        && let Some((list, apath)) = r.child(Some(config), &cpath, "actions")
    {
        read_action_list(r, list, &apath, false, &mut extends_actions);
    }
    Some(Edge {
        peer,
        predicate,
        trigger_action,
        nats_subject,
        extends_actions,
    })
}

fn read_edges(
    r: &mut Reader<'_>,
    root: Option<&Node>,
    spec: Option<&Node>,
    own_name: &str,
) -> Edges {
    let mut edges = Edges::default();
    let Some((node, path)) = r.first_node(&[(spec, "spec", "edges"), (root, "", "edges")]) else {
        return edges;
    };
    let Some(node) = r.map(node, &path) else {
        return edges;
    };
    r.check_keys(node, &path, &["outbound", "inbound"]);
    for (key, peer_key) in [("outbound", "target_kernel"), ("inbound", "source_kernel")] {
        let Some((list, lpath)) = r.child(Some(node), &path, key) else {
            continue;
        };
        let Some(items) = r.seq(list, &lpath) else {
            continue;
        };
        let target = if key == "outbound" {
            &mut edges.outbound
        } else {
            &mut edges.inbound
        };
        for (i, item) in items.iter().enumerate() {
            if let Some(edge) = read_edge(r, item, &index(&lpath, i), peer_key, own_name) {
                target.push(edge);
            }
        }
    }
    edges
}

/// Checks that an explicit topic stays inside the kernel's own subject space.
fn check_topic(
    r: &mut Reader<'_>,
    topic: &str,
    loc: Loc,
    path: &str,
    name: &str,
    guid: Option<&str>,
) -> bool {
    if let Err(e) = validate_literal(topic) {
        r.d.error(Some(loc), path, format!("invalid topic '{topic}': {e}"));
        return false;
    }
    if topics::is_system_subject(topic) {
        r.d.error(
            Some(loc),
            path,
            format!("topic '{topic}' is a NATS system or inbox subject"),
        );
        return false;
    }
    let first = topic.split('.').next().unwrap_or_default();
    if !topics::RESERVED_FIRST_TOKENS.contains(&first) {
        r.d.warn(
            Some(loc),
            path,
            format!(
                "topic '{topic}' is outside the CKP subject families; other tools will not find it"
            ),
        );
        return true;
    }
    let rest = &topic[first.len() + 1..];
    let own = if first == topics::KERNEL_PREFIX {
        guid.is_some_and(|g| rest.split('.').next() == Some(g))
    } else {
        rest == name
    };
    if !own {
        r.d.error(
            Some(loc),
            path,
            format!(
                "topic '{topic}' lies in another kernel's subject space; a kernel's topics must be \
                 `{{input,result,event,stream}}.{name}` or `ck.{}.…`",
                guid.unwrap_or("{guid}")
            ),
        );
        return false;
    }
    true
}

fn read_topics(
    r: &mut Reader<'_>,
    spec: Option<&Node>,
    qualities: Option<&Node>,
    name: &str,
    guid: Option<&str>,
) -> (Topics, Conversation) {
    let nats = r
        .child(spec, "spec", "nats")
        .and_then(|(n, p)| r.map(n, &p));
    if let Some(n) = nats {
        r.check_keys(n, "spec.nats", NATS_KEYS);
    }
    let format = match r.first_string(&[(nats, "spec.nats", "format")]) {
        None => TopicFormat::Name,
        Some((f, _, _)) if f == "name" => TopicFormat::Name,
        Some((f, _, _)) if f == "guid" => TopicFormat::Guid,
        Some((f, loc, path)) => {
            r.d.error(
                Some(loc),
                &path,
                format!("unknown topic format '{f}'; expected `name` or `guid`"),
            );
            TopicFormat::Name
        }
    };
    let mut resolved = Vec::with_capacity(4);
    for kind in TopicKind::ALL {
        let key = format!("{}_topic", kind.as_str());
        let legacy = format!("nats_subject_{}", kind.as_str());
        let explicit =
            r.first_string(&[(nats, "spec.nats", &key), (qualities, "qualities", &legacy)]);
        let topic = match explicit {
            Some((t, loc, path)) if check_topic(r, &t, loc, &path, name, guid) => t,
            _ => topics::default_topic(format, kind, name, guid.unwrap_or("{guid}")),
        };
        resolved.push(topic);
    }
    for i in 0..resolved.len() {
        for j in i + 1..resolved.len() {
            if resolved[i] == resolved[j] {
                let (a, b) = (TopicKind::ALL[i].as_str(), TopicKind::ALL[j].as_str());
                r.d.error(
                    None,
                    "spec.nats",
                    format!("{a} and {b} topics are both '{}'", resolved[i]),
                );
            }
        }
    }
    let mut it = resolved.into_iter();
    let mut next = || it.next().unwrap_or_default();
    let topics = Topics {
        format,
        input: next(),
        result: next(),
        event: next(),
        stream: next(),
    };

    let mut conversation = Conversation::default();
    if let Some((conv, cpath)) = r.child(nats, "spec.nats", "conversation")
        && let Some(conv) = r.map(conv, &cpath)
    {
        r.check_keys(conv, &cpath, &["enabled", "stream_responses"]);
        if let Some((n, p)) = r.child(Some(conv), &cpath, "enabled") {
            conversation.enabled = r.boolean(n, &p).unwrap_or(false);
        }
        if let Some((n, p)) = r.child(Some(conv), &cpath, "stream_responses") {
            conversation.stream_responses = r.boolean(n, &p).unwrap_or(false);
        }
    }
    (topics, conversation)
}

fn read_tool(r: &mut Reader<'_>, spec: Option<&Node>) -> Tool {
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

fn read_limits(r: &mut Reader<'_>, spec: Option<&Node>) -> Limits {
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

fn parse_expiry(text: &str) -> Result<Expiry, String> {
    if text == "never" {
        return Ok(Expiry::Never);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Expiry::At(t.with_timezone(&Utc)));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = date.and_hms_opt(0, 0, 0).ok_or("invalid date")?;
        return Ok(Expiry::At(midnight.and_utc()));
    }
    Err(format!(
        "'{text}' is neither `never` nor an ISO 8601 timestamp with a timezone (e.g. 2027-01-01T00:00:00Z)"
    ))
}

/// Grants are matched by exact string, so only the canonical form (lowercase trust domain) is
/// accepted; anything the SPIFFE crate would normalise is reported instead.
fn check_spiffe_id(id: &str) -> Result<(), String> {
    let parsed = spiffe::SpiffeId::new(id).map_err(|e| e.to_string())?;
    let canonical = parsed.to_string();
    if canonical != id {
        return Err(format!("not in canonical form; write it as '{canonical}'"));
    }
    Ok(())
}

fn read_grant(
    r: &mut Reader<'_>,
    item: &Node,
    path: &str,
    actions: &[Action],
    own_spiffe: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Grant> {
    let item = r.map(item, path)?;
    r.check_keys(item, path, GRANT_KEYS);
    let mut ok = true;

    let identity = match r.child(Some(item), path, "identity") {
        None => {
            r.d.error(Some(item.loc), &join(path, "identity"), "grant has no `identity` (a SPIFFE ID, `anon`, `auth` or `owner`)");
            None
        }
        Some((n, p)) => r.string(n, &p).and_then(|id| match id.as_str() {
            "anon" => Some(GrantIdentity::Anon),
            "auth" => Some(GrantIdentity::Auth),
            "owner" => Some(GrantIdentity::Owner),
            "*" => {
                r.d.error(Some(n.loc), &p, "wildcard identity '*' is not allowed; use `anon` (anyone) or `auth` (any authenticated identity)");
                None
            }
            s if s.starts_with("spiffe://") => match check_spiffe_id(s) {
                Ok(()) => Some(GrantIdentity::Spiffe(s.to_owned())),
                Err(e) => {
                    r.d.error(Some(n.loc), &p, format!("invalid SPIFFE ID '{s}': {e}"));
                    None
                }
            },
            s => {
                r.d.error(Some(n.loc), &p, format!("identity '{s}' is not a SPIFFE ID (spiffe://…), `anon`, `auth` or `owner`"));
                None
            }
        }),
    };
    ok &= identity.is_some();
    let is_self = matches!((&identity, own_spiffe), (Some(GrantIdentity::Spiffe(id)), Some(own)) if id == own);

    let mut granted = Vec::new();
    match r.child(Some(item), path, "actions") {
        None => {
            r.d.error(
                Some(item.loc),
                &join(path, "actions"),
                "grant has no `actions`",
            );
            ok = false;
        }
        Some((n, p)) => {
            if let Some(list) = r.seq(n, &p) {
                if list.is_empty() {
                    r.d.warn(Some(n.loc), &p, "empty action list grants nothing");
                }
                for (i, a) in list.iter().enumerate() {
                    let ap = index(&p, i);
                    let Some(action) = r.string(a, &ap) else {
                        ok = false;
                        continue;
                    };
                    if action == "*" || action.contains('*') {
                        r.d.error(
                            Some(a.loc),
                            &ap,
                            "wildcard actions are not grantable; list each verb or action",
                        );
                        ok = false;
                    } else if action.starts_with("write-") || action == "write" {
                        if !is_self {
                            r.d.error(
                                Some(a.loc),
                                &ap,
                                format!("`{action}` MUST NOT be granted to another identity (CKP loop-separation rule)"),
                            );
                            ok = false;
                        }
                    } else if !ACCESS_VERBS.iter().any(|(v, _)| *v == action)
                        && !actions.iter().any(|x| x.name == action)
                        && !matches!(action.as_str(), "status" | "check.identity")
                    {
                        r.d.warn(
                            Some(a.loc),
                            &ap,
                            format!("'{action}' is neither an access verb nor a declared action; it opens nothing"),
                        );
                    }
                    granted.push(action);
                }
            } else {
                ok = false;
            }
        }
    }

    let expires = match r.child(Some(item), path, "expires") {
        None => {
            r.d.error(Some(item.loc), &join(path, "expires"), "grant has no `expires` (required: an ISO 8601 timestamp or `never`)");
            None
        }
        Some((n, p)) => r.string(n, &p).and_then(|s| match parse_expiry(&s) {
            Ok(e) => {
                if e.is_expired(now) {
                    r.d.error(Some(n.loc), &p, format!("grant expired at {s}; remove it or extend it (expired grants are never applied)"));
                }
                Some(e)
            }
            Err(msg) => {
                r.d.error(Some(n.loc), &p, msg);
                None
            }
        }),
    };
    ok &= expires.is_some();
    let audit = match r.child(Some(item), path, "audit") {
        None => false,
        Some((n, p)) => r.boolean(n, &p).unwrap_or_else(|| {
            ok = false;
            false
        }),
    };
    if !ok {
        return None;
    }
    Some(Grant {
        identity: identity?,
        actions: granted,
        expires: expires?,
        audit,
        line: item.loc.line,
    })
}

fn read_grants(
    r: &mut Reader<'_>,
    root: Option<&Node>,
    spec: Option<&Node>,
    actions: &[Action],
    own_spiffe: Option<&str>,
    now: DateTime<Utc>,
) -> Vec<Grant> {
    let mut grants = Vec::new();
    let Some((node, path)) = r.first_node(&[(root, "", "grants"), (spec, "spec", "grants")]) else {
        return grants;
    };
    let Some(items) = r.seq(node, &path) else {
        return grants;
    };
    for (i, item) in items.iter().enumerate() {
        if let Some(g) = read_grant(r, item, &index(&path, i), actions, own_spiffe, now) {
            grants.push(g);
        }
    }
    grants
}

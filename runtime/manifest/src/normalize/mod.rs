//! From a located YAML tree, in any of the shapes of ckp-spec §1.1, to one [`Kernel`].
//!
//! Each logical field is resolved by the precedence table of ckp-spec §1.1 [OURS]; when a field
//! is set in two places with different values the winner is used and the loser is reported.
//! Every problem becomes a located [`Diagnostic`](crate::Diagnostic); nothing here panics on
//! input.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::diag::Diagnostics;
use crate::model::{Governance, Kernel, KernelType};
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

mod actions;
mod edges;
mod grants;
mod identity;
mod keys;
mod reader;
mod tool;
mod topic_fields;

use actions::*;
use edges::*;
use grants::*;
use identity::*;
use keys::*;
use reader::*;
use tool::*;
use topic_fields::*;

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

/// Small manifests for the field groups' tests.
#[cfg(test)]
pub(crate) mod test_support {
    pub(crate) use crate::{Kernel, Loaded, Severity};

    /// A valid kernel's identity lines, to which a test adds the field group it checks.
    pub(crate) const BASE: &str = "apiVersion: conceptkernel/v3\nkernel_class: Demo.T\nkernel_id: 0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d\ndomain: example.org\n";

    /// `BASE` followed by `more`, read.
    pub(crate) fn read(more: &str) -> Loaded {
        crate::parse_str(
            &format!("{BASE}{more}"),
            std::path::Path::new("k/conceptkernel.yaml"),
            &crate::ParseOptions::default(),
        )
    }

    /// The kernel `more` makes, or the diagnostics that stopped it.
    pub(crate) fn kernel(more: &str) -> Kernel {
        let loaded = read(more);
        loaded
            .kernel
            .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics))
    }

    /// The error diagnostics' `field: message`s.
    pub(crate) fn errors(more: &str) -> Vec<String> {
        read(more)
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| format!("{}: {}", d.field, d.message))
            .collect()
    }

    /// The warning diagnostics' `field: message`s.
    pub(crate) fn warnings(more: &str) -> Vec<String> {
        read(more)
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .map(|d| format!("{}: {}", d.field, d.message))
            .collect()
    }
}

//! Edges to other kernels (`edges`, `spec.edges`): predicates, targets, the subjects they open.

use crate::model::{Edge, Edges, Predicate};
use crate::yaml::Node;
use ck_subject::validate_literal;

use super::actions::read_action_list;
use super::keys::*;
use super::reader::*;

pub(super) fn read_edge(
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

pub(super) fn read_edges(
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn outbound_edges_name_their_peer_and_predicate() {
        let k =
            kernel("edges:\n  outbound:\n    - {target_kernel: Demo.Other, predicate: PRODUCES}\n");
        assert_eq!(k.edges.outbound.len(), 1);
        assert_eq!(k.edges.outbound[0].peer, "Demo.Other");
    }

    #[test]
    fn an_unknown_predicate_is_an_error() {
        let e =
            errors("edges:\n  outbound:\n    - {target_kernel: Demo.Other, predicate: LIKES}\n");
        assert!(e.iter().any(|m| m.contains("predicate")), "{e:?}");
    }
}

//! `spec.actions` (common and unique): names, access levels, parameters.

use crate::diag::Loc;
use crate::model::{Access, Action};
use crate::yaml::{Node, Value};

use super::keys::*;
use super::reader::*;

pub(super) fn read_enum<T>(
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

pub(super) fn parse_access(r: &mut Reader<'_>, item: &Node, path: &str) -> Access {
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

pub(super) fn read_action_list(
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

pub(super) fn read_actions(
    r: &mut Reader<'_>,
    root: Option<&Node>,
    spec: Option<&Node>,
) -> Vec<Action> {
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

pub(super) type EnumParse<T> = fn(&str) -> Option<(T, bool)>;

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn actions_carry_their_access_level() {
        let k = kernel(
            "spec:\n  actions:\n    unique:\n      - {name: a.b, access: auth}\n      - {name: c, access: anon}\n",
        );
        let a = k.action("a.b").unwrap();
        assert_eq!(a.access, crate::Access::Auth);
        assert_eq!(k.action("c").unwrap().access, crate::Access::Anon);
    }

    #[test]
    fn an_unknown_access_level_is_an_error() {
        let e = errors("spec:\n  actions:\n    unique:\n      - {name: a, access: everyone}\n");
        assert!(e.iter().any(|m| m.contains("access")), "{e:?}");
    }
}

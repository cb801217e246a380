//! Reading typed values out of the located YAML tree, reporting every type error and unknown key where it is.

use crate::diag::{Diagnostics, Loc};
use crate::yaml::{Node, Value};
use ck_subject::validate_literal;

use super::keys::*;

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Small edit distance, for "did you mean" on unknown keys.
pub(super) fn distance(a: &str, b: &str) -> usize {
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

pub(super) struct Reader<'d> {
    pub(super) d: &'d mut Diagnostics,
}

impl Reader<'_> {
    pub(super) fn type_error(&mut self, node: &Node, path: &str, expected: &str) {
        self.d.error(
            Some(node.loc),
            path,
            format!("expected {expected}, found {}", node.value.kind()),
        );
    }

    pub(super) fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n Node> {
        match node.value {
            Value::Map(_) => Some(node),
            Value::Null => None,
            _ => {
                self.type_error(node, path, "a mapping");
                None
            }
        }
    }

    pub(super) fn seq<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            Value::Null => None,
            _ => {
                self.type_error(node, path, "a list");
                None
            }
        }
    }

    pub(super) fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) | Value::Number(s) => Some(s.clone()),
            _ => {
                self.type_error(node, path, "a string");
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.type_error(node, path, "true or false");
                None
            }
        }
    }

    /// A child of a mapping node, with its path. Absent or explicit null both read as absent.
    pub(super) fn child<'n>(
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

    pub(super) fn check_keys(&mut self, node: &Node, path: &str, known: &[&str]) {
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
    pub(super) fn first_string(
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
    pub(super) fn first_node<'n>(
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
pub(super) fn check_dotted_name(
    r: &mut Reader<'_>,
    value: &str,
    loc: Loc,
    path: &str,
    what: &str,
) -> bool {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn a_value_of_the_wrong_type_is_an_error_at_its_field() {
        let e = errors("spec:\n  actions: 5\n");
        assert!(e.iter().any(|m| m.starts_with("spec.actions")), "{e:?}");
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(super::distance("limts", "limits"), 1);
        assert_eq!(super::distance("grants", "grants"), 0);
        assert_eq!(super::distance("", "abc"), 3);
    }
}

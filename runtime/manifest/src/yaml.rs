//! A small located YAML tree built from saphyr's marked nodes, so the normaliser can report the
//! line and column of every field it reads without depending on saphyr's types.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use crate::diag::Loc;

/// A YAML value with its position.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub loc: Loc,
    pub value: Value,
}

/// One mapping entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub key_loc: Loc,
    pub value: Node,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    /// Integer and floating-point scalars keep their source text (`1.10` is not `1.1`).
    Number(String),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

impl Value {
    /// Article + noun for messages: "a string", "a list", ...
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The entry for `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// The mapping entries, or none.
    pub fn entries(&self) -> &[Entry] {
        match &self.value {
            Value::Map(entries) => entries,
            _ => &[],
        }
    }
}

/// A YAML syntax problem with its position.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub loc: Loc,
    pub message: String,
}

fn loc_of(marker: &saphyr::Marker) -> Loc {
    Loc {
        line: marker.line().max(1),
        column: marker.col() + 1,
    }
}

/// Parses exactly one YAML document. `Ok(None)` for an empty document.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| SyntaxError {
        loc: loc_of(e.marker()),
        message: e.info().to_owned(),
    })?;
    let mut docs = docs.into_iter();
    let Some(first) = docs.next() else {
        return Ok(None);
    };
    if let Some(second) = docs.next() {
        return Err(SyntaxError {
            loc: loc_of(&second.span.start),
            message: "a manifest holds exactly one YAML document, found a second one".into(),
        });
    }
    let chars: Vec<char> = text.chars().collect();
    let node = convert(&first, &chars)?;
    Ok(match node.value {
        Value::Null => None,
        _ => Some(node),
    })
}

fn raw_text(node: &MarkedYaml<'_>, chars: &[char]) -> Option<String> {
    let (start, end) = (node.span.start.index(), node.span.end.index());
    (start < end && end <= chars.len()).then(|| {
        chars[start..end]
            .iter()
            .collect::<String>()
            .trim()
            .to_owned()
    })
}

fn convert(node: &MarkedYaml<'_>, chars: &[char]) -> Result<Node, SyntaxError> {
    let loc = loc_of(&node.span.start);
    let value = match &node.data {
        YamlData::Value(scalar) => match scalar {
            Scalar::Null => Value::Null,
            Scalar::Boolean(b) => Value::Bool(*b),
            Scalar::Integer(i) => {
                Value::Number(raw_text(node, chars).unwrap_or_else(|| i.to_string()))
            }
            Scalar::FloatingPoint(f) => {
                Value::Number(raw_text(node, chars).unwrap_or_else(|| f.into_inner().to_string()))
            }
            Scalar::String(s) => Value::Str(s.to_string()),
        },
        YamlData::Representation(s, _, _) => Value::Str(s.to_string()),
        YamlData::Sequence(items) => Value::Seq(
            items
                .iter()
                .map(|n| convert(n, chars))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (k, v) in map {
                let key = match &k.data {
                    YamlData::Value(Scalar::String(s)) => s.to_string(),
                    YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                    YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                    YamlData::Value(Scalar::Null) => "null".to_owned(),
                    YamlData::Value(Scalar::FloatingPoint(_)) => {
                        raw_text(k, chars).unwrap_or_default()
                    }
                    _ => {
                        return Err(SyntaxError {
                            loc: loc_of(&k.span.start),
                            message: "mapping keys must be plain scalars".into(),
                        });
                    }
                };
                entries.push(Entry {
                    key,
                    key_loc: loc_of(&k.span.start),
                    value: convert(v, chars)?,
                });
            }
            Value::Map(entries)
        }
        YamlData::Tagged(_, inner) => return convert(inner, chars),
        YamlData::Alias(_) | YamlData::BadValue => {
            return Err(SyntaxError {
                loc,
                message: "unresolvable value (an unknown alias, an alias expanding past the size \
                          budget, or a scalar that contradicts its tag)"
                    .into(),
            });
        }
    };
    Ok(Node { loc, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_raw_numbers() {
        let doc = parse("a: 1\nb:\n  c: 1.10\n  d: [x, y]\n")
            .unwrap()
            .unwrap();
        let b = doc.get("b").unwrap();
        assert_eq!(b.key_loc, Loc { line: 2, column: 1 });
        let c = b.value.get("c").unwrap();
        assert_eq!(c.value.loc.line, 3);
        assert!(matches!(&c.value.value, Value::Number(n) if n == "1.10"));
    }

    #[test]
    fn rejects_duplicates_and_second_documents() {
        assert!(parse("a: 1\na: 2\n").is_err());
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
        assert!(parse("").unwrap().is_none());
    }
}

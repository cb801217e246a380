//! Subject-family patterns: the notation `policies/subject-families.yaml` declares families in,
//! and the set questions asked of them — do two families share a subject ([`FamilyPattern::overlap`],
//! which also names one such subject), does a family hold every subject a NATS pattern matches
//! ([`FamilyPattern::contains`]). How close a subject is to a family is the policy's question
//! (`ck_acl::families`), asked of [`FamilyPattern::tokens`].
//!
//! A family pattern is a subject whose tokens are each one of:
//! - a literal (`fleet`);
//! - alternatives (`step|sorry|axiom`): any one of them;
//! - a named placeholder (`{silo}`): any one token except the literals its definition excludes
//!   (so that `fleet.{silo}.scan.request` can stay apart from `fleet.events.>` by excluding
//!   `events`);
//! - `*`: any one token;
//! - `>` (last only): one or more tokens.
//!
//! Every token kind stands for a non-empty set of tokens, which is what makes the token-wise
//! answers below exact.

use std::collections::BTreeSet;

use thiserror::Error;

use crate::syntax::validate_token;

/// One token of a family pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FamilyToken {
    /// Exactly this token.
    Literal(String),
    /// Any one of these (two or more).
    OneOf(BTreeSet<String>),
    /// A named placeholder: any token but the excluded ones.
    Placeholder {
        /// Its name, as written between the braces.
        name: String,
        /// Tokens it never takes.
        excludes: BTreeSet<String>,
    },
    /// `*`: any one token.
    Any,
    /// `>`: one or more tokens (last only).
    Tail,
}

/// Why a family pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FamilyError {
    /// A token that is not a literal, alternatives, a placeholder, `*` or a final `>`.
    #[error("family pattern '{pattern}': token {index} ('{token}') {why}")]
    BadToken {
        /// The pattern.
        pattern: String,
        /// Zero-based token index.
        index: usize,
        /// The token.
        token: String,
        /// What is wrong with it.
        why: String,
    },
    /// A placeholder the caller did not define.
    #[error("family pattern '{pattern}': placeholder {{{name}}} is not defined")]
    UnknownPlaceholder {
        /// The pattern.
        pattern: String,
        /// The placeholder's name.
        name: String,
    },
}

/// A parsed family pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPattern {
    text: String,
    tokens: Vec<FamilyToken>,
}

impl FamilyToken {
    /// Whether `token` (a literal) is one this family token stands for.
    fn admits(&self, token: &str) -> bool {
        match self {
            FamilyToken::Literal(l) => l == token,
            FamilyToken::OneOf(set) => set.contains(token),
            FamilyToken::Placeholder { excludes, .. } => !excludes.contains(token),
            FamilyToken::Any | FamilyToken::Tail => true,
        }
    }

    /// The finite set this token stands for, if it is finite.
    fn finite(&self) -> Option<Vec<&str>> {
        match self {
            FamilyToken::Literal(l) => Some(vec![l.as_str()]),
            FamilyToken::OneOf(set) => Some(set.iter().map(String::as_str).collect()),
            _ => None,
        }
    }

    /// A token both stand for, if there is one.
    fn meet(&self, other: &FamilyToken) -> Option<String> {
        match (self.finite(), other.finite()) {
            (Some(a), _) => a.into_iter().find(|t| other.admits(t)).map(str::to_owned),
            (None, Some(b)) => b.into_iter().find(|t| self.admits(t)).map(str::to_owned),
            // Two co-finite sets always meet: pick a token neither excludes.
            (None, None) => (0..)
                .map(|i| format!("x{i}"))
                .find(|t| self.admits(t) && other.admits(t)),
        }
    }

    /// One token it stands for.
    fn example(&self) -> String {
        match self {
            FamilyToken::Literal(l) => l.clone(),
            FamilyToken::OneOf(set) => set.iter().next().cloned().unwrap_or_default(),
            FamilyToken::Placeholder { .. } | FamilyToken::Any | FamilyToken::Tail => self
                .meet(&FamilyToken::Any)
                .unwrap_or_else(|| "x".to_owned()),
        }
    }
}

impl std::fmt::Display for FamilyPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl FamilyPattern {
    /// Parses `text`; `excludes(name)` gives the tokens placeholder `{name}` never takes, or
    /// `None` when no such placeholder is defined.
    pub fn parse(
        text: &str,
        excludes: impl Fn(&str) -> Option<BTreeSet<String>>,
    ) -> Result<Self, FamilyError> {
        let raw: Vec<&str> = text.split('.').collect();
        let bad = |index: usize, token: &str, why: &str| FamilyError::BadToken {
            pattern: text.to_owned(),
            index,
            token: token.to_owned(),
            why: why.to_owned(),
        };
        let mut tokens = Vec::with_capacity(raw.len());
        for (index, token) in raw.iter().enumerate() {
            let parsed = if *token == ">" {
                if index + 1 != raw.len() {
                    return Err(bad(index, token, "is '>' but not the last token"));
                }
                FamilyToken::Tail
            } else if *token == "*" {
                FamilyToken::Any
            } else if let Some(name) = token.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                let excludes = excludes(name).ok_or_else(|| FamilyError::UnknownPlaceholder {
                    pattern: text.to_owned(),
                    name: name.to_owned(),
                })?;
                FamilyToken::Placeholder {
                    name: name.to_owned(),
                    excludes,
                }
            } else if token.contains('|') {
                let set: BTreeSet<String> = token.split('|').map(str::to_owned).collect();
                for alternative in &set {
                    validate_token(alternative)
                        .map_err(|e| bad(index, token, &format!("has an alternative that {e}")))?;
                }
                if set.len() < 2 {
                    return Err(bad(index, token, "repeats one alternative"));
                }
                FamilyToken::OneOf(set)
            } else {
                validate_token(token).map_err(|e| bad(index, token, &e.to_string()))?;
                if token.contains(['{', '}']) {
                    return Err(bad(index, token, "holds a brace but is not a placeholder"));
                }
                FamilyToken::Literal((*token).to_owned())
            };
            tokens.push(parsed);
        }
        Ok(FamilyPattern {
            text: text.to_owned(),
            tokens,
        })
    }

    /// Its tokens.
    pub fn tokens(&self) -> &[FamilyToken] {
        &self.tokens
    }

    /// A subject both families hold, if they share any.
    pub fn overlap(&self, other: &FamilyPattern) -> Option<String> {
        let mut shared = Vec::new();
        let (a, b) = (&self.tokens, &other.tokens);
        let mut i = 0;
        loop {
            match (a.get(i), b.get(i)) {
                (None, None) => return Some(shared.join(".")),
                // `>` needs one token or more, which the other side must still have.
                (Some(FamilyToken::Tail), Some(_)) => {
                    shared.extend(b[i..].iter().map(FamilyToken::example));
                    return Some(shared.join("."));
                }
                (Some(_), Some(FamilyToken::Tail)) => {
                    shared.extend(a[i..].iter().map(FamilyToken::example));
                    return Some(shared.join("."));
                }
                (Some(x), Some(y)) => shared.push(x.meet(y)?),
                _ => return None,
            }
            i += 1;
        }
    }

    /// The NATS subjects (wildcards allowed) that together match exactly this family, if
    /// there are such: alternatives expand to one subject each, `*` and an unrestricted
    /// placeholder are `*`; a placeholder that excludes tokens has no NATS spelling (NATS
    /// wildcards cannot leave tokens out), so such a family has none.
    pub fn nats_subjects(&self) -> Option<Vec<String>> {
        let mut subjects = vec![String::new()];
        for (i, token) in self.tokens.iter().enumerate() {
            let choices: Vec<&str> = match token {
                FamilyToken::Literal(l) => vec![l.as_str()],
                FamilyToken::OneOf(set) => set.iter().map(String::as_str).collect(),
                FamilyToken::Placeholder { excludes, .. } if excludes.is_empty() => vec!["*"],
                FamilyToken::Placeholder { .. } => return None,
                FamilyToken::Any => vec!["*"],
                FamilyToken::Tail => vec![">"],
            };
            subjects = subjects
                .iter()
                .flat_map(|prefix| {
                    choices.iter().map(move |c| {
                        if i == 0 {
                            (*c).to_owned()
                        } else {
                            format!("{prefix}.{c}")
                        }
                    })
                })
                .collect();
        }
        Some(subjects)
    }

    /// Whether every subject the NATS subject or pattern `nats` matches is in this family.
    pub fn contains(&self, nats: &str) -> bool {
        let theirs: Vec<&str> = nats.split('.').collect();
        for (i, token) in theirs.iter().enumerate() {
            match self.tokens.get(i) {
                // `>` here holds whatever one or more tokens follow, wildcards included.
                Some(FamilyToken::Tail) => return true,
                None => return false,
                Some(mine) => {
                    let held = match *token {
                        ">" => false,
                        "*" => {
                            matches!(mine, FamilyToken::Any)
                                || matches!(mine, FamilyToken::Placeholder { excludes, .. } if excludes.is_empty())
                        }
                        literal => mine.admits(literal),
                    };
                    if !held {
                        return false;
                    }
                }
            }
        }
        theirs.len() == self.tokens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> FamilyPattern {
        FamilyPattern::parse(text, |name| match name {
            "silo" => Some(["events", "install"].map(str::to_owned).into()),
            "file" | "n" => Some(BTreeSet::new()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn a_family_is_spelled_in_nats_subjects_unless_a_placeholder_leaves_tokens_out() {
        assert_eq!(
            p("platform.capability.>").nats_subjects(),
            Some(vec!["platform.capability.>".to_owned()])
        );
        assert_eq!(
            p("fleet.lean.proof.{file}.step|sorry").nats_subjects(),
            Some(vec![
                "fleet.lean.proof.*.sorry".to_owned(),
                "fleet.lean.proof.*.step".to_owned()
            ])
        );
        assert_eq!(p("fleet.{silo}.scan.request").nats_subjects(), None);
    }

    #[test]
    fn placeholders_keep_families_apart_through_their_exclusions() {
        assert_eq!(
            p("fleet.{silo}.scan.request|result").overlap(&p("fleet.events.>")),
            None
        );
        assert_eq!(
            p("fleet.{silo}.scan.request|result").overlap(&p("fleet.install.>")),
            None
        );
        // Without the exclusion they collide, and the witness is a real shared subject.
        let witness = p("fleet.*.scan.request")
            .overlap(&p("fleet.events.>"))
            .unwrap();
        assert_eq!(witness, "fleet.events.scan.request");
        assert!(crate::matches("fleet.*.scan.request", &witness));
        assert!(crate::matches("fleet.events.>", &witness));
    }

    #[test]
    fn tails_need_a_token_and_lengths_must_agree() {
        assert_eq!(p("fleet.events.>").overlap(&p("fleet.events")), None);
        assert_eq!(p("a.b").overlap(&p("a.b.c")), None);
        assert!(p("a.>").overlap(&p("a.b.c")).is_some());
        assert_eq!(p("a.x|y").overlap(&p("a.z|w")), None);
        assert_eq!(p("a.x|y").overlap(&p("a.y|z")).as_deref(), Some("a.y"));
    }

    #[test]
    fn containment_of_nats_patterns() {
        let events = p("fleet.events.{file}.>");
        assert!(events.contains("fleet.events.ct-fac.boot"));
        assert!(events.contains("fleet.events.*.>"));
        assert!(events.contains("fleet.events.ct-fac.>"));
        assert!(!events.contains("fleet.events.>"));
        assert!(!events.contains("fleet.events.ct-fac"));
        let scan = p("fleet.{silo}.scan.request|result");
        assert!(scan.contains("fleet.ct-fac.scan.result"));
        assert!(!scan.contains("fleet.events.scan.result"));
        // `*` would also match the excluded tokens, so it is not inside.
        assert!(!scan.contains("fleet.*.scan.result"));
        assert!(!scan.contains("fleet.ct-fac.scan.*"));
        assert!(!scan.contains("fleet.ct-fac.scan.result.more"));
    }

    #[test]
    fn malformed_patterns_are_refused_naming_the_token() {
        let parse = |t: &str| FamilyPattern::parse(t, |_| None);
        assert!(matches!(
            parse("a.>.b"),
            Err(FamilyError::BadToken { index: 1, .. })
        ));
        assert!(matches!(
            parse("a.{x}"),
            Err(FamilyError::UnknownPlaceholder { .. })
        ));
        assert!(matches!(parse("a.b|b"), Err(FamilyError::BadToken { .. })));
        assert!(matches!(
            parse("a..b"),
            Err(FamilyError::BadToken { index: 1, .. })
        ));
        assert!(matches!(parse("a.x{y"), Err(FamilyError::BadToken { .. })));
        assert!(matches!(parse("a.x|"), Err(FamilyError::BadToken { .. })));
    }
}

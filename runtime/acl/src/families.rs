//! The declared subject families (`policies/subject-families.yaml`): loaded, checked pairwise
//! disjoint, and asked which family holds a subject or pattern and which is closest to one no
//! family holds. The ACL compiler opens only subjects inside a family ([`Families::family_of`]);
//! `ck validate` names the closest family of a topic outside all ([`Families::closest`]).
//!
//! It reads no files (the caller hands over the text; [`Families::builtin`] is the repository's
//! own file) and holds no subject semantics of its own: those are `ck_subject::FamilyPattern`'s.

use std::collections::{BTreeMap, BTreeSet};

use ck_subject::{FamilyPattern, FamilyToken};
use serde::Deserialize;

/// The repository's subject families, the default everywhere.
pub const SUBJECT_FAMILIES: &str = include_str!("../../../policies/subject-families.yaml");

/// The format version this compiler reads.
pub const FAMILIES_VERSION: u32 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default)]
    placeholders: BTreeMap<String, PlaceholderDef>,
    families: Vec<FamilyDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceholderDef {
    #[allow(dead_code)]
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    excludes: BTreeSet<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FamilyDef {
    name: String,
    subject: String,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    description: String,
}

/// One declared family.
#[derive(Debug, Clone)]
pub struct Family {
    /// Its name (`fleet.install`).
    pub name: String,
    /// Its subjects.
    pub pattern: FamilyPattern,
    /// What it carries.
    pub description: String,
    /// The JetStream stream that stores it, if one does.
    pub stream: Option<FamilyStream>,
}

/// The JetStream stream of a family: its name and the NATS subjects it captures (together
/// exactly the family's subjects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyStream {
    /// The stream's name.
    pub name: String,
    /// Its subjects.
    pub subjects: Vec<String>,
}

/// Why a subject, or a subscription filter, is not in exactly one family.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterOutside {
    /// Not a NATS subject or pattern.
    #[error("'{filter}' is not a NATS subject: {why}")]
    Syntax {
        /// The filter.
        filter: String,
        /// Why.
        why: String,
    },
    /// No family holds any subject it matches.
    #[error("'{filter}' is outside every declared subject family{}", closest_text(.closest))]
    Outside {
        /// The filter.
        filter: String,
        /// The closest family's name and pattern.
        closest: Option<(String, String)>,
    },
    /// It matches subjects of more than one family.
    #[error("'{filter}' matches subjects of more than one family ({}): name one family per filter", .families.join(", "))]
    Across {
        /// The filter.
        filter: String,
        /// The families it reaches.
        families: Vec<String>,
    },
}

fn closest_text(closest: &Option<(String, String)>) -> String {
    match closest {
        Some((name, pattern)) => format!(" (closest: `{name}`, {pattern})"),
        None => String::new(),
    }
}

/// Subject families that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FamiliesError {
    /// Not YAML of this format.
    #[error("subject families: {0}")]
    Syntax(String),
    /// A version this compiler does not read.
    #[error(
        "subject families: version {0} is not supported (this ck reads version {FAMILIES_VERSION})"
    )]
    Version(u32),
    /// A family whose pattern does not parse.
    #[error("subject family `{family}`: {source}")]
    Pattern {
        /// The family.
        family: String,
        /// Why.
        source: ck_subject::FamilyError,
    },
    /// Two families of one name.
    #[error("subject family `{0}` is declared twice")]
    Duplicate(String),
    /// A family's stream that cannot be.
    #[error("subject family `{family}`: stream `{stream}` {why}")]
    Stream {
        /// The family.
        family: String,
        /// The stream's name.
        stream: String,
        /// Why not.
        why: String,
    },
    /// Two families sharing a subject.
    #[error(
        "subject families `{first}` ({first_subject}) and `{second}` ({second_subject}) are not disjoint: both hold `{shared}`"
    )]
    Overlap {
        /// The earlier family.
        first: String,
        /// Its pattern.
        first_subject: String,
        /// The later family.
        second: String,
        /// Its pattern.
        second_subject: String,
        /// A subject both hold.
        shared: String,
    },
}

/// The declared families, pairwise disjoint.
#[derive(Debug, Clone)]
pub struct Families {
    families: Vec<Family>,
    placeholders: BTreeMap<String, BTreeSet<String>>,
}

impl Families {
    /// Parses and checks a families file.
    pub fn parse(text: &str) -> Result<Self, FamiliesError> {
        let file: File =
            serde_norway::from_str(text).map_err(|e| FamiliesError::Syntax(e.to_string()))?;
        if file.version != FAMILIES_VERSION {
            return Err(FamiliesError::Version(file.version));
        }
        let mut families: Vec<Family> = Vec::with_capacity(file.families.len());
        for def in file.families {
            if families.iter().any(|f| f.name == def.name) {
                return Err(FamiliesError::Duplicate(def.name));
            }
            let pattern = FamilyPattern::parse(&def.subject, |name| {
                file.placeholders.get(name).map(|p| p.excludes.clone())
            })
            .map_err(|source| FamiliesError::Pattern {
                family: def.name.clone(),
                source,
            })?;
            if let Some((earlier, shared)) = families
                .iter()
                .find_map(|f| f.pattern.overlap(&pattern).map(|s| (f, s)))
            {
                return Err(FamiliesError::Overlap {
                    first: earlier.name.clone(),
                    first_subject: earlier.pattern.to_string(),
                    second: def.name,
                    second_subject: def.subject,
                    shared,
                });
            }
            let stream = match def.stream {
                None => None,
                Some(name) => {
                    let refuse = |why: &str| FamiliesError::Stream {
                        family: def.name.clone(),
                        stream: name.clone(),
                        why: why.to_owned(),
                    };
                    if !(1..=32).contains(&name.len())
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        return Err(refuse("must be 1–32 of A-Z a-z 0-9 _ -"));
                    }
                    if families
                        .iter()
                        .any(|f| f.stream.as_ref().is_some_and(|s| s.name == name))
                    {
                        return Err(refuse("is already another family's"));
                    }
                    let subjects = pattern.nats_subjects().ok_or_else(|| {
                        refuse("cannot capture a pattern whose placeholder leaves tokens out")
                    })?;
                    Some(FamilyStream { name, subjects })
                }
            };
            families.push(Family {
                name: def.name,
                pattern,
                description: def.description,
                stream,
            });
        }
        let placeholders = file
            .placeholders
            .into_iter()
            .map(|(name, p)| (name, p.excludes))
            .collect();
        Ok(Families {
            families,
            placeholders,
        })
    }

    /// The repository's families ([`SUBJECT_FAMILIES`]).
    pub fn builtin() -> Self {
        Self::parse(SUBJECT_FAMILIES)
            .unwrap_or_else(|e| panic!("policies/subject-families.yaml: {e}"))
    }

    /// Every family, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = &Family> {
        self.families.iter()
    }

    /// The family holding every subject the NATS subject or pattern `subject` matches, if one
    /// does (families are disjoint, so at most one holds a literal subject).
    pub fn family_of(&self, subject: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.pattern.contains(subject))
    }

    /// The tokens placeholder `{name}` never takes, if it is defined.
    pub fn placeholder_excludes(&self, name: &str) -> Option<&BTreeSet<String>> {
        self.placeholders.get(name)
    }

    /// The family of a subject about to be published: the one holding it, or why none does
    /// (naming the closest family).
    pub fn family_of_subject(&self, subject: &str) -> Result<&Family, FilterOutside> {
        if let Err(e) = ck_subject::validate_literal(subject) {
            return Err(FilterOutside::Syntax {
                filter: subject.to_owned(),
                why: e.to_string(),
            });
        }
        self.family_of(subject).ok_or_else(|| self.outside(subject))
    }

    /// The one family a subscription filter (a NATS subject or pattern) reaches. A filter may
    /// match subjects no family holds besides those of its family (`fleet.events.*.>` also
    /// matches `fleet.events.install.x`, which nothing may publish); it may not reach two
    /// families, nor none.
    pub fn family_of_filter(&self, filter: &str) -> Result<&Family, FilterOutside> {
        let syntax = |why: String| FilterOutside::Syntax {
            filter: filter.to_owned(),
            why,
        };
        ck_subject::validate_pattern(filter).map_err(|e| syntax(e.to_string()))?;
        let pattern = FamilyPattern::parse(filter, |_| None).map_err(|e| syntax(e.to_string()))?;
        let reached: Vec<&Family> = self
            .families
            .iter()
            .filter(|f| f.pattern.overlap(&pattern).is_some())
            .collect();
        match reached.as_slice() {
            [one] => Ok(one),
            [] => Err(self.outside(filter)),
            many => Err(FilterOutside::Across {
                filter: filter.to_owned(),
                families: many.iter().map(|f| f.name.clone()).collect(),
            }),
        }
    }

    fn outside(&self, subject: &str) -> FilterOutside {
        FilterOutside::Outside {
            filter: subject.to_owned(),
            closest: self
                .closest(subject)
                .map(|f| (f.name.clone(), f.pattern.to_string())),
        }
    }

    /// The family closest to `subject` (for a subject none holds): the one whose tokens resemble
    /// the subject's most, literal by literal.
    pub fn closest(&self, subject: &str) -> Option<&Family> {
        self.families.iter().max_by(|a, b| {
            resemblance(&a.pattern, subject).total_cmp(&resemblance(&b.pattern, subject))
        })
    }
}

/// A subject a manifest names that no declared family holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideFamilies {
    /// Where the manifest names it (`topics.input`, `edges.outbound[0].nats_subject`).
    pub field: String,
    /// The subject.
    pub subject: String,
    /// The closest family's name and pattern.
    pub closest: Option<(String, String)>,
}

impl std::fmt::Display for OutsideFamilies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: '{}' is outside every declared subject family",
            self.field, self.subject
        )?;
        match &self.closest {
            Some((name, pattern)) => write!(f, " (closest: `{name}`, {pattern})"),
            None => Ok(()),
        }
    }
}

impl Families {
    /// The subjects `kernel`'s manifest names (its topics and the `nats_subject` of its edges)
    /// that no family holds, each with the closest family.
    pub fn check_kernel(&self, kernel: &ck_manifest::Kernel) -> Vec<OutsideFamilies> {
        let t = &kernel.topics;
        let mut named: Vec<(String, &str)> = vec![
            ("topics.input".into(), t.input.as_str()),
            ("topics.result".into(), t.result.as_str()),
            ("topics.event".into(), t.event.as_str()),
            ("topics.stream".into(), t.stream.as_str()),
        ];
        for (side, edges) in [
            ("outbound", &kernel.edges.outbound),
            ("inbound", &kernel.edges.inbound),
        ] {
            for (i, edge) in edges.iter().enumerate() {
                if let Some(subject) = &edge.nats_subject {
                    named.push((format!("edges.{side}[{i}].nats_subject"), subject.as_str()));
                }
            }
        }
        named
            .into_iter()
            .filter(|(_, subject)| self.family_of(subject).is_none())
            .map(|(field, subject)| OutsideFamilies {
                field,
                subject: subject.to_owned(),
                closest: self
                    .closest(subject)
                    .map(|f| (f.name.clone(), f.pattern.to_string())),
            })
            .collect()
    }
}

/// How much `subject` resembles `pattern`: per position, a literal or alternative scores its
/// best normalised edit similarity, a placeholder or `*` half a point; tokens beyond the
/// pattern (not under `>`) or missing cost a point each.
fn resemblance(pattern: &FamilyPattern, subject: &str) -> f64 {
    let tokens: Vec<&str> = subject.split('.').collect();
    let mut score = 0.0;
    for (i, mine) in pattern.tokens().iter().enumerate() {
        let Some(theirs) = tokens.get(i) else {
            score -= 1.0;
            continue;
        };
        score += match mine {
            FamilyToken::Literal(l) => strsim::normalized_levenshtein(l, theirs),
            FamilyToken::OneOf(set) => set
                .iter()
                .map(|l| strsim::normalized_levenshtein(l, theirs))
                .fold(0.0, f64::max),
            FamilyToken::Placeholder { excludes, .. } if excludes.contains(*theirs) => 0.0,
            FamilyToken::Placeholder { .. } | FamilyToken::Any => 0.5,
            FamilyToken::Tail => return score + 0.5 * (tokens.len() - i) as f64,
        };
    }
    score - tokens.len().saturating_sub(pattern.tokens().len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repositorys_families_load_and_hold_the_fleet_subjects() {
        let families = Families::builtin();
        let of = |s: &str| families.family_of(s).map(|f| f.name.as_str());
        assert_eq!(of("fleet.events.ct-fac.gamma1.pulse"), Some("fleet.events"));
        assert_eq!(of("fleet.install.ct-fac.request"), Some("fleet.install"));
        assert_eq!(of("fleet.ct-fac.scan.result"), Some("fleet.scan"));
        assert_eq!(of("fleet.lean.proof.Main.sorry"), Some("fleet.lean.proof"));
        assert_eq!(of("input.CS.Voting"), Some("ck.input"));
        assert_eq!(of("ck.0d9e8f7a.data.>"), Some("ck.kernel"));
        assert_eq!(of("fleet.install.ct-fac.reboot"), None);
        assert_eq!(of("orders.created"), None);
    }

    #[test]
    fn overlapping_families_are_refused_naming_a_shared_subject() {
        let text = "version: 1\nfamilies:\n  - {name: a, subject: \"fleet.events.>\"}\n  - {name: b, subject: \"fleet.*.scan.request\"}\n";
        let err = Families::parse(text).unwrap_err().to_string();
        assert!(err.contains("`a`") && err.contains("`b`"), "{err}");
        assert!(err.contains("fleet.events.scan.request"), "{err}");
        let dup = "version: 1\nfamilies:\n  - {name: a, subject: \"x.>\"}\n  - {name: a, subject: \"y.>\"}\n";
        assert!(matches!(
            Families::parse(dup),
            Err(FamiliesError::Duplicate(_))
        ));
        let undefined = "version: 1\nfamilies:\n  - {name: a, subject: \"x.{who}\"}\n";
        let err = Families::parse(undefined).unwrap_err().to_string();
        assert!(err.contains("`a`") && err.contains("{who}"), "{err}");
        assert!(matches!(
            Families::parse("version: 2\nfamilies: []\n"),
            Err(FamiliesError::Version(2))
        ));
    }

    #[test]
    fn the_platform_families_hold_versioned_and_keyed_subjects_each_in_its_own_stream() {
        let families = Families::builtin();
        let of = |s: &str| families.family_of_subject(s).map(|f| f.name.as_str());
        assert_eq!(
            of("platform.capability.changed.v1"),
            Ok("platform.capability")
        );
        assert_eq!(
            of("platform.capability.changed.v1.billing"),
            Ok("platform.capability")
        );
        assert_eq!(of("fleet.agent.handoff.v1"), Ok("fleet.agent"));
        assert_eq!(of("platform.delivery.parked.v1"), Ok("platform.delivery"));
        let stray = families
            .family_of_subject("platform.capabilty.changed.v1")
            .unwrap_err();
        assert!(
            stray.to_string().contains("closest: `platform.capability`"),
            "{stray}"
        );
        assert!(matches!(
            families.family_of_subject("platform.*"),
            Err(FilterOutside::Syntax { .. })
        ));
        let streams: Vec<(&str, &[String])> = families
            .iter()
            .filter_map(|f| f.stream.as_ref())
            .map(|s| (s.name.as_str(), s.subjects.as_slice()))
            .collect();
        assert!(
            streams.contains(&("FLEET_AGENT", &["fleet.agent.>".to_owned()][..])),
            "{streams:?}"
        );
        assert_eq!(streams.len(), 6);
    }

    #[test]
    fn a_filter_reaches_exactly_one_family_or_is_refused() {
        let families = Families::builtin();
        let of = |s: &str| families.family_of_filter(s).map(|f| f.name.as_str());
        assert_eq!(of("fleet.events.*.>"), Ok("fleet.events"));
        assert_eq!(of("fleet.install.*.done"), Ok("fleet.install"));
        assert_eq!(of("platform.capability.*.v1.*"), Ok("platform.capability"));
        assert!(matches!(
            of("platform.>"),
            Err(FilterOutside::Across { .. })
        ));
        assert!(matches!(
            of("fleet.*.scan.>"),
            Err(FilterOutside::Across { .. })
        ));
        assert!(matches!(of("orders.>"), Err(FilterOutside::Outside { .. })));
        assert!(matches!(of("a..b"), Err(FilterOutside::Syntax { .. })));
    }

    #[test]
    fn a_silo_may_take_no_token_its_placeholder_excludes() {
        let families = Families::builtin();
        let excluded: Vec<&str> = families
            .placeholder_excludes("silo")
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect();
        let mut reserved = ck_manifest::topics::RESERVED_SILO_NAMES.to_vec();
        reserved.sort_unstable();
        assert_eq!(excluded, reserved);
    }

    #[test]
    fn a_stream_must_spell_its_family_in_nats_subjects() {
        let text = "version: 1\nplaceholders:\n  s: {excludes: [x]}\nfamilies:\n  - {name: a, subject: \"a.{s}.b\", stream: A}\n";
        let err = Families::parse(text).unwrap_err().to_string();
        assert!(err.contains("stream `A`"), "{err}");
        let twice = "version: 1\nfamilies:\n  - {name: a, subject: \"a.>\", stream: S}\n  - {name: b, subject: \"b.>\", stream: S}\n";
        let err = Families::parse(twice).unwrap_err().to_string();
        assert!(err.contains("already another family's"), "{err}");
    }

    #[test]
    fn the_closest_family_is_named_for_a_near_miss() {
        let families = Families::builtin();
        let closest = |s: &str| families.closest(s).map(|f| f.name.as_str());
        assert_eq!(
            closest("fleet.instal.ct-fac.request"),
            Some("fleet.install")
        );
        assert_eq!(
            closest("fleet.install.ct-fac.reboot"),
            Some("fleet.install")
        );
        assert_eq!(closest("fleet.ct-fac.scna.result"), Some("fleet.scan"));
        assert_eq!(closest("inptu.CS.Voting"), Some("ck.input"));
    }
}

//! Platform update subscription contracts (`contracts/*.json`): a team's delivery intent —
//! which subjects, delivered how (NATS, webhook, MCP), replayed from where.
//!
//! A contract is accepted only when it passes its JSON Schema
//! (`contracts/platform-update-subscription.schema.json`, draft 2020-12, checked by the
//! `jsonschema` crate: a validator we did not write decides) and every subject filter lies
//! inside one declared subject family ([`ck_acl::families::Families::family_of_filter`]).
//! Within a directory, subscription ids are unique.
//!
//! This crate reads contracts and nothing else: it opens no connection, reads no secret (a
//! contract only names where its secret is, `auth.secretRef`) and delivers nothing — that is
//! `ck bridge`'s.

use std::path::{Path, PathBuf};

use ck_acl::families::{Families, FilterOutside};
use serde::{Deserialize, Serialize};

/// The subscription contract schema (JSON Schema 2020-12).
pub const SCHEMA: &str =
    include_str!("../../../contracts/platform-update-subscription.schema.json");

/// The most schema violations one refusal lists.
const MAX_VIOLATIONS: usize = 20;

/// The most bytes a contract file may hold.
pub const MAX_CONTRACT_BYTES: u64 = 64 * 1024;

/// How a subscription's events reach its team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// The team subscribes on NATS itself.
    Nats,
    /// `ck bridge` POSTs each event to the sink.
    Webhook,
    /// Coding agents read it through `ck mcp`.
    Mcp,
}

/// Where delivery starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplayPolicy {
    /// The latest event of each key (the subject's last token), then new ones.
    LatestPerKey,
    /// From the contract's `startSequence`.
    FromSequence,
    /// Only events published after the subscription exists.
    NewOnly,
}

/// How a delivery proves where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthClass {
    /// Standard Webhooks signatures (HMAC-SHA256, `whsec_` secrets).
    StandardWebhooks,
    /// An `Authorization: Bearer` token.
    Bearer,
    /// The team's own NATS user.
    NatsUser,
}

/// A webhook sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sink {
    /// Where events are POSTed.
    pub url: String,
    /// The request timeout in seconds (at most 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// Delivery authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// Its class.
    pub class: AuthClass,
    /// Where its secret is read from (`env:NAME` or `file:PATH`), never the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
}

/// An accepted subscription contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// The contract format version (1).
    pub version: u32,
    /// Stable, team-owned; it names the durable consumer.
    pub subscription_id: String,
    /// The owning team.
    pub owner: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How its events are delivered.
    pub delivery_mode: DeliveryMode,
    /// Its subjects, each inside one family.
    pub subject_filters: Vec<String>,
    /// The webhook sink (webhook only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<Sink>,
    /// Delivery authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// Where delivery starts.
    pub replay_policy: ReplayPolicy,
    /// The first stream sequence (from-sequence only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_sequence: Option<u64>,
    /// Attempts before an event is parked (webhook only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

impl Subscription {
    /// The family of each subject filter, in order (checked when the contract was accepted).
    pub fn families<'f>(&self, families: &'f Families) -> Vec<&'f str> {
        self.subject_filters
            .iter()
            .filter_map(|f| families.family_of_filter(f).ok())
            .map(|f| f.name.as_str())
            .collect()
    }
}

/// One place a contract breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where in the contract (a JSON pointer, `` for the whole document).
    pub at: String,
    /// What the validator said.
    pub message: String,
}

/// Why a contract was refused.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONTRACT_BYTES`].
    #[error("{path}: {size} bytes, more than a contract may hold ({MAX_CONTRACT_BYTES})")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Not JSON.
    #[error("{origin}: not JSON: {source}")]
    Json {
        /// The file (or `<input>`).
        origin: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The schema refused it.
    #[error("{origin}: does not match the subscription contract schema: {}", list(.violations))]
    Schema {
        /// The file (or `<input>`).
        origin: String,
        /// Each violation (at most 20).
        violations: Vec<Violation>,
    },
    /// A subject filter outside every family, or across two.
    #[error("{origin}: subjectFilters[{index}]: {source}")]
    Filter {
        /// The file (or `<input>`).
        origin: String,
        /// Which filter.
        index: usize,
        /// Why.
        source: FilterOutside,
    },
    /// A webhook or MCP filter in a family that no stream stores.
    #[error(
        "{origin}: subjectFilters[{index}]: family `{family}` has no stream to deliver from (webhook and mcp subscriptions replay from a family stream)"
    )]
    NoStream {
        /// The file (or `<input>`).
        origin: String,
        /// Which filter.
        index: usize,
        /// The family.
        family: String,
    },
    /// Two contracts of one directory share a subscription id.
    #[error("{second}: subscriptionId `{id}` is already used by {first}")]
    DuplicateId {
        /// The id.
        id: String,
        /// The first contract holding it.
        first: String,
        /// The second.
        second: String,
    },
}

fn list(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            let at = if v.at.is_empty() { "/" } else { v.at.as_str() };
            format!("at {at}: {}", v.message)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks contracts against the schema and a set of subject families.
pub struct ContractChecker<'f> {
    validator: jsonschema::Validator,
    families: &'f Families,
}

impl<'f> ContractChecker<'f> {
    /// A checker for `families` (the schema is the repository's, [`SCHEMA`]).
    pub fn new(families: &'f Families) -> Self {
        let schema: serde_json::Value =
            serde_json::from_str(SCHEMA).expect("the contract schema is JSON");
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the contract schema is a valid 2020-12 schema");
        ContractChecker {
            validator,
            families,
        }
    }

    /// Checks one contract's text; `origin` names it in errors.
    pub fn check(&self, origin: &str, text: &str) -> Result<Subscription, ContractError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| ContractError::Json {
                origin: origin.to_owned(),
                source,
            })?;
        let violations: Vec<Violation> = self
            .validator
            .iter_errors(&value)
            .take(MAX_VIOLATIONS)
            .map(|e| Violation {
                at: e.instance_path().to_string(),
                message: e.to_string(),
            })
            .collect();
        if !violations.is_empty() {
            return Err(ContractError::Schema {
                origin: origin.to_owned(),
                violations,
            });
        }
        let subscription: Subscription =
            serde_json::from_value(value).map_err(|source| ContractError::Json {
                origin: origin.to_owned(),
                source,
            })?;
        for (index, filter) in subscription.subject_filters.iter().enumerate() {
            let family =
                self.families
                    .family_of_filter(filter)
                    .map_err(|source| ContractError::Filter {
                        origin: origin.to_owned(),
                        index,
                        source,
                    })?;
            // Webhook and MCP delivery replay from the family's stream: without one there is
            // nothing to deliver from.
            if subscription.delivery_mode != DeliveryMode::Nats && family.stream.is_none() {
                return Err(ContractError::NoStream {
                    origin: origin.to_owned(),
                    index,
                    family: family.name.clone(),
                });
            }
        }
        Ok(subscription)
    }

    /// Checks one contract file.
    pub fn check_file(&self, path: &Path) -> Result<Subscription, ContractError> {
        let read = |source| ContractError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_CONTRACT_BYTES {
            return Err(ContractError::TooLarge {
                path: path.to_owned(),
                size,
            });
        }
        // Read at most one byte past the limit: the size checked above may not be what is
        // read (a FIFO, a device, a growing file).
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(
                std::fs::File::open(path).map_err(read)?,
                MAX_CONTRACT_BYTES + 1,
            ),
            &mut text,
        )
        .map_err(read)?;
        if text.len() as u64 > MAX_CONTRACT_BYTES {
            return Err(ContractError::TooLarge {
                path: path.to_owned(),
                size: text.len() as u64,
            });
        }
        self.check(&path.display().to_string(), &text)
    }

    /// Checks every `*.json` file of `dir` but the schema itself (sorted by name), refusing two
    /// that share a subscription id.
    pub fn check_dir(&self, dir: &Path) -> Result<Vec<Subscription>, ContractError> {
        let read = |source| ContractError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && !p.to_string_lossy().ends_with(".schema.json")
            })
            .collect();
        paths.sort();
        let mut accepted: Vec<(String, Subscription)> = Vec::with_capacity(paths.len());
        for path in paths {
            let subscription = self.check_file(&path)?;
            let origin = path.display().to_string();
            if let Some((first, _)) = accepted
                .iter()
                .find(|(_, s)| s.subscription_id == subscription.subscription_id)
            {
                return Err(ContractError::DuplicateId {
                    id: subscription.subscription_id,
                    first: first.clone(),
                    second: origin,
                });
            }
            accepted.push((origin, subscription));
        }
        Ok(accepted.into_iter().map(|(_, s)| s).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts/examples")
    }

    fn webhook() -> serde_json::Value {
        json!({
            "version": 1,
            "subscriptionId": "team-x-capabilities",
            "owner": "team-x",
            "deliveryMode": "webhook",
            "subjectFilters": ["platform.capability.>"],
            "sink": {"url": "https://x.example/hook"},
            "auth": {"class": "standard-webhooks", "secretRef": "env:X_SECRETS"},
            "replayPolicy": "new-only"
        })
    }

    fn refusal(edit: impl Fn(&mut serde_json::Value)) -> String {
        let families = Families::builtin();
        let checker = ContractChecker::new(&families);
        let mut contract = webhook();
        edit(&mut contract);
        match checker.check("<test>", &contract.to_string()) {
            Ok(s) => panic!("accepted: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_teams_example_contract_is_accepted_with_its_families() {
        let families = Families::builtin();
        let checker = ContractChecker::new(&families);
        let all = checker.check_dir(&examples()).unwrap();
        let owners: Vec<&str> = all.iter().map(|s| s.owner.as_str()).collect();
        for team in [
            "backend-core",
            "commons-core",
            "agentarmy-forge",
            "frontend-core",
            "middle-core",
            "Fleet Console",
            "platform operators",
        ] {
            assert!(owners.contains(&team), "{team} has no example: {owners:?}");
        }
        for s in &all {
            assert_eq!(
                s.families(&families).len(),
                s.subject_filters.len(),
                "{s:?}"
            );
        }
        let ops = all
            .iter()
            .find(|s| s.owner == "platform operators")
            .unwrap();
        assert_eq!(
            ops.families(&families),
            ["platform.security", "platform.delivery"]
        );
        assert_eq!(ops.replay_policy, ReplayPolicy::FromSequence);
    }

    #[test]
    fn a_contract_breaking_its_schema_is_refused_with_the_validators_words() {
        let missing_sink = refusal(|c| {
            c.as_object_mut().unwrap().remove("sink");
        });
        assert!(
            missing_sink.contains("\"sink\" is a required property"),
            "{missing_sink}"
        );
        let bad_id = refusal(|c| c["subscriptionId"] = json!("Team X!"));
        assert!(bad_id.contains("at /subscriptionId"), "{bad_id}");
        let bad_mode = refusal(|c| c["deliveryMode"] = json!("email"));
        assert!(bad_mode.contains("at /deliveryMode"), "{bad_mode}");
        let stray_start = refusal(|c| c["startSequence"] = json!(5));
        assert!(stray_start.contains("schema"), "{stray_start}");
        let no_start = refusal(|c| c["replayPolicy"] = json!("from-sequence"));
        assert!(
            no_start.contains("\"startSequence\" is a required property"),
            "{no_start}"
        );
        let unknown_field = refusal(|c| c["secret"] = json!("whsec_abc"));
        assert!(unknown_field.contains("secret"), "{unknown_field}");
        let long_timeout = refusal(|c| c["sink"]["timeoutSeconds"] = json!(60));
        assert!(
            long_timeout.contains("at /sink/timeoutSeconds"),
            "{long_timeout}"
        );
        let not_a_url = refusal(|c| c["sink"]["url"] = json!("ftp://x.example/hook"));
        assert!(not_a_url.contains("at /sink/url"), "{not_a_url}");
        let sink_on_nats = refusal(|c| c["deliveryMode"] = json!("nats"));
        assert!(sink_on_nats.contains("schema"), "{sink_on_nats}");
    }

    #[test]
    fn a_filter_outside_every_family_or_across_two_is_refused_naming_them() {
        let outside = refusal(|c| c["subjectFilters"] = json!(["platform.capabilty.changed.v1"]));
        assert!(outside.contains("subjectFilters[0]"), "{outside}");
        assert!(outside.contains("platform.capability"), "{outside}");
        let across =
            refusal(|c| c["subjectFilters"] = json!(["platform.capability.>", "platform.>"]));
        assert!(across.contains("subjectFilters[1]"), "{across}");
        assert!(across.contains("more than one family"), "{across}");
        let streamless = refusal(|c| c["subjectFilters"] = json!(["fleet.install.*.done"]));
        assert!(streamless.contains("has no stream"), "{streamless}");
    }

    #[test]
    fn two_contracts_sharing_an_id_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.json", "b.json"] {
            std::fs::write(dir.path().join(name), webhook().to_string()).unwrap();
        }
        let families = Families::builtin();
        let error = ContractChecker::new(&families)
            .check_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("team-x-capabilities") && error.contains("a.json"),
            "{error}"
        );
    }
}

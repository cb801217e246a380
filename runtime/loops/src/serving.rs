//! The serving record: which CK and TOOL commits a kernel serves, and with what weight a canary
//! takes a share of the messages. Kept in `.ck/serving.json` — outside the CK tree, which is
//! read-only to the runtime (ckp-spec §2.4 [OURS]) — and replaced atomically, so a host reading
//! it sees the old record or the new one, never a mix.

use serde::{Deserialize, Serialize};

/// Which version: a CK commit and a TOOL commit. (The names of a version along the way: a
/// `VersionRef` names it, a `VersionSnapshot` (in `state`) is what the loops hold for it,
/// `ck_serve::PreparedVersion` is it loaded and compiled, and `ck_host::VersionLabel` is how a
/// served one reports itself.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRef {
    /// CK repository commit (identity: manifest, ontology, rules).
    pub ck: String,
    /// TOOL repository commit (sources and component digest).
    pub tool: String,
}

impl VersionRef {
    /// `ck@abcdef0/tool@1234567`, for messages.
    pub fn short(&self) -> String {
        format!("ck@{}/tool@{}", short(&self.ck), short(&self.tool))
    }
}

/// A commit id shortened for people.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(7)]
}

/// A canary: a version and the percentage of messages it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The canary version.
    #[serde(flatten)]
    pub pin: VersionRef,
    /// Percentage of messages, 1–99.
    pub weight: u8,
}

/// The serving record of one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingRecord {
    /// Kernel name.
    pub kernel: String,
    /// Kernel GUID.
    pub guid: String,
    /// Increases with every change.
    pub revision: u64,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// What answers by default.
    pub stable: VersionRef,
    /// A version taking a share of the messages, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Earlier stable versions, newest last: where a rollback goes.
    #[serde(default)]
    pub previous: Vec<VersionRef>,
}

/// A change of a serving record that cannot be made; the message says why and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ServingRefused(pub String);

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolledBack {
    /// The canary ended; stable answers everything.
    CanaryEnded(Canary),
    /// The previous stable version is stable again.
    Stable {
        /// The version that was stable.
        from: VersionRef,
    },
}

impl RolledBack {
    /// The version that stopped being served.
    pub fn from(&self) -> &VersionRef {
        match self {
            RolledBack::CanaryEnded(c) => &c.pin,
            RolledBack::Stable { from } => from,
        }
    }
}

/// The one rule of promote, canary and rollback, for a record kept in a file (`state`) and for
/// one kept in the cluster (`ck_control`) alike. Each changes the record in place; the caller
/// stamps it ([`ServingRecord::stamp`]) and stores it.
impl ServingRecord {
    /// Makes `to` the stable version; returns the version it replaces. A canary of that same
    /// version ends. Refused when `to` is stable already (except on a first record).
    pub fn promote(&mut self, to: VersionRef) -> Result<VersionRef, ServingRefused> {
        let from = self.stable.clone();
        if from == to && self.revision > 0 {
            return Err(ServingRefused(format!(
                "{} already serves {} as stable",
                self.kernel,
                to.short()
            )));
        }
        if self.canary.as_ref().is_some_and(|c| c.pin == to) {
            self.canary = None;
        }
        if from != to {
            self.previous.push(from.clone());
        }
        self.stable = to;
        Ok(from)
    }

    /// Sends `weight` percent of the messages to `pin`; 0 ends the canary.
    pub fn set_canary(&mut self, pin: VersionRef, weight: u8) -> Result<(), ServingRefused> {
        if weight > 99 {
            return Err(ServingRefused(format!(
                "a canary takes 1–99 % of the messages (got {weight}); use `ck promote` to serve it for all"
            )));
        }
        self.canary = (weight > 0).then_some(Canary { pin, weight });
        Ok(())
    }

    /// Ends a running canary or, without one, makes the previous stable version stable again.
    pub fn rollback(&mut self) -> Result<RolledBack, ServingRefused> {
        if let Some(canary) = self.canary.take() {
            return Ok(RolledBack::CanaryEnded(canary));
        }
        let Some(previous) = self.previous.pop() else {
            return Err(ServingRefused(format!(
                "{} serves its first pinned version {}: there is no earlier one to roll back to",
                self.kernel,
                self.stable.short()
            )));
        };
        let from = std::mem::replace(&mut self.stable, previous);
        Ok(RolledBack::Stable { from })
    }

    /// Counts the change: the next revision, now.
    pub fn stamp(&mut self) {
        self.revision += 1;
        self.updated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    }

    /// Every version the record names (stable, canary, previous), each once.
    pub fn versions(&self) -> Vec<&VersionRef> {
        let mut all: Vec<&VersionRef> = vec![&self.stable];
        all.extend(self.canary.as_ref().map(|c| &c.pin));
        all.extend(self.previous.iter());
        let mut seen = Vec::new();
        all.retain(|v| {
            let fresh = !seen.contains(v);
            seen.push(*v);
            fresh
        });
        all
    }
}

/// Which version answers message number `n` (counted from 0) under a canary of `weight`
/// percent: exactly `weight` of every 100 consecutive messages, spread evenly rather than in a
/// burst.
pub fn goes_to_canary(n: u64, weight: u8) -> bool {
    let w = u64::from(weight.min(100));
    (n + 1) * w / 100 > n * w / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_share_is_exact_and_spread() {
        for weight in [0u8, 1, 5, 20, 50, 99, 100] {
            let hits = (0..5000).filter(|n| goes_to_canary(*n, weight)).count();
            assert_eq!(hits, 50 * weight as usize, "weight {weight}");
        }
        // 20 %: one in every five, never two in a row.
        let first: Vec<bool> = (0..10).map(|n| goes_to_canary(n, 20)).collect();
        assert_eq!(first.iter().filter(|b| **b).count(), 2);
        assert!(first.windows(2).all(|w| !(w[0] && w[1])));
    }

    #[test]
    fn record_round_trips() {
        let record = ServingRecord {
            kernel: "Demo.Echo".into(),
            guid: "g".into(),
            revision: 3,
            updated_at: "t".into(),
            stable: VersionRef {
                ck: "a".repeat(40),
                tool: "b".repeat(40),
            },
            canary: Some(Canary {
                pin: VersionRef {
                    ck: "c".repeat(40),
                    tool: "d".repeat(40),
                },
                weight: 20,
            }),
            previous: vec![],
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains("\"weight\":20"));
        assert_eq!(
            serde_json::from_str::<ServingRecord>(&text).unwrap(),
            record
        );
    }
}

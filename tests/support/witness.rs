//! The CloudEvents witness: `cloudevents_witness.py` (nats-py and the Python CloudEvents SDK,
//! installed by `scripts/ensure-python-clients`) subscribed to some subjects, deciding whether
//! each message is a valid CloudEvent. Tests read its verdicts, never their own parse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::Proc;

/// A running witness.
pub struct Witness {
    proc: Proc,
    verdicts: PathBuf,
}

/// What the witness saw.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// Valid events per CloudEvent `type`.
    pub types: BTreeMap<String, usize>,
    /// Each message the SDK refused: its subject and the SDK's words.
    pub refused: Vec<String>,
}

impl Witness {
    /// Starts a witness on `url` (as `user`, or anonymous for ""), subscribed to `subjects`;
    /// returns once it is subscribed.
    pub fn start(dir: &Path, url: &str, user: (&str, &str), subjects: &[&str]) -> Witness {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/cloudevents_witness.py");
        let verdicts = dir.join("witness.jsonl");
        let mut args = vec![
            script.display().to_string(),
            url.to_owned(),
            user.0.to_owned(),
            user.1.to_owned(),
            verdicts.display().to_string(),
        ];
        args.extend(subjects.iter().map(|s| (*s).to_owned()));
        let proc = Proc::spawn("python3", &args, &dir.join("witness.log"));
        proc.wait_for("witness.ready");
        Witness { proc, verdicts }
    }

    /// What it has seen so far.
    pub fn verdicts(&self) -> Verdicts {
        let mut seen = Verdicts::default();
        let text = std::fs::read_to_string(&self.verdicts).unwrap_or_default();
        for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line).expect("a witness line");
            if record["ok"] == true {
                *seen
                    .types
                    .entry(record["type"].as_str().unwrap_or_default().to_owned())
                    .or_default() += 1;
            } else {
                seen.refused.push(format!(
                    "{}: {} ({})",
                    record["subject"], record["error"], record["payload"]
                ));
            }
        }
        seen
    }

    /// Waits until it has seen a valid event of each of `types` (or fails with what it saw);
    /// fails on any refused message.
    pub fn expect_types(&self, types: &[&str]) -> Verdicts {
        let mut last = Verdicts::default();
        crate::eventually(
            std::time::Duration::from_secs(30),
            || {
                last = self.verdicts();
                !last.refused.is_empty() || types.iter().all(|t| last.types.contains_key(*t))
            },
            || format!("the witness saw {:?}\n{}", self.verdicts(), self.proc.log()),
        );
        assert!(
            last.refused.is_empty(),
            "the Python CloudEvents SDK refused: {:#?}",
            last.refused
        );
        last
    }
}

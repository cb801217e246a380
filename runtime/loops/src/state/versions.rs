//! Moving what is served: promote, canary and rollback move `stable` and `canary` of both
//! loops and the serving record together, each move journalled.

use ck_manifest::topics::LoopEvent;
use serde_json::json;

use super::{CANARY, LoopError, Loops, Pending, STABLE, io, serving, serving_path};
use crate::serving::{RolledBack, ServingRecord, VersionRef};

impl Loops {
    fn resolve(&self, spec: &str) -> Result<(Option<String>, Option<String>), LoopError> {
        let found = (self.ck.resolve(spec), self.tool.resolve(spec));
        if found.0.is_none() && found.1.is_none() {
            return Err(LoopError::Refused(format!(
                "`{spec}` names no branch or commit of {}'s CK or TOOL loop (try `develop`, or a commit id)",
                self.name
            )));
        }
        Ok(found)
    }

    /// The serving record, or a first one pinning stable to `develop` (what a host serves
    /// when nothing was pinned yet). Errors when nothing was ever recorded.
    fn current(&self) -> Result<ServingRecord, LoopError> {
        if let Some(record) = serving(&self.kernel_dir)? {
            return Ok(record);
        }
        let develop = self.develop().ok_or_else(|| {
            LoopError::Refused(format!(
                "{} has no recorded version yet: build it (`ck build {}`) or serve it once",
                self.name,
                self.kernel_dir.display()
            ))
        })?;
        Ok(ServingRecord {
            kernel: self.name.clone(),
            guid: self.guid.clone(),
            revision: 0,
            updated_at: String::new(),
            stable: develop,
            canary: None,
            previous: Vec::new(),
        })
    }

    fn save(&self, mut record: ServingRecord) -> Result<ServingRecord, LoopError> {
        record.stamp();
        let path = serving_path(&self.kernel_dir);
        let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
        ck_fs::write_atomic(&path, &bytes).map_err(io(&path))?;
        Ok(record)
    }

    /// Moves `branch` of both loops to `pin`, returning the ref-update events.
    fn move_branches(
        &self,
        branch: &str,
        pin: &VersionRef,
        why: &str,
        revision: u64,
    ) -> Result<Vec<Pending>, LoopError> {
        let mut events = Vec::new();
        for (repo, commit, event) in [
            (&self.ck, &pin.ck, LoopEvent::CkRefUpdate),
            (&self.tool, &pin.tool, LoopEvent::ToolRefUpdate),
        ] {
            let before = repo.set_branch(branch, commit, why)?;
            if before.as_deref() != Some(commit.as_str()) {
                events.push(self.ref_update(
                    event,
                    branch,
                    before.as_deref(),
                    commit,
                    &format!("rev{revision}"),
                ));
            }
        }
        Ok(events)
    }

    /// Pins the serving record as it stands (creating it from `develop` when absent), without
    /// changing what is served. Returns the record.
    pub fn pin_current(&self) -> Result<ServingRecord, LoopError> {
        if let Some(record) = serving(&self.kernel_dir)? {
            return Ok(record);
        }
        let record = self.current()?;
        let events = self.move_branches(STABLE, &record.stable, "first version served", 1)?;
        let record = self.save(record)?;
        self.journal(events)?;
        Ok(record)
    }

    /// Makes the version `spec` names (a branch or commit of either loop; a loop it does not
    /// name keeps its stable commit) the stable one. A canary of that same version ends.
    pub fn promote(&self, spec: &str) -> Result<ServingRecord, LoopError> {
        let (ck, tool) = self.resolve(spec)?;
        let mut record = self.current()?;
        let to = VersionRef {
            ck: ck.unwrap_or_else(|| record.stable.ck.clone()),
            tool: tool.unwrap_or_else(|| record.stable.tool.clone()),
        };
        self.materialize(&to)?;
        let canary_before = record.canary.clone();
        let next = record.revision + 1;
        let from = record.promote(to.clone())?;
        let mut events = self.move_branches(STABLE, &to, &format!("promote {spec}"), next)?;
        if canary_before.is_some() && record.canary.is_none() {
            self.ck.delete_branch(CANARY)?;
            self.tool.delete_branch(CANARY)?;
        }
        let record = self.save(record)?;
        let key = format!("rev{}", record.revision);
        let data = json!({"from": from, "to": to, "ref": spec, "revision": record.revision});
        events.push(self.event(LoopEvent::CkPromote, &key, data.clone()));
        if from.tool != to.tool {
            events.push(self.event(LoopEvent::ToolPromote, &key, data));
        }
        self.journal(events)?;
        Ok(record)
    }

    /// Sends `weight` percent of the messages to the version `spec` names (0 ends the canary).
    pub fn canary(&self, spec: &str, weight: u8) -> Result<ServingRecord, LoopError> {
        let (ck, tool) = self.resolve(spec)?;
        let mut record = self.current()?;
        let pin = VersionRef {
            ck: ck.unwrap_or_else(|| record.stable.ck.clone()),
            tool: tool.unwrap_or_else(|| record.stable.tool.clone()),
        };
        record.set_canary(pin.clone(), weight)?;
        self.materialize(&pin)?;
        let next = record.revision + 1;
        let mut events = if record.revision == 0 {
            self.move_branches(STABLE, &record.stable, "first version served", next)?
        } else {
            Vec::new()
        };
        if weight == 0 {
            self.ck.delete_branch(CANARY)?;
            self.tool.delete_branch(CANARY)?;
        } else {
            events.extend(self.move_branches(
                CANARY,
                &pin,
                &format!("canary {spec} {weight}%"),
                next,
            )?);
        }
        let record = self.save(record)?;
        events.push(self.event(
            LoopEvent::CkCanary,
            &format!("rev{}", record.revision),
            json!({"canary": pin, "weight": weight, "stable": record.stable, "ref": spec, "revision": record.revision}),
        ));
        self.journal(events)?;
        Ok(record)
    }

    /// Ends a running canary (everything back to stable) or, without one, makes the previous
    /// stable version stable again.
    pub fn rollback(&self) -> Result<(ServingRecord, String), LoopError> {
        let Some(mut record) = serving(&self.kernel_dir)? else {
            return Err(LoopError::Refused(format!(
                "{} has no serving record: nothing was promoted, so there is nothing to roll back",
                self.name
            )));
        };
        let mut events = Vec::new();
        let next = record.revision + 1;
        let rolled = record.rollback()?;
        let what = match &rolled {
            RolledBack::CanaryEnded(canary) => {
                self.ck.delete_branch(CANARY)?;
                self.tool.delete_branch(CANARY)?;
                format!(
                    "canary {} ({}%) ended; {} answers everything",
                    canary.pin.short(),
                    canary.weight,
                    record.stable.short()
                )
            }
            RolledBack::Stable { from } => {
                self.materialize(&record.stable)?;
                events.extend(self.move_branches(STABLE, &record.stable, "rollback", next)?);
                format!("stable {} → {}", from.short(), record.stable.short())
            }
        };
        let from = rolled.from().clone();
        let record = self.save(record)?;
        events.push(self.event(
            LoopEvent::CkRollback,
            &format!("rev{}", record.revision),
            json!({"from": from, "to": record.stable, "revision": record.revision}),
        ));
        self.journal(events)?;
        Ok((record, what))
    }
}

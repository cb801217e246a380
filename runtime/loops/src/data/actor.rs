//! Who acts on a task or a sealed instance, and the one ownership rule: what a proven caller
//! starts is owned by its SPIFFE ID, and only that identity (or a holder of the kernel's
//! `manage-tasks` grant) may move it on or amend what it sealed. A task started without proof
//! has no owner; anyone the kernel lets call the action may act on it, and records say so.

/// The caller of a task or amend action, as the router proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// How it is recorded: `spiffe://…` only when proven, `claimed:{name}` for an unproven
    /// `X-User-ID`, or `anonymous` (`ck_bus::Caller`'s written form).
    pub written: String,
    /// The SPIFFE ID a JWT-SVID proved, if any: the owner of the tasks it starts.
    pub proven: Option<String>,
    /// It holds the kernel's `manage-tasks` grant: it may act on anyone's tasks.
    pub manages_tasks: bool,
}

impl Actor {
    /// An actor nobody proved (the host's own recovery, tests).
    pub fn unproven(written: impl Into<String>) -> Self {
        Self {
            written: written.into(),
            proven: None,
            manages_tasks: false,
        }
    }

    /// Whether this actor may act on something `owner` owns (`None`: unowned).
    pub fn may_act_on(&self, owner: Option<&str>) -> bool {
        match owner {
            None => true,
            Some(owner) => self.manages_tasks || self.proven.as_deref() == Some(owner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_or_a_manager_acts_on_an_owned_thing() {
        let owner = "spiffe://example.org/ck/A/1";
        let same = Actor {
            written: owner.into(),
            proven: Some(owner.into()),
            manages_tasks: false,
        };
        let claimed = Actor::unproven(format!("claimed:{owner}"));
        let manager = Actor {
            written: "spiffe://example.org/ck/Ops/2".into(),
            proven: Some("spiffe://example.org/ck/Ops/2".into()),
            manages_tasks: true,
        };
        assert!(same.may_act_on(Some(owner)));
        assert!(!claimed.may_act_on(Some(owner)));
        assert!(manager.may_act_on(Some(owner)));
        assert!(claimed.may_act_on(None));
    }
}

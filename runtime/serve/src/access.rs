//! Who may call an action: access levels `auth` and `owner` need a caller proven by a JWT-SVID
//! addressed to the kernel (`Authorization: Bearer …`) and a grant (or, for `auth`, the
//! kernel's own trust domain). Every refusal is a 401/403 answer and an audit line (401s, which
//! anyone can cause before proving anything, coalesced per action, claimed name, reason and
//! interval:
//! `ck_audit::coalesce`).

use std::sync::Arc;

use ck_bus::{Failure, Request};
use ck_manifest::{Access, GrantIdentity, Kernel};

/// Proves who a caller is from the bearer token of a request.
pub trait CallerVerifier: Send + Sync + 'static {
    /// The SPIFFE ID `token` proves for `audience`, or why it proves nothing.
    fn verify(&self, token: &str, audience: &str) -> Result<String, CallerRejected>;
}

/// Why a bearer token proves nothing (the reason is answered to the caller and audited).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CallerRejected(pub String);

/// The access check of one kernel version.
pub(crate) struct AccessCheck {
    pub(crate) kernel: Arc<Kernel>,
    pub(crate) verifier: Option<Arc<dyn CallerVerifier>>,
}

impl AccessCheck {
    /// Checks the caller of an action. `auth`/`owner` actions need a proven caller and a grant
    /// (or, for `auth`, the kernel's trust domain); an `anon` action needs nothing, but a
    /// bearer token sent with one is verified all the same (a caller who tries to prove who it
    /// is and fails is refused, not served as anonymous). Returns the proven SPIFFE ID, if any.
    pub(crate) fn authorize(
        &self,
        request: &Request,
        access: Access,
    ) -> Result<Option<String>, Failure> {
        let m = &self.kernel;
        let audience = m.spiffe_id().unwrap_or_default();
        let claimed = request.caller.to_string();
        let deny = |code: u16, error: &str, caller: &str, reason: String| {
            let record = ck_audit::AuditRecord::now(
                caller,
                request.action.clone(),
                ck_audit::Verdict::Deny,
                reason.clone(),
                "ck host",
            )
            .subject(m.topics.input.clone());
            if code == 401 {
                // Before authentication anyone can cause this at will: the same refusal (action,
                // claimed name, reason) is coalesced, so a flood cannot fill the disk.
                ck_audit::coalesce::append_refusal(
                    m.dir().to_path_buf(),
                    m.name.clone(),
                    &format!("401:{}:{caller}:{reason}", request.action),
                    record,
                );
            } else {
                ck_audit::append_detached(m.dir().to_path_buf(), m.name.clone(), record);
            }
            Failure::new(code, error, reason)
        };
        let token = request
            .authorization
            .as_deref()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = token else {
            if access == Access::Anon {
                return Ok(None);
            }
            return Err(deny(
                401,
                "unauthenticated",
                &claimed,
                format!(
                    "action `{}` requires `{access}` access: send a JWT-SVID for audience '{audience}' as `Authorization: Bearer <svid>`",
                    request.action
                ),
            ));
        };
        let Some(verifier) = &self.verifier else {
            return Err(deny(
                401,
                "unauthenticated",
                &claimed,
                "this host verifies no callers (it was started without a SPIFFE Workload API)"
                    .into(),
            ));
        };
        let caller = verifier
            .verify(token, &audience)
            .map_err(|why| deny(401, "unauthenticated", &claimed, why.0))?;
        if access == Access::Anon {
            return Ok(Some(caller));
        }
        let now = chrono::Utc::now();
        let granted = m.grants.iter().find(|g| {
            !g.expires.is_expired(now)
                && g.actions.contains(&request.action)
                && match &g.identity {
                    GrantIdentity::Spiffe(id) => *id == caller,
                    GrantIdentity::Auth => access == Access::Auth,
                    GrantIdentity::Anon | GrantIdentity::Owner => false,
                }
        });
        let same_domain = m
            .domain
            .as_deref()
            .is_some_and(|d| caller.starts_with(&format!("spiffe://{d}/")));
        match granted {
            Some(grant) => {
                if grant.audit {
                    let record = ck_audit::AuditRecord::now(
                        &caller,
                        request.action.clone(),
                        ck_audit::Verdict::Allow,
                        format!("granted (line {})", grant.line),
                        "ck host",
                    )
                    .subject(m.topics.input.clone());
                    ck_audit::append_detached(m.dir().to_path_buf(), m.name.clone(), record);
                }
                Ok(Some(caller))
            }
            None if access == Access::Auth && same_domain => Ok(Some(caller)),
            None => Err(deny(
                403,
                "forbidden",
                &caller,
                format!(
                    "{caller} has no grant for `{}` on {} (access `{access}`)",
                    request.action, m.name
                ),
            )),
        }
    }

    /// Whether the proven `caller` holds this kernel's `manage-tasks` grant: it may act on any
    /// task or instance, not only those it owns.
    pub(crate) fn manages_tasks(&self, caller: &str) -> bool {
        let now = chrono::Utc::now();
        self.kernel.grants.iter().any(|g| {
            !g.expires.is_expired(now)
                && matches!(&g.identity, GrantIdentity::Spiffe(id) if id == caller)
                && g.actions.iter().any(|a| a == ck_manifest::MANAGE_TASKS)
        })
    }
}

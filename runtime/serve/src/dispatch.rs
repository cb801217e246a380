//! One version of a kernel, served: the router in front of the WebAssembly host. Every
//! action is looked up in one table built from the version's manifest, and each handler
//! knows only its own concern:
//!
//! | target | handler |
//! |---|---|
//! | `status`, `check.identity` | [`crate::protocol`] (answered for every kernel, declared or not) |
//! | declared `task.*`, `instance.amend` | the task lifecycle (`ck-task`) |
//! | every other declared action | the guest (`ck_host::KernelService`) |
//!
//! An action not in the table is answered 404; an `auth`/`owner` action is checked by
//! [`crate::access`] before its handler runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ck_bus::{Failure, Request};
use ck_host::{KernelService, VersionLabel};
use ck_manifest::{Access, Diagnostic, Kernel};
use ck_task::{Lifecycle, TaskAction};
use serde_json::value::RawValue;

use crate::access::AccessCheck;
use crate::protocol::{self, VersionStats};

/// Which handler answers an action.
#[derive(Debug, Clone, Copy)]
enum Target {
    Status,
    CheckIdentity,
    Task(TaskAction),
    Amend,
    Guest,
}

/// A table entry: the handler and the access level the manifest declares.
#[derive(Debug, Clone, Copy)]
struct Entry {
    target: Target,
    access: Access,
}

/// One version of a kernel behind the router: implements [`ck_bus::Handler`].
pub struct VersionService {
    kernel: Arc<Kernel>,
    label: VersionLabel,
    warnings: Vec<Diagnostic>,
    table: HashMap<String, Entry>,
    access: AccessCheck,
    lifecycle: Option<Arc<Lifecycle>>,
    guest: KernelService,
    started: Instant,
    ok: AtomicU64,
    errors: AtomicU64,
}

impl VersionService {
    /// Routes `kernel`'s actions: protocol actions to the host, declared lifecycle actions to
    /// `lifecycle`, the others to `guest`.
    pub(crate) fn new(
        kernel: Kernel,
        label: VersionLabel,
        warnings: Vec<Diagnostic>,
        guest: KernelService,
        lifecycle: Option<Arc<Lifecycle>>,
        verifier: Option<Arc<dyn crate::access::CallerVerifier>>,
    ) -> Self {
        let kernel = Arc::new(kernel);
        let mut table = HashMap::new();
        for action in &kernel.actions {
            let target = match TaskAction::parse(&action.name) {
                Some(task) => Target::Task(task),
                None if action.name == ck_manifest::AMEND_ACTION => Target::Amend,
                None => Target::Guest,
            };
            table.insert(
                action.name.clone(),
                Entry {
                    target,
                    access: action.access,
                },
            );
        }
        // Protocol actions are the host's, open to anyone, declared or not.
        for (name, target) in [
            ("status", Target::Status),
            ("check.identity", Target::CheckIdentity),
        ] {
            table.insert(
                name.to_owned(),
                Entry {
                    target,
                    access: Access::Anon,
                },
            );
        }
        Self {
            access: AccessCheck {
                kernel: kernel.clone(),
                verifier,
            },
            kernel,
            label,
            warnings,
            table,
            lifecycle,
            guest,
            started: Instant::now(),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// Which version this is.
    pub fn version(&self) -> &VersionLabel {
        &self.label
    }

    /// The version's manifest.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The guest (its component, its instances).
    pub fn guest(&self) -> &KernelService {
        &self.guest
    }

    /// Counters so far.
    pub fn stats(&self) -> VersionStats {
        VersionStats {
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            instances: self.guest.stats().instances,
        }
    }

    async fn dispatch(&self, mut request: Request) -> Result<Box<RawValue>, Failure> {
        let Some(entry) = self.table.get(request.action.as_str()).copied() else {
            return Err(Failure::new(
                404,
                "unknown_action",
                format!("{} has no action `{}`", self.kernel.name, request.action),
            ));
        };
        if let Some(proven) = self.access.authorize(&request, entry.access)? {
            request.caller = ck_bus::Caller::Proven(proven);
        }
        match entry.target {
            Target::Status => Ok(raw(&protocol::status(
                &self.kernel,
                &self.label,
                self.guest.component(),
                u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                self.stats(),
            ))),
            Target::CheckIdentity => Ok(raw(&protocol::check_identity(
                &self.kernel,
                self.guest.component(),
                &self.warnings,
            ))),
            Target::Task(_) | Target::Amend => {
                let Some(lifecycle) = &self.lifecycle else {
                    return Err(Failure::new(
                        503,
                        "no_task_lifecycle",
                        format!(
                            "{} declares `{}` but this host serves no task lifecycle for it (it needs JetStream on the NATS server)",
                            self.kernel.name, request.action
                        ),
                    ));
                };
                // Boxed: the lifecycle's futures are large (7 KiB), and every message's task
                // would otherwise carry and copy them, task action or not.
                let actor = ck_loops::data::Actor {
                    written: request.caller.to_string(),
                    proven: request.caller.proven().map(str::to_owned),
                    manages_tasks: request
                        .caller
                        .proven()
                        .is_some_and(|id| self.access.manages_tasks(id)),
                };
                let answer = match entry.target {
                    Target::Task(action) => {
                        Box::pin(lifecycle.handle(action, &request, &actor)).await?
                    }
                    _ => Box::pin(lifecycle.amend(&request, &actor)).await?,
                };
                Ok(raw(&answer))
            }
            Target::Guest => ck_bus::Handler::handle(&self.guest, request).await,
        }
    }
}

impl ck_bus::Handler for VersionService {
    async fn handle(&self, request: Request) -> Result<Box<RawValue>, Failure> {
        let result = self.dispatch(request).await;
        match &result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.errors.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// Audited as a deny of the caller's claimed name, coalesced (an unproven caller can send
    /// as many as it likes).
    /// `anon` actions answered by the guest or the host's protocol; never task or amend
    /// actions (their answers carry task ids and outputs that are the caller's).
    fn broadcasts(&self, action: &str) -> bool {
        self.table.get(action).is_some_and(|entry| {
            entry.access == Access::Anon
                && matches!(
                    entry.target,
                    Target::Guest | Target::Status | Target::CheckIdentity
                )
        })
    }

    fn refused(&self, refusal: &ck_bus::Refusal) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let record = ck_audit::AuditRecord::now(
            refusal.claimed_user.clone(),
            refusal.kind,
            ck_audit::Verdict::Deny,
            if refusal.answered {
                format!(
                    "unreadable request, answered with the error: {}",
                    refusal.reason
                )
            } else {
                format!("not answered: {}", refusal.reason)
            },
            "ck host",
        )
        .subject(refusal.subject.clone());
        ck_audit::coalesce::append_refusal(
            self.kernel.dir().to_path_buf(),
            self.kernel.name.clone(),
            &format!("{}:{}", refusal.kind, refusal.claimed_user),
            record,
        );
    }
}

fn raw(value: &serde_json::Value) -> Box<RawValue> {
    // A `Value` always serialises to valid JSON.
    RawValue::from_string(value.to_string()).expect("serde_json::Value serialises to JSON")
}

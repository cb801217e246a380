//! Per-store state and the host side of the kernel contract.
//!
//! Every publish or request a guest makes is checked here, before anything reaches NATS,
//! against the kernel's compiled permissions (the same ones nats-server enforces); a refusal is
//! a typed `denied` error naming the subject and the missing permission, and an audit line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ck_bus::{PublishFailure, Publisher};
use ck_subject::{Permissions, validate_literal};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::conceptkernel::kernel::host::{self, Denial, Level, PublishError};

/// Longest log message kept, in bytes.
const MAX_LOG: usize = 4096;
/// Largest sealed instance a guest may read, in bytes.
const MAX_INSTANCE_READ: u64 = 4 * 1024 * 1024;

/// What every call of one kernel shares.
pub(crate) struct Shared {
    pub kernel: String,
    pub permissions: Permissions,
    pub publisher: Publisher,
    pub max_publish: usize,
    pub data_dir: Option<PathBuf>,
    /// The kernel's directory (its audit ledger lives under it).
    pub kernel_dir: Option<PathBuf>,
    /// Who the kernel is, as audit lines name it: its SPIFFE ID, or its name.
    pub identity: String,
    /// Subjects the guest may never publish on although its connection may (loop events and
    /// JetStream: written by the host alone).
    pub reserved: Vec<String>,
    /// The declared subject families (the ACL compiler's).
    pub families: Arc<ck_acl::families::Families>,
}

/// The request being handled.
#[derive(Clone, Default)]
pub(crate) struct CallInfo {
    pub trace_id: String,
    pub user: String,
    pub deadline: Option<Instant>,
}

/// A refused memory growth, as a typed error instead of a failed `memory.grow`.
#[derive(Debug)]
pub(crate) struct MemoryCapExceeded {
    pub desired: usize,
    pub cap: usize,
}

impl std::fmt::Display for MemoryCapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory limit of {} bytes exceeded (wanted {} for all of the instance's memories)",
            self.cap, self.desired
        )
    }
}

impl std::error::Error for MemoryCapExceeded {}

/// The resource limits of one store (one kernel instance). The memory cap is for the instance
/// as a whole: every linear memory of every core instance in it counts against one budget (a
/// per-memory limit would let a component with eight memories take eight times the cap).
pub(crate) struct CapLimiter {
    inner: StoreLimits,
    cap: usize,
    /// Bytes of all this store's linear memories together.
    used: usize,
}

impl CapLimiter {
    pub fn new(cap: usize) -> Self {
        Self {
            inner: StoreLimitsBuilder::new()
                .instances(64)
                .tables(64)
                .memories(16)
                .build(),
            cap,
            used: 0,
        }
    }
}

impl ResourceLimiter for CapLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // A new memory grows from 0; memories only grow, so `used` is their sum.
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total <= self.cap && self.inner.memory_growing(current, desired, maximum)? {
            self.used = total;
            Ok(true)
        } else {
            Err(MemoryCapExceeded {
                desired: total,
                cap: self.cap,
            }
            .into())
        }
    }
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// The state of one store (one kernel instance).
pub(crate) struct State {
    pub limiter: CapLimiter,
    pub shared: Arc<Shared>,
    pub call: CallInfo,
    /// Created on first use: most kernels never touch WASI.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
}

impl State {
    pub fn new(shared: Arc<Shared>, memory_cap: usize) -> Self {
        Self {
            limiter: CapLimiter::new(memory_cap),
            shared,
            call: CallInfo::default(),
            wasi: None,
            table: ResourceTable::new(),
        }
    }

    fn check(&self, action: &str, subject: &str, size: usize) -> Result<(), PublishError> {
        if let Err(e) = validate_literal(subject) {
            return Err(PublishError::InvalidSubject(format!("'{subject}': {e}")));
        }
        if size > self.shared.max_publish {
            return Err(PublishError::TooLarge(
                u32::try_from(self.shared.max_publish).unwrap_or(u32::MAX),
            ));
        }
        if let Some(pattern) = self
            .shared
            .reserved
            .iter()
            .find(|p| ck_subject::matches(p, subject))
        {
            let reason = format!(
                "'{subject}' is reserved for the host (matches '{pattern}': loop events and JetStream state are written by the host, never by a kernel's code)"
            );
            self.audit_deny(action, subject, &reason);
            return Err(PublishError::Denied(Denial {
                subject: subject.to_owned(),
                reason,
            }));
        }
        // Outside every declared family nothing may be published, whatever a grant says; the
        // family file names the closest family, which is what a misspelt subject needs.
        if let Err(outside) = self.shared.families.family_of_subject(subject) {
            let reason = format!("{outside}: a kernel publishes only inside a declared family");
            self.audit_deny(action, subject, &reason);
            return Err(PublishError::Denied(Denial {
                subject: subject.to_owned(),
                reason,
            }));
        }
        if !self.shared.permissions.can_publish(subject) {
            let reason = format!(
                "kernel {} has no grant to publish on '{subject}' (its compiled permissions allow: {})",
                self.shared.kernel,
                self.shared.permissions.publish.allow.join(", ")
            );
            self.audit_deny(action, subject, &reason);
            return Err(PublishError::Denied(Denial {
                subject: subject.to_owned(),
                reason,
            }));
        }
        Ok(())
    }
}

impl State {
    /// Records a refused publish in the kernel's audit ledger; the guest already has its typed
    /// denial. Coalesced per action, subject and reason (`ck_audit::coalesce`): a guest looping
    /// over denied publishes — or callers making it do so — cannot fill the disk.
    fn audit_deny(&self, action: &str, subject: &str, reason: &str) {
        let key = format!("guest:{action}:{subject}:{reason}");
        let record = ck_audit::AuditRecord::now(
            &self.shared.identity,
            action,
            ck_audit::Verdict::Deny,
            format!("{reason} (trace {})", self.call.trace_id),
            "ck host",
        )
        .subject(subject);
        self.shared.audit_coalesced(&key, record);
    }
}

impl Shared {
    /// [`Shared::audit`] for a refusal that can repeat at will: coalesced under `key`.
    pub(crate) fn audit_coalesced(&self, key: &str, record: ck_audit::AuditRecord) {
        match &self.kernel_dir {
            Some(dir) => {
                ck_audit::coalesce::append_refusal(dir.clone(), self.kernel.clone(), key, record)
            }
            None => self.audit(record),
        }
    }

    /// Appends `record` to the kernel's audit ledger (off the async workers), or logs it when
    /// the kernel has no directory.
    pub(crate) fn audit(&self, record: ck_audit::AuditRecord) {
        match &self.kernel_dir {
            Some(dir) => ck_audit::append_detached(dir.clone(), self.kernel.clone(), record),
            None => {
                tracing::warn!(target: "ck::audit", kernel = %self.kernel, caller = %record.caller_svid, action = %record.action, subject = ?record.subject, result = ?record.result, reason = %record.reason, "audit")
            }
        }
    }
}

fn unavailable(e: PublishFailure) -> PublishError {
    match e {
        PublishFailure::TooLarge { max, .. } => {
            PublishError::TooLarge(u32::try_from(max).unwrap_or(u32::MAX))
        }
        PublishFailure::Timeout(_) => PublishError::Timeout,
        other => PublishError::Unavailable(other.to_string()),
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        // Nothing inherited: no arguments, environment, preopened directories, stdin or
        // network; stdout and stderr are discarded.
        let ctx = self.wasi.get_or_insert_with(|| {
            WasiCtx::builder()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build()
        });
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}

impl crate::conceptkernel::kernel::types::Host for State {}

impl host::Host for State {
    async fn publish(&mut self, subject: String, payload: Vec<u8>) -> Result<(), PublishError> {
        self.check("publish", &subject, payload.len())?;
        let call = &self.call;
        self.shared
            .publisher
            .publish(&subject, Bytes::from(payload), &call.trace_id, &call.user)
            .await
            .map_err(unavailable)
    }

    async fn request(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, PublishError> {
        self.check("request", &subject, payload.len())?;
        // Never wait past the call's own deadline.
        let mut timeout = Duration::from_millis(u64::from(timeout_ms));
        if let Some(deadline) = self.call.deadline {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }
        let call = &self.call;
        self.shared
            .publisher
            .request(
                &subject,
                Bytes::from(payload),
                &call.trace_id,
                &call.user,
                timeout,
            )
            .await
            .map(|b| b.to_vec())
            .map_err(unavailable)
    }

    async fn log(&mut self, level: Level, mut message: String) {
        if message.len() > MAX_LOG {
            let mut cut = MAX_LOG;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let (kernel, trace_id) = (&self.shared.kernel, &self.call.trace_id);
        match level {
            Level::Trace => tracing::trace!(target: "ck::guest", %kernel, %trace_id, "{message}"),
            Level::Debug => tracing::debug!(target: "ck::guest", %kernel, %trace_id, "{message}"),
            Level::Info => tracing::info!(target: "ck::guest", %kernel, %trace_id, "{message}"),
            Level::Warn => tracing::warn!(target: "ck::guest", %kernel, %trace_id, "{message}"),
            Level::Error => tracing::error!(target: "ck::guest", %kernel, %trace_id, "{message}"),
        }
    }

    async fn read_instance(&mut self, instance_id: String) -> Result<String, String> {
        if !ck_fs::layout::valid_instance_id(&instance_id) {
            return Err(format!("'{instance_id}' is not an instance id"));
        }
        let Some(dir) = &self.shared.data_dir else {
            return Err("this kernel has no DATA directory".into());
        };
        let path = ck_fs::layout::DataLayout::at(dir)
            .instance(&instance_id)
            .join("data.json");
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|_| format!("no sealed instance '{instance_id}'"))?;
        if meta.len() > MAX_INSTANCE_READ {
            return Err(format!(
                "instance '{instance_id}' is larger than {MAX_INSTANCE_READ} bytes"
            ));
        }
        tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| format!("cannot read instance '{instance_id}': {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two core instances with a 192 KiB memory each, under a 256 KiB cap: each alone fits,
    /// together they do not, so the component does not instantiate.
    #[test]
    fn the_memory_cap_counts_every_memory_of_an_instance() {
        let component = wat::parse_str(
            r#"(component
                 (core module $a (memory (export "m") 3))
                 (core module $b (memory (export "m") 3))
                 (core instance $ia (instantiate $a))
                 (core instance $ib (instantiate $b)))"#,
        )
        .unwrap();
        let engine = wasmtime::Engine::default();
        let component = wasmtime::component::Component::new(&engine, component).unwrap();
        let linker = wasmtime::component::Linker::<CapLimiter>::new(&engine);
        let instantiate = |cap: usize| {
            let mut store = wasmtime::Store::new(&engine, CapLimiter::new(cap));
            store.limiter(|l| l);
            linker.instantiate(&mut store, &component).map(|_| ())
        };
        let e = instantiate(256 * 1024).unwrap_err();
        assert!(
            format!("{e:?}").contains("memory limit of 262144 bytes exceeded"),
            "{e:?}"
        );
        instantiate(384 * 1024).unwrap();
    }
}

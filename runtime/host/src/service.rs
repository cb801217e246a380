//! Calling one kernel's guest for one request under its limits (deadline, memory, fuel,
//! result size), with the TOOL loop's per-call events. Which actions reach the guest, and who
//! may call them, is decided in front of it (`ck-serve`'s router).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ck_bus::{Failure, Publisher, Request};
use ck_manifest::{Kernel as Manifest, Limits};
use ck_subject::Permissions;
use serde_json::value::RawValue;
use wasmtime::{Store, UpdateDeadline};

use crate::component::{KernelComponent, LoadError};
use crate::conceptkernel::kernel::types::{Context, KernelError};
use crate::engine::HostEngine;
use crate::imports::{CallInfo, MemoryCapExceeded, Shared, State};
use crate::label::VersionLabel;
use crate::tool_events::{Outcome, ToolEvents};

/// The engine every component runs on (reported by `status`).
pub const ENGINE: &str = "wasmtime 48.0.8";
/// Extra wall-clock time allowed past a call's deadline before the call is abandoned (the epoch
/// trap normally fires first; this catches guests blocked in a host call).
const DEADLINE_GRACE: Duration = Duration::from_millis(50);

/// Counters of one kernel's guest.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ServiceStats {
    /// Guest calls that returned data.
    pub ok: u64,
    /// Guest calls that failed.
    pub errors: u64,
    /// Guest instances created.
    pub instances: u64,
}

struct Reusable {
    store: Store<State>,
    instance: crate::Kernel,
    uses: u64,
}

/// One kernel's guest: implements [`ck_bus::Handler`] for the actions routed to it.
pub struct KernelService {
    manifest: Arc<Manifest>,
    component: KernelComponent,
    engine: HostEngine,
    shared: Arc<Shared>,
    limits: Limits,
    memory_cap: usize,
    idle: Mutex<Vec<Reusable>>,
    ok: AtomicU64,
    errors: AtomicU64,
    instances: AtomicU64,
    version: Option<VersionLabel>,
    tool_events: Option<ToolEvents>,
}

impl KernelService {
    /// Serves `manifest` with `component`. `permissions` are the kernel's compiled permissions
    /// (every guest publish is checked against them); `publisher` sends on its connection.
    pub fn new(
        engine: &HostEngine,
        manifest: Manifest,
        component: KernelComponent,
        permissions: Permissions,
        publisher: Publisher,
    ) -> Result<Self, LoadError> {
        let limits = manifest.limits;
        if limits.memory_mb > engine.config.max_memory_mb {
            return Err(LoadError::Limits(format!(
                "{}: spec.limits.memory_mb is {} but this host allows at most {} (--max-memory-mb)",
                manifest.manifest_path.display(),
                limits.memory_mb,
                engine.config.max_memory_mb
            )));
        }
        if limits.fuel.is_some() && !engine.config.fuel {
            return Err(LoadError::Limits(format!(
                "{}: spec.limits.fuel is set but this host was started without fuel metering",
                manifest.manifest_path.display()
            )));
        }
        let data_dir = Some(
            ck_fs::layout::DataLayout::of_kernel(manifest.dir())
                .dir()
                .to_path_buf(),
        );
        let shared = Arc::new(Shared {
            kernel: manifest.name.clone(),
            permissions,
            publisher,
            max_publish: usize::try_from(limits.max_result_bytes).unwrap_or(usize::MAX),
            data_dir,
            kernel_dir: Some(manifest.dir().to_path_buf()),
            identity: manifest
                .spiffe_id()
                .unwrap_or_else(|| manifest.name.clone()),
            reserved: ck_manifest::topics::host_reserved(&manifest.guid),
            families: ck_acl::Policy::default().families,
        });
        Ok(Self {
            memory_cap: usize::try_from(limits.memory_mb << 20).unwrap_or(usize::MAX),
            manifest: Arc::new(manifest),
            component,
            engine: engine.clone(),
            shared,
            limits,
            idle: Mutex::new(Vec::new()),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            instances: AtomicU64::new(0),
            version: None,
            tool_events: None,
        })
    }

    /// Labels this service as `version` of its kernel.
    pub fn with_version(mut self, version: VersionLabel) -> Self {
        self.version = Some(version);
        self
    }

    /// Publishes `tool.invoked` / `tool.completed` / `tool.failed` for every call of the guest
    /// (call after [`KernelService::with_version`], whose label the events carry).
    pub fn with_tool_events(mut self) -> Self {
        self.tool_events = Some(ToolEvents::new(&self.manifest, self.version.as_ref()));
        self
    }

    /// The version this service is, when labelled.
    pub fn version(&self) -> Option<&VersionLabel> {
        self.version.as_ref()
    }

    /// Publishes one TOOL event of a call.
    async fn tool_event(
        &self,
        events: &ToolEvents,
        request: &Request,
        call: u64,
        outcome: Outcome<'_>,
    ) {
        let (subject, body) = events.encode(&request.action, &request.trace_id, call, outcome);
        // No headers: the body names the trace, the kernel and the call, and each header map
        // is an allocation and more bytes for the server to parse, twice per call.
        if let Err(e) = self
            .shared
            .publisher
            .client()
            .publish(subject.clone(), body)
            .await
        {
            tracing::warn!(subject = %subject, error = %e, "tool.event-failed");
        }
    }

    /// The kernel's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The loaded component.
    pub fn component(&self) -> &KernelComponent {
        &self.component
    }

    /// Counters so far.
    pub fn stats(&self) -> ServiceStats {
        ServiceStats {
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            instances: self.instances.load(Ordering::Relaxed),
        }
    }

    /// Times `n` fresh instantiations (store creation included), for benchmarks.
    pub async fn instantiate_timings(&self, n: usize) -> Vec<Duration> {
        let mut timings = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let mut store = self.new_instance_store();
            let call = CallInfo {
                deadline: Some(Instant::now() + Duration::from_secs(1)),
                ..CallInfo::default()
            };
            if self.arm(&mut store, call).is_ok()
                && self
                    .component
                    .pre
                    .instantiate_async(&mut store)
                    .await
                    .is_ok()
            {
                timings.push(started.elapsed());
            }
        }
        timings.sort();
        timings
    }

    async fn call(&self, request: Request) -> Result<Box<RawValue>, Failure> {
        let Some(events) = &self.tool_events else {
            return self.run_guest(&request).await;
        };
        let call = events.next_call();
        self.tool_event(events, &request, call, Outcome::Invoked)
            .await;
        let started = Instant::now();
        let result = self.run_guest(&request).await;
        let outcome = Outcome::Finished(started.elapsed(), result.as_ref().err());
        self.tool_event(events, &request, call, outcome).await;
        result
    }

    /// Runs the guest for `request` and checks what it returned.
    async fn run_guest(&self, request: &Request) -> Result<Box<RawValue>, Failure> {
        let output = self.invoke(request).await?;
        if output.len() as u64 > self.limits.max_result_bytes {
            return Err(Failure::new(
                500,
                "result_too_large",
                format!(
                    "the kernel returned {} bytes; its limit is {}",
                    output.len(),
                    self.limits.max_result_bytes
                ),
            ));
        }
        RawValue::from_string(output).map_err(|e| {
            Failure::new(
                500,
                "invalid_result",
                format!("the kernel returned invalid JSON: {e}"),
            )
        })
    }

    fn new_instance_store(&self) -> Store<State> {
        let mut store = Store::new(
            &self.engine.engine,
            State::new(self.shared.clone(), self.memory_cap),
        );
        store.limiter(|s| &mut s.limiter);
        store
    }

    fn arm(&self, store: &mut Store<State>, call: CallInfo) -> Result<(), Failure> {
        // Every epoch tick the guest either yields to the scheduler (so a spinning kernel never
        // holds a worker thread for more than a tick) or, past its deadline, is interrupted.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            let expired = store
                .data()
                .call
                .deadline
                .is_some_and(|d| Instant::now() >= d);
            Ok(if expired {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        if self.engine.config.fuel {
            store
                .set_fuel(self.limits.fuel.unwrap_or(u64::MAX))
                .map_err(|e| Failure::new(500, "kernel_trap", e.to_string()))?;
        }
        store.data_mut().call = call;
        Ok(())
    }

    async fn invoke(&self, request: &Request) -> Result<String, Failure> {
        let timeout = Duration::from_millis(self.limits.timeout_ms);
        let call = CallInfo {
            trace_id: request.trace_id.clone(),
            user: request.caller.header_value().to_owned(),
            deadline: Some(Instant::now() + timeout),
        };
        let ctx = Context {
            trace_id: request.trace_id.clone(),
            caller: request.caller.to_string(),
            task_id: request.task_id.clone(),
            kernel_name: self.manifest.name.clone(),
            kernel_guid: self.manifest.guid.clone(),
        };
        let reused = if self.limits.reuse_instances > 0 {
            self.idle.lock().ok().and_then(|mut v| v.pop())
        } else {
            None
        };
        let run = async {
            let (mut store, instance, uses) = match reused {
                Some(r) => (r.store, r.instance, r.uses),
                None => {
                    let mut store = self.new_instance_store();
                    self.arm(&mut store, call.clone())?;
                    let instance = self
                        .component
                        .pre
                        .instantiate_async(&mut store)
                        .await
                        .map_err(classify)?;
                    self.instances.fetch_add(1, Ordering::Relaxed);
                    (store, instance, 0)
                }
            };
            self.arm(&mut store, call)?;
            let outcome = instance
                .conceptkernel_kernel_handler()
                .call_handle(&mut store, &request.action, &request.data, &ctx)
                .await;
            Ok::<_, Failure>((store, instance, uses + 1, outcome))
        };
        let (store, instance, uses, outcome) =
            match tokio::time::timeout(timeout + DEADLINE_GRACE, run).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(Failure::new(
                        504,
                        "deadline_exceeded",
                        format!(
                            "the kernel did not finish within {} ms",
                            self.limits.timeout_ms
                        ),
                    ));
                }
            };
        let result = match outcome {
            Ok(Ok(data)) => Ok(data),
            Ok(Err(KernelError { code, message })) => {
                let code = if (400..=599).contains(&code) {
                    code
                } else {
                    500
                };
                Err(Failure::new(code, "kernel_error", message))
            }
            // A trapped instance is never reused.
            Err(e) => return Err(classify(e)),
        };
        if self.limits.reuse_instances > uses
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(Reusable {
                store,
                instance,
                uses,
            });
        }
        result
    }
}

/// Maps a wasmtime failure to the error answered for that message only.
fn classify(error: wasmtime::Error) -> Failure {
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => {
                Failure::new(504, "deadline_exceeded", "the kernel ran past its deadline")
            }
            wasmtime::Trap::OutOfFuel => {
                Failure::new(500, "fuel_exhausted", "the kernel used up its fuel")
            }
            other => Failure::new(500, "kernel_trap", format!("the kernel trapped: {other}")),
        };
    }
    if let Some(cap) = error.downcast_ref::<MemoryCapExceeded>() {
        return Failure::new(500, "memory_exhausted", cap.to_string());
    }
    if error
        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return Failure::new(
            503,
            "overloaded",
            "no free kernel instance slot; retry later",
        );
    }
    let mut message = format!("{error:#}");
    message.truncate(1000);
    Failure::new(500, "kernel_trap", message)
}

impl ck_bus::Handler for KernelService {
    async fn handle(&self, request: Request) -> Result<Box<RawValue>, Failure> {
        let result = self.call(request).await;
        match &result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.errors.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// Counted as an error; the serving loop logged it (the guest host keeps no ledger: the
    /// router in front of it audits).
    fn refused(&self, _refusal: &ck_bus::Refusal) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The guest's `anon` actions (and the protocol actions, answered for anyone).
    fn broadcasts(&self, action: &str) -> bool {
        matches!(action, "status" | "check.identity")
            || self
                .manifest
                .action(action)
                .is_some_and(|a| a.access == ck_manifest::Access::Anon)
    }
}

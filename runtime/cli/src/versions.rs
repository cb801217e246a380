//! Versions of served kernels: turning a recorded version (CK commit + TOOL commit) into a
//! running service, following the serving record while a host runs, publishing the loop event
//! journal, and the `ck promote` / `ck canary` / `ck rollback` / `ck versions` commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ck_acl::{Policy, compile};
use ck_bus::Publisher;
use ck_host::{ArtifactCache, HostEngine, KernelComponent, KernelService, Route, VersionLabel};
use ck_loops::journal::Journal;
use ck_loops::serving::ServingRecord;
use ck_loops::state::{self, Loops, Version};
use ck_manifest::{Diagnostic, Kernel, KernelSet};
use ck_subject::Permissions;
use tokio_util::sync::CancellationToken;

/// How often a serving host looks at the serving record and the event journal.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// One version of a kernel, loaded and checked, not yet bound to a connection.
pub struct LoadedVersion {
    /// Which version.
    pub label: VersionLabel,
    /// Its manifest, as committed.
    pub kernel: Kernel,
    /// Its component, compiled.
    pub component: KernelComponent,
    /// Its compiled permissions.
    pub permissions: Permissions,
    /// Its manifest warnings.
    pub warnings: Vec<Diagnostic>,
}

/// What loading a version needs: the engine, the compiled-component cache, and the other
/// kernels whose grants and edges count when compiling permissions.
#[derive(Clone)]
pub struct Loader {
    /// The engine.
    pub engine: HostEngine,
    /// The compiled-component cache.
    pub cache: Option<ArtifactCache>,
    /// Every other kernel known to the host.
    pub others: Vec<Kernel>,
}

impl Loader {
    /// Parses `version`'s manifest (as if it stood in `kernel_dir`), compiles its permissions
    /// and loads its component.
    pub fn load(&self, kernel_dir: &Path, version: &Version, name: &str) -> Result<LoadedVersion> {
        let short = version.pin.short();
        let path = kernel_dir.join(ck_manifest::MANIFEST_FILE);
        let opts = ck_manifest::ParseOptions {
            now: chrono::Utc::now(),
            ck_guid: version
                .ck_guid
                .clone()
                .map(|g| (g, kernel_dir.join(ck_manifest::GUID_FILE))),
        };
        let loaded = ck_manifest::parse_str(&version.manifest, &path, &opts);
        let Some(kernel) = loaded.kernel else {
            let problems: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
            bail!(
                "{short}: the manifest of this version is invalid:\n{}",
                problems.join("\n")
            );
        };
        let mut all = self.others.clone();
        all.push(kernel.clone());
        let (set, conflicts) = KernelSet::new(all);
        if let Some(c) = conflicts.first() {
            bail!("{short}: {c}");
        }
        let acl = compile(&kernel, &set, chrono::Utc::now(), &Policy::default())
            .with_context(|| format!("{short}: compiling permissions for {}", kernel.name))?;
        let component =
            KernelComponent::load(&self.engine, &version.component, self.cache.as_ref())
                .with_context(|| format!("{short}: loading the component"))?;
        Ok(LoadedVersion {
            label: VersionLabel {
                name: name.to_owned(),
                ck: version.pin.ck.clone(),
                tool: version.pin.tool.clone(),
            },
            kernel,
            component,
            permissions: acl.permissions,
            warnings: loaded.diagnostics,
        })
    }

    /// Loads the stable version (and the canary, if any) of `record`.
    pub fn load_record(
        &self,
        kernel_dir: &Path,
        record: &ServingRecord,
    ) -> Result<(LoadedVersion, Option<(LoadedVersion, u8)>)> {
        let stable = state::materialize(kernel_dir, &record.stable)?;
        let stable = self.load(kernel_dir, &stable, state::STABLE)?;
        let canary = match &record.canary {
            Some(c) => {
                let version = state::materialize(kernel_dir, &c.pin)?;
                Some((self.load(kernel_dir, &version, state::CANARY)?, c.weight))
            }
            None => None,
        };
        Ok((stable, canary))
    }
}

/// Binds loaded versions to a connection: everything a service needs besides its version.
#[derive(Clone)]
pub struct ServiceParts {
    /// The kernel's connection.
    pub publisher: Publisher,
    /// Verifies callers of `auth`/`owner` actions.
    pub verifier: Option<Arc<dyn ck_host::CallerVerifier>>,
    /// The kernel's task lifecycle.
    pub lifecycle: Option<Arc<ck_task::Lifecycle>>,
    /// Publish `tool.invoked` / `tool.completed` / `tool.failed` per call.
    pub tool_events: bool,
}

impl ServiceParts {
    /// A service for `version`.
    pub fn service(
        &self,
        engine: &HostEngine,
        version: LoadedVersion,
    ) -> Result<Arc<KernelService>> {
        let mut service = KernelService::new(
            engine,
            version.kernel,
            version.component,
            version.permissions,
            self.publisher.clone(),
            version.warnings,
        )?
        .with_version(version.label);
        if self.tool_events {
            service = service.with_tool_events();
        }
        if let Some(v) = &self.verifier {
            service = service.with_verifier(v.clone());
        }
        if let Some(l) = &self.lifecycle {
            service = service.with_lifecycle(l.clone());
        }
        Ok(Arc::new(service))
    }

    /// A route for a stable version and an optional canary.
    pub fn route(
        &self,
        engine: &HostEngine,
        stable: LoadedVersion,
        canary: Option<(LoadedVersion, u8)>,
    ) -> Result<Route> {
        Ok(Route {
            stable: self.service(engine, stable)?,
            canary: match canary {
                Some((version, weight)) => Some((self.service(engine, version)?, weight)),
                None => None,
            },
        })
    }
}

/// Publishes the journal's unpublished loop events as CloudEvents on the kernel's connection
/// and moves the cursor once the server has them. Returns how many were published.
pub async fn publish_journal(journal: &Journal, publisher: &Publisher, urn: &str) -> Result<usize> {
    let entries = journal.unpublished()?;
    let Some(last) = entries.last().map(|e| e.seq) else {
        return Ok(0);
    };
    let client = publisher.client();
    for entry in &entries {
        let mut headers = publisher.headers(&format!("loop-{}", entry.seq), "ck host");
        headers.insert(ck_bus::envelope::MSG_ID, entry.msg_id.as_str());
        let mut data = entry.data.clone();
        data["timestamp"] = serde_json::json!(entry.time);
        let body = serde_json::json!({
            "specversion": "1.0",
            "id": entry.msg_id,
            "source": urn,
            "type": format!("ck.{}", entry.event),
            "time": entry.time,
            "datacontenttype": "application/json",
            "data": data,
        });
        client
            .publish_with_headers(entry.subject.clone(), headers, body.to_string().into())
            .await
            .map_err(|e| anyhow!("publishing {}: {e}", entry.subject))?;
    }
    client
        .flush()
        .await
        .map_err(|e| anyhow!("flushing loop events: {e}"))?;
    journal.mark_published(last)?;
    for entry in &entries {
        tracing::info!(event = %entry.event, subject = %entry.subject, seq = entry.seq, "loop.event");
    }
    Ok(entries.len())
}

/// Size and modification time of a file, None when it does not exist.
fn file_stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// A served kernel's state directory, followed while its host runs.
pub struct Follower {
    /// The kernel as served (its topics are the subscription's).
    pub kernel: Kernel,
    /// Loads the versions the serving record names.
    pub loader: Loader,
    /// Binds them to the kernel's connection.
    pub parts: ServiceParts,
    /// Where they are swapped in.
    pub versioned: Arc<ck_host::Versioned>,
    /// The serving record's revision being served.
    pub revision: u64,
    /// The stable version's permissions, as the connection has them.
    pub permissions: Permissions,
    /// Notified to renew the connection when those change.
    pub renew: Arc<tokio::sync::Notify>,
}

impl Follower {
    /// Follows until `shutdown`: publishes new journal entries, and when the serving record
    /// changes, loads the versions it names and swaps them in. A version that cannot be served
    /// is refused (logged and audited) and the current ones keep serving. When the stable
    /// version's permissions change, the connection is renewed so the auth callout issues
    /// them.
    pub async fn run(self, shutdown: CancellationToken) {
        let Follower {
            kernel,
            loader,
            parts,
            versioned,
            mut revision,
            mut permissions,
            renew,
        } = self;
        let dir = kernel.dir().to_path_buf();
        let journal = Journal::new(&state::state_dir(&dir));
        let serving_path = state::serving_path(&dir);
        // Both files are only ever appended to or replaced: while their size and time stay
        // the same there is nothing to read, so the 100 ms tick costs two stats, not a parse
        // of the whole (ever-growing) journal.
        let (mut journal_seen, mut serving_seen) = (None, None);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            }
            let journal_now = file_stamp(journal.path());
            if journal_now != journal_seen {
                match publish_journal(&journal, &parts.publisher, &kernel.urn).await {
                    Ok(_) => journal_seen = journal_now,
                    Err(e) => {
                        tracing::warn!(kernel = %kernel.name, error = %format!("{e:#}"), "loop.events-unpublished")
                    }
                }
            }
            let serving_now = file_stamp(&serving_path);
            if serving_now == serving_seen {
                continue;
            }
            serving_seen = serving_now;
            let record = match state::serving(&dir) {
                Ok(Some(r)) if r.revision != revision => r,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(kernel = %kernel.name, error = %e, "serving.unreadable");
                    continue;
                }
            };
            revision = record.revision;
            let started = std::time::Instant::now();
            let (load_dir, l) = (dir.clone(), loader.clone());
            let record_for_load = record.clone();
            let loaded =
                tokio::task::spawn_blocking(move || l.load_record(&load_dir, &record_for_load))
                    .await;
            let outcome = match loaded {
                Ok(Ok((stable, canary))) => {
                    let moved = std::iter::once(&stable)
                        .chain(canary.as_ref().map(|c| &c.0))
                        .find_map(|v| topics_moved(&kernel, &v.kernel));
                    if let Some(why) = moved {
                        Err(anyhow!(
                            "{why}: a running host keeps its subscription, so this version needs a restart to be served"
                        ))
                    } else {
                        let changed = stable.permissions != permissions;
                        let new_permissions = stable.permissions.clone();
                        parts
                            .route(&loader.engine, stable, canary)
                            .map(|route| (route, changed, new_permissions))
                    }
                }
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow!("loading panicked: {e}")),
            };
            match outcome {
                Ok((route, changed, new_permissions)) => {
                    versioned.swap(route);
                    tracing::info!(
                        kernel = %kernel.name,
                        revision,
                        stable = %record.stable.short(),
                        canary = ?record.canary.as_ref().map(|c| (c.pin.short(), c.weight)),
                        swap_ms = started.elapsed().as_secs_f64() * 1e3,
                        "serving.changed"
                    );
                    if changed {
                        permissions = new_permissions;
                        tracing::info!(kernel = %kernel.name, "serving.permissions-changed; renewing the connection");
                        renew.notify_one();
                    }
                }
                Err(e) => {
                    let reason = format!("serving record revision {revision} refused: {e:#}");
                    tracing::error!(kernel = %kernel.name, error = %reason, "serving.refused; the current versions keep serving");
                    let record = ck_audit::AuditRecord::now(
                        "ck host",
                        "serve-version",
                        ck_audit::Verdict::Deny,
                        reason,
                        "ck host",
                    );
                    ck_audit::append_detached(dir.clone(), kernel.name.clone(), record);
                }
            }
        }
        // Whatever was journalled while serving goes out before the connection closes.
        let _ = publish_journal(&journal, &parts.publisher, &kernel.urn).await;
    }
}

/// How `version`'s topics differ from those `served` is subscribed and answering on, if they do.
pub fn topics_moved(served: &Kernel, version: &Kernel) -> Option<String> {
    let (a, b) = (&served.topics, &version.topics);
    [
        ("input", &a.input, &b.input),
        ("result", &a.result, &b.result),
        ("event", &a.event, &b.event),
    ]
    .into_iter()
    .find(|(_, x, y)| x != y)
    .map(|(what, x, y)| format!("its {what} topic moves from {x} to {y}"))
}

/// Arguments naming one kernel.
#[derive(clap::Args)]
pub struct KernelArg {
    /// The kernel directory (or its manifest).
    #[arg(value_name = "KERNEL")]
    pub kernel: PathBuf,
}

/// Arguments of `ck promote`.
#[derive(clap::Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    kernel: KernelArg,
    /// A branch (`develop`, `canary`) or commit id of the CK or TOOL loop.
    #[arg(value_name = "REF")]
    reference: String,
}

/// Arguments of `ck canary`.
#[derive(clap::Args)]
pub struct CanaryArgs {
    #[command(flatten)]
    kernel: KernelArg,
    /// A branch (`develop`) or commit id of the CK or TOOL loop.
    #[arg(value_name = "REF")]
    reference: String,
    /// Percentage of messages the canary answers (1–99; 0 ends the canary).
    #[arg(long)]
    weight: u8,
}

fn open(path: &Path) -> Result<Loops> {
    let kernel = crate::validate::load_one(path)?;
    Ok(Loops::open(&kernel)?)
}

fn print_record(record: &ServingRecord) {
    println!(
        "{} serving revision {}: stable {}{}",
        record.kernel,
        record.revision,
        record.stable.short(),
        record
            .canary
            .as_ref()
            .map(|c| format!(", canary {} at {}%", c.pin.short(), c.weight))
            .unwrap_or_default()
    );
}

/// `ck promote`.
pub fn promote(args: &PromoteArgs) -> Result<ExitCode> {
    let record = open(&args.kernel.kernel)?.promote(&args.reference)?;
    print_record(&record);
    Ok(ExitCode::SUCCESS)
}

/// `ck canary`.
pub fn canary(args: &CanaryArgs) -> Result<ExitCode> {
    let record = open(&args.kernel.kernel)?.canary(&args.reference, args.weight)?;
    print_record(&record);
    Ok(ExitCode::SUCCESS)
}

/// `ck rollback`.
pub fn rollback(args: &KernelArg) -> Result<ExitCode> {
    let (record, what) = open(&args.kernel)?.rollback()?;
    println!("{what}");
    print_record(&record);
    Ok(ExitCode::SUCCESS)
}

/// `ck versions`: the serving record and the loops' branches.
pub fn versions(args: &KernelArg) -> Result<ExitCode> {
    let dir = if args.kernel.is_dir() {
        args.kernel.clone()
    } else {
        args.kernel.parent().unwrap_or(Path::new(".")).to_owned()
    };
    if !state::state_dir(&dir).is_dir() {
        println!(
            "{}: nothing recorded yet (`ck build`, `ck run` or `ck dev` record the loops)",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let loops = open(&args.kernel)?;
    match loops.serving()? {
        Some(record) => print_record(&record),
        None => println!("no serving record yet (the first `ck run` pins what it serves)"),
    }
    for (branch, pin) in loops.branches() {
        println!("  {branch:<8} {}", pin_text(&loops, &pin));
    }
    Ok(ExitCode::SUCCESS)
}

fn pin_text(loops: &Loops, pin: &(Option<String>, Option<String>)) -> String {
    let part = |c: &Option<String>, summary: Option<String>| match c {
        Some(c) => format!(
            "{} ({})",
            ck_loops::serving::short(c),
            summary.unwrap_or_default()
        ),
        None => "-".to_owned(),
    };
    format!(
        "ck {}  tool {}",
        part(&pin.0, pin.0.as_deref().and_then(|c| loops.summary_ck(c))),
        part(&pin.1, pin.1.as_deref().and_then(|c| loops.summary_tool(c)))
    )
}

//! Following a served kernel's state while it is served: new loop events in the journal are
//! published, and a changed serving record (promote / canary / rollback) is loaded and swapped
//! in — or refused, logged and audited while the current versions keep serving. The record is
//! the one in the kernel's `.ck/` (looked at every 100 ms), or with a control plane the
//! cluster's, followed through a KV watch (no polling).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ck_loops::journal::Journal;
use ck_loops::state;
use tokio_util::sync::CancellationToken;

use crate::swap::Swapper;
use crate::version::Loader;

/// How often a serving host looks at the serving record and the event journal.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// Size and modification time of a file, None when it does not exist.
fn file_stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Follows one served kernel's `.ck/`.
pub(crate) struct Follower {
    pub(crate) swapper: Arc<Swapper>,
    /// Loads the versions the serving record names.
    pub(crate) loader: Loader,
    /// The serving record's revision being served; None: the record is not followed (only
    /// the journal is published).
    pub(crate) revision: Option<u64>,
    /// The cluster's control plane, when the record followed is the cluster's.
    pub(crate) control: Option<ck_control::ControlPlane>,
}

/// Publishes the journal on the kernel's connection (`ck_control::publish_journal`).
async fn publish_journal(
    publisher: &ck_bus::Publisher,
    journal: &Journal,
    kernel: &ck_manifest::Kernel,
) -> Result<usize, ck_control::ControlError> {
    let js = async_nats::jetstream::new(publisher.client());
    ck_control::publish_journal(&js, journal, &kernel.guid, &kernel.urn, |seq| {
        publisher.headers(&format!("loop-{seq}"), "ck host")
    })
    .await
}

/// How long after a failed or ended watch it is opened again.
const REWATCH_AFTER: Duration = Duration::from_secs(1);

/// The next record of `watch`, or never when there is none.
async fn next_record(
    watch: &mut Option<ck_control::ServingWatch>,
) -> Option<Result<ck_loops::serving::ServingRecord, ck_control::ControlError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

impl Follower {
    /// Follows until `shutdown`, then publishes what the journal still holds (bounded).
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let kernel = self.swapper.kernel.clone();
        let dir = kernel.dir().to_path_buf();
        let journal = Journal::new(&state::state_dir(&dir));
        let publisher = self.swapper.parts.publisher.clone();
        let serving_path = state::serving_path(&dir);
        // Both files are only ever appended to or replaced: while their size and time stay
        // the same there is nothing to read, so the tick costs two stats, not a parse of the
        // whole (ever-growing) journal.
        let (mut journal_seen, mut serving_seen) = (None, None);
        let mut watch = None;
        let mut rewatch_at = Some(Instant::now());
        loop {
            if let (Some(control), Some(at)) = (&self.control, rewatch_at)
                && self.revision.is_some()
                && at <= Instant::now()
            {
                rewatch_at = None;
                match control.watch(&kernel.guid).await {
                    Ok(w) => watch = Some(w),
                    Err(e) => {
                        tracing::warn!(kernel = %kernel.name, error = %e, "serving.watch-failed");
                        rewatch_at = Some(Instant::now() + REWATCH_AFTER);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                next = next_record(&mut watch) => match next {
                    Some(Ok(record)) => {
                        if Some(record.revision) != self.revision {
                            self.follow(&dir, record).await;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(kernel = %kernel.name, error = %e, "serving.watch-failed");
                        watch = None;
                        rewatch_at = Some(Instant::now() + REWATCH_AFTER);
                    }
                    None => {
                        watch = None;
                        rewatch_at = Some(Instant::now() + REWATCH_AFTER);
                    }
                },
            }
            let journal_now = file_stamp(journal.path());
            if journal_now != journal_seen {
                let published = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = publish_journal(&publisher, &journal, &kernel) => p,
                };
                match published {
                    Ok(_) => journal_seen = journal_now,
                    Err(e) => {
                        tracing::warn!(kernel = %kernel.name, error = %format!("{e:#}"), "loop.events-unpublished")
                    }
                }
            }
            if self.revision.is_none() || self.control.is_some() {
                continue;
            }
            let serving_now = file_stamp(&serving_path);
            if serving_now == serving_seen {
                continue;
            }
            serving_seen = serving_now;
            self.follow_record(&dir).await;
        }
        // Whatever was journalled while serving goes out before the connection closes
        // (bounded: with the server gone the cursor stays and the next start sends them).
        let _ = publish_journal(&publisher, &journal, &kernel).await;
    }

    /// Loads the serving record's versions if its revision changed, and swaps them in.
    async fn follow_record(&mut self, dir: &Path) {
        let kernel = &self.swapper.kernel;
        match state::serving(dir) {
            Ok(Some(r)) if Some(r.revision) != self.revision => self.follow(dir, r).await,
            Ok(_) => {}
            Err(e) => tracing::warn!(kernel = %kernel.name, error = %e, "serving.unreadable"),
        }
    }

    /// Loads `record`'s versions (from the loops, or from the cluster) and swaps them in.
    async fn follow(&mut self, dir: &Path, record: ck_loops::serving::ServingRecord) {
        let kernel = &self.swapper.kernel;
        let revision = record.revision;
        self.revision = Some(revision);
        let started = Instant::now();
        let loaded = match &self.control {
            Some(control) => crate::cluster::load_record(control, &self.loader, dir, &record).await,
            None => {
                let (load_dir, loader, for_load) =
                    (dir.to_path_buf(), self.loader.clone(), record.clone());
                tokio::task::spawn_blocking(move || loader.load_record(&load_dir, &for_load))
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("loading panicked: {e}")))
            }
        };
        let outcome = loaded.and_then(|(stable, canary)| {
            self.swapper
                .swap(stable, canary)
                .map_err(anyhow::Error::from)
        });
        match outcome {
            Ok(swapped) => tracing::info!(
                kernel = %kernel.name,
                revision,
                stable = %record.stable.short(),
                canary = ?record.canary.as_ref().map(|c| (c.pin.short(), c.weight)),
                permissions_changed = swapped.permissions_changed,
                swap_ms = started.elapsed().as_secs_f64() * 1e3,
                "serving.changed"
            ),
            Err(e) => {
                let reason = format!("serving record revision {revision} refused: {e:#}");
                tracing::error!(kernel = %kernel.name, error = %reason, "serving.refused");
                let record = ck_audit::AuditRecord::now(
                    "ck host",
                    "serve-version",
                    ck_audit::Verdict::Deny,
                    reason,
                    "ck host",
                );
                ck_audit::append_detached(dir.to_path_buf(), kernel.name.clone(), record);
            }
        }
    }
}

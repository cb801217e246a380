//! Following a served kernel's state directory while it is served: new loop events in the
//! journal are published, and a changed serving record (promote / canary / rollback) is loaded
//! and swapped in — or refused, logged and audited while the current versions keep serving.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ck_loops::journal::Journal;
use ck_loops::state;
use tokio_util::sync::CancellationToken;

use crate::journal::publish_journal;
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
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            }
            let journal_now = file_stamp(journal.path());
            if journal_now != journal_seen {
                let published = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = publish_journal(&journal, &publisher, &kernel.guid, &kernel.urn) => p,
                };
                match published {
                    Ok(_) => journal_seen = journal_now,
                    Err(e) => {
                        tracing::warn!(kernel = %kernel.name, error = %format!("{e:#}"), "loop.events-unpublished")
                    }
                }
            }
            if self.revision.is_none() {
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
        let _ = publish_journal(&journal, &publisher, &kernel.guid, &kernel.urn).await;
    }

    /// Loads the serving record's versions if its revision changed, and swaps them in.
    async fn follow_record(&mut self, dir: &Path) {
        let kernel = &self.swapper.kernel;
        let record = match state::serving(dir) {
            Ok(Some(r)) if Some(r.revision) != self.revision => r,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(kernel = %kernel.name, error = %e, "serving.unreadable");
                return;
            }
        };
        let revision = record.revision;
        self.revision = Some(revision);
        let started = Instant::now();
        let (load_dir, loader, for_load) = (dir.to_path_buf(), self.loader.clone(), record.clone());
        let loaded =
            tokio::task::spawn_blocking(move || loader.load_record(&load_dir, &for_load)).await;
        let outcome = match loaded {
            Ok(Ok((stable, canary))) => self
                .swapper
                .swap(stable, canary)
                .map_err(anyhow::Error::from),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("loading panicked: {e}")),
        };
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

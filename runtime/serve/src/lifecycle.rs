//! A served kernel's task lifecycle with its background work: recovery of what a crash cut
//! short (before the first message), the committer (audit lines, DATA commits, `data.*`
//! events) and the replay of events the broker did not confirm. Whoever serves a kernel that
//! declares `task.*` actions gets all three — there is no way to have one without the others.

use std::sync::Arc;
use std::time::Duration;

use ck_bus::Publisher;
use ck_manifest::Kernel;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{ServeError, ServeErrorKind};

/// How often events the broker did not confirm are tried again.
const REPLAY_EVERY: Duration = Duration::from_secs(1);

/// A kernel's task lifecycle and its running background tasks.
pub(crate) struct RunningLifecycle {
    pub(crate) lifecycle: Arc<ck_task::Lifecycle>,
    committer: JoinHandle<()>,
    replay: JoinHandle<()>,
    stop_replay: CancellationToken,
}

impl RunningLifecycle {
    /// Starts the lifecycle of `kernel` if it declares task actions (None otherwise), after
    /// sealing whatever this host acknowledged but had not sealed when it last stopped.
    pub(crate) async fn start(
        kernel: &Kernel,
        publisher: &Publisher,
        server: &str,
    ) -> Result<Option<Self>, ServeError> {
        if !kernel.declares_task_lifecycle() {
            return Ok(None);
        }
        let lifecycle = ck_task::Lifecycle::new(kernel, publisher.clone()).map_err(|e| {
            ServeError::with_source(
                ServeErrorKind::Lifecycle,
                format!("{}: preparing data/", kernel.dir().display()),
                e,
            )
        })?;
        let recovered = lifecycle.recover().await.map_err(|f| {
            // Only a server that would not serve JetStream earns the hint to enable it.
            let hint = match f.error.as_str() {
                "task_store_unavailable" | "event_stream_unavailable" => {
                    " (run nats-server with JetStream enabled, `-js`)"
                }
                _ => "",
            };
            ServeError::new(
                ServeErrorKind::Lifecycle,
                format!(
                    "{}: recovering its task state from {server} failed: {}{hint}",
                    kernel.name, f.message
                ),
            )
        })?;
        for sealed in &recovered.sealed {
            tracing::warn!(kernel = %kernel.name, instance_id = %sealed.instance_id, "task.recovered");
        }
        tracing::info!(kernel = %kernel.name, host_id = %lifecycle.host_id(), recovered = recovered.sealed.len(), quarantined = recovered.quarantined.len(), "task.lifecycle");
        let lifecycle = Arc::new(lifecycle);
        let committer = lifecycle.spawn_committer();
        // Events the broker could not confirm wait on disk; replay them once it can.
        let stop_replay = CancellationToken::new();
        let replay = {
            let (outbox, token) = (lifecycle.outbox(), stop_replay.clone());
            let (pending, stop) = (lifecycle.clone(), stop_replay.clone());
            tokio::spawn(async move {
                // Beside the events: sealed instances the cluster did not take yet.
                let copies = async move {
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(REPLAY_EVERY) => {}
                        }
                        pending.replicate_pending().await;
                    }
                };
                tokio::join!(outbox.replay_until(REPLAY_EVERY, token), copies);
            })
        };
        Ok(Some(Self {
            lifecycle,
            committer,
            replay,
            stop_replay,
        }))
    }

    /// Stops after the serving loop answered its last message: the committer commits and
    /// announces what is queued, then ends; the replay stops (what is queued stays on disk
    /// for the next start). Bounded by `deadline`: a committer still busy then (NATS gone,
    /// a slow disk) is abandoned — its seals are on disk and are committed at the next start.
    pub(crate) async fn stop(self, deadline: tokio::time::Instant) -> bool {
        self.lifecycle.close();
        self.stop_replay.cancel();
        let mut committer = self.committer;
        let finished = tokio::time::timeout_at(deadline, &mut committer)
            .await
            .is_ok();
        if !finished {
            committer.abort();
        }
        let mut replay = self.replay;
        if tokio::time::timeout_at(deadline, &mut replay)
            .await
            .is_err()
        {
            replay.abort();
        }
        finished
    }
}

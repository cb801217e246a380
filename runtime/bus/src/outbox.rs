//! Loop events that must not be lost: published through JetStream and confirmed by its
//! acknowledgement; while the broker cannot confirm, queued in order in
//! `data/ledger/pending_events.jsonl` (fsynced, so the queue survives a restart) and replayed
//! in order once it can. Every event carries a deterministic `Nats-Msg-Id`, so a replay of an
//! event that did arrive is dropped by the stream's deduplication.
//!
//! Above [`DEGRADED_AT`] queued events the kernel is degraded; the first replay after that
//! announces `ck.{guid}.data.nats-degraded`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use ck_manifest::topics::LoopEvent;

use crate::Publisher;
use crate::envelope::{KERNEL_ID, MSG_ID, TRACE_ID, USER_ID};

/// Queued events above which the kernel reports itself degraded (ckp-spec §3.3).
pub const DEGRADED_AT: usize = 1000;

/// How long one publish may wait for the stream's acknowledgement before it is queued.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// One loop event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopEventMessage {
    /// `ck.{guid}.{loop}.{event}`.
    pub subject: String,
    /// The deterministic `Nats-Msg-Id`.
    pub msg_id: String,
    /// `Trace-Id`.
    pub trace_id: String,
    /// `X-User-ID`.
    pub user: String,
    /// The CloudEvent body.
    pub body: Value,
}

/// Where a kernel's unconfirmed events wait.
pub fn pending_path(kernel_dir: &Path) -> PathBuf {
    ck_fs::layout::DataLayout::of_kernel(kernel_dir).pending_events()
}

struct State {
    queued: usize,
    degraded: bool,
}

/// The confirmed event path of one kernel.
pub struct Outbox {
    path: PathBuf,
    guid: String,
    kernel_urn: String,
    publisher: Publisher,
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The queue, in order (a line a crash cut short is skipped: its event was never confirmed
/// and is produced again by recovery).
fn read_queue(path: &Path) -> std::io::Result<Vec<LoopEventMessage>> {
    ck_fs::jsonl::read(path)
}

/// Replaces the queue file with `events` atomically (removed when empty).
fn rewrite_queue(path: &Path, events: &[LoopEventMessage]) -> std::io::Result<()> {
    ck_fs::jsonl::rewrite(path, events)
}

fn append_queue(path: &Path, events: &[LoopEventMessage]) -> std::io::Result<()> {
    ck_fs::jsonl::append(path, events)
}

impl Outbox {
    /// The outbox of the kernel `guid` in `kernel_dir`, publishing over `publisher`'s
    /// connection; picks up what a previous run left queued.
    pub fn open(
        kernel_dir: &Path,
        guid: &str,
        kernel_urn: &str,
        publisher: Publisher,
    ) -> std::io::Result<Self> {
        let path = pending_path(kernel_dir);
        let queued = read_queue(&path)?.len();
        Ok(Self {
            path,
            guid: guid.to_owned(),
            kernel_urn: kernel_urn.to_owned(),
            publisher,
            state: tokio::sync::Mutex::new(State {
                queued,
                degraded: queued > DEGRADED_AT,
            }),
        })
    }

    /// Events waiting for the broker.
    pub async fn queued(&self) -> usize {
        self.state.lock().await.queued
    }

    /// Whether more than [`DEGRADED_AT`] events are waiting.
    pub async fn degraded(&self) -> bool {
        self.state.lock().await.degraded
    }

    /// Sends `event`; the returned future resolves with the stream's acknowledgement.
    async fn start_publish(
        &self,
        js: &jetstream::Context,
        event: &LoopEventMessage,
    ) -> Result<jetstream::context::PublishAckFuture, String> {
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, event.msg_id.as_str());
        headers.insert(TRACE_ID, event.trace_id.as_str());
        headers.insert(KERNEL_ID, self.publisher.kernel());
        headers.insert(USER_ID, event.user.as_str());
        let payload = Bytes::from(serde_json::to_vec(&event.body).unwrap_or_default());
        js.publish_with_headers(event.subject.clone(), headers, payload)
            .await
            .map_err(|e| e.to_string())
    }

    async fn confirmed(ack: jetstream::context::PublishAckFuture) -> Result<(), String> {
        match tokio::time::timeout(ACK_TIMEOUT, ack).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no acknowledgement within {ACK_TIMEOUT:?}")),
        }
    }

    async fn publish(
        &self,
        js: &jetstream::Context,
        event: &LoopEventMessage,
    ) -> Result<(), String> {
        Self::confirmed(self.start_publish(js, event).await?).await
    }

    fn context(&self) -> jetstream::Context {
        let mut js = jetstream::new(self.publisher.client());
        js.set_timeout(ACK_TIMEOUT);
        js
    }

    /// Sends `events` in order behind anything already queued; what the broker does not
    /// confirm is queued on disk. Returns how many were confirmed now.
    ///
    /// With nothing queued, the events are pipelined (all sent, then all acknowledgements
    /// awaited) without holding the queue: concurrent seals do not wait for each other. If one
    /// is not confirmed, it and those after it are queued; any of them that did arrive is
    /// dropped on replay by the stream's deduplication.
    pub async fn send(&self, events: Vec<LoopEventMessage>) -> std::io::Result<usize> {
        {
            let mut state = self.state.lock().await;
            if state.queued > 0 {
                // Order: nothing new goes out before what waits.
                self.replay_locked(&mut state).await?;
                if state.queued > 0 {
                    self.enqueue_locked(&mut state, &events)?;
                    return Ok(0);
                }
            }
        }
        let js = self.context();
        let mut acks = Vec::with_capacity(events.len());
        let mut failed = None;
        for (i, event) in events.iter().enumerate() {
            match self.start_publish(&js, event).await {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        for (i, ack) in acks.into_iter().enumerate() {
            if let Err(e) = Self::confirmed(ack).await {
                failed = Some((i, e));
                break;
            }
        }
        let Some((i, e)) = failed else {
            return Ok(events.len());
        };
        tracing::warn!(subject = %events[i].subject, msg_id = %events[i].msg_id, error = %e, "event.queued");
        let mut state = self.state.lock().await;
        self.enqueue_locked(&mut state, &events[i..])?;
        Ok(i)
    }

    fn enqueue_locked(
        &self,
        state: &mut State,
        events: &[LoopEventMessage],
    ) -> std::io::Result<()> {
        append_queue(&self.path, events)?;
        state.queued += events.len();
        if state.queued > DEGRADED_AT && !state.degraded {
            state.degraded = true;
            tracing::error!(queued = state.queued, path = %self.path.display(), "kernel.degraded: NATS cannot confirm events; queueing on disk");
        }
        Ok(())
    }

    /// Replays the queue in order, stopping at the first event the broker does not confirm.
    /// Returns how many were confirmed.
    pub async fn replay(&self) -> std::io::Result<usize> {
        let mut state = self.state.lock().await;
        self.replay_locked(&mut state).await
    }

    async fn replay_locked(&self, state: &mut State) -> std::io::Result<usize> {
        if state.queued == 0 {
            return Ok(0);
        }
        let queue = read_queue(&self.path)?;
        let js = self.context();
        let mut sent = 0;
        for event in &queue {
            if self.publish(&js, event).await.is_err() {
                break;
            }
            sent += 1;
        }
        if sent == 0 {
            return Ok(0);
        }
        rewrite_queue(&self.path, &queue[sent..])?;
        state.queued = queue.len() - sent;
        tracing::info!(
            replayed = sent,
            still_queued = state.queued,
            "event.replayed"
        );
        if state.queued == 0 && state.degraded {
            state.degraded = false;
            let at = ck_events::now();
            let degraded = ck_events::LoopCloudEvent {
                guid: &self.guid,
                source: &self.kernel_urn,
                event: LoopEvent::DataNatsDegraded,
                key: &at,
                about: None,
                time: &at,
                data: serde_json::json!({"event": LoopEvent::DataNatsDegraded.to_string(), "guid": self.guid, "replayed": sent, "timestamp": at}),
            };
            match degraded.body() {
                Ok(body) => {
                    let event = LoopEventMessage {
                        subject: degraded.nats_subject(),
                        msg_id: degraded.id(),
                        trace_id: "nats-degraded".into(),
                        user: "ck host".into(),
                        body,
                    };
                    if self.publish(&js, &event).await.is_err() {
                        self.enqueue_locked(state, std::slice::from_ref(&event))?;
                    }
                }
                Err(e) => tracing::error!(error = %e, "event.unformable"),
            }
        }
        Ok(sent)
    }

    /// Replays the queue every `every` until `shutdown` (the reconnect path: the client
    /// reconnects by itself, the next tick finds the broker confirming again).
    pub async fn replay_until(
        &self,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if self.state.lock().await.queued > 0
                && let Err(e) = self.replay().await
            {
                tracing::error!(path = %self.path.display(), error = %e, "event.replay-failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn event(n: u32) -> LoopEventMessage {
        LoopEventMessage {
            subject: format!("ck.g.data.e{n}"),
            msg_id: format!("g:{n}"),
            trace_id: "tx-1".into(),
            user: "anonymous".into(),
            body: Value::Null,
        }
    }

    #[test]
    fn an_append_after_a_torn_line_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pending.jsonl");
        append_queue(&path, &[event(1), event(2)]).unwrap();
        // A crash cut the next append short.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"subject\":\"ck.g.da")
            .unwrap();
        append_queue(&path, &[event(3)]).unwrap();
        let ids: Vec<String> = read_queue(&path)
            .unwrap()
            .into_iter()
            .map(|e| e.msg_id)
            .collect();
        assert_eq!(ids, ["g:1", "g:2", "g:3"]);
    }
}

//! CK and TOOL loop events through JetStream: one stream for every kernel's version history,
//! deduplicated by `Nats-Msg-Id`, so several hosts (or an operator and a host) announcing the
//! same commit or promotion store it once.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use ck_events::LoopCloudEvent;
use ck_loops::journal::Journal;
use ck_manifest::topics::{self, LoopEvent};

use crate::{ControlError, PlaneConfig};

/// How long the loop event stream remembers message ids: hosts publishing their journals after
/// an outage shorter than this add no duplicates.
pub const LOOP_EVENT_DEDUP_WINDOW: Duration = Duration::from_secs(60 * 60);

/// The loop event stream's configuration (`topics::loop_event_stream_subjects`).
pub fn loop_event_stream_config(config: &PlaneConfig) -> stream::Config {
    stream::Config {
        name: topics::LOOP_EVENT_STREAM.into(),
        description: Some("ck CK and TOOL loop events of every kernel".into()),
        subjects: topics::loop_event_stream_subjects(),
        storage: stream::StorageType::File,
        duplicate_window: LOOP_EVENT_DEDUP_WINDOW,
        num_replicas: config.replicas,
        ..Default::default()
    }
}

/// Publishes one loop event (its `Nats-Msg-Id` in `headers`) and waits for the stream to take
/// it. Returns whether the stream had it already (another host or the operator sent it).
pub async fn publish_loop_event(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<bool, ControlError> {
    let what = format!("publishing the loop event on {subject}");
    let ack = js
        .publish_with_headers(subject, headers, body)
        .await
        .map_err(|e| ControlError::Nats {
            what: what.clone(),
            why: e.to_string(),
        })?
        .await
        .map_err(|e| ControlError::Nats {
            what,
            why: e.to_string(),
        })?;
    Ok(ack.duplicate)
}

/// How long publishing a journal may wait for the server to take the events (it may be gone;
/// the cursor then stays and the next attempt sends them again).
const FLUSH_BOUND: Duration = Duration::from_secs(2);

fn failed(subject: &str, why: String) -> ControlError {
    ControlError::Nats {
        what: format!("publishing {subject}"),
        why,
    }
}

/// Publishes a kernel's journal (`.ck/events.jsonl`, written by whoever changed its CK or TOOL
/// loop) as CloudEvents with their deterministic `Nats-Msg-Id`s through JetStream, and moves
/// its cursor once the server confirmed them: where [`crate::loop_event_stream_config`]'s
/// stream captures them, each is stored once however many hosts (or operators) publish it;
/// without such a stream (one server, no control plane) they still reach every subscriber.
/// `headers` gives each entry's headers (by its sequence number). Returns how many were
/// published.
pub async fn publish_journal(
    js: &jetstream::Context,
    journal: &Journal,
    guid: &str,
    urn: &str,
    headers: impl Fn(u64) -> HeaderMap,
) -> Result<usize, ControlError> {
    let entries = journal
        .unpublished()
        .map_err(|e| ControlError::Refused(format!("{}: {e}", journal.path().display())))?;
    let Some(last) = entries.last().map(|e| e.seq) else {
        return Ok(0);
    };
    let mut acks = Vec::with_capacity(entries.len());
    for entry in &entries {
        let event = LoopCloudEvent {
            guid,
            source: urn,
            event: entry
                .event
                .parse::<LoopEvent>()
                .map_err(|e| ControlError::Refused(format!("journal entry {}: {e}", entry.seq)))?,
            key: entry
                .msg_id
                .strip_prefix(&format!("{guid}:{}:", entry.event))
                .ok_or_else(|| {
                    ControlError::Refused(format!(
                        "journal entry {}: id {} is not of this kernel's {}",
                        entry.seq, entry.msg_id, entry.event
                    ))
                })?,
            about: None,
            time: &entry.time,
            data: {
                let mut data = entry.data.clone();
                data["timestamp"] = serde_json::json!(entry.time);
                data
            },
        };
        let mut headers = headers(entry.seq);
        headers.insert(ck_bus::envelope::MSG_ID, event.id().as_str());
        let ack = js
            .publish_with_headers(
                event.nats_subject(),
                headers,
                event
                    .body()
                    .map_err(|e| {
                        ControlError::Refused(format!("journal entry {}: {e}", entry.seq))
                    })?
                    .to_string()
                    .into(),
            )
            .await
            .map_err(|e| failed(&entry.subject, e.to_string()))?;
        acks.push((entry, ack));
    }
    let confirmed = async {
        let mut duplicates = 0usize;
        for (entry, ack) in acks {
            match ack.await {
                Ok(ack) => duplicates += usize::from(ack.duplicate),
                // No stream keeps this subject: published to subscribers, stored nowhere.
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::context::PublishErrorKind::StreamNotFound => {}
                Err(e) => return Err(failed(&entry.subject, e.to_string())),
            }
        }
        Ok(duplicates)
    };
    let duplicates = match tokio::time::timeout(FLUSH_BOUND, confirmed).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(ControlError::Nats {
                what: "publishing loop events".into(),
                why: format!("the server did not confirm them within {FLUSH_BOUND:?}"),
            });
        }
    };
    if duplicates > 0 {
        tracing::debug!(duplicates, "loop.events-deduplicated");
    }
    journal
        .mark_published(last)
        .map_err(|e| ControlError::Refused(format!("{}: {e}", journal.path().display())))?;
    for entry in &entries {
        tracing::info!(event = %entry.event, subject = %entry.subject, seq = entry.seq, "loop.event");
    }
    Ok(entries.len())
}

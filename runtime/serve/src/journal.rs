//! Publishing a kernel's loop event journal (`.ck/events.jsonl`, written by whoever changed
//! its CK or TOOL loop) on its connection, as CloudEvents with their deterministic
//! `Nats-Msg-Id`s.

use std::time::Duration;

use anyhow::anyhow;
use ck_bus::{LoopCloudEvent, Publisher};
use ck_loops::journal::Journal;
use ck_manifest::topics::LoopEvent;

/// How long publishing the journal may wait for the server to take the events (it may be
/// gone; the cursor then stays and the next attempt sends them again).
const FLUSH_BOUND: Duration = Duration::from_secs(2);

/// Publishes the journal's unpublished loop events as CloudEvents on the kernel's connection
/// and moves the cursor once the server has them. Returns how many were published.
pub async fn publish_journal(
    journal: &Journal,
    publisher: &Publisher,
    guid: &str,
    urn: &str,
) -> anyhow::Result<usize> {
    let entries = journal.unpublished()?;
    let Some(last) = entries.last().map(|e| e.seq) else {
        return Ok(0);
    };
    let client = publisher.client();
    for entry in &entries {
        let event = LoopCloudEvent {
            guid,
            source: urn,
            event: entry.event.parse::<LoopEvent>()?,
            key: entry
                .msg_id
                .strip_prefix(&format!("{guid}:{}:", entry.event))
                .ok_or_else(|| {
                    anyhow!(
                        "journal entry {}: id {} is not of this kernel's {}",
                        entry.seq,
                        entry.msg_id,
                        entry.event
                    )
                })?,
            about: None,
            time: &entry.time,
            data: {
                let mut data = entry.data.clone();
                data["timestamp"] = serde_json::json!(entry.time);
                data
            },
        };
        let mut headers = publisher.headers(&format!("loop-{}", entry.seq), "ck host");
        headers.insert(ck_bus::envelope::MSG_ID, event.id().as_str());
        client
            .publish_with_headers(
                event.nats_subject(),
                headers,
                event.body().to_string().into(),
            )
            .await
            .map_err(|e| anyhow!("publishing {}: {e}", entry.subject))?;
    }
    match tokio::time::timeout(FLUSH_BOUND, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(anyhow!("flushing loop events: {e}")),
        Err(_) => {
            return Err(anyhow!(
                "flushing loop events: the server did not take them within {FLUSH_BOUND:?}"
            ));
        }
    }
    journal.mark_published(last)?;
    for entry in &entries {
        tracing::info!(event = %entry.event, subject = %entry.subject, seq = entry.seq, "loop.event");
    }
    Ok(entries.len())
}

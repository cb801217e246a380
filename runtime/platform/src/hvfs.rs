//! The HVFS lane: the CK, TOOL and DATA loops' commits and ref moves projected onto
//! `platform.hvfs.{commit|ref}.v1.{loop}.{guid}` (`ck_manifest::topics::hvfs_subject`), so the
//! source-control substrate's consumers see them without knowing kernel subjects.
//!
//! The projector reads the loop event streams through durable consumers (`ck-hvfs` on
//! `CK_LOOP_EVENTS` and on each kernel's DATA stream `ck_data_{guid}`) and acknowledges a loop
//! event only once its projection is stored, whose id (`hvfs:{loop event id}`) is its
//! `Nats-Msg-Id`: killed at any point, it resumes where it left off and a projection sent twice
//! is stored once.

use std::time::Duration;

use async_nats::jetstream::consumer;
use ck_events::AttributesReader;
use ck_manifest::topics::{self, HvfsKind};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::{Platform, PlatformError, PlatformEvent};

/// The durable consumer name the projector uses on every stream it reads.
pub const PROJECTOR: &str = "ck-hvfs";

/// A loop event's projection.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// `platform.hvfs.…`.
    pub subject: String,
    /// `hvfs:{loop event id}`.
    pub id: String,
    /// `ck.platform.hvfs.commit` or `ck.platform.hvfs.ref`.
    pub ty: String,
    /// The loop event's source (the kernel's URN).
    pub source: String,
    /// The loop event's time.
    pub time: String,
    /// The loop event's `subject` attribute.
    pub about: Option<String>,
    /// `{loop, event, guid, loop_event_id, loop_event}`: the loop event's data.
    pub data: Value,
}

/// The projection of the loop event `payload` published on `subject`: `Ok(None)` when it is
/// no commit or ref move (per-call events, bookkeeping), an error when it should be one but
/// its payload is no CloudEvent.
pub fn project(subject: &str, payload: &[u8]) -> Result<Option<Projection>, String> {
    let Some((guid, event)) = topics::parse_loop_event_subject(subject) else {
        return Ok(None);
    };
    let Some(kind) = HvfsKind::of(event) else {
        return Ok(None);
    };
    let loop_event: ck_events::Event = serde_json::from_slice(payload)
        .map_err(|e| format!("{subject}: the loop event is no CloudEvent: {e}"))?;
    let data = ck_events::json_data(&loop_event).unwrap_or(Value::Null);
    Ok(Some(Projection {
        subject: topics::hvfs_subject(kind, event.loop_(), guid),
        id: format!("hvfs:{}", loop_event.id()),
        ty: format!("ck.platform.hvfs.{}", kind.as_str()),
        source: loop_event.source().to_string(),
        time: loop_event
            .time()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_else(ck_events::now),
        about: loop_event.subject().map(str::to_owned),
        data: json!({
            "loop": event.loop_().as_str(),
            "event": event.to_string(),
            "guid": guid,
            "loop_event_id": loop_event.id(),
            "loop_event": data,
        }),
    }))
}

/// What one projector pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Projected {
    /// Projections stored.
    pub stored: u64,
    /// Projections the stream had already (a resumed run).
    pub duplicates: u64,
    /// Loop events that project to nothing.
    pub skipped: u64,
    /// Loop events that should project but cannot (unreadable, or a projection refused):
    /// logged as `hvfs.unprojectable` and terminated, so they cannot stop the lane.
    pub refused: u64,
}

/// Projects every loop event of `CK_LOOP_EVENTS` and of the DATA streams present when it
/// starts until `stop` resolves. A projection the server could not store (a transient
/// failure) is not acknowledged and ends the run with the error: the loop event comes again
/// on the next. A loop event that can never be projected is logged and terminated.
pub async fn run_projector(
    platform: &Platform<'_>,
    stop: impl std::future::Future<Output = ()>,
    mut progress: impl FnMut(&Projected),
) -> Result<Projected, PlatformError> {
    let js = platform.js.clone();
    let mut sources = vec![topics::LOOP_EVENT_STREAM.to_owned()];
    let mut names = js.stream_names();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| crate::nats("listing streams", e))?;
        if name.starts_with(topics::DATA_EVENT_STREAM_PREFIX) {
            sources.push(name);
        }
    }
    let mut feeds = Vec::new();
    for name in &sources {
        let what = format!("opening the projector's consumer on {name}");
        let stream = match js.get_stream(name).await {
            Ok(stream) => stream,
            Err(e) if crate::stream_not_found(&e) => {
                // No loop events yet (no `ck publish` on this cluster): nothing to read there.
                tracing::info!(stream = %name, "hvfs.no-stream");
                continue;
            }
            Err(e) => return Err(crate::nats(&what, e)),
        };
        let config = consumer::pull::Config {
            durable_name: Some(PROJECTOR.to_owned()),
            description: Some("ck HVFS projector".to_owned()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        };
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(PROJECTOR, config)
            .await
            .map_err(|e| crate::nats(&what, e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| crate::nats(&what, e))?;
        feeds.push(messages.boxed());
    }
    let mut done = Projected::default();
    tokio::pin!(stop);
    if feeds.is_empty() {
        tracing::warn!("hvfs.no-sources");
        stop.await;
        return Ok(done);
    }
    let mut all = futures::stream::select_all(feeds);
    loop {
        let message = tokio::select! {
            _ = &mut stop => return Ok(done),
            next = all.next() => match next {
                Some(Ok(message)) => message,
                // A missed heartbeat or a reconnect: the consumer's stream goes on.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "hvfs.read-error");
                    continue;
                }
                None => {
                    stop.await;
                    return Ok(done);
                }
            },
        };
        let projection = match project(message.subject.as_str(), &message.payload) {
            Ok(None) => {
                done.skipped += 1;
                None
            }
            Ok(Some(p)) => Some(p),
            Err(why) => {
                tracing::warn!(subject = %message.subject, why, "hvfs.unprojectable");
                done.refused += 1;
                terminate(&message).await?;
                progress(&done);
                continue;
            }
        };
        if let Some(p) = projection {
            let published = platform
                .publish(&PlatformEvent {
                    subject: &p.subject,
                    ty: &p.ty,
                    source: &p.source,
                    about: p.about.as_deref(),
                    id: Some(&p.id),
                    time: Some(&p.time),
                    data: p.data.clone(),
                })
                .await;
            match published {
                Ok(stored) if stored.duplicate => done.duplicates += 1,
                Ok(_) => done.stored += 1,
                // The projection itself is refused (a bad id, an event the SDK cannot form):
                // it never will be stored, so it must not stop the lane.
                Err(
                    e @ (PlatformError::BadId(_)
                    | PlatformError::Event(_)
                    | PlatformError::Outside(_)),
                ) => {
                    tracing::warn!(subject = %message.subject, error = %e, "hvfs.unprojectable");
                    done.refused += 1;
                    terminate(&message).await?;
                    progress(&done);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        message
            .ack()
            .await
            .map_err(|e| crate::nats("acknowledging a loop event", e))?;
        progress(&done);
    }
}

async fn terminate(message: &async_nats::jetstream::Message) -> Result<(), PlatformError> {
    message
        .ack_with(async_nats::jetstream::AckKind::Term)
        .await
        .map_err(|e| crate::nats("terminating a loop event", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loop_event(subject_event: ck_manifest::topics::LoopEvent, key: &str) -> Vec<u8> {
        ck_events::LoopCloudEvent {
            guid: "g-1",
            source: "ckp://Kernel#Demo.X:v1",
            event: subject_event,
            key,
            about: None,
            time: "2026-12-01T00:00:00.000000Z",
            data: json!({"commit": "abc"}),
        }
        .body()
        .unwrap()
        .to_string()
        .into_bytes()
    }

    #[test]
    fn commits_and_ref_moves_are_projected_and_nothing_else() {
        use ck_manifest::topics::LoopEvent;
        let p = project("ck.g-1.ck.commit", &loop_event(LoopEvent::CkCommit, "abc"))
            .unwrap()
            .unwrap();
        assert_eq!(p.subject, "platform.hvfs.commit.v1.ck.g-1");
        assert_eq!(p.id, "hvfs:g-1:ck.commit:abc");
        assert_eq!(p.ty, "ck.platform.hvfs.commit");
        assert_eq!(p.data["loop_event"]["commit"], "abc");
        assert_eq!(p.time, "2026-12-01T00:00:00.000000Z");
        let r = project(
            "ck.g-1.tool.promote",
            &loop_event(LoopEvent::ToolPromote, "rev2"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.subject, "platform.hvfs.ref.v1.tool.g-1");
        assert_eq!(
            project(
                "ck.g-1.tool.invoked",
                &loop_event(LoopEvent::ToolInvoked, "c1")
            ),
            Ok(None)
        );
        assert!(project("ck.g-1.ck.commit", b"not json").is_err());
    }
}

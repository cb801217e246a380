//! The one CloudEvents builder: every event the runtime emits (`ck.{guid}.{loop}.{event}`) is
//! a CloudEvent 1.0 in structured JSON mode with the same attributes, formed here — its `id`
//! (also its `Nats-Msg-Id`) from [`ck_manifest::topics::loop_event_id`], its subject from
//! [`ck_manifest::topics::loop_event_subject`], `source` the kernel's URN, `type`
//! `ck.{loop}.{event}`, `time` in RFC 3339 with microseconds. The TOOL loop's per-call
//! events, on the hot path, are encoded byte by byte by `ck-host` to the same shape (a test
//! there compares both).

use ck_manifest::topics::{LoopEvent, loop_event_id, loop_event_subject};
use serde_json::{Value, json};

/// One loop event of one kernel.
#[derive(Debug, Clone)]
pub struct LoopCloudEvent<'a> {
    /// The kernel's GUID.
    pub guid: &'a str,
    /// The kernel's URN (the CloudEvent `source`).
    pub source: &'a str,
    /// Which event.
    pub event: LoopEvent,
    /// What makes this occurrence unique among the kernel's events of this kind (an instance,
    /// a commit, a revision, a call): the last part of its id.
    pub key: &'a str,
    /// The CloudEvent `subject` attribute (what the event is about, e.g. an instance id).
    pub about: Option<&'a str>,
    /// When it happened (RFC 3339).
    pub time: &'a str,
    /// The event's data.
    pub data: Value,
}

impl LoopCloudEvent<'_> {
    /// The CloudEvent `id`, also sent as `Nats-Msg-Id` so a stream drops a replay.
    pub fn id(&self) -> String {
        loop_event_id(self.guid, self.event, self.key)
    }

    /// The NATS subject it is published on.
    pub fn nats_subject(&self) -> String {
        loop_event_subject(self.guid, self.event)
    }

    /// The CloudEvent `type`.
    pub fn event_type(&self) -> String {
        format!("ck.{}", self.event)
    }

    /// The structured-mode JSON body.
    pub fn body(&self) -> Value {
        structured(
            &self.id(),
            self.source,
            &self.event_type(),
            self.about,
            self.time,
            &self.data,
        )
    }
}

/// A CloudEvent 1.0 in structured JSON mode: the one shape of every event `ck` emits (loop
/// events here, the fleet's host events in `ck-control`).
pub fn structured(
    id: &str,
    source: &str,
    event_type: &str,
    subject: Option<&str>,
    time: &str,
    data: &Value,
) -> Value {
    let mut body = json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": event_type,
        "time": time,
        "datacontenttype": "application/json",
        "data": data,
    });
    if let (Some(subject), Some(map)) = (subject, body.as_object_mut()) {
        map.insert("subject".into(), subject.into());
    }
    body
}

/// Now, as a CloudEvent `time` (RFC 3339 UTC, microseconds).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_event_has_every_required_attribute_and_its_id_is_its_message_id() {
        let event = LoopCloudEvent {
            guid: "g-1",
            source: "ckp://Kernel#Demo.X:v1",
            event: LoopEvent::DataWritten,
            key: "i-1",
            about: Some("i-1"),
            time: "2026-12-01T00:00:00.000000Z",
            data: json!({"instance_id": "i-1"}),
        };
        let body = event.body();
        for attribute in ["specversion", "id", "source", "type", "time"] {
            assert!(body.get(attribute).is_some(), "{attribute}");
        }
        assert_eq!(body["id"], "g-1:data.written:i-1");
        assert_eq!(body["type"], "ck.data.written");
        assert_eq!(body["subject"], "i-1");
        assert_eq!(event.nats_subject(), "ck.g-1.data.written");
    }
}

//! The one CloudEvents builder: every event the runtime emits — loop events
//! (`ck.{guid}.{loop}.{event}`), the fleet's host events, install progress and done, build
//! done, delivery results — is a CloudEvent 1.0 formed here with the `cloudevents-sdk`
//! crate's [`Event`] type and sent in structured JSON mode, the mode of the released
//! CloudEvents NATS binding (v1.0.2, structured only; binary mode with `ce-` headers is only
//! in the unreleased 1.0.3 draft). Consumers therefore read one self-describing JSON document
//! per message, and a JetStream message's `Nats-Msg-Id` is the event's `id`.
//!
//! Every event has `id` (deterministic: a replay has the same id, so streams and sinks drop
//! it), `source` (the emitter's SPIFFE ID or URN), `type` (`ck.…`), `time`,
//! `datacontenttype` (`application/json`), and `subject` where it is about something (an
//! instance, a request). Extension attribute names are checked to be CloudEvents names
//! (1–20 lowercase letters or digits).
//!
//! This crate forms events; it publishes nothing (that is the caller's, with its own
//! connection) and reads no clock but [`now`].

use ck_manifest::topics::{LoopEvent, loop_event_id, loop_event_subject};
pub use cloudevents::{AttributesReader, Event};
use cloudevents::{EventBuilder, EventBuilderV10};
use serde_json::Value;

/// The content type of every event's data.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// The NATS header (and HTTP `Content-Type`) of a structured-mode event.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Why an event could not be formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The SDK refused an attribute (an empty source, a time that is not RFC 3339, …).
    #[error("a CloudEvent of type `{ty}` cannot be formed: {why}")]
    Attribute {
        /// The event's type.
        ty: String,
        /// What the SDK said.
        why: String,
    },
    /// An extension attribute name that CloudEvents does not allow.
    #[error(
        "`{0}` is not a CloudEvents extension attribute name (1–20 lowercase letters or digits)"
    )]
    ExtensionName(String),
}

/// What an event says, before it is formed.
#[derive(Debug, Clone)]
pub struct EventSpec<'a> {
    /// The `id`: unique per `source`, the same for a replay of one occurrence.
    pub id: &'a str,
    /// The `source`: the emitter's SPIFFE ID or URN.
    pub source: &'a str,
    /// The `type` (`ck.data.written`, `ck.fleet.install.done`, …).
    pub ty: &'a str,
    /// The `subject` attribute: what the event is about, if anything.
    pub subject: Option<&'a str>,
    /// When it happened (RFC 3339).
    pub time: &'a str,
    /// Its data.
    pub data: Value,
    /// Extension attributes (names checked by [`valid_extension_name`]).
    pub extensions: Vec<(&'a str, String)>,
}

impl EventSpec<'_> {
    /// Forms the event.
    pub fn build(&self) -> Result<Event, EventError> {
        let mut builder = EventBuilderV10::new()
            .id(self.id)
            .source(self.source)
            .ty(self.ty)
            .time(self.time)
            .data(DATA_CONTENT_TYPE, self.data.clone());
        if let Some(subject) = self.subject {
            builder = builder.subject(subject);
        }
        for (name, value) in &self.extensions {
            if !valid_extension_name(name) {
                return Err(EventError::ExtensionName((*name).to_owned()));
            }
            builder = builder.extension(name, value.as_str());
        }
        builder.build().map_err(|e| EventError::Attribute {
            ty: self.ty.to_owned(),
            why: e.to_string(),
        })
    }

    /// The structured-mode JSON document.
    pub fn structured(&self) -> Result<Value, EventError> {
        self.build().map(|event| to_json(&event))
    }
}

/// An event as its structured-mode JSON document.
pub fn to_json(event: &Event) -> Value {
    // The SDK's own serialisation (what its NATS binding sends); it cannot fail for an event
    // whose data is JSON.
    serde_json::to_value(event).unwrap_or(Value::Null)
}

/// A structured-mode CloudEvent with no extensions: `id`, `source`, `type`, optional
/// `subject`, `time`, JSON `data`.
pub fn structured(
    id: &str,
    source: &str,
    ty: &str,
    subject: Option<&str>,
    time: &str,
    data: &Value,
) -> Result<Value, EventError> {
    EventSpec {
        id,
        source,
        ty,
        subject,
        time,
        data: data.clone(),
        extensions: Vec::new(),
    }
    .structured()
}

/// The last part of an event id derived from its data: the first 16 hex digits of the blake3
/// of the data's JSON — the same data gives the same id (a re-sent report is stored once), two
/// different data never share one in practice.
pub fn content_key(data: &Value) -> String {
    blake3::hash(data.to_string().as_bytes()).to_hex()[..16].to_owned()
}

/// Whether `event`'s type starts with `prefix`.
pub fn has_type_prefix(event: &Event, prefix: &str) -> bool {
    event.ty().starts_with(prefix)
}

/// An event's data, if it is JSON (`datacontenttype` `application/json`).
pub fn json_data(event: &Event) -> Option<Value> {
    if event.datacontenttype() != Some(DATA_CONTENT_TYPE) {
        return None;
    }
    match event.data()? {
        cloudevents::Data::Json(value) => Some(value.clone()),
        _ => None,
    }
}

/// Whether `name` can be a CloudEvents extension attribute: 1–20 lowercase ASCII letters or
/// digits (CloudEvents 1.0 §3.1.1; the Python SDK refuses anything else).
pub fn valid_extension_name(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Now, as a CloudEvent `time` (RFC 3339 UTC, microseconds).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// One loop event of one kernel (`ck.{guid}.{loop}.{event}`).
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

    /// The structured-mode JSON document.
    pub fn body(&self) -> Result<Value, EventError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let body = event.body().unwrap();
        for attribute in [
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "datacontenttype",
        ] {
            assert!(body.get(attribute).is_some(), "{attribute}: {body}");
        }
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["id"], "g-1:data.written:i-1");
        assert_eq!(body["type"], "ck.data.written");
        assert_eq!(body["subject"], "i-1");
        assert_eq!(body["data"]["instance_id"], "i-1");
        assert_eq!(event.nats_subject(), "ck.g-1.data.written");
    }

    #[test]
    fn what_the_sdk_refuses_is_a_typed_error_and_extension_names_are_checked() {
        let spec = |time: &'static str, source: &'static str| EventSpec {
            id: "1",
            source,
            ty: "ck.test",
            subject: None,
            time,
            data: json!({}),
            extensions: Vec::new(),
        };
        assert!(matches!(
            spec("yesterday", "urn:x").build(),
            Err(EventError::Attribute { .. })
        ));
        assert!(matches!(
            spec("2026-12-01T00:00:00Z", "").build(),
            Err(EventError::Attribute { .. })
        ));
        let mut with = spec("2026-12-01T00:00:00Z", "urn:x");
        with.extensions = vec![("attempt", "2".into())];
        assert_eq!(with.structured().unwrap()["attempt"], "2");
        for bad in ["Attempt", "delivery_attempt", "", "averyveryverylongname1"] {
            with.extensions = vec![(bad, "2".into())];
            assert_eq!(
                with.build().unwrap_err(),
                EventError::ExtensionName(bad.into())
            );
        }
    }
}

//! The TOOL loop's per-call events: `ck.{guid}.tool.invoked` before the guest runs,
//! `tool.completed` or `tool.failed` (with its duration, and the error) after — CloudEvents
//! like every loop event. They are on the hot path of every call, so the parts that never
//! change (subjects, source, kernel, version) are encoded once and each event only appends its
//! own fields — to the shape `ck_events` (the one CloudEvents builder) gives every loop event (a test checks that
//! both agree), with its id `{guid}:tool.{event}:{started}:{call}` (`topics::loop_event_id`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use ck_bus::Failure;
use ck_manifest::Kernel;
use ck_manifest::topics::{LoopEvent, loop_event_id, loop_event_subject};

use crate::label::VersionLabel;

/// What happened to one call, for its event.
pub enum Outcome<'a> {
    /// About to run.
    Invoked,
    /// Finished after this long, with this failure if it failed.
    Finished(Duration, Option<&'a Failure>),
}

/// Encodes and names the TOOL events of one served version of a kernel.
pub struct ToolEvents {
    invoked: Subject,
    completed: Subject,
    failed: Subject,
    /// `{"specversion":…,"source":…,"data":{"kernel":…,"guid":…,…` — everything fixed.
    prefix: String,
    /// `{guid}:tool.{event}:{started}:` per event (invoked, completed, failed) — with the call
    /// number, a unique CloudEvent id.
    id_prefixes: [String; 3],
    sequence: AtomicU64,
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str as JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

impl ToolEvents {
    /// The events of `kernel` served as `version`.
    pub fn new(kernel: &Kernel, version: Option<&VersionLabel>) -> Self {
        let subject = |e| Subject::from(loop_event_subject(&kernel.guid, e));
        let mut prefix = Vec::with_capacity(512);
        prefix.extend_from_slice(
            br#"{"specversion":"1.0","datacontenttype":"application/json","source":"#,
        );
        json_str(&mut prefix, &kernel.urn);
        prefix.extend_from_slice(br#","data":{"kernel":"#);
        json_str(&mut prefix, &kernel.name);
        prefix.extend_from_slice(br#","guid":"#);
        json_str(&mut prefix, &kernel.guid);
        if let Some(v) = version {
            prefix.extend_from_slice(br#","version":"#);
            json_str(&mut prefix, &v.name);
            prefix.extend_from_slice(br#","tool_commit":"#);
            json_str(&mut prefix, &v.tool);
            prefix.extend_from_slice(br#","ck_commit":"#);
            json_str(&mut prefix, &v.ck);
        }
        Self {
            invoked: subject(LoopEvent::ToolInvoked),
            completed: subject(LoopEvent::ToolCompleted),
            failed: subject(LoopEvent::ToolFailed),
            prefix: String::from_utf8(prefix).unwrap_or_default(),
            id_prefixes: {
                // The host's start: call numbers restart with every served version.
                let started = format!("{}:", chrono::Utc::now().timestamp_micros());
                [
                    LoopEvent::ToolInvoked,
                    LoopEvent::ToolCompleted,
                    LoopEvent::ToolFailed,
                ]
                .map(|e| loop_event_id(&kernel.guid, e, &started))
            },
            sequence: AtomicU64::new(0),
        }
    }

    /// A number for a new call.
    pub fn next_call(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// The subject and CloudEvent of call `call`'s `outcome`.
    pub fn encode(
        &self,
        action: &str,
        trace_id: &str,
        call: u64,
        outcome: Outcome<'_>,
    ) -> (Subject, Bytes) {
        let (subject, name, id_prefix) = match outcome {
            Outcome::Invoked => (&self.invoked, "tool.invoked", &self.id_prefixes[0]),
            Outcome::Finished(_, None) => (&self.completed, "tool.completed", &self.id_prefixes[1]),
            Outcome::Finished(_, Some(_)) => (&self.failed, "tool.failed", &self.id_prefixes[2]),
        };
        use std::io::Write as _;
        let mut out = Vec::with_capacity(self.prefix.len() + 320);
        out.extend_from_slice(self.prefix.as_bytes());
        // Writes into a Vec cannot fail; no intermediate strings on this path.
        let _ = write!(out, r#","event":"{name}","action":"#);
        json_str(&mut out, action);
        out.extend_from_slice(br#","trace_id":"#);
        json_str(&mut out, trace_id);
        let _ = write!(out, r#","call":{call},"timestamp":""#);
        let time_from = out.len();
        ck_bus::clock::write_now(&mut out, ck_bus::clock::Precision::Micros);
        let time = time_from..out.len();
        out.push(b'"');
        if let Outcome::Finished(duration, failure) = outcome {
            let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
            let _ = write!(out, r#","duration_us":{us}"#);
            if let Some(f) = failure {
                let _ = write!(out, r#","code":{},"error":"#, f.code);
                json_str(&mut out, &f.error);
                out.extend_from_slice(br#","message":"#);
                json_str(&mut out, &f.message);
            }
        }
        let _ = write!(
            out,
            r#"}},"id":"{id_prefix}{call}","type":"ck.{name}","time":""#
        );
        out.extend_from_within(time);
        out.extend_from_slice(b"\"}");
        (subject.clone(), Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Kernel {
        let text = "apiVersion: conceptkernel/v3\nkernel_class: Demo.Q\nkernel_id: 0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d\n";
        ck_manifest::parse_str(
            text,
            std::path::Path::new("k/conceptkernel.yaml"),
            &Default::default(),
        )
        .kernel
        .expect("a valid manifest")
    }

    #[test]
    fn events_are_valid_cloudevents() {
        let kernel = kernel();
        let version = VersionLabel {
            name: "canary".into(),
            ck: "c".repeat(40),
            tool: "t".repeat(40),
        };
        let events = ToolEvents::new(&kernel, Some(&version));
        let failure = Failure::new(504, "deadline_exceeded", "too \"slow\"\n");
        for (outcome, kind) in [
            (Outcome::Invoked, "invoked"),
            (
                Outcome::Finished(Duration::from_micros(42), None),
                "completed",
            ),
            (
                Outcome::Finished(Duration::from_micros(7), Some(&failure)),
                "failed",
            ),
        ] {
            let (subject, body) = events.encode("echo\u{1}", "tx-\"1\"", 3, outcome);
            assert!(subject.as_str().ends_with(&format!(".tool.{kind}")));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["type"], format!("ck.tool.{kind}"));
            assert_eq!(v["specversion"], "1.0");
            assert_eq!(v["data"]["action"], "echo\u{1}");
            assert_eq!(v["data"]["trace_id"], "tx-\"1\"");
            assert_eq!(v["data"]["version"], "canary");
            assert_eq!(v["data"]["call"], 3);
            let time = v["time"].as_str().unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
            assert_eq!(v["data"]["timestamp"], time);
            // The one id scheme of loop events, `{guid}:{event}:{key}` (the key: the host's
            // start and the call number).
            let id = v["id"].as_str().unwrap();
            assert!(
                id.starts_with(&format!("{}:tool.{kind}:", kernel.guid)),
                "{id}"
            );
            assert!(id.ends_with(":3"), "{id}");
            if kind == "failed" {
                assert_eq!(v["data"]["code"], 504);
                assert_eq!(v["data"]["message"], "too \"slow\"\n");
                assert_eq!(v["data"]["duration_us"], 7);
            }
        }
    }

    #[test]
    fn the_fast_encoding_is_what_the_cloudevents_builder_makes() {
        let kernel = kernel();
        let events = ToolEvents::new(&kernel, None);
        let failure = Failure::new(500, "kernel_trap", "boom");
        for (outcome, event) in [
            (Outcome::Invoked, LoopEvent::ToolInvoked),
            (
                Outcome::Finished(Duration::from_micros(9), None),
                LoopEvent::ToolCompleted,
            ),
            (
                Outcome::Finished(Duration::from_micros(9), Some(&failure)),
                LoopEvent::ToolFailed,
            ),
        ] {
            let (subject, body) = events.encode("echo", "tx-1", 5, outcome);
            let fast: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let id = fast["id"].as_str().unwrap();
            let key = id
                .strip_prefix(&format!("{}:{event}:", kernel.guid))
                .unwrap();
            let built = ck_events::LoopCloudEvent {
                guid: &kernel.guid,
                source: &kernel.urn,
                event,
                key,
                about: None,
                time: fast["time"].as_str().unwrap(),
                data: fast["data"].clone(),
            };
            assert_eq!(fast, built.body().unwrap(), "{event}");
            assert_eq!(subject.as_str(), built.nats_subject());
        }
    }
}

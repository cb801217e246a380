//! CKP message bodies and headers (ckp-spec §5).
//!
//! Requests arrive as `{"action": …, "data": {…}}` or flat (`{"action": "task.start",
//! "task_id": …}`, whose other fields become the data). Results are the union of the v3.7 and
//! cklib shapes: `{action, data, trace_id, kernel, kernel_urn, timestamp, status, error?, code?}`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use thiserror::Error;

/// Header carrying the trace id, propagated unchanged downstream.
pub const TRACE_ID: &str = "Trace-Id";
/// Header naming the sender (a kernel name, or `browser`).
pub const KERNEL_ID: &str = "X-Kernel-ID";
/// Header naming the user (`anonymous` or a user name).
pub const USER_ID: &str = "X-User-ID";
/// Header carrying a bearer token for `auth`/`owner` actions.
pub const AUTHORIZATION: &str = "Authorization";
/// JetStream de-duplication key.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The user recorded when a request names none.
pub const ANONYMOUS: &str = "anonymous";

/// Longest `Trace-Id` read (bytes). A caller's headers reach logs, answers, audit lines and
/// task records, so each is bounded where it is parsed.
pub const MAX_TRACE_ID: usize = 128;
/// Longest `X-User-ID` or `X-Kernel-ID` read (bytes).
pub const MAX_NAME_HEADER: usize = 256;
/// Longest `Authorization` read (bytes): a JWT-SVID is a few KiB at most.
pub const MAX_AUTHORIZATION: usize = 16 * 1024;

/// A new trace id, `tx-{uuid}`.
pub fn new_trace_id() -> String {
    format!("tx-{}", uuid::Uuid::new_v4())
}

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The action to run.
    pub action: String,
    /// The request data as JSON text (an object, `{}` when none was given).
    pub data: String,
    /// `task_id`, at top level or inside `data`.
    pub task_id: Option<String>,
    /// The trace id (from `Trace-Id`, or new).
    pub trace_id: String,
    /// Who asked: claimed by `X-User-ID` (or anonymous) as parsed; the router replaces it with
    /// the proven SPIFFE ID once a bearer token proved one.
    pub caller: crate::Caller,
    /// `X-Kernel-ID` of the sender, if given.
    pub sender: Option<String>,
    /// The `Authorization` header, if given.
    pub authorization: Option<String>,
}

/// Why a request could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// Larger than the configured limit.
    #[error("payload is {size} bytes; this kernel accepts at most {max}")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON.
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
    /// JSON, but not an object.
    #[error("payload must be a JSON object with an `action`")]
    NotAnObject,
    /// No `action`.
    #[error("missing `action`")]
    MissingAction,
    /// `action` is not a non-empty string.
    #[error("`action` must be a non-empty string")]
    BadAction,
    /// `data` is not an object.
    #[error("`data` must be a JSON object")]
    BadData,
    /// A protocol header longer than its limit.
    #[error("header `{name}` is {size} bytes; at most {max} are accepted")]
    HeaderTooLarge {
        /// The header.
        name: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A protocol header with characters it may not carry.
    #[error("header `{name}` {why}")]
    BadHeader {
        /// The header.
        name: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl RequestError {
    /// The failure to answer with.
    pub fn failure(&self) -> Failure {
        let (code, kind) = match self {
            RequestError::TooLarge { .. } => (413, "payload_too_large"),
            RequestError::HeaderTooLarge { .. } => (431, "header_too_large"),
            RequestError::BadHeader { .. } => (400, "bad_header"),
            _ => (400, "bad_request"),
        };
        Failure::new(code, kind, self.to_string())
    }
}

/// Headers of an incoming message that the protocol reads.
#[derive(Debug, Clone, Default)]
pub struct RequestHeaders {
    /// `Trace-Id`.
    pub trace_id: Option<String>,
    /// `X-Kernel-ID`.
    pub sender: Option<String>,
    /// `X-User-ID`.
    pub user: Option<String>,
    /// `Authorization`.
    pub authorization: Option<String>,
}

impl RequestHeaders {
    /// Reads the protocol headers of a NATS message.
    pub fn from_nats(headers: Option<&async_nats::HeaderMap>) -> Self {
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .filter(|v| !v.is_empty())
        };
        Self {
            trace_id: get(TRACE_ID),
            sender: get(KERNEL_ID),
            user: get(USER_ID),
            authorization: get(AUTHORIZATION),
        }
    }
}

impl RequestHeaders {
    /// The caller's `Trace-Id` when it is a valid one, else a new trace id.
    pub fn trace_id_or_new(&self) -> String {
        self.trace_id
            .clone()
            .filter(|t| valid_trace_id(t))
            .unwrap_or_else(new_trace_id)
    }

    /// Checks every header against its bound: lengths, and for the trace id its characters
    /// (`[A-Za-z0-9._:-]`), for names no control characters.
    pub fn check(&self) -> Result<(), RequestError> {
        let bounded = |name: &'static str, value: &Option<String>, max: usize| match value {
            Some(v) if v.len() > max => Err(RequestError::HeaderTooLarge {
                name,
                size: v.len(),
                max,
            }),
            Some(v) if v.chars().any(char::is_control) => Err(RequestError::BadHeader {
                name,
                why: "carries control characters",
            }),
            _ => Ok(()),
        };
        bounded(TRACE_ID, &self.trace_id, MAX_TRACE_ID)?;
        if !self.trace_id.as_deref().is_none_or(valid_trace_id) {
            return Err(RequestError::BadHeader {
                name: TRACE_ID,
                why: "may only carry letters, digits and `.`, `_`, `:`, `-`",
            });
        }
        bounded(USER_ID, &self.user, MAX_NAME_HEADER)?;
        bounded(KERNEL_ID, &self.sender, MAX_NAME_HEADER)?;
        bounded(AUTHORIZATION, &self.authorization, MAX_AUTHORIZATION)
    }
}

/// A trace id a caller may give: short, and only characters that are safe in logs and headers.
fn valid_trace_id(trace_id: &str) -> bool {
    trace_id.len() <= MAX_TRACE_ID
        && trace_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Parses a request body. The trace id is taken from the headers (when it is a valid one) or
/// created, so that even a refused request is answered under a trace id. Headers over their
/// bounds are refused (431) before the body is read.
pub fn parse_request(
    payload: &[u8],
    headers: RequestHeaders,
    max_payload: usize,
) -> (String, Result<Request, RequestError>) {
    let trace_id = headers.trace_id_or_new();
    let parsed = headers
        .check()
        .and_then(|()| parse_body(payload, headers, trace_id.clone(), max_payload));
    (trace_id, parsed)
}

fn parse_body(
    payload: &[u8],
    headers: RequestHeaders,
    trace_id: String,
    max: usize,
) -> Result<Request, RequestError> {
    if payload.len() > max {
        return Err(RequestError::TooLarge {
            size: payload.len(),
            max,
        });
    }
    // Only the top level is parsed; `data` stays raw text (it goes to the kernel as text anyway).
    let top: BTreeMap<String, &RawValue> = serde_json::from_slice(payload).map_err(|e| {
        match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
            Ok(_) => RequestError::NotAnObject,
            Err(_) => RequestError::InvalidJson(e.to_string()),
        }
    })?;
    let action = match top.get("action").map(|raw| raw.get()) {
        None | Some("null") => return Err(RequestError::MissingAction),
        Some(raw) => match serde_json::from_str::<String>(raw) {
            Ok(a) if !a.trim().is_empty() => a,
            _ => return Err(RequestError::BadAction),
        },
    };
    let string_field =
        |raw: Option<&&RawValue>| raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok());
    let (data, task_id) = match top.get("data").map(|raw| raw.get()) {
        Some(raw) if raw.starts_with('{') => {
            // `task_id` inside the data is only looked for when it can be there.
            let task_id = raw
                .contains("\"task_id\"")
                .then(|| serde_json::from_str::<BTreeMap<String, &RawValue>>(raw).ok())
                .flatten()
                .and_then(|d| string_field(d.get("task_id")));
            (raw.to_owned(), string_field(top.get("task_id")).or(task_id))
        }
        Some("null") => ("{}".to_owned(), string_field(top.get("task_id"))),
        Some(_) => return Err(RequestError::BadData),
        // Flat body: everything but `action` (and envelope bookkeeping) is the data.
        None => {
            let mut flat = String::from("{");
            for (key, raw) in top
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "action" | "timestamp"))
            {
                if flat.len() > 1 {
                    flat.push(',');
                }
                flat.push_str(&serde_json::to_string(key).unwrap_or_default());
                flat.push(':');
                flat.push_str(raw.get());
            }
            flat.push('}');
            (flat, string_field(top.get("task_id")))
        }
    };
    Ok(Request {
        action,
        data,
        task_id,
        trace_id,
        caller: crate::Caller::claimed(headers.user),
        sender: headers.sender,
        authorization: headers.authorization,
    })
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// HTTP-style status code.
    pub code: u16,
    /// Machine-readable kind, e.g. `unknown_action`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
}

impl Failure {
    /// A failure.
    pub fn new(code: u16, error: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            error: error.into(),
            message: message.into(),
        }
    }
}

/// Who is answering: fixed per kernel.
#[derive(Debug, Clone)]
pub struct Responder {
    /// Kernel name (`X-Kernel-ID` and `kernel`).
    pub kernel: String,
    /// Kernel URN.
    pub kernel_urn: String,
}

#[derive(Serialize)]
struct ResultBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    trace_id: &'a str,
    kernel: &'a str,
    kernel_urn: &'a str,
    timestamp: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

#[derive(Serialize)]
struct EventBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    trace_id: &'a str,
    kernel: &'a str,
    kernel_urn: &'a str,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

/// The result body for an outcome. `data` must already be valid JSON.
pub fn result_body(
    who: &Responder,
    trace_id: &str,
    action: Option<&str>,
    outcome: &Result<Box<RawValue>, Failure>,
    timestamp: &str,
) -> Vec<u8> {
    let body = match outcome {
        Ok(data) => ResultBody {
            action,
            data: Some(data),
            trace_id,
            kernel: &who.kernel,
            kernel_urn: &who.kernel_urn,
            timestamp,
            status: "ok",
            error: None,
            code: None,
            message: None,
        },
        Err(f) => ResultBody {
            action,
            data: None,
            trace_id,
            kernel: &who.kernel,
            kernel_urn: &who.kernel_urn,
            timestamp,
            status: "error",
            error: Some(&f.error),
            code: Some(f.code),
            message: Some(&f.message),
        },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The event body published on the kernel's event topic for an outcome.
pub fn event_body(
    who: &Responder,
    trace_id: &str,
    action: Option<&str>,
    outcome: &Result<Box<RawValue>, Failure>,
    timestamp: &str,
) -> Vec<u8> {
    let (kind, code) = match outcome {
        Ok(_) => ("action.completed", None),
        Err(f) => ("action.failed", Some(f.code)),
    };
    let body = EventBody {
        kind,
        action,
        trace_id,
        kernel: &who.kernel,
        kernel_urn: &who.kernel_urn,
        timestamp,
        code,
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

// Header names parsed once, not per answer.
const TRACE_ID_NAME: async_nats::HeaderName = async_nats::HeaderName::from_static(TRACE_ID);
const KERNEL_ID_NAME: async_nats::HeaderName = async_nats::HeaderName::from_static(KERNEL_ID);
const USER_ID_NAME: async_nats::HeaderName = async_nats::HeaderName::from_static(USER_ID);

/// What is published for one answer: the CKP headers, the result body (for the reply and
/// `result.{K}`) and, when asked for, the event body (for `event.{K}`), with one timestamp.
#[derive(Debug, Clone)]
pub struct AnswerMessages {
    /// `Trace-Id`, `X-Kernel-ID`, `X-User-ID`.
    pub headers: async_nats::HeaderMap,
    /// The result body.
    pub result: bytes::Bytes,
    /// The event body, when events are published.
    pub event: Option<bytes::Bytes>,
}

/// The messages answering a request of `user` within `trace_id` with `outcome`.
pub fn answer_messages(
    who: &Responder,
    trace_id: &str,
    user: &str,
    action: Option<&str>,
    outcome: &Result<Box<RawValue>, Failure>,
    with_event: bool,
) -> AnswerMessages {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(TRACE_ID_NAME, trace_id);
    headers.insert(KERNEL_ID_NAME, who.kernel.as_str());
    headers.insert(USER_ID_NAME, user);
    let timestamp = crate::clock::now(crate::clock::Precision::Millis);
    AnswerMessages {
        headers,
        result: result_body(who, trace_id, action, outcome, &timestamp).into(),
        event: with_event.then(|| event_body(who, trace_id, action, outcome, &timestamp).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(body: &str) -> Result<Request, RequestError> {
        parse_request(body.as_bytes(), RequestHeaders::default(), 1024).1
    }

    #[test]
    fn headers_over_their_bounds_are_refused_before_the_body_is_read() {
        let with = |headers: RequestHeaders| parse_request(br#"{"action":"a"}"#, headers, 1024);
        let (_, r) = with(RequestHeaders {
            user: Some("u".repeat(70_000)),
            ..Default::default()
        });
        let e = r.unwrap_err();
        assert_eq!(e.failure().code, 431);
        assert!(e.to_string().contains(USER_ID), "{e}");
        let (trace, r) = with(RequestHeaders {
            trace_id: Some("t".repeat(MAX_TRACE_ID + 1)),
            ..Default::default()
        });
        assert_eq!(r.unwrap_err().failure().code, 431);
        assert!(
            trace.starts_with("tx-"),
            "a refused trace id is not echoed: {trace}"
        );
        let (trace, r) = with(RequestHeaders {
            trace_id: Some("tx-1\n{\"forged\":1}".into()),
            ..Default::default()
        });
        assert_eq!(r.unwrap_err().failure().error, "bad_header");
        assert!(trace.starts_with("tx-") && !trace.contains('\n'));
        let (_, r) = with(RequestHeaders {
            authorization: Some(format!("Bearer {}", "x".repeat(MAX_AUTHORIZATION))),
            ..Default::default()
        });
        assert_eq!(r.unwrap_err().failure().code, 431);
        let (trace, r) = with(RequestHeaders {
            trace_id: Some("tx-ok.1:2_3".into()),
            user: Some("alice".into()),
            ..Default::default()
        });
        assert_eq!(trace, "tx-ok.1:2_3");
        assert_eq!(r.unwrap().caller, crate::Caller::Claimed("alice".into()));
    }

    #[test]
    fn envelope_and_flat_bodies() {
        let r = parse(r#"{"action":"tally","data":{"ballots":["a","b"]}}"#).unwrap();
        assert_eq!(r.action, "tally");
        assert_eq!(r.data, r#"{"ballots":["a","b"]}"#);
        assert_eq!(r.caller, crate::Caller::Anonymous);
        assert!(r.trace_id.starts_with("tx-"));

        let r = parse(r#"{"action":"task.start","task_id":"t-1","timestamp":"x"}"#).unwrap();
        assert_eq!(r.data, r#"{"task_id":"t-1"}"#);
        assert_eq!(r.task_id.as_deref(), Some("t-1"));

        let r = parse(r#"{"action":"status"}"#).unwrap();
        assert_eq!(r.data, "{}");

        let r = parse(r#"{"action":"a","data":{"task_id":"t-2","x":[1,{"y":null}]}}"#).unwrap();
        assert_eq!(r.task_id.as_deref(), Some("t-2"));
        assert_eq!(r.data, r#"{"task_id":"t-2","x":[1,{"y":null}]}"#);
        let r = parse("{ \"action\" : \"a\" ,\n \"data\" :\n  { \"x\" : 1 } }").unwrap();
        assert_eq!(serde_json::from_str::<Value>(&r.data).unwrap()["x"], 1);
        let r = parse(r#"{"action":"a","data":null}"#).unwrap();
        assert_eq!(r.data, "{}");
        let r = parse(r#"{"action":"a","k\"ey":1}"#).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&r.data).unwrap()["k\"ey"], 1);
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            parse("not json"),
            Err(RequestError::InvalidJson(_))
        ));
        assert_eq!(parse("[1]").unwrap_err(), RequestError::NotAnObject);
        assert_eq!(
            parse(r#"{"data":{}}"#).unwrap_err(),
            RequestError::MissingAction
        );
        assert_eq!(
            parse(r#"{"action":7}"#).unwrap_err(),
            RequestError::BadAction
        );
        assert_eq!(
            parse(r#"{"action":" "}"#).unwrap_err(),
            RequestError::BadAction
        );
        assert_eq!(
            parse(r#"{"action":"a","data":[1]}"#).unwrap_err(),
            RequestError::BadData
        );
        let big = format!(r#"{{"action":"a","data":{{"x":"{}"}}}}"#, "y".repeat(2000));
        let err = parse(&big).unwrap_err();
        assert_eq!(err.failure().code, 413);
        assert_eq!(RequestError::MissingAction.failure().code, 400);
    }

    #[test]
    fn trace_id_is_propagated_even_on_refusal() {
        let headers = RequestHeaders {
            trace_id: Some("tx-abc".into()),
            ..Default::default()
        };
        let (trace, result) = parse_request(b"{", headers, 10);
        assert_eq!(trace, "tx-abc");
        assert!(result.is_err());
    }

    #[test]
    fn answer_messages_carry_the_headers_and_one_timestamp() {
        let who = Responder {
            kernel: "CS.Voting".into(),
            kernel_urn: "ckp://Kernel#CS.Voting:v1.0".into(),
        };
        let data = RawValue::from_string("{}".into()).unwrap();
        let m = answer_messages(&who, "tx-9", "spiffe://d/u", Some("tally"), &Ok(data), true);
        assert_eq!(m.headers.get(TRACE_ID).unwrap().as_str(), "tx-9");
        assert_eq!(m.headers.get(KERNEL_ID).unwrap().as_str(), "CS.Voting");
        assert_eq!(m.headers.get(USER_ID).unwrap().as_str(), "spiffe://d/u");
        let result: Value = serde_json::from_slice(&m.result).unwrap();
        let event: Value = serde_json::from_slice(m.event.as_ref().unwrap()).unwrap();
        assert_eq!(result["trace_id"], "tx-9");
        assert_eq!(event["type"], "action.completed");
        assert_eq!(result["timestamp"], event["timestamp"]);
        let quiet = answer_messages(
            &who,
            "tx-9",
            "u",
            None,
            &Err(Failure::new(400, "b", "m")),
            false,
        );
        assert!(quiet.event.is_none());
    }

    #[test]
    fn result_bodies() {
        let who = Responder {
            kernel: "CS.Voting".into(),
            kernel_urn: "ckp://Kernel#CS.Voting:v1.0".into(),
        };
        let data = RawValue::from_string(r#"{"winner":"a"}"#.into()).unwrap();
        let ok: Value = serde_json::from_slice(&result_body(
            &who,
            "tx-1",
            Some("tally"),
            &Ok(data),
            "2026-11-27T04:07:23.123Z",
        ))
        .unwrap();
        assert_eq!(ok["status"], "ok");
        assert_eq!(ok["data"]["winner"], "a");
        assert_eq!(ok["kernel"], "CS.Voting");
        assert_eq!(ok["trace_id"], "tx-1");
        assert_eq!(ok["timestamp"], "2026-11-27T04:07:23.123Z");
        let err: Value = serde_json::from_slice(&result_body(
            &who,
            "tx-2",
            None,
            &Err(Failure::new(404, "unknown_action", "no action `x`")),
            "2026-11-27T04:07:23.123Z",
        ))
        .unwrap();
        assert_eq!(err["status"], "error");
        assert_eq!(err["code"], 404);
        assert_eq!(err["error"], "unknown_action");
        assert!(err.get("data").is_none());
    }
}

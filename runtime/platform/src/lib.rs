//! The platform lane on JetStream (DESIGN.md §4.4): one stream per declared subject family
//! that names one (`policies/subject-families.yaml`, `stream:`), and publishing a CloudEvent
//! only inside a family.
//!
//! A publish outside every family is refused at each layer that can refuse it:
//! - here, before anything reaches NATS, with the family file's closest family named
//!   ([`PlatformError::Outside`]);
//! - by the server's compiled permissions (the ACL compiler opens nothing outside a family);
//! - by JetStream: a subject no family stream captures has no stream, so a JetStream publish
//!   to it fails ([`PlatformError::NoStream`]) instead of vanishing as a core publish would.
//!
//! The HVFS lane ([`hvfs`]) projects the loops' commits and ref moves into `platform.hvfs`.
//!
//! Events are formed by `ck-events` (the one builder); their `id` is their `Nats-Msg-Id`, so
//! a retry of the same event within the stream's [`DEDUP_WINDOW`] is stored once. This crate
//! owns the family streams and the HVFS projector's `ck-hvfs` consumers, no others (the
//! webhook bridge's consumers are `ck-bridge`'s).

pub mod hvfs;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use ck_acl::families::{Families, FamilyStream, FilterOutside};

/// How long a family stream remembers message ids (a retry inside it is stored once).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Why the platform lane refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The subject is in no declared family (or is not a subject).
    #[error("refused: {0}")]
    Outside(#[from] FilterOutside),
    /// The subject's family has no stream (declare `stream:` for it), or the server has none
    /// for it (run `ck platform streams`).
    #[error("refused: no stream stores '{subject}' ({why})")]
    NoStream {
        /// The subject.
        subject: String,
        /// Why.
        why: String,
    },
    /// The event could not be formed.
    #[error(transparent)]
    Event(#[from] ck_events::EventError),
    /// An event id that cannot be a `Nats-Msg-Id` (1–256 visible ASCII characters).
    #[error("refused: event id `{0}` must be 1–256 visible ASCII characters")]
    BadId(String),
    /// The server did not do what was asked.
    #[error("{what}: {why}")]
    Nats {
        /// What was being done.
        what: String,
        /// The server's or client's answer.
        why: String,
    },
}

/// One family stream as [`Platform::ensure_streams`] left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// The family.
    pub family: String,
    /// The stream.
    pub stream: String,
    /// Its subjects.
    pub subjects: Vec<String>,
    /// Messages it holds.
    pub messages: u64,
}

/// What a platform publish asks for.
#[derive(Debug, Clone)]
pub struct PlatformEvent<'a> {
    /// The NATS subject (inside a family with a stream).
    pub subject: &'a str,
    /// The CloudEvent `type`.
    pub ty: &'a str,
    /// The CloudEvent `source` (the emitter's SPIFFE ID or URN).
    pub source: &'a str,
    /// The CloudEvent `subject` attribute, if any.
    pub about: Option<&'a str>,
    /// The CloudEvent `id`; by default one derived from subject, type, time and data.
    pub id: Option<&'a str>,
    /// The CloudEvent `time` (RFC 3339); by default now.
    pub time: Option<&'a str>,
    /// Its data.
    pub data: serde_json::Value,
}

/// A stored platform event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event's id (its `Nats-Msg-Id`).
    pub id: String,
    /// The family.
    pub family: String,
    /// The stream that stored it.
    pub stream: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// The stream had it already (a retry).
    pub duplicate: bool,
}

/// The platform lane of one JetStream.
pub struct Platform<'f> {
    pub(crate) js: jetstream::Context,
    families: &'f Families,
    /// Streams seen to exist: a JetStream publish to a subject no stream captures only times
    /// out when anyone subscribes to it, so the stream is looked up (once) before publishing.
    known: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl<'f> Platform<'f> {
    /// The lane of `js` for `families`.
    pub fn new(js: jetstream::Context, families: &'f Families) -> Self {
        Platform {
            js,
            families,
            known: Default::default(),
        }
    }

    /// The configuration of a family's stream: file storage, `replicas` copies, message ids
    /// remembered for [`DEDUP_WINDOW`].
    pub fn stream_config(family: &str, stream: &FamilyStream, replicas: usize) -> stream::Config {
        stream::Config {
            name: stream.name.clone(),
            description: Some(format!("ck subject family {family}")),
            subjects: stream.subjects.clone(),
            storage: stream::StorageType::File,
            duplicate_window: DEDUP_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        }
    }

    /// Creates (or updates) every family stream with `replicas` copies; returns them.
    pub async fn ensure_streams(&self, replicas: usize) -> Result<Vec<StreamState>, PlatformError> {
        let mut states = Vec::new();
        for family in self.families.iter() {
            let Some(wanted) = &family.stream else {
                continue;
            };
            let config = Self::stream_config(&family.name, wanted, replicas);
            let what = format!("creating stream {} for family {}", wanted.name, family.name);
            // An existing stream is updated in place (its messages are kept).
            if self.js.get_stream(&wanted.name).await.is_ok() {
                self.js
                    .update_stream(config)
                    .await
                    .map_err(|e| nats(&what, e))?;
            } else {
                self.js
                    .create_stream(config)
                    .await
                    .map_err(|e| nats(&what, e))?;
            }
            let mut handle = self
                .js
                .get_stream(&wanted.name)
                .await
                .map_err(|e| nats(&what, e))?;
            let info = handle.info().await.map_err(|e| nats(&what, e))?;
            states.push(StreamState {
                family: family.name.clone(),
                stream: wanted.name.clone(),
                subjects: info.config.subjects.clone(),
                messages: info.state.messages,
            });
        }
        Ok(states)
    }

    /// Publishes `event` as a CloudEvent into its family's stream and waits for the stream
    /// to store it. Refused without touching NATS when the subject is outside every family or
    /// its family has no stream.
    pub async fn publish(&self, event: &PlatformEvent<'_>) -> Result<Published, PlatformError> {
        let family = self.families.family_of_subject(event.subject)?;
        let Some(stream) = &family.stream else {
            return Err(PlatformError::NoStream {
                subject: event.subject.to_owned(),
                why: format!(
                    "family `{}` declares no stream in the subject families file",
                    family.name
                ),
            });
        };
        self.stream_exists(&stream.name, event.subject).await?;
        let now = ck_events::now();
        let time = event.time.unwrap_or(&now);
        let derived;
        let id = match event.id {
            Some(id) => id,
            None => {
                let mut hasher = blake3::Hasher::new();
                for part in [event.subject, event.ty, time, &event.data.to_string()] {
                    hasher.update(part.as_bytes());
                    hasher.update(b"\n");
                }
                derived = hasher.finalize().to_hex()[..32].to_owned();
                &derived
            }
        };
        if !(1..=256).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(PlatformError::BadId(id.chars().take(80).collect()));
        }
        let body = ck_events::EventSpec {
            id,
            source: event.source,
            ty: event.ty,
            subject: event.about,
            time,
            data: event.data.clone(),
            extensions: Vec::new(),
        }
        .structured()?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        headers.insert("Content-Type", ck_events::STRUCTURED_CONTENT_TYPE);
        let what = format!("publishing on {}", event.subject);
        let ack = self
            .js
            .publish_with_headers(event.subject.to_owned(), headers, body.to_string().into())
            .await
            .map_err(|e| nats(&what, e))?
            .await
            .map_err(|e| {
                if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound {
                    PlatformError::NoStream {
                        subject: event.subject.to_owned(),
                        why: format!(
                            "the server has no stream {} yet: run `ck platform streams`",
                            stream.name
                        ),
                    }
                } else {
                    nats(&what, e)
                }
            })?;
        Ok(Published {
            id: id.to_owned(),
            family: family.name.clone(),
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

impl Platform<'_> {
    async fn stream_exists(&self, name: &str, subject: &str) -> Result<(), PlatformError> {
        let known = |set: &std::sync::Mutex<std::collections::BTreeSet<String>>| {
            set.lock().map(|s| s.contains(name)).unwrap_or(false)
        };
        if known(&self.known) {
            return Ok(());
        }
        match self.js.get_stream(name).await {
            Ok(_) => {
                if let Ok(mut set) = self.known.lock() {
                    set.insert(name.to_owned());
                }
                Ok(())
            }
            Err(e) if stream_not_found(&e) => Err(PlatformError::NoStream {
                subject: subject.to_owned(),
                why: format!(
                    "the server has no stream {name} yet: run `ck platform streams` ({e})"
                ),
            }),
            Err(e) => Err(nats(&format!("looking up stream {name}"), e)),
        }
    }
}

/// Whether the server answered that the stream does not exist (and not something else).
pub(crate) fn stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

pub(crate) fn nats(what: &str, e: impl std::fmt::Display) -> PlatformError {
    PlatformError::Nats {
        what: what.to_owned(),
        why: e.to_string(),
    }
}

//! The delivery loop: each webhook subscription's durable JetStream consumers, one POST per
//! attempt, and the sink's answer turned into an acknowledgement and a delivery result.
//!
//! One durable pull consumer per (subscription, family stream its filters reach), named by
//! [`replay::durable_name`], filtered by the contract's subjects in that family and started
//! where [`replay::deliver_policy`] says. The server keeps each consumer's position and each
//! message's delivery count, so a bridge killed at any point resumes where it was: a message
//! is acknowledged only after its sink answered 2xx (delivered), negatively acknowledged with
//! the retry delay (retrying; the count is the attempt number), terminated after the last
//! attempt (parked: it stays in the stream, its sequence in the result), or left
//! unacknowledged when the sink answered 410 (the subscription stops; started again, the
//! bridge tries once more). At-least-once: an attempt whose acknowledgement was lost is made
//! again with the same `webhook-id`.
//!
//! Each outcome is published as a CloudEvent on
//! `platform.delivery.{delivered|retrying|parked|stopped}.v1.{subscriptionId}` through
//! `ck-platform` — except for events that are delivery results themselves (a subscription to
//! `platform.delivery.>` would otherwise feed itself); those outcomes are only logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use ck_acl::families::Families;
use ck_contracts::{AuthClass, DeliveryMode, Subscription};
use ck_platform::{Platform, PlatformEvent};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::http::{MAX_TIMEOUT, SinkClient};
use crate::retry::{Answer, Decision, RetryPolicy};
use crate::secrets::{SecretError, SecretScope};
use crate::ssrf::{self, SinkRefused};
use crate::{replay, signing};

/// How long the server waits for an acknowledgement before delivering again: more than the
/// longest request plus the result's publish.
const ACK_WAIT: Duration = Duration::from_secs(45);

/// The CloudEvent type prefix of delivery results (`ck.platform.delivery.delivered`, ...).
const RESULT_TYPE: &str = "ck.platform.delivery";

/// Why the bridge cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A contract the bridge cannot deliver.
    #[error("subscription {subscription}: {why}")]
    Contract {
        /// The subscription id.
        subscription: String,
        /// Why.
        why: String,
    },
    /// A sink the bridge will not call.
    #[error("subscription {subscription}: {source}")]
    Sink {
        /// The subscription id.
        subscription: String,
        /// Why.
        source: SinkRefused,
    },
    /// A secret it cannot use.
    #[error("subscription {subscription}: {source}")]
    Secret {
        /// The subscription id.
        subscription: String,
        /// Why.
        source: SecretError,
    },
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] crate::http::ClientError),
    /// The subject families declare no family (with a stream) for delivery results.
    #[error(
        "the subject families declare no family with a stream for {0}: delivery results have nowhere to go"
    )]
    NoResultFamily(String),
    /// The server did not do what was asked.
    #[error("{what}: {why}")]
    Nats {
        /// What was being done.
        what: String,
        /// The server's or client's answer.
        why: String,
    },
}

/// What the operator sets for every subscription.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Call sinks that resolve to private or loopback addresses (SSRF guard off).
    pub allow_private_sinks: bool,
    /// Where contracts may point their secrets.
    pub secrets: SecretScope,
    /// The retry schedule (a contract's `maxAttempts` replaces its attempt count).
    pub retry: RetryPolicy,
    /// Deliveries in flight per consumer.
    pub concurrency: usize,
    /// The `source` of delivery results (the bridge's SPIFFE ID or URN).
    pub source: String,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            allow_private_sinks: false,
            secrets: SecretScope::default(),
            retry: RetryPolicy::default(),
            concurrency: 32,
            source: "urn:ck:bridge".into(),
        }
    }
}

/// How a delivery proves where it comes from.
enum Credentials {
    /// Standard Webhooks keys (several during a rotation).
    Signing(Vec<Vec<u8>>),
    /// An `Authorization: Bearer` token.
    Bearer(String),
}

/// A webhook subscription ready to deliver: its sink checked, its secret read.
pub struct Webhook {
    subscription: Subscription,
    url: String,
    timeout: Duration,
    credentials: Credentials,
    retry: RetryPolicy,
}

impl Webhook {
    /// The subscription.
    pub fn subscription(&self) -> &Subscription {
        &self.subscription
    }
}

/// Readies every webhook subscription of `subscriptions` (the others are not the bridge's):
/// its sink's URL and addresses checked ([`ssrf::resolve`]; a name that does not resolve yet
/// is checked again at each connection) and its secret read inside `config.secrets`.
pub async fn prepare(
    subscriptions: &[Subscription],
    config: &BridgeConfig,
) -> Result<Vec<Webhook>, BridgeError> {
    let mut webhooks = Vec::new();
    for subscription in subscriptions {
        if subscription.delivery_mode != DeliveryMode::Webhook {
            continue;
        }
        let id = &subscription.subscription_id;
        let contract = |why: &str| BridgeError::Contract {
            subscription: id.clone(),
            why: why.to_owned(),
        };
        let sink = subscription
            .sink
            .as_ref()
            .ok_or_else(|| contract("a webhook subscription needs sink.url"))?;
        match ssrf::resolve(&sink.url, config.allow_private_sinks).await {
            Ok(_) => {}
            Err(SinkRefused::Unresolved { url, why }) => {
                tracing::warn!(subscription = %id, sink = %url, why, "bridge.sink-unresolved");
            }
            Err(source) => {
                return Err(BridgeError::Sink {
                    subscription: id.clone(),
                    source,
                });
            }
        }
        let auth = subscription
            .auth
            .as_ref()
            .ok_or_else(|| contract("a webhook subscription needs auth"))?;
        let reference = auth
            .secret_ref
            .as_deref()
            .ok_or_else(|| contract("a webhook subscription needs auth.secretRef"))?;
        let secret = |e| BridgeError::Secret {
            subscription: id.clone(),
            source: e,
        };
        let text = config.secrets.read(reference).map_err(secret)?;
        let credentials = match auth.class {
            AuthClass::StandardWebhooks => Credentials::Signing(
                crate::secrets::signing_keys(reference, &text).map_err(secret)?,
            ),
            AuthClass::Bearer => {
                Credentials::Bearer(crate::secrets::bearer_token(reference, &text).map_err(secret)?)
            }
            AuthClass::NatsUser => {
                return Err(contract(
                    "auth class nats-user cannot authenticate a webhook (standard-webhooks or bearer)",
                ));
            }
        };
        let mut retry = config.retry.clone();
        if let Some(max) = subscription.max_attempts {
            retry.max_attempts = max.max(1);
        }
        webhooks.push(Webhook {
            url: sink.url.clone(),
            timeout: sink
                .timeout_seconds
                .map(Duration::from_secs)
                .unwrap_or(MAX_TIMEOUT)
                .min(MAX_TIMEOUT),
            credentials,
            retry,
            subscription: subscription.clone(),
        });
    }
    Ok(webhooks)
}

/// Counts of one run's outcomes.
#[derive(Debug, Default)]
pub struct Counts {
    /// Events the sinks took (2xx).
    pub delivered: AtomicU64,
    /// Attempts to be made again.
    pub retrying: AtomicU64,
    /// Events set aside after their last attempt (or unreadable).
    pub parked: AtomicU64,
    /// Subscriptions stopped by their sink (410).
    pub stopped: AtomicU64,
}

/// One outcome, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Retrying,
    Parked,
    Stopped,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retrying => "retrying",
            Outcome::Parked => "parked",
            Outcome::Stopped => "stopped",
        }
    }
}

/// The bridge over one JetStream.
pub struct Bridge<'f> {
    platform: Platform<'f>,
    js: jetstream::Context,
    families: &'f Families,
    client: SinkClient,
    config: BridgeConfig,
    /// The family delivery results are published in.
    result_family: String,
    /// What this run did.
    pub counts: Counts,
}

impl<'f> Bridge<'f> {
    /// A bridge on `js` for `families`.
    pub fn new(
        js: jetstream::Context,
        families: &'f Families,
        config: BridgeConfig,
    ) -> Result<Self, BridgeError> {
        let probe = result_subject(Outcome::Delivered, "probe");
        let result_family = families
            .family_of_subject(&probe)
            .ok()
            .filter(|f| f.stream.is_some())
            .map(|f| f.name.clone())
            .ok_or_else(|| BridgeError::NoResultFamily(probe))?;
        Ok(Bridge {
            platform: Platform::new(js.clone(), families),
            js,
            families,
            client: SinkClient::new(config.allow_private_sinks)?,
            config,
            result_family,
            counts: Counts::default(),
        })
    }

    /// Opens (creating or updating) every consumer of `webhooks`, then delivers until `stop`
    /// is cancelled; a subscription whose sink answered 410 stops on its own.
    pub async fn run(
        &self,
        webhooks: &[Webhook],
        stop: CancellationToken,
    ) -> Result<(), BridgeError> {
        let mut feeds = Vec::new();
        for webhook in webhooks {
            let stopped = stop.child_token();
            for (stream, filters) in self.streams_of(&webhook.subscription)? {
                let consumer = self.open(webhook, &stream, filters).await?;
                feeds.push(self.feed(webhook, consumer, stream, stopped.clone()));
            }
        }
        tracing::info!(
            subscriptions = webhooks.len(),
            consumers = feeds.len(),
            "bridge.delivering"
        );
        futures::future::join_all(feeds).await;
        Ok(())
    }

    /// The family streams `subscription`'s filters reach, each with the filters inside it.
    fn streams_of(
        &self,
        subscription: &Subscription,
    ) -> Result<Vec<(String, Vec<String>)>, BridgeError> {
        let mut streams: Vec<(String, Vec<String>)> = Vec::new();
        for filter in &subscription.subject_filters {
            let family =
                self.families
                    .family_of_filter(filter)
                    .map_err(|e| BridgeError::Contract {
                        subscription: subscription.subscription_id.clone(),
                        why: e.to_string(),
                    })?;
            let Some(stream) = &family.stream else {
                return Err(BridgeError::Contract {
                    subscription: subscription.subscription_id.clone(),
                    why: format!("family {} has no stream to deliver from", family.name),
                });
            };
            match streams.iter_mut().find(|(name, _)| *name == stream.name) {
                Some((_, filters)) => filters.push(filter.clone()),
                None => streams.push((stream.name.clone(), vec![filter.clone()])),
            }
        }
        Ok(streams)
    }

    async fn open(
        &self,
        webhook: &Webhook,
        stream: &str,
        filters: Vec<String>,
    ) -> Result<consumer::PullConsumer, BridgeError> {
        let id = &webhook.subscription.subscription_id;
        let durable = replay::durable_name(id, stream);
        let what = format!("opening consumer {durable} on stream {stream} for subscription {id}");
        let handle = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| nats(&format!("{what} (run `ck platform streams`)"), e))?;
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            description: Some(format!("ck bridge: subscription {id}")),
            filter_subjects: filters,
            deliver_policy: replay::deliver_policy(&webhook.subscription),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: (self.config.concurrency * 4).max(64) as i64,
            ..Default::default()
        };
        // Created, or updated in place (its position kept); a changed deliver policy is
        // refused by the server: the contract needs a new subscriptionId.
        handle.create_consumer(config).await.map_err(|e| {
            nats(
                &format!("{what} (a changed replayPolicy needs a new subscriptionId)"),
                e,
            )
        })
    }

    /// Delivers one consumer's messages until `stopped` is cancelled.
    async fn feed(
        &self,
        webhook: &Webhook,
        consumer: consumer::PullConsumer,
        stream: String,
        stopped: CancellationToken,
    ) {
        let id = &webhook.subscription.subscription_id;
        let messages = match consumer
            .stream()
            .max_messages_per_batch(self.config.concurrency.max(1))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(e) => {
                tracing::error!(subscription = %id, stream, error = %e, "bridge.consumer-failed");
                return;
            }
        };
        messages
            .take_until(stopped.clone().cancelled_owned())
            .for_each_concurrent(self.config.concurrency.max(1), |message| {
                let stopped = stopped.clone();
                let stream = stream.as_str();
                async move {
                    match message {
                        Ok(message) => self.deliver(webhook, stream, message, &stopped).await,
                        Err(e) => {
                            // A missed heartbeat or a reconnect: the consumer goes on.
                            tracing::warn!(subscription = %id, stream, error = %e, "bridge.read-error");
                        }
                    }
                }
            })
            .await;
    }

    /// One attempt at one message.
    async fn deliver(
        &self,
        webhook: &Webhook,
        stream: &str,
        message: jetstream::Message,
        stopped: &CancellationToken,
    ) {
        let id = &webhook.subscription.subscription_id;
        let (attempt, sequence) = match message.info() {
            Ok(info) => (
                u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
                info.stream_sequence,
            ),
            Err(e) => {
                tracing::warn!(subscription = %id, error = %e, "bridge.read-error");
                return;
            }
        };
        let subject = message.subject.to_string();
        let Some(event_id) = cloudevent_id(&message.payload) else {
            // Not a CloudEvent: nothing to deliver, ever. Set aside and recorded.
            tracing::warn!(subscription = %id, subject, sequence, "bridge.unreadable");
            let fields = Fields {
                event_id: "",
                webhook_id: "",
                subject: &subject,
                stream,
                sequence,
                attempt,
                answer: &Answer::NoAnswer("not a structured CloudEvent".into()),
                next_in: None,
            };
            self.record(webhook, Outcome::Parked, &fields).await;
            settle(&message, AckKind::Term, id).await;
            return;
        };
        let webhook_id = signing::webhook_id(&event_id);
        let answer = match self.headers(webhook, &webhook_id, &message.payload) {
            Ok(headers) => {
                let refs: Vec<(&str, String)> =
                    headers.iter().map(|(n, v)| (*n, v.clone())).collect();
                self.client
                    .post(
                        &webhook.url,
                        &refs,
                        message.payload.to_vec(),
                        webhook.timeout,
                    )
                    .await
            }
            Err(e) => Answer::NoAnswer(e.to_string()),
        };
        let decision = webhook.retry.decide(&answer, attempt, chrono::Utc::now());
        let (outcome, next_in, ack) = match decision {
            Decision::Delivered => (Outcome::Delivered, None, AckKind::Ack),
            Decision::Retry(delay) => (Outcome::Retrying, Some(delay), AckKind::Nak(Some(delay))),
            Decision::Park => (Outcome::Parked, None, AckKind::Term),
            // Left for the next start: the stream keeps it, the consumer's position too.
            Decision::Stop => (
                Outcome::Stopped,
                None,
                AckKind::Nak(Some(Duration::from_secs(60))),
            ),
        };
        let counter = match outcome {
            Outcome::Delivered => &self.counts.delivered,
            Outcome::Retrying => &self.counts.retrying,
            Outcome::Parked => &self.counts.parked,
            Outcome::Stopped => &self.counts.stopped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let fields = Fields {
            event_id: &event_id,
            webhook_id: &webhook_id,
            subject: &subject,
            stream,
            sequence,
            attempt,
            answer: &answer,
            next_in,
        };
        match outcome {
            Outcome::Delivered => {
                tracing::debug!(subscription = %id, webhook_id, "bridge.delivered")
            }
            Outcome::Retrying => {
                tracing::info!(subscription = %id, webhook_id, attempt, answer = ?answer, "bridge.retrying")
            }
            Outcome::Parked => {
                tracing::warn!(subscription = %id, webhook_id, attempt, sequence, answer = ?answer, "bridge.parked")
            }
            Outcome::Stopped => {
                tracing::warn!(subscription = %id, sink = %webhook.url, "bridge.stopped")
            }
        }
        self.record(webhook, outcome, &fields).await;
        settle(&message, ack, id).await;
        if outcome == Outcome::Stopped {
            stopped.cancel();
        }
    }

    fn headers(
        &self,
        webhook: &Webhook,
        webhook_id: &str,
        body: &[u8],
    ) -> Result<Vec<(&'static str, String)>, signing::SignError> {
        let mut headers = vec![(
            "content-type",
            format!("{}; charset=utf-8", ck_events::STRUCTURED_CONTENT_TYPE),
        )];
        match &webhook.credentials {
            Credentials::Signing(keys) => {
                let timestamp = chrono::Utc::now().timestamp();
                headers.extend(signing::headers(webhook_id, timestamp, body, keys)?);
            }
            Credentials::Bearer(token) => {
                headers.push((standardwebhooks::HEADER_WEBHOOK_ID, webhook_id.to_owned()));
                headers.push(("authorization", format!("Bearer {token}")));
            }
        }
        Ok(headers)
    }

    /// Publishes the outcome as a delivery result (only logged for an event that is a
    /// delivery result itself, so a subscription to results does not feed itself).
    async fn record(&self, webhook: &Webhook, outcome: Outcome, fields: &Fields<'_>) {
        let id = &webhook.subscription.subscription_id;
        let of_results = self
            .families
            .family_of_subject(fields.subject)
            .is_ok_and(|f| f.name == self.result_family);
        if of_results {
            return;
        }
        let subject = result_subject(outcome, id);
        let ty = format!("{RESULT_TYPE}.{}", outcome.name());
        // One result per outcome of an attempt: a result published twice (the bridge
        // restarted before acknowledging) is stored once.
        let result_id = format!(
            "{}:{}:{}:{}",
            id,
            outcome.name(),
            if fields.webhook_id.is_empty() {
                format!("seq{}", fields.sequence)
            } else {
                fields.webhook_id.to_owned()
            },
            fields.attempt
        );
        let data = fields.data(id);
        let event = PlatformEvent {
            subject: &subject,
            ty: &ty,
            source: &self.config.source,
            about: Some(fields.subject),
            id: Some(&result_id),
            time: None,
            data,
        };
        if let Err(e) = self.platform.publish(&event).await {
            tracing::warn!(subscription = %id, result = outcome.name(), error = %e, "bridge.result-unrecorded");
        }
    }
}

/// What a delivery result says.
struct Fields<'a> {
    event_id: &'a str,
    webhook_id: &'a str,
    subject: &'a str,
    stream: &'a str,
    sequence: u64,
    attempt: u32,
    answer: &'a Answer,
    next_in: Option<Duration>,
}

impl Fields<'_> {
    fn data(&self, subscription: &str) -> serde_json::Value {
        let mut data = serde_json::json!({
            "subscriptionId": subscription,
            "eventId": self.event_id,
            "webhookId": self.webhook_id,
            "eventSubject": self.subject,
            "stream": self.stream,
            "streamSequence": self.sequence,
            "attempt": self.attempt,
        });
        match self.answer {
            Answer::Status { code, retry_after } => {
                data["status"] = (*code).into();
                if let Some(header) = retry_after {
                    data["retryAfter"] = header.as_str().into();
                }
            }
            Answer::NoAnswer(why) => data["error"] = why.as_str().into(),
        }
        if let Some(next) = self.next_in {
            data["nextAttemptInMs"] = (next.as_millis() as u64).into();
        }
        data
    }
}

/// `platform.delivery.{outcome}.v1.{subscriptionId}`.
fn result_subject(outcome: Outcome, subscription: &str) -> String {
    format!("platform.delivery.{}.v1.{subscription}", outcome.name())
}

/// The `id` of a structured CloudEvent (a JSON object with `specversion` and a string `id`).
fn cloudevent_id(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        specversion: String,
        id: String,
    }
    let head: Head = serde_json::from_slice(payload).ok()?;
    (head.specversion == "1.0" && !head.id.is_empty()).then_some(head.id)
}

async fn settle(message: &jetstream::Message, kind: AckKind, subscription: &str) {
    if let Err(e) = message.ack_with(kind).await {
        // The server delivers it again after the ack wait: at least once.
        tracing::warn!(subscription, error = %e, "bridge.ack-failed");
    }
}

fn nats(what: &str, e: impl std::fmt::Display) -> BridgeError {
    BridgeError::Nats {
        what: what.to_owned(),
        why: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_result_names_its_attempt_and_answer() {
        let fields = Fields {
            event_id: "e-1",
            webhook_id: "msg_1",
            subject: "platform.capability.changed.v1.billing",
            stream: "PLATFORM_CAPABILITY",
            sequence: 7,
            attempt: 2,
            answer: &Answer::Status {
                code: 429,
                retry_after: Some("3".into()),
            },
            next_in: Some(Duration::from_secs(3)),
        };
        let data = fields.data("team-a");
        assert_eq!(data["status"], 429);
        assert_eq!(data["retryAfter"], "3");
        assert_eq!(data["nextAttemptInMs"], 3000);
        assert_eq!(data["streamSequence"], 7);
        assert_eq!(
            result_subject(Outcome::Parked, "team-a"),
            "platform.delivery.parked.v1.team-a"
        );
        assert_eq!(
            cloudevent_id(br#"{"specversion":"1.0","id":"x","type":"t","source":"s"}"#),
            Some("x".into())
        );
        assert_eq!(cloudevent_id(b"not json"), None);
        assert_eq!(cloudevent_id(br#"{"specversion":"0.3","id":"x"}"#), None);
    }
}

//! Serving a kernel's input topic: every message is answered exactly once.

use std::future::Future;
use std::sync::Arc;

use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;
use ck_manifest::Kernel;
use ck_manifest::topics::{self, TopicFormat};
use futures::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::envelope::{
    AnswerMessages, Failure, Request, RequestHeaders, Responder, answer_messages, parse_request,
};

/// How long stopping waits for the server to take the last messages (it may be gone).
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// Produces the answer to one request.
pub trait Handler: Send + Sync + 'static {
    /// Handles `request`; `Ok` carries the result data as JSON.
    fn handle(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<Box<RawValue>, Failure>> + Send;

    /// A message refused before it reached [`Handler::handle`]: not answered at all (its reply
    /// subject is not a caller's inbox, `reply.refused`), or answered with an error because it
    /// could not be read (oversized, bad headers, not JSON: `request.refused`). Already logged;
    /// the handler records it where its kernel's refusals go (the host: the audit ledger,
    /// coalesced — anyone can send these).
    fn refused(&self, refusal: &Refusal);

    /// Whether a successful answer to `action` is also published on the kernel's result topic
    /// (read by grantees of `read-results`). Errors never are, and an answer that may hold the
    /// caller's own business (`auth`/`owner` actions, tasks) must not be.
    fn broadcasts(&self, action: &str) -> bool;
}

/// A message the serving loop refused before handling it.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Machine key of what was refused: `reply.refused` (not answered) or `request.refused`
    /// (answered with the error).
    pub kind: &'static str,
    /// Whether the caller was answered (with the error).
    pub answered: bool,
    /// The subject at fault (cut to [`topics::MAX_REPLY_SUBJECT`] bytes).
    pub subject: String,
    /// Why.
    pub reason: String,
    /// `X-User-ID` as claimed, in [`crate::Caller`]'s written form (`claimed:{name}`, or
    /// `anonymous` when absent or out of bounds).
    pub claimed_user: String,
    /// The request's trace id (a valid `Trace-Id`, or new).
    pub trace_id: String,
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Where a kernel listens and answers.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Input topic.
    pub input: String,
    /// Result topic.
    pub result: String,
    /// Event topic.
    pub event: String,
    /// Queue group: instances of one kernel class share name-based input topics; a GUID topic
    /// is in a group of its own so that the two connections of a credential rotation share
    /// deliveries instead of both answering.
    pub queue_group: Option<String>,
    /// Who answers.
    pub responder: Responder,
    /// A subject for a round trip that proves the server registered the subscription (a
    /// flush only empties the socket): one the connection may publish on and nobody answers.
    pub probe: Option<String>,
    /// What the loop counts (requests, errors, denials, shed, in flight, latency); None
    /// counts nothing.
    pub metrics: Option<std::sync::Arc<crate::metrics::ServeMetrics>>,
}

impl Endpoint {
    /// The endpoint of a kernel: name-based input through a queue group named after the
    /// kernel class, GUID input (it addresses one instance) through a group named by the GUID.
    pub fn for_kernel(kernel: &Kernel) -> Self {
        Self {
            input: kernel.topics.input.clone(),
            result: kernel.topics.result.clone(),
            event: kernel.topics.event.clone(),
            queue_group: Some(
                if kernel.topics.format == TopicFormat::Name
                    && !kernel.topics.input.contains(&kernel.guid)
                {
                    kernel.name.clone()
                } else {
                    kernel.guid.clone()
                },
            ),
            responder: Responder {
                kernel: kernel.name.clone(),
                kernel_urn: kernel.urn.clone(),
            },
            probe: Some(ck_manifest::topics::host_probe(&kernel.guid)),
            metrics: None,
        }
    }
}

/// Serving limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Largest request payload accepted, in bytes (larger ones are answered 413).
    pub max_payload: usize,
    /// Messages handled at once; one arriving while all are busy is answered 503
    /// `overloaded` at once (shed, counted) instead of waiting behind them.
    pub max_in_flight: usize,
    /// Publish an event on the event topic for every answer.
    pub publish_events: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_payload: 1024 * 1024,
            max_in_flight: 256,
            publish_events: true,
        }
    }
}

/// What a finished serving loop did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeReport {
    /// Messages answered.
    pub answered: u64,
}

/// Subscribes `endpoint.input` and answers every message with `handler` until `shutdown` is
/// cancelled; then stops taking new messages, answers those already delivered, and returns.
pub async fn serve<H: Handler>(
    client: Client,
    endpoint: Endpoint,
    handler: Arc<H>,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<ServeReport, async_nats::SubscribeError> {
    serve_signalling(client, endpoint, handler, options, shutdown, None).await
}

/// [`serve`], telling `subscribed` once the server has registered the subscription.
pub(crate) async fn serve_signalling<H: Handler>(
    client: Client,
    endpoint: Endpoint,
    handler: Arc<H>,
    options: ServeOptions,
    shutdown: CancellationToken,
    subscribed: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<ServeReport, async_nats::SubscribeError> {
    let mut subscriber = match &endpoint.queue_group {
        Some(group) => {
            client
                .queue_subscribe(endpoint.input.clone(), group.clone())
                .await?
        }
        None => client.subscribe(endpoint.input.clone()).await?,
    };
    let _ = client.flush().await;
    // A flush only empties the socket. The server handles one connection's commands in order,
    // so the answer to a request sent after the SUB (here "no responders") proves the
    // subscription is registered: a credential rotation may then drain the old one without a
    // gap. Bounded, and its outcome does not matter.
    if let Some(probe) = &endpoint.probe {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            client.request(probe.clone(), Bytes::new()),
        )
        .await;
    }
    if let Some(tx) = subscribed {
        let _ = tx.send(());
    }
    tracing::info!(kernel = %endpoint.responder.kernel, topic = %endpoint.input, queue = ?endpoint.queue_group, "nats.subscribed");
    // One handle for every message's task (a `Client` clone is several reference counts).
    let shared = Arc::new((client.clone(), endpoint));
    let endpoint = &shared.1;
    let slots = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let mut report = ServeReport::default();
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !draining => {
                // Stop new deliveries but keep the messages already on their way.
                draining = true;
                // Bounded: with the server gone, a drain would wait for a reconnect forever,
                // and no more deliveries can come anyway.
                if tokio::time::timeout(FINAL_FLUSH, subscriber.drain()).await.is_err() {
                    break;
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            message = subscriber.next() => {
                let Some(message) = message else { break };
                if let Some(m) = &endpoint.metrics {
                    m.requests.inc();
                }
                let slot = match slots.clone().try_acquire_owned() {
                    Ok(slot) => slot,
                    Err(tokio::sync::TryAcquireError::NoPermits) => {
                        // Full: a caller waiting behind `max_in_flight` others learns it now
                        // and can go elsewhere, instead of timing out.
                        shed(&shared.0, endpoint, message, options).await;
                        continue;
                    }
                    Err(tokio::sync::TryAcquireError::Closed) => break,
                };
                report.answered += 1;
                let (shared, handler) = (shared.clone(), handler.clone());
                tasks.spawn(async move {
                    let started = std::time::Instant::now();
                    if let Some(m) = &shared.1.metrics {
                        m.in_flight.inc();
                    }
                    answer(&shared.0, &shared.1, handler.as_ref(), options, message).await;
                    if let Some(m) = &shared.1.metrics {
                        m.in_flight.dec();
                        m.latency.observe(started.elapsed().as_secs_f64());
                    }
                    drop(slot);
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let _ = tokio::time::timeout(FINAL_FLUSH, client.flush()).await;
    tracing::info!(kernel = %endpoint.responder.kernel, answered = report.answered, "nats.drained");
    Ok(report)
}

async fn answer<H: Handler>(
    client: &Client,
    endpoint: &Endpoint,
    handler: &H,
    options: ServeOptions,
    message: Message,
) {
    let headers = RequestHeaders::from_nats(message.headers.as_ref());
    // The reply subject is the caller's choice: the host answers only in an inbox, never where
    // an answer would be a write with its own credentials (a KV bucket, a loop event, another
    // kernel's input). The request is not run either: nobody could learn its outcome.
    if let Some(reply) = message.reply.as_ref().map(|r| r.as_str())
        && let Err(why) = topics::check_reply_subject(reply)
    {
        let claimed_user = match headers.check() {
            Ok(()) => crate::Caller::claimed(headers.user.clone()).to_string(),
            Err(_) => crate::Caller::Anonymous.to_string(),
        };
        let refusal = Refusal {
            kind: "reply.refused",
            answered: false,
            subject: cut(reply, topics::MAX_REPLY_SUBJECT).to_owned(),
            reason: why.to_string(),
            claimed_user,
            trace_id: headers.trace_id_or_new(),
        };
        tracing::warn!(kernel = %endpoint.responder.kernel, trace_id = %refusal.trace_id, reply = %refusal.subject, reason = %refusal.reason, "reply.refused");
        if let Some(m) = &endpoint.metrics {
            m.denials.inc();
        }
        handler.refused(&refusal);
        return;
    }
    let (trace_id, parsed) = parse_request(&message.payload, headers, options.max_payload);
    let span = tracing::debug_span!("message", kernel = %endpoint.responder.kernel, trace_id = %trace_id, action = tracing::field::Empty);
    async {
        let (action, user, outcome) = match parsed {
            Ok(request) => {
                tracing::Span::current().record("action", request.action.as_str());
                let action = request.action.clone();
                let user = request.caller.header_value().to_owned();
                // Boxed: the handler's future is large, and the task that carries it is
                // moved into place on every spawn.
                (Some(action), user, Box::pin(handler.handle(request)).await)
            }
            Err(e) => {
                let failure = e.failure();
                handler.refused(&Refusal {
                    kind: "request.refused",
                    answered: true,
                    subject: endpoint.input.clone(),
                    reason: format!("{} {}: {}", failure.code, failure.error, failure.message),
                    claimed_user: crate::Caller::Anonymous.to_string(),
                    trace_id: trace_id.clone(),
                });
                (None, crate::envelope::ANONYMOUS.to_owned(), Err(failure))
            }
        };
        if let Err(f) = &outcome {
            tracing::warn!(code = f.code, error = %f.error, message = %f.message, "error.dispatch");
            if let Some(m) = &endpoint.metrics {
                m.errors.inc();
                if matches!(f.code, 401 | 403) {
                    m.denials.inc();
                }
            }
        }
        let AnswerMessages {
            headers,
            result,
            event,
        } = answer_messages(
            &endpoint.responder,
            &trace_id,
            &user,
            action.as_deref(),
            &outcome,
            options.publish_events,
        );
        if let Some(reply) = message.reply {
            send(client, reply.to_string(), headers.clone(), result.clone()).await;
        }
        if let Some(event) = event {
            send(client, endpoint.event.clone(), headers.clone(), event).await;
        }
        // Only what the handler declares public goes beyond the caller's inbox.
        if outcome.is_ok() && action.as_deref().is_some_and(|a| handler.broadcasts(a)) {
            send(client, endpoint.result.clone(), headers, result).await;
        }
        tracing::debug!(code = outcome.as_ref().err().map(|f| f.code), "tx.complete");
    }
    .instrument(span)
    .await;
}

/// Answers a message that found every slot busy: 503 `overloaded`, into the caller's inbox
/// only, counted as shed.
async fn shed(client: &Client, endpoint: &Endpoint, message: Message, options: ServeOptions) {
    if let Some(m) = &endpoint.metrics {
        m.shed.inc();
        m.errors.inc();
    }
    let Some(reply) = message.reply.as_ref().map(|r| r.to_string()) else {
        return;
    };
    if topics::check_reply_subject(&reply).is_err() {
        return;
    }
    let headers = RequestHeaders::from_nats(message.headers.as_ref());
    let trace_id = headers.trace_id_or_new();
    let failure = Failure::new(
        503,
        "overloaded",
        format!(
            "{} is handling {} messages already (max_in_flight); try again or another instance",
            endpoint.responder.kernel, options.max_in_flight
        ),
    );
    tracing::warn!(kernel = %endpoint.responder.kernel, trace_id = %trace_id, max_in_flight = options.max_in_flight, "request.shed");
    let messages = answer_messages(
        &endpoint.responder,
        &trace_id,
        crate::envelope::ANONYMOUS,
        None,
        &Err(failure),
        false,
    );
    send(client, reply, messages.headers, messages.result).await;
}

async fn send(client: &Client, subject: String, headers: HeaderMap, payload: Bytes) {
    if let Err(e) = client
        .publish_with_headers(subject.clone(), headers, payload)
        .await
    {
        tracing::error!(subject = %subject, error = %e, "tx.failed");
    }
}

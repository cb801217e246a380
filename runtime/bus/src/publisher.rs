//! Publishing on behalf of a kernel, with the protocol headers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use thiserror::Error;

use crate::envelope::{KERNEL_ID, TRACE_ID, USER_ID};

/// Why a publish or request did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublishFailure {
    /// Larger than the server accepts.
    #[error("payload is {size} bytes; the server accepts at most {max}")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// The server's `max_payload`.
        max: usize,
    },
    /// The connection could not take the message.
    #[error("NATS unavailable: {0}")]
    Unavailable(String),
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// Nobody is listening on the request subject.
    #[error("no responders on '{0}'")]
    NoResponders(String),
}

/// Publishes for one kernel over its own connection. The connection can be replaced while
/// serving (credential rotation); clones share it.
#[derive(Clone, Debug)]
pub struct Publisher {
    client: Arc<RwLock<Client>>,
    generation: Arc<AtomicU64>,
    kernel: String,
}

impl Publisher {
    /// A publisher sending as `kernel` over `client`.
    pub fn new(client: Client, kernel: impl Into<String>) -> Self {
        Self {
            client: Arc::new(RwLock::new(client)),
            generation: Arc::new(AtomicU64::new(0)),
            kernel: kernel.into(),
        }
    }

    /// The current connection.
    pub fn client(&self) -> Client {
        match self.client.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Sends through `client` from now on (publishes already under way finish on the old one).
    pub fn replace_client(&self, client: Client) {
        match self.client.write() {
            Ok(mut c) => *c = client,
            Err(poisoned) => *poisoned.into_inner() = client,
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes each time the connection is replaced: whoever keeps state bound to a connection
    /// (a JetStream context) rebuilds it when this moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The kernel this publisher sends as.
    pub fn kernel(&self) -> &str {
        &self.kernel
    }

    /// The protocol headers for a message sent as this kernel within `trace_id`.
    pub fn headers(&self, trace_id: &str, user: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(TRACE_ID, trace_id);
        headers.insert(KERNEL_ID, self.kernel.as_str());
        headers.insert(USER_ID, user);
        headers
    }

    fn check_size(&self, size: usize) -> Result<(), PublishFailure> {
        let max = self.client().server_info().max_payload;
        if max > 0 && size > max {
            return Err(PublishFailure::TooLarge { size, max });
        }
        Ok(())
    }

    /// Publishes `payload` on `subject`.
    pub async fn publish(
        &self,
        subject: &str,
        payload: Bytes,
        trace_id: &str,
        user: &str,
    ) -> Result<(), PublishFailure> {
        self.check_size(payload.len())?;
        self.client()
            .publish_with_headers(subject.to_owned(), self.headers(trace_id, user), payload)
            .await
            .map_err(|e| PublishFailure::Unavailable(e.to_string()))
    }

    /// Sends a request on `subject` and waits for one reply. The reply comes back on the
    /// connection's inbox prefix, which for a kernel is its private `_INBOX_{guid}`.
    pub async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        trace_id: &str,
        user: &str,
        timeout: Duration,
    ) -> Result<Bytes, PublishFailure> {
        self.check_size(payload.len())?;
        let request = async_nats::Request::new()
            .payload(payload)
            .headers(self.headers(trace_id, user))
            .timeout(Some(timeout));
        match self
            .client()
            .send_request(subject.to_owned(), request)
            .await
        {
            Ok(message) => Ok(message.payload),
            Err(e) => Err(match e.kind() {
                async_nats::RequestErrorKind::TimedOut => PublishFailure::Timeout(timeout),
                async_nats::RequestErrorKind::NoResponders => {
                    PublishFailure::NoResponders(subject.to_owned())
                }
                _ => PublishFailure::Unavailable(e.to_string()),
            }),
        }
    }
}

//! The bridge's HTTP client (`reqwest`, rustls): one POST per attempt, never a redirect
//! followed, never a proxy taken from the environment, a timeout of at most
//! [`MAX_TIMEOUT`], and every address it connects to checked by [`crate::ssrf`] at the
//! moment it connects (the client's own resolver), so a sink name that resolves to a private
//! address later — DNS rebinding — is refused then too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::retry::Answer;
use crate::ssrf;

/// The longest request timeout (the bound, and Standard Webhooks' advice).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15);

/// The most bytes of a sink's answer read (the rest is dropped with the connection).
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the bridge's HTTP client: {0}")]
pub struct ClientError(#[from] reqwest::Error);

/// One HTTP client for every sink.
#[derive(Clone)]
pub struct SinkClient {
    client: reqwest::Client,
}

/// Resolves sink names and refuses any address [`ssrf::non_public`] names.
struct CheckedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow_private
                && let Some((address, class)) = addresses
                    .iter()
                    .find_map(|a| ssrf::non_public(a.ip()).map(|class| (a.ip(), class)))
            {
                return Err(format!(
                    "{host} resolves to {address}, a {class} address: refused (SSRF)"
                )
                .into());
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl SinkClient {
    /// A client that calls private and loopback sinks only when `allow_private`. (A sink
    /// given as an IP address is not resolved: [`ssrf::resolve`] checks it before the first
    /// call.)
    pub fn new(allow_private: bool) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(MAX_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("ck-bridge/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(CheckedResolver { allow_private }))
            .build()?;
        Ok(SinkClient { client })
    }

    /// POSTs `body` to `url` with `headers`, waiting at most `timeout` (capped at
    /// [`MAX_TIMEOUT`]); the sink's status and `Retry-After`, or why there was none.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Answer {
        let mut request = self
            .client
            .post(url)
            .timeout(timeout.min(MAX_TIMEOUT))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match request.send().await {
            Ok(mut response) => {
                let code = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.chars().take(64).collect());
                // Read a bounded part of the answer so the connection can be reused; a sink
                // that sends more only loses its connection.
                let mut read = 0;
                while read < MAX_ANSWER_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        _ => break,
                    }
                }
                Answer::Status { code, retry_after }
            }
            Err(e) => Answer::NoAnswer(describe(&e)),
        }
    }
}

/// A request error with its causes (reqwest's own message omits them).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(300).collect()
}

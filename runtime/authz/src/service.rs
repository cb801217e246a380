//! Serving the callout on NATS: a queue group, so several `ck authz` processes share the load
//! and any one of them can answer when another is down.

use std::sync::Arc;

use async_nats::Client;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::Provisioner;
use crate::callout::{Authorizer, CALLOUT_SUBJECT, Decision};

/// The queue group every `ck authz` joins.
pub const QUEUE_GROUP: &str = "ck-authz";

/// Requests decided at once. Deciding reads manifests and may append to a ledger (blocking file
/// I/O), so decisions run on the blocking pool, never on the async workers that read requests
/// and publish answers; beyond this many, requests wait for a slot in arrival order (the
/// subscription is not read further) instead of piling up unbounded tasks and threads.
pub const MAX_DECIDING: usize = 16;

/// Answers authorization requests on `client` (a user of the callout account) until `shutdown`.
/// Each request is decided on its own task: nats-server holds the connecting client until the
/// answer comes, so one slow decision must not delay the others. With a `provisioner`, an
/// admitted task kernel's bucket and stream are made to exist before it is answered.
pub async fn serve(
    client: Client,
    authorizer: Arc<Authorizer>,
    provisioner: Option<Arc<Provisioner>>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client
        .queue_subscribe(CALLOUT_SUBJECT, QUEUE_GROUP.to_owned())
        .await?;
    let _ = client.flush().await;
    tracing::info!(target: "ck::authz", subject = CALLOUT_SUBJECT, queue = QUEUE_GROUP, issuer = %authorizer.issuer_public_key(), "authz.serving");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_DECIDING));
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = requests.next() => match m { Some(m) => m, None => break },
        };
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot { Ok(s) => s, Err(_) => break },
        };
        let (client, authorizer, provisioner) =
            (client.clone(), authorizer.clone(), provisioner.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Some(reply) = message.reply else { return };
            let started = std::time::Instant::now();
            let payload = message.payload;
            let server_xkey = message
                .headers
                .as_ref()
                .and_then(|h| h.get(crate::callout::SERVER_XKEY_HEADER))
                .map(|v| v.as_str().to_owned());
            let decided = tokio::task::spawn_blocking(move || {
                authorizer.respond_message(server_xkey.as_deref(), &payload)
            })
            .await;
            let Ok(decided) = decided else {
                tracing::error!(target: "ck::authz", "authz.decide-panicked");
                return;
            };
            match decided {
                // The decision was logged and audited by the authorizer.
                Ok((response, decision)) => {
                    if let (
                        Some(provisioner),
                        Decision::Allow {
                            kernel,
                            guid,
                            declares_tasks: true,
                            ..
                        },
                    ) = (&provisioner, &decision)
                    {
                        provisioner.ensure(guid, kernel).await;
                    }
                    tracing::debug!(target: "ck::authz", decide_us = started.elapsed().as_micros() as u64, "authz.decided");
                    if let Err(e) = client.publish(reply, response.into()).await {
                        tracing::error!(target: "ck::authz", error = %e, "authz.reply-failed");
                    }
                }
                // Not a request we can answer (not signed by a server): no reply, the server
                // times the client out.
                Err(e) => tracing::warn!(target: "ck::authz", error = %e, "authz.bad-request"),
            }
        });
    }
    // The server may be gone already (it is often stopped first): a flush would wait for a
    // reconnect that never comes.
    let bounded = std::time::Duration::from_secs(2);
    let _ = tokio::time::timeout(bounded, requests.unsubscribe()).await;
    let _ = tokio::time::timeout(bounded, client.flush()).await;
    tracing::info!(target: "ck::authz", "authz.stopped");
    Ok(())
}

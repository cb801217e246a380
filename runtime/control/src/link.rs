//! The streams that carry a site's install traffic across its leaf link, so that nothing is lost
//! while the link is down:
//!
//! | stream | where | holds |
//! |---|---|---|
//! | `FLEET_INSTALL_{silo}` | hub | `fleet.install.{silo}.request\|scrub`, deduplicated by `Nats-Msg-Id` (the request id) |
//! | `FLEET_INSTALL_{silo}` | site | a mirror of the hub's, through `$JS.{hub}.API`: a request published while the site is cut off reaches it once the link returns |
//! | `FLEET_REPORTS_{silo}` | site | `fleet.install.{silo}.progress\|done`, written while cut off too |
//! | `FLEET_REPORTS` | hub | every site's reports, sourced through `$JS.{silo}.API` |
//!
//! Deliveries between the two domains use the site's link prefix (`$CK.LINK.{silo}`), the only
//! JetStream deliveries its link user may carry (`ck_acl::site`). This module only configures
//! the streams (and, at a site, the buckets its hosts install into); it neither serves installs
//! nor decides who may publish a request (the server does, through the permissions of whoever
//! publishes).

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use ck_manifest::topics::{self, InstallSubject};

use crate::{ControlError, nats_error};

/// How long the hub refuses a second request with the same id (`Nats-Msg-Id`): longer than any
/// link cut we expect a site to ride out, so a retried publication is carried out once.
pub const REQUEST_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// How long requests and reports are kept.
pub const LINK_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

fn check_silo(silo: &str) -> Result<(), ControlError> {
    match topics::silo_name_problem(silo) {
        Some(problem) => Err(ControlError::Refused(problem)),
        None => Ok(()),
    }
}

/// The hub's stream of one site's requests and scrubs.
pub fn hub_requests_config(silo: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: topics::fleet_install_stream(silo),
        subjects: InstallSubject::ALL
            .iter()
            .filter(|s| s.from_hub())
            .map(|s| topics::fleet_install_subject(silo, *s))
            .collect(),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: REQUEST_DEDUP_WINDOW,
        max_age: LINK_RETENTION,
        // The server refuses a larger request before it is kept (a site refuses it too).
        max_message_size: crate::install::MAX_REQUEST as i32,
        ..Default::default()
    }
}

/// The hub's stream of every site's reports, sourced from each site's own.
pub fn hub_reports_config(silos: &[String], replicas: usize) -> stream::Config {
    stream::Config {
        name: topics::FLEET_REPORTS_STREAM.to_owned(),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age: LINK_RETENTION,
        sources: Some(
            silos
                .iter()
                .map(|silo| stream::Source {
                    name: topics::fleet_reports_stream(silo),
                    external: Some(stream::External {
                        api_prefix: format!("$JS.{silo}.API"),
                        delivery_prefix: Some(format!(
                            "{}.reports",
                            topics::fleet_link_prefix(silo)
                        )),
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// The site's mirror of its requests at the hub (domain `hub_domain`).
pub fn site_requests_config(silo: &str, hub_domain: &str) -> stream::Config {
    stream::Config {
        name: topics::fleet_install_stream(silo),
        storage: stream::StorageType::File,
        max_age: LINK_RETENTION,
        mirror: Some(stream::Source {
            name: topics::fleet_install_stream(silo),
            external: Some(stream::External {
                api_prefix: format!("$JS.{hub_domain}.API"),
                delivery_prefix: Some(format!("{}.requests", topics::fleet_link_prefix(silo))),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The site's stream of what it reports.
pub fn site_reports_config(silo: &str) -> stream::Config {
    stream::Config {
        name: topics::fleet_reports_stream(silo),
        subjects: InstallSubject::ALL
            .iter()
            .filter(|s| !s.from_hub())
            .map(|s| topics::fleet_install_subject(silo, *s))
            .collect(),
        storage: stream::StorageType::File,
        max_age: LINK_RETENTION,
        ..Default::default()
    }
}

/// Creates the hub's side for `silos` (each site's request stream, the reports stream sourcing
/// all of them); an existing reports stream gets the sources of sites added since.
pub async fn provision_hub(
    js: &jetstream::Context,
    silos: &[String],
    replicas: usize,
) -> Result<(), ControlError> {
    for silo in silos {
        check_silo(silo)?;
        let config = hub_requests_config(silo, replicas);
        let what = format!("creating stream {}", config.name);
        js.get_or_create_stream(config)
            .await
            .map_err(|e| nats_error(what)(e.to_string()))?;
    }
    let wanted = hub_reports_config(silos, replicas);
    let what = format!("creating stream {}", wanted.name);
    let mut existing = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| nats_error(what)(e.to_string()))?;
    let info = existing
        .info()
        .await
        .map_err(|e| nats_error(format!("reading stream {}", wanted.name))(e.to_string()))?;
    let mut sources = info.config.sources.clone().unwrap_or_default();
    let before = sources.len();
    for source in wanted.sources.unwrap_or_default() {
        if !sources.iter().any(|s| s.name == source.name) {
            sources.push(source);
        }
    }
    if sources.len() != before {
        let mut config = info.config.clone();
        config.sources = Some(sources);
        js.update_stream(config)
            .await
            .map_err(|e| nats_error(format!("adding sources to {}", wanted.name))(e.to_string()))?;
    }
    Ok(())
}

/// Whether one site's link carries its JetStream traffic yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkActive {
    /// The site's mirror of its requests reaches the hub's stream.
    pub mirror: bool,
    /// The hub's `FLEET_REPORTS` sources the site's reports.
    pub source: bool,
}

/// How silo `silo`'s link stands, as the hub sees it: its mirror read through the site's domain
/// (`$JS.{silo}.API`), the hub's source of its reports from `FLEET_REPORTS`.
pub async fn link_active(js: &jetstream::Context, silo: &str) -> LinkActive {
    let site = jetstream::with_domain(js.client(), silo);
    let mirror = match site.get_stream(topics::fleet_install_stream(silo)).await {
        Ok(mut stream) => stream
            .info()
            .await
            .ok()
            .and_then(|i| i.mirror.as_ref().and_then(|m| m.active))
            .is_some(),
        Err(_) => false,
    };
    let source = match js.get_stream(topics::FLEET_REPORTS_STREAM).await {
        Ok(mut stream) => stream.info().await.ok().is_some_and(|i| {
            i.sources
                .iter()
                .any(|s| s.name == topics::fleet_reports_stream(silo) && s.active.is_some())
        }),
        Err(_) => false,
    };
    LinkActive { mirror, source }
}

/// Waits until every site's link is active ([`link_active`]) or `within` has passed; returns
/// the sites that are not (with how they stand). nats-server retries a mirror or source that
/// failed — a site linked before the hub had its streams — only after a back-off (seconds);
/// waiting here keeps the first request from waiting for it.
pub async fn wait_active(
    js: &jetstream::Context,
    silos: &[String],
    within: Duration,
) -> Vec<(String, LinkActive)> {
    let deadline = tokio::time::Instant::now() + within;
    let mut pending: Vec<String> = silos.to_vec();
    loop {
        let mut still = Vec::new();
        for silo in &pending {
            let state = link_active(js, silo).await;
            if !(state.mirror && state.source) {
                still.push((silo.clone(), state));
            }
        }
        if still.is_empty() || tokio::time::Instant::now() >= deadline {
            return still;
        }
        pending = still.into_iter().map(|(s, _)| s).collect();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates the site's side: the mirror of its requests at the hub with the durable consumer its
/// hosts share, its reports stream, its own control plane and its bucket
/// ([`topics::SITE_BUCKET`]). Needs the site's `operator` (it creates the control plane).
pub async fn provision_site(
    js: &jetstream::Context,
    silo: &str,
    hub_domain: &str,
) -> Result<(), ControlError> {
    check_silo(silo)?;
    if silo == hub_domain {
        // One name for two domains: the site's mirror would ask itself.
        return Err(ControlError::Refused(format!(
            "silo `{silo}` is the hub's JetStream domain name; each domain must be its own"
        )));
    }
    let mut requests = None;
    for config in [
        site_requests_config(silo, hub_domain),
        site_reports_config(silo),
    ] {
        let what = format!("creating stream {}", config.name);
        let stream = js
            .get_or_create_stream(config)
            .await
            .map_err(|e| nats_error(what)(e.to_string()))?;
        requests.get_or_insert(stream);
    }
    // The site's own control plane (what it installs is copied into it) and its bucket.
    crate::ControlPlane::create(js.clone(), &crate::PlaneConfig::default()).await?;
    crate::open_or_create_kv(js, crate::install::site_bucket_config()).await?;
    if let Some(requests) = requests {
        let what = format!(
            "creating consumer {} on {}",
            topics::INSTALL_CONSUMER,
            topics::fleet_install_stream(silo)
        );
        requests
            .get_or_create_consumer(
                topics::INSTALL_CONSUMER,
                crate::install::install_consumer_config(),
            )
            .await
            .map_err(|e| nats_error(what)(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_come_from_the_hub_and_reports_from_the_site() {
        let hub = hub_requests_config("ct-fac", 3);
        assert_eq!(
            hub.subjects,
            ["fleet.install.ct-fac.request", "fleet.install.ct-fac.scrub"]
        );
        assert_eq!(
            site_reports_config("ct-fac").subjects,
            ["fleet.install.ct-fac.progress", "fleet.install.ct-fac.done"]
        );
        let mirror = site_requests_config("ct-fac", "hub").mirror.unwrap();
        let external = mirror.external.unwrap();
        assert_eq!(external.api_prefix, "$JS.hub.API");
        assert_eq!(
            external.delivery_prefix.as_deref(),
            Some("$CK.LINK.ct-fac.requests")
        );
        let sources = hub_reports_config(&["a".into(), "b".into()], 1)
            .sources
            .unwrap();
        assert_eq!(
            sources[1].external.as_ref().unwrap().api_prefix,
            "$JS.b.API"
        );
    }
}

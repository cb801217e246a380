//! The hub's permissions for one site's leaf link. nats-server carries across a leaf connection
//! exactly what the link's hub user may publish (site → hub) and subscribe to (hub → site), so
//! one hub user per silo with these permissions is a per-site ACL the server enforces: site A's
//! link can neither read nor write site B's install, state or link subjects.
//!
//! Measured against nats-server 2.15 (the isolation of install, event and state subjects is
//! tested in `runtime/cli/tests/fleet.rs`, and so are the site's mirror of its requests and the
//! hub's source of its reports through the link):
//! - with JetStream domains on both sides the server denies `$JS.API.>`, `$KV.>` and `$OBJ.>`
//!   across the link; a site reaches the hub's JetStream through the domain prefix
//!   (`$JS.{hub}.API.…`, and `$JS.{hub}.API.$KV.…` for KV writes), the hub the site's through
//!   `$JS.{silo}.API.…`;
//! - a leaf link has no response permission (`allow_responses` does not apply to it), so a
//!   kernel at the site answering a caller at the hub needs publish on `_INBOX.>`;
//! - JetStream's consumer-create answers travel on `$JSC.R.{random}`: they cannot be limited per
//!   site. A site could read another's consumer-create answers (consumer configurations, no
//!   payloads) or forge one; the deliveries themselves stay on each site's own link prefix.
//!
//! It forms no subject itself: every name comes from `ck_manifest::topics`.

use ck_manifest::topics::{self, ControlStore, InstallSubject, TopicKind};
use ck_subject::{PermissionList, Permissions};

/// One site's link to the hub.
#[derive(Debug, Clone)]
pub struct SiteLink<'a> {
    /// The site's name (its JetStream domain too).
    pub silo: &'a str,
    /// The hub's JetStream domain.
    pub hub_domain: &'a str,
    /// The kernels whose requests the hub may send to the site (`InstallPolicy::kernels_at`):
    /// `None` for any kernel.
    pub kernels: Option<&'a [String]>,
}

impl SiteLink<'_> {
    /// What a site's hosts ask the hub's JetStream through its domain (`$JS.{hub}.API.…`),
    /// which the link must carry too: the site's own keys of the hub's FLEET_STATE, and
    /// reading the hub's registry, serving records and component store (what an install
    /// request names). Never a write to the hub's control plane.
    fn hub_reads(&self) -> Vec<String> {
        let (silo, hub) = (self.silo, self.hub_domain);
        let state = topics::FLEET_STATE_BUCKET;
        let state_stream = format!("KV_{state}");
        let mut publish = vec![
            format!("$JS.{hub}.API.$KV.{state}.{silo}"),
            format!("$JS.{hub}.API.$KV.{state}.{silo}.>"),
            format!("$JS.{hub}.API.STREAM.INFO.{state_stream}"),
            format!("$JS.{hub}.API.DIRECT.GET.{state_stream}.$KV.{state}.{silo}"),
            format!("$JS.{hub}.API.DIRECT.GET.{state_stream}.$KV.{state}.{silo}.>"),
        ];
        for store in [ControlStore::Registry, ControlStore::Artifacts] {
            publish.extend(
                store
                    .read_api()
                    .iter()
                    .filter_map(|api| topics::in_domain(hub, api)),
            );
            // Flow control of the ordered consumers that read objects and list keys.
            publish.push(format!("$JS.FC.{}.>", store.stream()));
        }
        // Opening the hub's control plane looks its serving bucket up; its records are not read.
        publish.push(format!(
            "$JS.{hub}.API.STREAM.INFO.{}",
            ControlStore::Serving.stream()
        ));
        publish
    }

    /// What a serving host at the site needs on top of its `host` role: the hub reads
    /// ([`SiteLink::hub_reads`]) with their answers on the site's own inbox prefix (the only
    /// replies its link carries); the site's own control plane written (an installed version
    /// is copied into it and its loop events recorded, so the site serves and decides
    /// connects while cut off); the site's
    /// bucket [`topics::SITE_BUCKET`]; its requests taken from the site's mirror through the
    /// shared durable consumer; and its progress and done reports.
    pub fn site_host_access(&self) -> Permissions {
        let silo = self.silo;
        let mut publish = self.hub_reads();
        for store in [
            ControlStore::Registry,
            ControlStore::Serving,
            ControlStore::Artifacts,
            ControlStore::LoopEvents,
        ] {
            publish.extend(store.write_subjects());
        }
        let site = topics::SITE_BUCKET;
        let site_stream = format!("KV_{site}");
        publish.extend([
            format!("$KV.{site}.>"),
            format!("$JS.API.STREAM.INFO.{site_stream}"),
            format!("$JS.API.STREAM.MSG.GET.{site_stream}"),
            format!("$JS.API.DIRECT.GET.{site_stream}"),
            format!("$JS.API.DIRECT.GET.{site_stream}.>"),
            format!("$JS.API.CONSUMER.CREATE.{site_stream}"),
            format!("$JS.API.CONSUMER.CREATE.{site_stream}.>"),
            format!("$JS.API.CONSUMER.DELETE.{site_stream}.*"),
        ]);
        let requests = topics::fleet_install_stream(silo);
        let consumer = topics::INSTALL_CONSUMER;
        publish.extend([
            format!("$JS.API.STREAM.INFO.{requests}"),
            format!("$JS.API.CONSUMER.INFO.{requests}.{consumer}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{requests}.{consumer}"),
            format!("$JS.ACK.{requests}.{consumer}.>"),
            topics::fleet_install_subject(silo, InstallSubject::Progress),
            topics::fleet_install_subject(silo, InstallSubject::Done),
        ]);
        publish.sort();
        publish.dedup();
        Permissions {
            publish: PermissionList::allow_only(publish),
            subscribe: PermissionList::allow_only([format!(
                "{}.>",
                topics::fleet_site_inbox(silo)
            )]),
            allow_responses: None,
        }
    }

    /// What the site's operator needs on top of the `operator` role to link the site (`ck
    /// fleet link-site`): the site's mirror of its requests with its hosts' durable consumer,
    /// its reports stream and its bucket, each created and inspected — nothing else.
    pub fn site_operator_access(&self) -> Permissions {
        let requests = topics::fleet_install_stream(self.silo);
        let mut publish = Vec::new();
        for stream in [
            requests.clone(),
            topics::fleet_reports_stream(self.silo),
            format!("KV_{}", topics::SITE_BUCKET),
        ] {
            publish.push(format!("$JS.API.STREAM.CREATE.{stream}"));
            publish.push(format!("$JS.API.STREAM.INFO.{stream}"));
        }
        let consumer = topics::INSTALL_CONSUMER;
        publish.extend([
            format!("$JS.API.CONSUMER.CREATE.{requests}.{consumer}"),
            format!("$JS.API.CONSUMER.DURABLE.CREATE.{requests}.{consumer}"),
            format!("$JS.API.CONSUMER.INFO.{requests}.{consumer}"),
        ]);
        Permissions {
            publish: PermissionList::allow_only(publish),
            subscribe: PermissionList::allow_only([topics::CLIENT_INBOX]),
            allow_responses: None,
        }
    }

    /// The hub user's permissions for this link.
    pub fn permissions(&self) -> Permissions {
        let (silo, hub) = (self.silo, self.hub_domain);
        let install = |s| topics::fleet_install_subject(silo, s);
        let requests = topics::fleet_install_stream(silo);
        let reports = topics::fleet_reports_stream(silo);
        let link = format!("{}.>", topics::fleet_link_prefix(silo));
        let mut publish = vec![
            // What the site reports: host lifecycle, install progress and outcome, its scans
            // and audit findings.
            topics::fleet_events(silo),
            install(InstallSubject::Progress),
            install(InstallSubject::Done),
            format!("fleet.{silo}.scan.result"),
            format!("fleet.{silo}.audit.finding"),
            // Answers of the site's kernels to callers at the hub (no response permission on a
            // leaf link).
            topics::CLIENT_INBOX.to_owned(),
            // The site's mirror of its own requests: a consumer on its own hub stream only.
            format!("$JS.{hub}.API.STREAM.INFO.{requests}"),
            // A mirror asks without a consumer name or filter (measured: nats-server 2.15).
            format!("$JS.{hub}.API.CONSUMER.CREATE.{requests}"),
            format!("$JS.{hub}.API.CONSUMER.CREATE.{requests}.>"),
            format!("$JS.{hub}.API.CONSUMER.INFO.{requests}.*"),
            format!("$JS.{hub}.API.CONSUMER.DELETE.{requests}.*"),
            format!("$JS.FC.{requests}.>"),
            format!("$JS.FC.*.*.{requests}.>"),
            // The hub's source of the site's reports: deliveries on the site's link prefix.
            link.clone(),
            "$JSC.R.>".to_owned(),
        ];
        // What the site's hosts ask the hub's JetStream (its own FLEET_STATE keys, reading the
        // registry and the component store), through the hub's domain.
        publish.extend(self.hub_reads());
        let mut subscribe = vec![
            install(InstallSubject::Request),
            install(InstallSubject::Scrub),
            format!("fleet.{silo}.scan.request"),
            // Replies to the site's own requests to the hub, never the hub's `_INBOX.>`.
            format!("{}.>", topics::fleet_site_inbox(silo)),
            // The hub reaching the site's own JetStream (sourcing its reports, inspecting it).
            format!("$JS.{silo}.API.>"),
            link,
            "$JSC.R.>".to_owned(),
            format!("$JS.FC.{reports}.>"),
            format!("$JS.FC.*.*.{reports}.>"),
        ];
        match self.kernels {
            None => subscribe.push(format!("{}.>", TopicKind::Input.as_str())),
            Some(kernels) => {
                for k in kernels {
                    subscribe.push(topics::name_topic(TopicKind::Input, k));
                }
            }
        }
        publish.sort();
        publish.dedup();
        subscribe.sort();
        subscribe.dedup();
        Permissions {
            publish: PermissionList::allow_only(publish),
            subscribe: PermissionList::allow_only(subscribe),
            allow_responses: None,
        }
    }
}

/// What the hub's operator needs on top of the `operator` role to drive its sites (`ck fleet
/// link-hub`, `ck deploy`, `ck fleet scrub`, `ck build-agent`, or natscli): publishing each
/// site's requests and scrubs, following every site's install bus and events, creating and
/// inspecting the hub's streams of them, and the build pipeline's requests and answers.
pub fn hub_operator_access(silos: &[&str]) -> Permissions {
    let mut publish = Vec::new();
    let mut streams = vec![topics::FLEET_REPORTS_STREAM.to_owned()];
    for silo in silos {
        publish.push(topics::fleet_install_subject(silo, InstallSubject::Request));
        publish.push(topics::fleet_install_subject(silo, InstallSubject::Scrub));
        streams.push(topics::fleet_install_stream(silo));
        // Whether the site's mirror of its requests is active, through its domain.
        publish.push(format!(
            "$JS.{silo}.API.STREAM.INFO.{}",
            topics::fleet_install_stream(silo)
        ));
    }
    // Only FLEET_REPORTS is updated (to source sites added since).
    publish.push(format!(
        "$JS.API.STREAM.UPDATE.{}",
        topics::FLEET_REPORTS_STREAM
    ));
    for stream in &streams {
        for op in ["CREATE", "INFO"] {
            publish.push(format!("$JS.API.STREAM.{op}.{stream}"));
        }
        publish.push(format!("$JS.API.STREAM.MSG.GET.{stream}"));
        publish.push(format!("$JS.API.DIRECT.GET.{stream}"));
    }
    // The build pipeline: requests, and the agent's answers.
    publish.push("fleet.build.>".to_owned());
    Permissions {
        publish: PermissionList::allow_only(publish),
        subscribe: PermissionList::allow_only([
            "fleet.install.>",
            "fleet.events.>",
            "fleet.build.>",
        ]),
        // The build agent answers a build request to whoever asked (once, within a build's
        // time).
        allow_responses: Some(ck_subject::ResponsePermission {
            max: 1,
            expires_ms: 10 * 60 * 1000,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(silo: &str, kernels: Option<&[String]>) -> Permissions {
        SiteLink {
            silo,
            hub_domain: "hub",
            kernels,
        }
        .permissions()
    }

    #[test]
    fn a_site_link_reaches_only_its_own_install_and_state_subjects() {
        let a = link("ct-fac", None);
        for s in [
            "fleet.install.ct-fac.done",
            "fleet.install.ct-fac.progress",
            "fleet.events.ct-fac.boot",
            "$JS.hub.API.$KV.FLEET_STATE.ct-fac",
            "$JS.hub.API.$KV.FLEET_STATE.ct-fac.memory",
            "$JS.hub.API.CONSUMER.CREATE.FLEET_INSTALL_ct-fac",
        ] {
            assert!(a.can_publish(s), "{s}");
        }
        for s in [
            "fleet.install.ct-lab.done",
            "fleet.install.ct-fac.request",
            "fleet.install.ct-fac.scrub",
            "fleet.events.ct-lab.boot",
            "$JS.hub.API.$KV.FLEET_STATE.ct-lab",
            "$JS.hub.API.$KV.FLEET_STATE.ct-lab.memory",
            "$KV.FLEET_STATE.ct-fac",
            "$JS.hub.API.CONSUMER.CREATE.FLEET_INSTALL_ct-lab.x.fleet.install.ct-lab.>",
            "$JS.hub.API.CONSUMER.CREATE.FLEET_INSTALL_ct-lab",
            "$CK.LINK.ct-lab.M.x",
            "$JS.hub.API.STREAM.CREATE.FLEET_INSTALL_ct-fac",
        ] {
            assert!(!a.can_publish(s), "{s}");
        }
        assert!(a.can_subscribe("fleet.install.ct-fac.request"));
        assert!(!a.can_subscribe("fleet.install.ct-lab.request"));
        assert!(!a.can_subscribe("fleet.install.>"));
        assert!(!a.can_subscribe("_INBOX.>"));
        assert!(!a.can_subscribe("$CK.INBOX.ct-lab.x"));
        assert!(!a.can_subscribe("$JS.ct-lab.API.STREAM.INFO.X"));
    }

    #[test]
    fn a_site_host_reads_the_hub_and_writes_only_its_own_site() {
        let host = SiteLink {
            silo: "ct-fac",
            hub_domain: "hub",
            kernels: None,
        }
        .site_host_access();
        for s in [
            "$JS.hub.API.DIRECT.GET.KV_CK_REGISTRY.$KV.CK_REGISTRY.g-1.ck.abc",
            "$JS.hub.API.STREAM.INFO.OBJ_CK_ARTIFACTS",
            "$JS.hub.API.$KV.FLEET_STATE.ct-fac.host.h1",
            "$KV.CK_REGISTRY.g-1.ck.abc",
            "$KV.CK_SERVING.g-1",
            "$KV.CK_SITE.served.Demo.Echo",
            "$JS.API.CONSUMER.MSG.NEXT.FLEET_INSTALL_ct-fac.ck-install",
            "$JS.ACK.FLEET_INSTALL_ct-fac.ck-install.1.2.3.4.5",
            "fleet.install.ct-fac.done",
        ] {
            assert!(host.can_publish(s), "{s}");
        }
        for s in [
            "$JS.hub.API.$KV.CK_REGISTRY.g-1.ck.abc",
            "$JS.hub.API.$O.CK_ARTIFACTS.x",
            "$JS.hub.API.$KV.FLEET_STATE.ct-lab",
            "$JS.hub.API.STREAM.CREATE.KV_CK_REGISTRY",
            "$JS.API.STREAM.DELETE.KV_CK_SITE",
            "$JS.API.CONSUMER.MSG.NEXT.FLEET_INSTALL_ct-lab.ck-install",
            "$JS.API.CONSUMER.CREATE.FLEET_INSTALL_ct-fac.x",
            "fleet.install.ct-fac.request",
            "fleet.install.ct-lab.done",
        ] {
            assert!(!host.can_publish(s), "{s}");
        }
        assert!(host.can_subscribe("$CK.INBOX.ct-fac.x"));
        assert!(!host.can_subscribe("$CK.INBOX.ct-lab.x"));
        let link = link("ct-fac", None);
        assert!(
            link.can_publish("$JS.hub.API.DIRECT.GET.KV_CK_REGISTRY.$KV.CK_REGISTRY.g-1.ck.abc")
        );
        assert!(!link.can_publish("$KV.CK_REGISTRY.g-1.ck.abc"));
        assert!(!link.can_publish("$KV.CK_SITE.served.x"));
    }

    #[test]
    fn the_hub_operator_requests_installs_of_its_sites_only() {
        let op = hub_operator_access(&["ct-fac"]);
        assert!(op.can_publish("fleet.install.ct-fac.request"));
        assert!(op.can_publish("fleet.install.ct-fac.scrub"));
        assert!(op.can_publish("$JS.API.STREAM.CREATE.FLEET_INSTALL_ct-fac"));
        assert!(!op.can_publish("fleet.install.ct-fac.done"));
        assert!(!op.can_publish("fleet.install.ct-lab.request"));
        assert!(!op.can_publish("$JS.API.STREAM.DELETE.FLEET_INSTALL_ct-fac"));
        assert!(op.can_subscribe("fleet.install.ct-fac.>"));
    }

    #[test]
    fn the_install_policy_limits_the_kernels_a_site_receives_requests_for() {
        let kernels = ["Demo.Echo".to_owned()];
        let a = link("ct-fac", Some(&kernels));
        assert!(a.can_subscribe("input.Demo.Echo"));
        assert!(!a.can_subscribe("input.Demo.Tasks"));
        assert!(!a.can_subscribe("input.>"));
        assert!(link("ct-fac", None).can_subscribe("input.Demo.Tasks"));
    }
}

//! The install bus's messages and the site's own state (issue 16): what a request to a site
//! says, what the site answers on `progress` and `done`, and what the site keeps.
//!
//! | what | where |
//! |---|---|
//! | requests and scrubs, as the hub's operator published them | the site's mirror `FLEET_INSTALL_{silo}` ([`crate::link`]), taken through the durable consumer [`topics::INSTALL_CONSUMER`] |
//! | the kernels the site serves (name, GUID, version, digest, the request that put it there) | the site's KV [`topics::SITE_BUCKET`], keys `served.{kernel}` |
//! | every request id the site has taken on (and its stream sequence) | the same bucket, keys `request.{id}`, written once |
//! | an installed version (manifest, component) | the site's own control plane: copied from the hub's by [`ControlPlane::import`], so the site serves it and decides its connects while cut off |
//!
//! Every field of a request is hostile input: [`Request::parse`] bounds the message, refuses
//! unknown fields and checks each name's shape before anything is looked up. Verifying the
//! requester's proof and the install policy is the host's (`ck_serve`), which holds the trust
//! bundles; this module decides nothing about who may ask.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use ck_loops::serving::VersionRef;
use ck_manifest::topics::{self, InstallSubject};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{ControlError, ControlPlane, nats_error};

/// Largest request or scrub message: a JWT-SVID and a few names.
pub const MAX_REQUEST: usize = 16 * 1024;

/// How long a site host may work on one request before the consumer hands it out again (it
/// resumes: the request's id is already the site's, with the same stream sequence).
pub const INSTALL_ACK_WAIT: Duration = Duration::from_secs(10 * 60);

/// How often a request is handed out before it is given up (a request that crashes its host
/// every time must not stop the site taking the next).
pub const INSTALL_MAX_DELIVER: i64 = 5;

/// Which version a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VersionSpec {
    /// `"develop"`: the newest version published at the hub.
    Named(String),
    /// `{"ck": …, "tool": …}`: one published version, by its commits.
    Pin(VersionRef),
}

/// `fleet.install.{silo}.request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    /// The request's id: 1–64 of `[A-Za-z0-9_-]`; one request per id, ever, at a site.
    pub id: String,
    /// The kernel's class name.
    pub kernel: String,
    /// The kernel's GUID (the hub's registry is keyed by it).
    pub guid: String,
    /// The version.
    pub version: VersionSpec,
    /// The component's digest (`blake3:{hex}`): the site installs nothing else.
    pub digest: String,
    /// Who asks (a SPIFFE ID); the proof must prove it.
    pub requested_by: String,
    /// A JWT-SVID of `requested_by` addressed to the site's install audience.
    pub proof: String,
}

/// `fleet.install.{silo}.scrub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrubRequest {
    /// The request's id (as for an install).
    pub id: String,
    /// Why (kept in the receipt).
    #[serde(default)]
    pub reason: String,
    /// Who asks.
    pub requested_by: String,
    /// A JWT-SVID of `requested_by` addressed to the site's install audience.
    pub proof: String,
}

/// A request taken from the site's mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Install (or upgrade to) a version.
    Install(InstallRequest),
    /// Stop and remove every kernel, archiving their DATA.
    Scrub(ScrubRequest),
}

/// A request that cannot be carried out as sent: the reason, and its id when one could be
/// read (so the refusal can be matched to what was asked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Malformed {
    /// The request's id, when it had a well-formed one.
    pub id: Option<String>,
    /// What is wrong, naming the field.
    pub reason: String,
}

fn hex_of_len(s: &str, lens: &[usize]) -> bool {
    lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `name` can be a kernel class name here (it becomes a KV key and a directory name).
fn is_kernel_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
}

impl Request {
    /// Reads a message of the site's mirror: its subject says which kind it is.
    pub fn parse(silo: &str, subject: &str, payload: &[u8]) -> Result<Request, Malformed> {
        if payload.len() > MAX_REQUEST {
            return Err(Malformed {
                id: None,
                reason: format!(
                    "the request is {} bytes, over the {MAX_REQUEST}-byte limit",
                    payload.len()
                ),
            });
        }
        // The id first, leniently, so even a refused request is answered under its id.
        let id = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
            .filter(|id| topics::is_fleet_name(id));
        let bad = |reason: String| Malformed {
            id: id.clone(),
            reason,
        };
        let check_id = |v: &str| {
            if topics::is_fleet_name(v) {
                Ok(())
            } else {
                Err(bad(
                    "field `id` must be 1–64 of A-Z a-z 0-9 - _ (one per request)".into(),
                ))
            }
        };
        let check_requester = |v: &str| {
            if v.starts_with("spiffe://") && v.len() <= 2048 {
                Ok(())
            } else {
                Err(bad(format!(
                    "field `requested_by` must be a SPIFFE ID (spiffe://…), not `{}`",
                    v.chars().take(80).collect::<String>()
                )))
            }
        };
        if subject == topics::fleet_install_subject(silo, InstallSubject::Request) {
            let r: InstallRequest = serde_json::from_slice(payload)
                .map_err(|e| bad(format!("not an install request: {e}")))?;
            check_id(&r.id)?;
            check_requester(&r.requested_by)?;
            if !is_kernel_name(&r.kernel) {
                return Err(bad(
                    "field `kernel` must be a kernel class name (A-Z a-z 0-9 . - _, at most 128)"
                        .into(),
                ));
            }
            if !(1..=64).contains(&r.guid.len())
                || !r
                    .guid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(bad(
                    "field `guid` must be the kernel's GUID (A-Z a-z 0-9 -, at most 64)".into(),
                ));
            }
            match &r.version {
                VersionSpec::Named(n) if n == "develop" => {}
                VersionSpec::Named(n) => {
                    return Err(bad(format!(
                        "field `version` must be \"develop\" or {{\"ck\": COMMIT, \"tool\": COMMIT}}, not \"{}\"",
                        n.chars().take(40).collect::<String>()
                    )));
                }
                VersionSpec::Pin(p) => {
                    if !hex_of_len(&p.ck, &[40, 64]) || !hex_of_len(&p.tool, &[40, 64]) {
                        return Err(bad(
                            "field `version`: `ck` and `tool` must be full commit ids (40 or 64 hex digits)"
                                .into(),
                        ));
                    }
                }
            }
            if !r
                .digest
                .strip_prefix("blake3:")
                .is_some_and(|h| hex_of_len(h, &[64]))
            {
                return Err(bad(
                    "field `digest` must be the component's blake3:{64 hex digits}".into(),
                ));
            }
            Ok(Request::Install(r))
        } else if subject == topics::fleet_install_subject(silo, InstallSubject::Scrub) {
            let r: ScrubRequest = serde_json::from_slice(payload)
                .map_err(|e| bad(format!("not a scrub request: {e}")))?;
            check_id(&r.id)?;
            check_requester(&r.requested_by)?;
            if r.reason.len() > 1024 {
                return Err(bad("field `reason` is over 1024 bytes".into()));
            }
            Ok(Request::Scrub(r))
        } else {
            Err(bad(format!(
                "`{}` is not a request subject of silo {silo}",
                subject.chars().take(200).collect::<String>()
            )))
        }
    }

    /// The request's id.
    pub fn id(&self) -> &str {
        match self {
            Request::Install(r) => &r.id,
            Request::Scrub(r) => &r.id,
        }
    }

    /// Who asks, and their proof.
    pub fn requester(&self) -> (&str, &str) {
        match self {
            Request::Install(r) => (&r.requested_by, &r.proof),
            Request::Scrub(r) => (&r.requested_by, &r.proof),
        }
    }

    /// What the proof is bound to (the install policy's `{request}`).
    pub fn proof_binding(&self) -> String {
        match self {
            Request::Install(r) => r.proof_binding(),
            Request::Scrub(r) => r.proof_binding(),
        }
    }
}

impl InstallRequest {
    /// What this request's proof is bound to (the install policy's `{request}`): its id and
    /// the digest it installs, so a proof seen on the bus installs nothing else.
    pub fn proof_binding(&self) -> String {
        format!("{}:{}", self.id, self.digest)
    }
}

impl ScrubRequest {
    /// What this scrub's proof is bound to: its id and `scrub` (never a digest, so an
    /// install's proof cannot scrub).
    pub fn proof_binding(&self) -> String {
        format!("{}:scrub", self.id)
    }
}

/// One step of carrying a request out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// The request's shape, its id, the requester's proof and the install policy.
    Verify,
    /// Manifest and component from the hub, checked by digest, copied into the site's plane.
    Fetch,
    /// The component compiled (or taken from the compiled-component cache).
    Compile,
    /// The version loaded and swapped in.
    Load,
    /// The kernel's `status`, answered over NATS by the installed version.
    Health,
    /// Back to the version served before.
    Rollback,
    /// Kernels stopped, DATA archived, the served set emptied.
    Scrub,
}

/// `fleet.install.{silo}.progress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The request's id (None when it had no readable one).
    pub id: Option<String>,
    /// The step.
    pub step: Step,
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took, in milliseconds.
    pub ms: u64,
    /// What happened (the refusal's reason when not ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The version serves and answered its health check.
    Installed,
    /// The version failed its health check; the previous one serves again.
    RolledBack,
    /// Refused before anything changed (the reason says why).
    Refused,
    /// Failed part way (the reason says where); what serves is what `kernels` says.
    Failed,
    /// The site's kernels were stopped and removed, their DATA archived.
    Scrubbed,
}

/// One kernel the site serves, as `done` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedKernel {
    /// Class name.
    pub name: String,
    /// GUID.
    pub guid: String,
    /// `ck@…/tool@…`.
    pub version: String,
    /// The component's digest.
    pub digest: String,
    /// `ok`, or why not.
    pub health: String,
}

/// What a site hands back for a request it carried out (also appended to the site's audit
/// ledger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The verified requester.
    pub requester: String,
    /// The digest installed (None for a scrub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The SPIFFE ID of the host that carried it out.
    pub host: String,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The request's sequence in the site's mirror.
    pub seq: u64,
}

/// `fleet.install.{silo}.done`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// The request's id (None when it had no readable one).
    pub id: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, for anything but `installed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the site serves now.
    pub kernels: Vec<ServedKernel>,
    /// For a request carried out (installed, rolled back, scrubbed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

/// One kernel in the site's served set ([`topics::SITE_BUCKET`], `served.{kernel}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedEntry {
    /// Class name.
    pub kernel: String,
    /// GUID.
    pub guid: String,
    /// The version installed.
    pub pin: VersionRef,
    /// Its component's digest.
    pub digest: String,
    /// The request that installed it.
    pub request: String,
    /// When (RFC 3339).
    pub installed_at: String,
}

/// What the site's bucket says of a request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Never seen: it is this message's now.
    New,
    /// This very message, handed out again (its host stopped before acknowledging it).
    Resumed,
    /// Another message had this id first (at this stream sequence).
    Duplicate(u64),
}

/// The site's bucket: kept in the site's own domain, so it survives link cuts and restarts.
pub fn site_bucket_config() -> kv::Config {
    kv::Config {
        bucket: topics::SITE_BUCKET.into(),
        description: "ck site: the kernels this site serves and the requests it took on".into(),
        history: 5,
        max_value_size: 64 * 1024,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The durable consumer the site's hosts share on its mirror of requests.
pub fn install_consumer_config() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(topics::INSTALL_CONSUMER.into()),
        description: Some("ck site hosts: install requests and scrubs, one host each".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: INSTALL_ACK_WAIT,
        max_deliver: INSTALL_MAX_DELIVER,
        // One request at a time per site: installs of one kernel must not race.
        max_ack_pending: 1,
        ..Default::default()
    }
}

/// The site's bucket, opened (it is created by `ck fleet link-site`).
#[derive(Clone)]
pub struct SiteStore {
    kv: kv::Store,
}

fn encode<T: Serialize>(value: &T) -> Result<bytes::Bytes, ControlError> {
    serde_json::to_vec(value)
        .map(Into::into)
        .map_err(|e| ControlError::Refused(format!("encoding for {}: {e}", topics::SITE_BUCKET)))
}

impl SiteStore {
    /// Opens the site's bucket in `js`'s domain.
    pub async fn open(js: &jetstream::Context) -> Result<Self, ControlError> {
        let kv = js.get_key_value(topics::SITE_BUCKET).await.map_err(|e| {
            nats_error(format!("opening {}", topics::SITE_BUCKET))(format!(
                "{e} (`ck fleet link-site` creates it)"
            ))
        })?;
        Ok(Self { kv })
    }

    /// Every kernel the site serves.
    pub async fn served(&self) -> Result<Vec<ServedEntry>, ControlError> {
        let what = format!("listing {}", topics::SITE_BUCKET);
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| nats_error(what.clone())(e.to_string()))?;
        let mut served = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| nats_error(what.clone())(e.to_string()))?;
            if !key.starts_with("served.") {
                continue;
            }
            if let Some(bytes) = self
                .kv
                .get(&key)
                .await
                .map_err(|e| nats_error(format!("reading {key}"))(e.to_string()))?
            {
                served.push(serde_json::from_slice(&bytes).map_err(|e| {
                    ControlError::Integrity(format!(
                        "{} {key}: not a served entry: {e}",
                        topics::SITE_BUCKET
                    ))
                })?);
            }
        }
        Ok(served)
    }

    /// Records that the site serves `entry`.
    pub async fn put_served(&self, entry: &ServedEntry) -> Result<(), ControlError> {
        let key = topics::site_served_key(&entry.kernel);
        self.kv
            .put(&key, encode(entry)?)
            .await
            .map_err(|e| nats_error(format!("writing {key}"))(e.to_string()))?;
        Ok(())
    }

    /// Records that the site no longer serves `kernel`.
    pub async fn remove_served(&self, kernel: &str) -> Result<(), ControlError> {
        let key = topics::site_served_key(kernel);
        self.kv
            .delete(&key)
            .await
            .map_err(|e| nats_error(format!("deleting {key}"))(e.to_string()))?;
        Ok(())
    }

    /// Takes request `id` on for the message at stream sequence `seq`, verified as `requester`,
    /// once: written only if the id is new.
    pub async fn claim(&self, id: &str, seq: u64, requester: &str) -> Result<Claim, ControlError> {
        let key = topics::site_request_key(id);
        match self
            .kv
            .create(&key, format!("{seq} {requester}").into())
            .await
        {
            Ok(_) => Ok(Claim::New),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let first = self.claimed(id).await?.map_or(0, |(seq, _)| seq);
                Ok(if first == seq {
                    Claim::Resumed
                } else {
                    Claim::Duplicate(first)
                })
            }
            Err(e) => Err(nats_error(format!("writing {key}"))(e.to_string())),
        }
    }

    /// Who request `id` was taken on for, and the stream sequence of its message: a message
    /// handed out again (its host stopped before acknowledging it) resumes as that requester,
    /// whose proof was verified then and may have expired since.
    pub async fn claimed(&self, id: &str) -> Result<Option<(u64, String)>, ControlError> {
        let key = topics::site_request_key(id);
        let value = self
            .kv
            .get(&key)
            .await
            .map_err(|e| nats_error(format!("reading {key}"))(e.to_string()))?;
        Ok(value.and_then(|b| {
            let text = std::str::from_utf8(&b).ok()?.to_owned();
            let (seq, requester) = text.split_once(' ')?;
            Some((seq.parse().ok()?, requester.to_owned()))
        }))
    }
}

/// What [`ControlPlane::import`] copied.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The version.
    pub pin: VersionRef,
    /// Its manifest, as published.
    pub manifest: String,
    /// Its component's digest.
    pub digest: String,
    /// Its `.ck-guid`, as published.
    pub ck_guid: Option<String>,
    /// Whether the component was stored here now (false: the site had it).
    pub uploaded: bool,
}

impl ControlPlane {
    /// Copies version `pin` of kernel `guid` (class `kernel`) from `hub` into this plane: both
    /// registry documents, and the component unless this plane has it (checked by the hub
    /// store's SHA-256 and by blake3, after the registry's digest is checked against
    /// `digest`). Nothing is written unless every check passes; what exists is kept.
    pub async fn import(
        &self,
        hub: &ControlPlane,
        kernel: &str,
        guid: &str,
        pin: &VersionRef,
        digest: &str,
    ) -> Result<Imported, ControlError> {
        let ck = hub.ck_commit(guid, &pin.ck).await?;
        if ck.kernel != kernel {
            return Err(ControlError::Refused(format!(
                "kernel {guid} is published as {}, not as {kernel}; nothing installed",
                ck.kernel
            )));
        }
        let tool = hub.tool_commit(guid, &pin.tool).await?;
        if tool.digest != digest {
            return Err(ControlError::Integrity(format!(
                "the request names digest {digest}, but TOOL commit {} of {guid} published {}; nothing installed",
                ck_loops::serving::short(&pin.tool),
                tool.digest
            )));
        }
        // A component the site has already (an earlier install, a rollback) is not fetched
        // across the link again.
        let uploaded = if self.has_component(&tool.digest).await {
            false
        } else {
            let bytes = hub.fetch_component(&tool.digest).await?;
            self.put_component(&bytes).await?
        };
        self.put_commit_docs(&ck, &tool).await?;
        Ok(Imported {
            pin: pin.clone(),
            manifest: ck.manifest,
            ck_guid: ck.ck_guid,
            digest: tool.digest,
            uploaded,
        })
    }
}

impl ControlPlane {
    /// An install request for the newest published version (`develop`) of `kernel`, pinned by
    /// its commits and named by its component's digest as the hub's registry holds them — what
    /// `ck deploy` sends right after publishing. Its `proof` is empty: the requester's JWT-SVID
    /// is fetched for its [`InstallRequest::proof_binding`], which needs the digest.
    pub async fn develop_request(
        &self,
        kernel: &ck_manifest::Kernel,
        id: &str,
        requested_by: &str,
    ) -> Result<InstallRequest, ControlError> {
        let develop = self.develop(&kernel.guid).await?.ok_or_else(|| {
            ControlError::Refused(format!(
                "the hub has no published develop version of {} (`ck publish` it first)",
                kernel.name
            ))
        })?;
        let digest = self.tool_commit(&kernel.guid, &develop.tool).await?.digest;
        Ok(InstallRequest {
            id: id.to_owned(),
            kernel: kernel.name.clone(),
            guid: kernel.guid.clone(),
            version: VersionSpec::Pin(develop),
            digest,
            requested_by: requested_by.to_owned(),
            proof: String::new(),
        })
    }
}

/// A site's report (`progress` or `done`) as the CloudEvent it is published as: type
/// `ck.fleet.install.{progress|done}`, `source` the reporting host's SPIFFE ID, `subject` the
/// request's id, and an `id` made of the silo, the request, the kind and the report's own
/// blake3 digest — the same report sent again has the same id (it is also its
/// `Nats-Msg-Id`), two different reports never do. Returns the id and the document.
pub fn report_event<T: Serialize>(
    silo: &str,
    kind: InstallSubject,
    request: Option<&str>,
    host_spiffe_id: &str,
    report: &T,
) -> Result<(String, serde_json::Value), ControlError> {
    let data = serde_json::to_value(report)
        .map_err(|e| ControlError::Refused(format!("encoding the report: {e}")))?;
    let id = format!(
        "{silo}:{}:{}:{}",
        request.unwrap_or("-"),
        kind.name(),
        ck_events::content_key(&data)
    );
    let ty = format!("ck.fleet.install.{}", kind.name());
    let event = ck_events::EventSpec {
        id: &id,
        source: host_spiffe_id,
        ty: &ty,
        subject: request,
        time: &ck_events::now(),
        data,
        extensions: Vec::new(),
    }
    .structured()
    .map_err(|e| ControlError::Refused(e.to_string()))?;
    Ok((id, event))
}

/// The data of a site's report (a structured CloudEvent of a `ck.fleet.install.` type), if
/// the payload is one.
pub fn report_data(payload: &[u8]) -> Option<serde_json::Value> {
    let event: ck_events::Event = serde_json::from_slice(payload).ok()?;
    if !ck_events::has_type_prefix(&event, "ck.fleet.install.") {
        return None;
    }
    ck_events::json_data(&event)
}

/// A report of a request, as the hub sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// One step.
    Progress(Progress),
    /// The outcome.
    Done(Done),
}

/// Follows one request's reports (`progress` then `done`) at the hub.
pub struct RequestWatch {
    reports: async_nats::Subscriber,
    id: String,
}

impl RequestWatch {
    /// The next report of this request; None when the subscription ended.
    pub async fn next(&mut self) -> Option<Report> {
        while let Some(message) = self.reports.next().await {
            let Some(kind) = message.subject.as_str().rsplit('.').next() else {
                continue;
            };
            // Reports are the site's: anything unreadable is skipped, not trusted.
            if !matches!(kind, "progress" | "done") {
                continue;
            }
            let data = report_data(&message.payload);
            let report = match (kind, data) {
                ("progress", Some(data)) => serde_json::from_value(data).ok().map(Report::Progress),
                ("done", Some(data)) => serde_json::from_value(data).ok().map(Report::Done),
                _ => None,
            };
            if report.is_none() {
                // A site's report that is not a `ck.fleet.install.*` CloudEvent (a host older
                // than this ck, or anything else): skipped, and said so.
                tracing::warn!(subject = %message.subject, bytes = message.payload.len(), "report.unreadable");
            }
            let id = match &report {
                Some(Report::Progress(p)) => p.id.as_deref(),
                Some(Report::Done(d)) => d.id.as_deref(),
                None => None,
            };
            if id == Some(self.id.as_str()) {
                return report;
            }
        }
        None
    }
}

/// Publishes a request (`kind` is `Request` or `Scrub`) to silo `silo` at the hub, kept by the
/// hub's stream of the site's requests under `id` (`Nats-Msg-Id`: sent twice, it is kept
/// once), and follows its reports. Subscribed before publishing, so no report is missed.
pub async fn send(
    js: &jetstream::Context,
    silo: &str,
    kind: InstallSubject,
    id: &str,
    body: &impl Serialize,
) -> Result<RequestWatch, ControlError> {
    if !kind.from_hub() {
        return Err(ControlError::Refused(format!(
            "`{}` is the site's to publish, not a request",
            kind.name()
        )));
    }
    let client = js.client();
    let what = format!("subscribing to silo {silo}'s reports");
    let reports = client
        .subscribe(format!("fleet.install.{silo}.*"))
        .await
        .map_err(|e| nats_error(what)(e.to_string()))?;
    let subject = topics::fleet_install_subject(silo, kind);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    let payload = serde_json::to_vec(body)
        .map_err(|e| ControlError::Refused(format!("encoding the request: {e}")))?;
    let ack = js
        .publish_with_headers(subject.clone(), headers, payload.into())
        .await
        .map_err(|e| nats_error(format!("publishing on {subject}"))(e.to_string()))?
        .await
        .map_err(|e| {
            nats_error(format!("publishing on {subject}"))(format!(
                "{e} (the hub keeps a site's requests in {}: `ck fleet link-hub --site {silo}` creates it)",
                topics::fleet_install_stream(silo)
            ))
        })?;
    if ack.duplicate {
        tracing::info!(target: "ck::control", id, "install.request-duplicate");
    }
    Ok(RequestWatch {
        reports,
        id: id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(edit: impl Fn(&mut serde_json::Value)) -> Result<Request, Malformed> {
        let mut body = serde_json::json!({
            "id": "r-1",
            "kernel": "Demo.Echo",
            "guid": "0e1c4a5b-2d3f",
            "version": "develop",
            "digest": format!("blake3:{}", "a".repeat(64)),
            "requested_by": "spiffe://ck.local/operator/alice",
            "proof": "x.y.z",
        });
        edit(&mut body);
        Request::parse(
            "ct-fac",
            "fleet.install.ct-fac.request",
            body.to_string().as_bytes(),
        )
    }

    #[test]
    fn a_well_formed_request_is_read() {
        let r = request(|_| {}).unwrap();
        assert_eq!(r.id(), "r-1");
        assert_eq!(r.requester().0, "spiffe://ck.local/operator/alice");
        let pinned = request(|b| {
            b["version"] = serde_json::json!({"ck": "1".repeat(40), "tool": "2".repeat(64)})
        });
        assert!(pinned.is_ok(), "{pinned:?}");
    }

    #[test]
    fn each_malformed_field_is_named_and_the_id_kept() {
        for (edit, field) in [
            (
                Box::new(|b: &mut serde_json::Value| b["id"] = "a.b".into())
                    as Box<dyn Fn(&mut serde_json::Value)>,
                "`id`",
            ),
            (Box::new(|b| b["kernel"] = "../etc".into()), "`kernel`"),
            (Box::new(|b| b["guid"] = "g/1".into()), "`guid`"),
            (Box::new(|b| b["version"] = "v622".into()), "`version`"),
            (
                Box::new(|b| b["version"] = serde_json::json!({"ck": "abc", "tool": "def"})),
                "`version`",
            ),
            (Box::new(|b| b["digest"] = "sha256:00".into()), "`digest`"),
            (
                Box::new(|b| b["requested_by"] = "alice".into()),
                "`requested_by`",
            ),
            (Box::new(|b| b["extra"] = 1.into()), "unknown field `extra`"),
        ] {
            let refused = request(edit).unwrap_err();
            assert!(refused.reason.contains(field), "{field}: {refused}");
            if field != "`id`" {
                assert_eq!(refused.id.as_deref(), Some("r-1"), "{field}");
            }
        }
        let big = "x".repeat(MAX_REQUEST);
        let refused = request(|b| b["proof"] = big.clone().into()).unwrap_err();
        assert!(refused.reason.contains("limit"), "{refused}");
        let other = Request::parse("ct-fac", "fleet.install.ct-lab.request", b"{}").unwrap_err();
        assert!(other.reason.contains("not a request subject"), "{other}");
    }
}

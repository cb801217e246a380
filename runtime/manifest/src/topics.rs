//! Every NATS subject name CKP defines, formed in exactly one place.
//!
//! Nothing else in the code base spells `input.`, `result.`, `ck.{guid}.` or `_INBOX_`: the
//! manifest resolves a kernel's topics here, the ACL compiler asks here for the subjects a grant
//! opens, and the host publishes loop events through [`loop_event_subject`].

use std::fmt;

use serde::Serialize;

/// The four topic kinds a kernel declares (ckp-spec §1.2; `stream` is v3.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicKind {
    /// Requests to the kernel.
    Input,
    /// Results the kernel publishes.
    Result,
    /// Events the kernel publishes.
    Event,
    /// Streamed partial output (agent kernels).
    Stream,
}

impl TopicKind {
    /// All kinds, in manifest order.
    pub const ALL: [TopicKind; 4] = [
        TopicKind::Input,
        TopicKind::Result,
        TopicKind::Event,
        TopicKind::Stream,
    ];

    /// The name used in subjects and in `spec.nats.{name}_topic`.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Input => "input",
            TopicKind::Result => "result",
            TopicKind::Event => "event",
            TopicKind::Stream => "stream",
        }
    }
}

/// How default topics are formed (`spec.nats.format`, ours: the docs define no key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicFormat {
    /// `input.{KernelName}` — the v3.2 primary standard.
    #[default]
    Name,
    /// `ck.{guid}.input` — the multi-instance SPIFFE extension.
    Guid,
}

/// Name-based topic: `input.{KernelName}`.
pub fn name_topic(kind: TopicKind, kernel_name: &str) -> String {
    format!("{}.{kernel_name}", kind.as_str())
}

/// GUID-based topic: `ck.{guid}.input`.
pub fn guid_topic(kind: TopicKind, guid: &str) -> String {
    format!("{KERNEL_PREFIX}.{guid}.{}", kind.as_str())
}

/// The default topic for `kind` under `format`.
pub fn default_topic(
    format: TopicFormat,
    kind: TopicKind,
    kernel_name: &str,
    guid: &str,
) -> String {
    match format {
        TopicFormat::Name => name_topic(kind, kernel_name),
        TopicFormat::Guid => guid_topic(kind, guid),
    }
}

/// First token of every GUID-scoped subject.
pub const KERNEL_PREFIX: &str = "ck";

/// Every subject a kernel owns outright: `ck.{guid}.>` (never `ck.{guid}.*`, which would not
/// cover the four-token per-loop subjects).
pub fn kernel_namespace(guid: &str) -> String {
    format!("{KERNEL_PREFIX}.{guid}.>")
}

/// The per-loop event namespace, e.g. `ck.{guid}.data.>`.
pub fn loop_namespace(guid: &str, lp: Loop) -> String {
    format!("{KERNEL_PREFIX}.{guid}.{}.>", lp.as_str())
}

/// Stem of every private reply prefix (`_INBOX_` + guid).
pub const PRIVATE_INBOX_STEM: &str = "_INBOX_";

/// The kernel's private reply prefix: `_INBOX_{guid}`. Its requests use it as the inbox prefix,
/// and only it may subscribe to `_INBOX_{guid}.>`; nobody gets `_INBOX.>`.
pub fn inbox_prefix(guid: &str) -> String {
    format!("{PRIVATE_INBOX_STEM}{guid}")
}

/// Subscription covering the kernel's private replies: `_INBOX_{guid}.>`.
pub fn inbox_namespace(guid: &str) -> String {
    format!("{}.>", inbox_prefix(guid))
}

/// The JetStream key-value bucket holding a kernel's task lifecycle state: `ck_tasks_{guid}`
/// (bucket names admit no `-`).
pub fn task_bucket(guid: &str) -> String {
    format!("ck_tasks_{}", guid.replace('-', "_"))
}

/// The JetStream stream keeping a kernel's DATA loop events (`ck.{guid}.data.>`), so that their
/// `Nats-Msg-Id`s deduplicate replays.
pub fn data_event_stream(guid: &str) -> String {
    format!("{DATA_EVENT_STREAM_PREFIX}{}", guid.replace('-', "_"))
}

/// The prefix of every kernel's DATA event stream name ([`data_event_stream`]).
pub const DATA_EVENT_STREAM_PREFIX: &str = "ck_data_";

/// The control plane's registry bucket (JetStream KV): every published CK and TOOL commit of
/// every kernel (`{guid}.ck.{commit}`: the manifest; `{guid}.tool.{commit}`: the component's
/// digest; `{guid}.develop`: the newest published version). Written only by operators.
pub const REGISTRY_BUCKET: &str = "CK_REGISTRY";
/// The control plane's serving bucket (JetStream KV): one serving record per kernel, key
/// `{guid}`, changed only by revision-checked updates and watched by every serving host.
pub const SERVING_BUCKET: &str = "CK_SERVING";
/// The control plane's object store of components, each named by its blake3 digest (hex).
pub const ARTIFACT_STORE: &str = "CK_ARTIFACTS";
/// The stream of CK and TOOL loop events of every kernel (DATA events have their kernel's own
/// stream), deduplicated by `Nats-Msg-Id`: several hosts of one kernel publish each event
/// once.
pub const LOOP_EVENT_STREAM: &str = "CK_LOOP_EVENTS";

/// Registry key of kernel `guid`'s CK or TOOL commit `commit`.
pub fn registry_commit_key(guid: &str, lp: Loop, commit: &str) -> String {
    format!("{guid}.{}.{commit}", lp.as_str())
}

/// Registry key of kernel `guid`'s newest published `develop` version.
pub fn registry_develop_key(guid: &str) -> String {
    format!("{guid}.develop")
}

/// Serving-bucket key of kernel `guid`.
pub fn serving_key(guid: &str) -> String {
    guid.to_owned()
}

/// The fleet's last-value state (JetStream KV): per silo `{silo}` (its hosts and kernels),
/// `{silo}.memory` (memory tiers), `{silo}.gpu` (GPU pools, where a GPU is present) and
/// `{silo}.host.{host}` (one host); a silent host's key is removed by the bucket's max age and
/// watchers see the server's marker.
pub const FLEET_STATE_BUCKET: &str = "FLEET_STATE";

/// Host lifecycle events of the fleet document (names kept from the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetEvent {
    /// A host started: `fleet.events.{silo}.boot`.
    Boot,
    /// A host's readiness changed: `fleet.events.{silo}.pod.ready`.
    PodReady,
    /// A host's heartbeat: `fleet.events.{silo}.gamma1.pulse`.
    Pulse,
    /// A host's memory tier fell: `fleet.events.{silo}.mal.tier_down`.
    TierDown,
}

impl FleetEvent {
    /// The subject's tail after the silo.
    pub fn name(self) -> &'static str {
        match self {
            FleetEvent::Boot => "boot",
            FleetEvent::PodReady => "pod.ready",
            FleetEvent::Pulse => "gamma1.pulse",
            FleetEvent::TierDown => "mal.tier_down",
        }
    }
}

/// `fleet.events.{silo}.{event}`.
pub fn fleet_event_subject(silo: &str, event: FleetEvent) -> String {
    format!("fleet.events.{silo}.{}", event.name())
}

/// Every fleet event of silo `silo`: `fleet.events.{silo}.>`.
pub fn fleet_events(silo: &str) -> String {
    format!("fleet.events.{silo}.>")
}

/// `FLEET_STATE` key of silo `silo`'s summary.
pub fn fleet_silo_key(silo: &str) -> String {
    silo.to_owned()
}

/// `FLEET_STATE` key of silo `silo`'s memory tiers.
pub fn fleet_memory_key(silo: &str) -> String {
    format!("{silo}.memory")
}

/// `FLEET_STATE` key of silo `silo`'s GPU pools.
pub fn fleet_gpu_key(silo: &str) -> String {
    format!("{silo}.gpu")
}

/// `FLEET_STATE` key of host `host` of silo `silo`.
pub fn fleet_host_key(silo: &str, host: &str) -> String {
    format!("{silo}.host.{host}")
}

/// One subject of a silo's install bus: `fleet.install.{silo}.{step}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallSubject {
    /// An install request, published at the hub.
    Request,
    /// One step of carrying a request out, published by the site.
    Progress,
    /// The outcome of a request (with its receipt), published by the site.
    Done,
    /// Stop and remove the site's kernels, archiving their DATA; published at the hub.
    Scrub,
}

impl InstallSubject {
    /// Every install subject.
    pub const ALL: [InstallSubject; 4] = [
        InstallSubject::Request,
        InstallSubject::Progress,
        InstallSubject::Done,
        InstallSubject::Scrub,
    ];

    /// The subject's last token.
    pub fn name(self) -> &'static str {
        match self {
            InstallSubject::Request => "request",
            InstallSubject::Progress => "progress",
            InstallSubject::Done => "done",
            InstallSubject::Scrub => "scrub",
        }
    }

    /// Whether the hub publishes it (request, scrub) rather than the site (progress, done).
    pub fn from_hub(self) -> bool {
        matches!(self, InstallSubject::Request | InstallSubject::Scrub)
    }
}

/// `fleet.install.{silo}.{step}`.
pub fn fleet_install_subject(silo: &str, subject: InstallSubject) -> String {
    format!("fleet.install.{silo}.{}", subject.name())
}

/// The hub's stream of silo `silo`'s requests and scrubs (`fleet.install.{silo}.request|scrub`),
/// and the site's mirror of it (same name, in the site's own JetStream domain): a request
/// published while the site is cut off waits at the hub and reaches the site once.
pub fn fleet_install_stream(silo: &str) -> String {
    format!("FLEET_INSTALL_{silo}")
}

/// The site's stream (in its own domain) of what it reports (`fleet.install.{silo}.progress|done`),
/// which the hub's [`FLEET_REPORTS_STREAM`] sources: reports made while cut off reach the hub
/// when the link returns.
pub fn fleet_reports_stream(silo: &str) -> String {
    format!("FLEET_REPORTS_{silo}")
}

/// The hub's stream sourcing every site's [`fleet_reports_stream`].
pub const FLEET_REPORTS_STREAM: &str = "FLEET_REPORTS";

/// The delivery prefix of the JetStream traffic between a site and the hub (the site's mirror
/// of its requests, the hub's source of its reports): `$CK.LINK.{silo}`, so each site's link
/// user can be limited to its own deliveries.
pub fn fleet_link_prefix(silo: &str) -> String {
    format!("$CK.LINK.{silo}")
}

/// The inbox prefix of a site's own connections that ask the hub something (JetStream API
/// answers, object reads): `$CK.INBOX.{silo}` — a site's link receives only its own replies,
/// never the hub's `_INBOX.>`.
pub fn fleet_site_inbox(silo: &str) -> String {
    format!("$CK.INBOX.{silo}")
}

/// The build pipeline's subjects of kernel `guid`: `fleet.build.{guid}.request` (`{ref}`, at the
/// hub) and `fleet.build.{guid}.done` (the build agent's answer). The GUID, one token, names the
/// kernel: a class name (`Demo.Echo`) would be several.
pub fn fleet_build_subject(guid: &str, done: bool) -> String {
    format!(
        "fleet.build.{guid}.{}",
        if done { "done" } else { "request" }
    )
}

/// The site's own KV bucket (in its domain): what it was asked to serve, kept across restarts
/// and link cuts.
pub const SITE_BUCKET: &str = "CK_SITE";

/// The durable consumer a site's hosts share on the site's mirror of its requests
/// ([`fleet_install_stream`]): each request is handed to one host and acknowledged once done.
pub const INSTALL_CONSUMER: &str = "ck-install";

/// [`SITE_BUCKET`]'s key of a kernel the site serves: `served.{kernel}`.
pub fn site_served_key(kernel: &str) -> String {
    format!("served.{kernel}")
}

/// [`SITE_BUCKET`]'s key of an install request the site has taken on: `request.{id}` (written
/// once, so a second request with the same id is refused).
pub fn site_request_key(id: &str) -> String {
    format!("request.{id}")
}

/// Whether `name` can be a silo or host name (one subject token, also a KV key token):
/// 1–64 of `[A-Za-z0-9_-]`.
pub fn is_fleet_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Names a silo may not take: the literals beside `{silo}` in the fleet families
/// (`policies/subject-families.yaml`). A silo named `events` would have its
/// `fleet.{silo}.scan.*` subjects inside `fleet.events.>`.
pub const RESERVED_SILO_NAMES: [&str; 6] = ["events", "install", "state", "build", "lean", "agent"];

/// Why a name cannot be a silo's.
pub fn silo_name_problem(silo: &str) -> Option<String> {
    if !is_fleet_name(silo) {
        Some(format!(
            "silo name `{silo}` must be 1–64 of A-Z a-z 0-9 - _ (it is a subject token and a JetStream domain)"
        ))
    } else if RESERVED_SILO_NAMES.contains(&silo) {
        Some(format!(
            "silo name `{silo}` is reserved: it is a fleet family's own token ({})",
            RESERVED_SILO_NAMES.join(", ")
        ))
    } else {
        None
    }
}

/// One of the control plane's stores, for permissions (`ck_acl::control`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ControlStore {
    /// [`REGISTRY_BUCKET`].
    Registry,
    /// [`SERVING_BUCKET`].
    Serving,
    /// [`ARTIFACT_STORE`].
    Artifacts,
    /// [`LOOP_EVENT_STREAM`].
    LoopEvents,
    /// [`FLEET_STATE_BUCKET`] and the fleet events (`fleet.events.>`).
    FleetState,
}

impl ControlStore {
    /// Every store.
    pub const ALL: [ControlStore; 5] = [
        ControlStore::Registry,
        ControlStore::Serving,
        ControlStore::Artifacts,
        ControlStore::LoopEvents,
        ControlStore::FleetState,
    ];

    /// The JetStream stream behind it.
    pub fn stream(self) -> String {
        match self {
            ControlStore::Registry => format!("KV_{REGISTRY_BUCKET}"),
            ControlStore::Serving => format!("KV_{SERVING_BUCKET}"),
            ControlStore::Artifacts => format!("OBJ_{ARTIFACT_STORE}"),
            ControlStore::LoopEvents => LOOP_EVENT_STREAM.to_owned(),
            ControlStore::FleetState => format!("KV_{FLEET_STATE_BUCKET}"),
        }
    }

    /// What reading it takes on the JetStream API: stream info, direct and stored message
    /// gets, and (ordered) consumers for watches, key listings and object reads.
    pub fn read_api(self) -> Vec<String> {
        let s = self.stream();
        vec![
            format!("$JS.API.STREAM.INFO.{s}"),
            format!("$JS.API.STREAM.MSG.GET.{s}"),
            format!("$JS.API.DIRECT.GET.{s}"),
            format!("$JS.API.DIRECT.GET.{s}.>"),
            format!("$JS.API.CONSUMER.CREATE.{s}"),
            format!("$JS.API.CONSUMER.CREATE.{s}.>"),
            format!("$JS.API.CONSUMER.INFO.{s}.*"),
            format!("$JS.API.CONSUMER.DELETE.{s}.*"),
        ]
    }

    /// The subjects writing it publishes on.
    pub fn write_subjects(self) -> Vec<String> {
        match self {
            ControlStore::Registry => vec![format!("$KV.{REGISTRY_BUCKET}.>")],
            ControlStore::Serving => vec![format!("$KV.{SERVING_BUCKET}.>")],
            ControlStore::Artifacts => vec![format!("$O.{ARTIFACT_STORE}.>")],
            ControlStore::LoopEvents => loop_event_stream_subjects(),
            ControlStore::FleetState => vec![
                format!("$KV.{FLEET_STATE_BUCKET}.>"),
                "fleet.events.>".to_owned(),
            ],
        }
    }

    /// Creating it.
    pub fn create_api(self) -> String {
        format!("$JS.API.STREAM.CREATE.{}", self.stream())
    }

    /// Administering it (no `ck` command does): update, delete, purge, message delete.
    pub fn admin_api(self) -> Vec<String> {
        let s = self.stream();
        ["UPDATE", "DELETE", "PURGE", "MSG.DELETE"]
            .iter()
            .map(|op| format!("$JS.API.STREAM.{op}.{s}"))
            .collect()
    }
}

/// `subject` as a client reaches it in JetStream domain `domain` (`*`: any domain): an API
/// request `$JS.API.…` becomes `$JS.{domain}.API.…`, and a KV or object-store write (`$KV.…`,
/// `$O.…`) travels as `$JS.{domain}.API.$KV.…`. Anything else has no domain form.
pub fn in_domain(domain: &str, subject: &str) -> Option<String> {
    match subject.strip_prefix("$JS.API.") {
        Some(rest) => Some(format!("$JS.{domain}.API.{rest}")),
        None => (subject.starts_with("$KV.") || subject.starts_with("$O."))
            .then(|| format!("$JS.{domain}.API.{subject}")),
    }
}

/// The JetStream account-information request every JetStream client may send.
pub const JS_ACCOUNT_INFO: &str = "$JS.API.INFO";

/// Replies of a client using the default inbox prefix.
pub const CLIENT_INBOX: &str = "_INBOX.>";

/// What an HVFS projection of a loop event is about: a new commit of a loop, or a moved ref.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HvfsKind {
    /// A new commit (CK or TOOL snapshot; a DATA seal or amendment, committed to the DATA
    /// repository).
    Commit,
    /// A branch or serving pointer moved (ref update, promote, rollback, canary).
    Ref,
}

impl HvfsKind {
    /// Token used in subjects and CloudEvent types.
    pub fn as_str(self) -> &'static str {
        match self {
            HvfsKind::Commit => "commit",
            HvfsKind::Ref => "ref",
        }
    }

    /// What a loop event is, for the source-control substrate, if it is anything: commits and
    /// ref moves are; per-call TOOL events and DATA bookkeeping are not.
    pub fn of(event: LoopEvent) -> Option<HvfsKind> {
        match event {
            LoopEvent::CkCommit
            | LoopEvent::ToolCommit
            | LoopEvent::DataWritten
            | LoopEvent::DataAmended => Some(HvfsKind::Commit),
            LoopEvent::CkRefUpdate
            | LoopEvent::CkPromote
            | LoopEvent::CkRollback
            | LoopEvent::CkCanary
            | LoopEvent::ToolRefUpdate
            | LoopEvent::ToolPromote => Some(HvfsKind::Ref),
            _ => None,
        }
    }
}

/// `platform.hvfs.{commit|ref}.v1.{loop}.{guid}`: the HVFS lane's projection of a loop event
/// (family `platform.hvfs`; the kernel's GUID is the last token, the key `latest-per-key`
/// replays by).
pub fn hvfs_subject(kind: HvfsKind, lp: Loop, guid: &str) -> String {
    format!("platform.hvfs.{}.v1.{}.{guid}", kind.as_str(), lp.as_str())
}

/// The loop event a subject `ck.{guid}.{loop}.{event}` carries, with the GUID.
pub fn parse_loop_event_subject(subject: &str) -> Option<(&str, LoopEvent)> {
    let rest = subject.strip_prefix(KERNEL_PREFIX)?.strip_prefix('.')?;
    let (guid, event) = rest.split_once('.')?;
    Some((guid, event.parse().ok()?))
}

/// The subjects [`LOOP_EVENT_STREAM`] keeps: the CK loop's events and the TOOL loop's
/// version events of every kernel — not the TOOL loop's per-call events (`tool.invoked`,
/// `tool.completed`, `tool.failed`), which are one per request and no part of a version's
/// history.
pub fn loop_event_stream_subjects() -> Vec<String> {
    LoopEvent::ALL
        .iter()
        .filter(|e| match e.loop_() {
            Loop::Ck => true,
            Loop::Tool => !matches!(
                e,
                LoopEvent::ToolInvoked | LoopEvent::ToolCompleted | LoopEvent::ToolFailed
            ),
            Loop::Data => false,
        })
        .map(|e| format!("{KERNEL_PREFIX}.*.{}.{}", e.loop_().as_str(), e.name()))
        .collect()
}

/// The object store keeping a copy of every sealed instance of a kernel in the cluster
/// (`ck_sealed_{guid}`, one object per instance), written before a completion is answered and
/// read back by `ck restore`.
pub fn sealed_store(guid: &str) -> String {
    format!("ck_sealed_{}", guid.replace('-', "_"))
}

/// The JetStream API subjects the host publishes on for one kernel's own lifecycle bucket,
/// DATA event stream and sealed-instance store (over that kernel's connection): reading them
/// (`STREAM.INFO`, `DIRECT.GET`), writing task records (`$KV.{bucket}.>`) and sealed
/// instances (`$O.{store}.>`). No administration: no `STREAM.CREATE` (its
/// configuration could name foreign subjects, a mirror or sources) and no `CONSUMER.CREATE` (a
/// push consumer could deliver to any subject); the callout provisions the bucket and the
/// stream (`ck_task::provision`). Nothing else of JetStream is opened.
pub fn host_jetstream_subjects(guid: &str) -> Vec<String> {
    let bucket = task_bucket(guid);
    let kv = format!("KV_{bucket}");
    let events = data_event_stream(guid);
    let sealed = sealed_store(guid);
    let objects = format!("OBJ_{sealed}");
    vec![
        "$JS.API.INFO".to_owned(),
        format!("$JS.API.STREAM.INFO.{kv}"),
        format!("$JS.API.DIRECT.GET.{kv}"),
        format!("$JS.API.DIRECT.GET.{kv}.>"),
        format!("$JS.API.STREAM.MSG.GET.{kv}"),
        format!("$KV.{bucket}.>"),
        format!("$JS.API.STREAM.INFO.{events}"),
        format!("$JS.API.STREAM.INFO.{objects}"),
        format!("$JS.API.DIRECT.GET.{objects}"),
        format!("$JS.API.DIRECT.GET.{objects}.>"),
        format!("$O.{sealed}.>"),
    ]
}

/// Subjects a kernel's guest may never publish on, even where its connection may: the loop
/// events (the host alone reports what happened to the CK, TOOL and DATA loops) and JetStream
/// (the host alone writes lifecycle state).
pub fn host_reserved(guid: &str) -> Vec<String> {
    vec![
        loop_namespace(guid, Loop::Ck),
        loop_namespace(guid, Loop::Tool),
        loop_namespace(guid, Loop::Data),
        "$JS.>".to_owned(),
        "$KV.>".to_owned(),
        "$O.>".to_owned(),
    ]
}

/// Longest reply subject a host answers on (inboxes are far shorter; anything longer is not
/// an inbox).
pub const MAX_REPLY_SUBJECT: usize = 256;

/// The stem of the NATS clients' default inbox prefix (`_INBOX.{nuid}…`).
pub const CLIENT_INBOX_STEM: &str = "_INBOX";

/// Why a host will not answer on a request's reply subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyRefused {
    /// Longer than [`MAX_REPLY_SUBJECT`].
    #[error("reply subject is {len} bytes; at most {MAX_REPLY_SUBJECT} are answered")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Not a publishable subject (an empty token, a wildcard, white space or a control
    /// character).
    #[error("reply subject is not a publishable subject: {0}")]
    Malformed(&'static str),
    /// A subject, but not a caller's inbox: answering there would make the host write, with
    /// its own credentials, where the caller chose (a KV bucket, a loop event, another
    /// kernel's input).
    #[error(
        "reply subject is not an inbox (`_INBOX.…` or `_INBOX_{{guid}}.…`); answers go only to a caller's inbox"
    )]
    NotAnInbox,
}

/// The reply subjects a host answers on: a caller's inbox — `_INBOX.{token}…` (the NATS
/// clients' default prefix) or a kernel's private `_INBOX_{guid}.{token}…` ([`inbox_prefix`]).
/// Never `$KV.>`, `$JS.>`, `$SYS.>`, `$O.>`, `ck.{guid}.>` or any kernel topic: those are all
/// outside the inbox families, whatever the caller writes.
pub fn check_reply_subject(reply: &str) -> Result<(), ReplyRefused> {
    if reply.len() > MAX_REPLY_SUBJECT {
        return Err(ReplyRefused::TooLong { len: reply.len() });
    }
    if reply
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(ReplyRefused::Malformed(
            "white space or a control character",
        ));
    }
    // One pass over the tokens, no allocation: this runs for every message served.
    let mut tokens = reply.split('.');
    let first = tokens.next().unwrap_or_default();
    let mut more = 0usize;
    for token in std::iter::once(first).chain(tokens.inspect(|_| more += 1)) {
        if token.is_empty() {
            return Err(ReplyRefused::Malformed("an empty token"));
        }
        if token == "*" || token == ">" {
            return Err(ReplyRefused::Malformed("a wildcard"));
        }
    }
    let private_inbox = first.strip_prefix(PRIVATE_INBOX_STEM).is_some_and(|guid| {
        !guid.is_empty()
            && guid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if (first == CLIENT_INBOX_STEM || private_inbox) && more > 0 {
        Ok(())
    } else {
        Err(ReplyRefused::NotAnInbox)
    }
}

/// A subject nobody subscribes to, under the kernel's own namespace: a request there comes back
/// "no responders" after the server has processed everything the connection sent before it.
pub fn host_probe(guid: &str) -> String {
    format!("{KERNEL_PREFIX}.{guid}.host.probe")
}

/// Auth-tier administrative topic `admin.{Kernel}` (v3.7 auth.md).
pub fn admin_topic(kernel_name: &str) -> String {
    format!("admin.{kernel_name}")
}

/// Auth-tier metrics topic `metrics.{Kernel}` (v3.7 auth.md).
pub fn metrics_topic(kernel_name: &str) -> String {
    format!("metrics.{kernel_name}")
}

/// First tokens that belong to CKP subject families or to NATS itself. A kernel's explicit topic
/// may only use them in its own name or GUID space.
pub const RESERVED_FIRST_TOKENS: [&str; 8] = [
    "input", "result", "event", "stream", "ck", "admin", "metrics", "session",
];

/// Subject prefixes no kernel topic may ever use (NATS system and inbox subjects).
pub fn is_system_subject(subject: &str) -> bool {
    subject.starts_with('$') || subject.starts_with("_INBOX") || subject.starts_with("_R_")
}

/// The three loops of a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Loop {
    /// Identity (conceptkernel.yaml, ontology, rules).
    Ck,
    /// Code (the component).
    Tool,
    /// Knowledge (sealed instances, proofs, ledger).
    Data,
}

impl Loop {
    /// Token used in subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Loop::Ck => "ck",
            Loop::Tool => "tool",
            Loop::Data => "data",
        }
    }
}

macro_rules! loop_events {
    ($( $variant:ident => ($lp:ident, $name:literal, $doc:literal) ),* $(,)?) => {
        /// The 22 per-loop events of ckp-spec §2.5 (20 from v3.5-alpha6 plus two from v3.7).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum LoopEvent {
            $( #[doc = $doc] $variant, )*
        }

        impl LoopEvent {
            /// Every per-loop event, in spec order.
            pub const ALL: &'static [LoopEvent] = &[ $( LoopEvent::$variant, )* ];

            /// The loop the event belongs to.
            pub fn loop_(self) -> Loop {
                match self { $( LoopEvent::$variant => Loop::$lp, )* }
            }

            /// The event's last subject token, e.g. `ref-update`.
            pub fn name(self) -> &'static str {
                match self { $( LoopEvent::$variant => $name, )* }
            }
        }
    };
}

loop_events! {
    CkCommit => (Ck, "commit", "CK repository: new commit."),
    CkRefUpdate => (Ck, "ref-update", "CK branch pointer moved."),
    CkPromote => (Ck, "promote", "Version promoted to stable."),
    CkRollback => (Ck, "rollback", "Version rolled back."),
    CkCanary => (Ck, "canary", "Canary weight updated."),
    CkSchemaChange => (Ck, "schema-change", "`ontology.yaml` or `rules.shacl` changed."),
    CkDependsOn => (Ck, "depends-on", "Dependency on another kernel declared or updated."),
    ToolCommit => (Tool, "commit", "TOOL repository: new commit."),
    ToolRefUpdate => (Tool, "ref-update", "Tool branch pointer moved."),
    ToolPromote => (Tool, "promote", "Tool version promoted to stable."),
    ToolInvoked => (Tool, "invoked", "Tool execution started."),
    ToolCompleted => (Tool, "completed", "Tool execution finished successfully."),
    ToolFailed => (Tool, "failed", "Tool execution failed."),
    DataWritten => (Data, "written", "New instance written."),
    DataIndexed => (Data, "indexed", "Index files updated."),
    DataProofGenerated => (Data, "proof-generated", "Proof entry created."),
    DataLedgerEntry => (Data, "ledger-entry", "`audit.jsonl` appended."),
    DataAccessed => (Data, "accessed", "DATA read by another kernel."),
    DataExported => (Data, "exported", "Dataset derived for consumers."),
    DataAmended => (Data, "amended", "Instance amendment committed and proof rebuilt."),
    DataShaclRejected => (Data, "shacl-rejected", "SHACL validation rejected a write."),
    DataNatsDegraded => (Data, "nats-degraded", "Reconnected after local queue overflow."),
}

impl fmt::Display for LoopEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.loop_().as_str(), self.name())
    }
}

/// A name that is not one of the 22 loop events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLoopEvent(pub String);

impl fmt::Display for UnknownLoopEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not a loop event", self.0)
    }
}

impl std::error::Error for UnknownLoopEvent {}

impl std::str::FromStr for LoopEvent {
    type Err = UnknownLoopEvent;

    /// Parses the display form, `{loop}.{event}` (e.g. `ck.ref-update`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LoopEvent::ALL
            .iter()
            .copied()
            .find(|e| {
                s.split_once('.')
                    .is_some_and(|(l, n)| l == e.loop_().as_str() && n == e.name())
            })
            .ok_or_else(|| UnknownLoopEvent(s.to_owned()))
    }
}

/// `ck.{guid}.{loop}.{event}` — per-loop subjects are always GUID-form, even for name-based
/// kernels, because they refer to one kernel instance.
pub fn loop_event_subject(guid: &str, event: LoopEvent) -> String {
    format!(
        "{KERNEL_PREFIX}.{guid}.{}.{}",
        event.loop_().as_str(),
        event.name()
    )
}

/// The id of a loop event — its CloudEvent `id` and its `Nats-Msg-Id` —
/// `{guid}:{loop}.{event}:{key}`, where `key` makes it unique among the kernel's events of that
/// kind (an instance, a commit, a serving revision, a call).
pub fn loop_event_id(guid: &str, event: LoopEvent, key: &str) -> String {
    format!("{guid}:{event}:{key}")
}

#[cfg(test)]
mod tests {

    #[test]
    fn answers_go_only_to_inboxes() {
        for ok in [
            "_INBOX.abc",
            "_INBOX.Xy12.3",
            "_INBOX_9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d.r1.2",
        ] {
            assert_eq!(check_reply_subject(ok), Ok(()), "{ok}");
        }
        let guid = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
        for hostile in [
            format!("$KV.{}.zzz", task_bucket(guid)),
            format!("$JS.API.STREAM.DELETE.{}", data_event_stream(guid)),
            "$SYS.REQ.SERVER.PING".to_owned(),
            "$O.store.x".to_owned(),
            loop_event_subject(guid, LoopEvent::DataWritten),
            "input.Other.Kernel".to_owned(),
            "_INBOX".to_owned(),
            "_INBOX_.x".to_owned(),
            "_INBOXES.x".to_owned(),
            "x._INBOX.y".to_owned(),
        ] {
            assert_eq!(
                check_reply_subject(&hostile),
                Err(ReplyRefused::NotAnInbox),
                "{hostile}"
            );
        }
        for malformed in [
            "_INBOX..x",
            "_INBOX.>",
            "_INBOX.*",
            "_INBOX.a b",
            "_INBOX.a\r",
        ] {
            assert!(
                matches!(
                    check_reply_subject(malformed),
                    Err(ReplyRefused::Malformed(_))
                ),
                "{malformed}"
            );
        }
        let long = format!("_INBOX.{}", "a".repeat(MAX_REPLY_SUBJECT));
        assert!(matches!(
            check_reply_subject(&long),
            Err(ReplyRefused::TooLong { .. })
        ));
    }

    use super::*;

    #[test]
    fn loop_event_ids_name_the_kernel_the_event_and_the_occurrence() {
        assert_eq!(
            loop_event_id("g1", LoopEvent::DataWritten, "i-1"),
            "g1:data.written:i-1"
        );
        assert_eq!(
            loop_event_id("g1", LoopEvent::CkRefUpdate, "develop:abc"),
            "g1:ck.ref-update:develop:abc"
        );
    }

    #[test]
    fn every_loop_event_parses_back_from_its_name() {
        for e in LoopEvent::ALL {
            assert_eq!(e.to_string().parse::<LoopEvent>(), Ok(*e));
        }
        assert!("data.nope".parse::<LoopEvent>().is_err());
        assert_eq!(
            parse_loop_event_subject("ck.g-1.ck.ref-update"),
            Some(("g-1", LoopEvent::CkRefUpdate))
        );
        assert_eq!(parse_loop_event_subject("ck.g-1.host.probe"), None);
        assert_eq!(
            hvfs_subject(HvfsKind::Commit, Loop::Data, "g-1"),
            "platform.hvfs.commit.v1.data.g-1"
        );
        assert_eq!(HvfsKind::of(LoopEvent::ToolInvoked), None);
        assert!("written".parse::<LoopEvent>().is_err());
    }

    #[test]
    fn twenty_two_loop_subjects() {
        assert_eq!(LoopEvent::ALL.len(), 22);
        let g = "7f3ea1b2-0000-4000-8000-000000000000";
        let subjects: Vec<String> = LoopEvent::ALL
            .iter()
            .map(|e| loop_event_subject(g, *e))
            .collect();
        assert!(subjects.contains(&format!("ck.{g}.data.written")));
        assert!(subjects.contains(&format!("ck.{g}.ck.schema-change")));
        assert!(subjects.contains(&format!("ck.{g}.data.nats-degraded")));
        for s in &subjects {
            ck_subject::validate_literal(s).unwrap();
            assert!(ck_subject::matches(&kernel_namespace(g), s));
            assert_eq!(s.split('.').count(), 4);
        }
        let unique: std::collections::HashSet<_> = subjects.iter().collect();
        assert_eq!(unique.len(), 22);
    }

    #[test]
    fn topic_forms() {
        assert_eq!(name_topic(TopicKind::Input, "CS.Voting"), "input.CS.Voting");
        assert_eq!(guid_topic(TopicKind::Stream, "g1"), "ck.g1.stream");
        assert_eq!(
            default_topic(TopicFormat::Guid, TopicKind::Result, "X.Y", "g1"),
            "ck.g1.result"
        );
        assert_eq!(inbox_namespace("g1"), "_INBOX_g1.>");
    }
}

//! The fleet topology (issue 16 point 2), end to end: a hub and two sites rendered by the real
//! `ck authz init --leaf-listen/--site` and `--silo/--hub-leaf`, three real nats-server
//! processes linked as leaf nodes, and clients at each end. What crosses a link is decided by
//! the hub's server from the link user's permissions (`ck_acl::site`), never by our code: the
//! test only watches which messages arrive.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ck_natsd::NatsServer;
use futures::StreamExt;

const CK: &str = env!("CARGO_BIN_EXE_ck");
const TOOL: (&str, &str) = ("tool", "tool-password");
const OPERATOR: (&str, &str) = ("op", "operator-password");
/// A serving host at a site: the `host` role, which may publish the site's fleet events.
const HOST: (&str, &str) = ("host", "host-password");

fn ck(args: &[&str]) {
    let out = Command::new(CK).args(args).output().expect("ck runs");
    assert!(
        out.status.success(),
        "ck {args:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the server of a rendered configuration (its listen line dropped: a free port).
fn start(dir: &Path) -> NatsServer {
    let config = std::fs::read_to_string(dir.join("nats-server.conf")).unwrap();
    let body: Vec<&str> = config
        .lines()
        .filter(|l| !l.starts_with("listen:"))
        .collect();
    let mut body = body.join("\n");
    // CK_TRACE=1: every server logs each protocol line (what a link refused, and why).
    if std::env::var_os("CK_TRACE").is_some() {
        body.push_str("\ntrace: true\ndebug: true\n");
    }
    ck_tests::nats(&body)
}

struct Fleet {
    hub: NatsServer,
    sites: Vec<NatsServer>,
    silos: Vec<String>,
    hub_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

const SILOS: [&str; 2] = ["ct-fac", "ct-lab"];

fn fleet() -> Fleet {
    fleet_of(&SILOS)
}

/// A hub and one site per silo of `silos`, linked as leaf nodes.
fn fleet_of(silos: &[&str]) -> Fleet {
    ck_natsd::binary().expect("nats-server >= 2.15 on PATH (scripts/ensure-nats-server)");
    let dir = tempfile::tempdir().unwrap();
    let hub_dir = dir.path().join("hub");
    let tool = format!("{}:{}", TOOL.0, TOOL.1);
    let operator = format!("{}:{}", OPERATOR.0, OPERATOR.1);
    let hub_path = hub_dir.to_str().unwrap();
    let mut args = vec![
        "authz",
        "init",
        hub_path,
        "--leaf-listen",
        "127.0.0.1:-1",
        "--static-user",
        &tool,
        "--operator",
        &operator,
    ];
    for silo in silos {
        args.extend(["--site", silo]);
    }
    ck(&args);
    let hub = start(&hub_dir);
    let leaf = hub.leafnode_port().expect("the hub listens for leaf nodes");
    let url = format!("nats-leaf://127.0.0.1:{leaf}");
    let host = format!("{}:{}", HOST.0, HOST.1);
    let mut sites = Vec::new();
    for silo in silos {
        let site_dir = dir.path().join(silo);
        let password = ck_authz::setup::site_password_file(&hub_dir, silo);
        ck(&[
            "authz",
            "init",
            site_dir.to_str().unwrap(),
            "--silo",
            silo,
            "--hub-leaf",
            &url,
            "--hub-password-file",
            password.to_str().unwrap(),
            "--static-user",
            &tool,
            "--operator",
            &operator,
            "--control-host",
            &host,
        ]);
        sites.push(start(&site_dir));
    }
    ck_tests::eventually(
        Duration::from_secs(20),
        || hub.log().matches("Leafnode connection created").count() >= silos.len(),
        || format!("both sites link to the hub\n{}", hub.log()),
    );
    Fleet {
        hub,
        sites,
        silos: silos.iter().map(|s| s.to_string()).collect(),
        hub_dir,
        _dir: dir,
    }
}

/// The data of an event the site or the build agent published: a structured CloudEvent 1.0
/// of a `ck.fleet.` type (anything else fails the test).
fn event_data(payload: &[u8]) -> serde_json::Value {
    let event: serde_json::Value = serde_json::from_slice(payload).expect("a JSON document");
    assert_eq!(event["specversion"], "1.0", "{event}");
    assert!(
        event["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("ck.fleet.")),
        "{event}"
    );
    assert_eq!(event["datacontenttype"], "application/json", "{event}");
    event["data"].clone()
}

async fn connect(server: &NatsServer, user: (&str, &str)) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.0.into(), user.1.into())
        .connect(server.url())
        .await
        .unwrap_or_else(|e| panic!("{} as {}: {e}", server.url(), user.0))
}

/// Publishes `marker` on `publisher` until `subscriber` receives it (interest crosses a leaf
/// link a moment after the subscription), returning everything `subscriber` got before it.
async fn until_marker(
    publisher: &async_nats::Client,
    subscriber: &mut async_nats::Subscriber,
    forbidden: &[&str],
    marker: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..200 {
        for subject in forbidden {
            publisher
                .publish(subject.to_string(), "forbidden".into())
                .await
                .unwrap();
        }
        publisher
            .publish(marker.to_owned(), "marker".into())
            .await
            .unwrap();
        publisher.flush().await.unwrap();
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(50), subscriber.next()).await
        {
            if m.subject.as_str() == marker {
                // Whatever was published before the marker has had its chance to cross.
                return seen;
            }
            seen.push(m.subject.to_string());
        }
    }
    panic!("{marker} never arrived; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_site_link_carries_only_that_sites_subjects() {
    let fleet = fleet();
    let hub = connect(&fleet.hub, TOOL).await;
    let fac = connect(&fleet.sites[0], TOOL).await;
    let lab = connect(&fleet.sites[1], TOOL).await;

    // Hub → sites: each site receives its own requests and scrubs, never the other's, even
    // when it subscribes to every install subject.
    let mut at_fac = fac.subscribe("fleet.install.>").await.unwrap();
    let mut at_lab = lab.subscribe("fleet.install.>").await.unwrap();
    fac.flush().await.unwrap();
    lab.flush().await.unwrap();
    let lab_got = until_marker(&hub, &mut at_lab, &[], "fleet.install.ct-lab.request").await;
    assert!(lab_got.is_empty(), "{lab_got:?}");
    let mut lab_scrubs = lab.subscribe("fleet.install.ct-lab.scrub").await.unwrap();
    lab.flush().await.unwrap();
    let fac_got = until_marker(
        &hub,
        &mut at_fac,
        &["fleet.install.ct-lab.request", "fleet.install.ct-lab.scrub"],
        "fleet.install.ct-fac.scrub",
    )
    .await;
    let leaked: Vec<_> = fac_got.iter().filter(|s| s.contains("ct-lab")).collect();
    assert!(leaked.is_empty(), "ct-fac received ct-lab's: {leaked:?}");
    // The same publications did reach ct-lab: the link, not the publisher, kept them apart.
    let forbidden_at_lab = tokio::time::timeout(Duration::from_secs(5), lab_scrubs.next())
        .await
        .expect("ct-lab receives the scrubs ct-fac did not")
        .unwrap();
    assert_eq!(&forbidden_at_lab.payload[..], b"forbidden");

    // Site → hub: a site reports its own progress, done and events; it cannot report for the
    // other site, nor forge a request or scrub for itself.
    let mut at_hub = hub.subscribe("fleet.>").await.unwrap();
    hub.flush().await.unwrap();
    let hub_got = until_marker(
        &fac,
        &mut at_hub,
        &[
            "fleet.install.ct-lab.done",
            "fleet.install.ct-lab.progress",
            "fleet.install.ct-fac.request",
            "fleet.install.ct-fac.scrub",
            "fleet.events.ct-lab.boot",
        ],
        "fleet.install.ct-fac.done",
    )
    .await;
    assert!(
        hub_got.is_empty(),
        "the hub received from ct-fac: {hub_got:?}"
    );
    let fac_host = connect(&fleet.sites[0], HOST).await;
    let own = until_marker(
        &fac_host,
        &mut at_hub,
        &["fleet.events.ct-lab.boot"],
        "fleet.events.ct-fac.boot",
    )
    .await;
    assert!(
        own.iter().all(|s| s == "fleet.install.ct-fac.done"),
        "{own:?}"
    );

    // The hub's FLEET_STATE: a site writes its own keys through the hub's domain, never
    // another site's, and cannot reach the hub's JetStream without the domain.
    let operator = connect(&fleet.hub, OPERATOR).await;
    let bucket = ck_control::fleet::FleetPolicy::shipped().bucket(1);
    async_nats::jetstream::new(operator)
        .create_key_value(bucket)
        .await
        .expect("the operator creates FLEET_STATE");
    // Answers from the hub reach a site only on its own inbox prefix (never `_INBOX.>`).
    let fac_host = async_nats::ConnectOptions::with_user_and_password(HOST.0.into(), HOST.1.into())
        .custom_inbox_prefix(ck_manifest::topics::fleet_site_inbox("ct-fac"))
        .connect(fleet.sites[0].url())
        .await
        .unwrap();
    let via_hub = async_nats::jetstream::with_domain(fac_host.clone(), "hub");
    let state = via_hub
        .get_key_value(ck_manifest::topics::FLEET_STATE_BUCKET)
        .await
        .expect("ct-fac opens the hub's FLEET_STATE through its domain");
    state
        .put("ct-fac", "serving".into())
        .await
        .expect("ct-fac writes its own key");
    let forged =
        tokio::time::timeout(Duration::from_secs(5), state.put("ct-lab", "forged".into())).await;
    assert!(
        !matches!(forged, Ok(Ok(_))),
        "ct-fac wrote ct-lab's key: {forged:?}"
    );
    let hub_state = async_nats::jetstream::new(hub.clone())
        .get_key_value(ck_manifest::topics::FLEET_STATE_BUCKET)
        .await
        .unwrap();
    assert_eq!(
        hub_state.get("ct-fac").await.unwrap().as_deref(),
        Some(&b"serving"[..])
    );
    assert_eq!(hub_state.get("ct-lab").await.unwrap(), None);
    // What the operator at the hub sees with the real natscli: the site, live.
    let watched = natscli_first_line(
        &fleet.hub,
        &["kv", "watch", ck_manifest::topics::FLEET_STATE_BUCKET],
        |line| line.contains("ct-fac") && line.contains("serving"),
    );
    assert!(!watched.contains("ct-lab"), "{watched}");
    // Without the domain prefix a site's client talks to its own JetStream (its domain keeps
    // its state its own): the hub's bucket is not there.
    assert!(
        async_nats::jetstream::new(fac_host)
            .get_key_value(ck_manifest::topics::FLEET_STATE_BUCKET)
            .await
            .is_err(),
        "the site's own JetStream has no FLEET_STATE"
    );

    // The control plane's write denials hold through a domain prefix too: at a site, a user
    // that may do anything but write the control plane cannot write the hub's through
    // `$JS.hub.API.…` (the site server has no mapping for the hub's domain, so only the deny
    // list stops it before the link; the hub itself maps its own domain before checking).
    let mut tool = ck_tests::RawClient::connect(fleet.sites[0].port(), TOOL.0, TOOL.1).unwrap();
    for subject in [
        "$JS.hub.API.STREAM.CREATE.KV_CK_SERVING",
        "$JS.hub.API.STREAM.DELETE.KV_FLEET_STATE",
        "$JS.hub.API.$KV.FLEET_STATE.ct-fac",
        "$JS.hub.API.$KV.CK_SERVING.g-1",
    ] {
        assert_eq!(
            tool.publish(subject).unwrap(),
            ck_tests::Verdict::Denied,
            "{subject}"
        );
    }
    assert_eq!(
        tool.publish("fleet.install.ct-fac.done").unwrap(),
        ck_tests::Verdict::Allowed
    );

    // A link credential is good for a leaf link only: as a client it is refused.
    let password = std::fs::read_to_string(ck_authz::setup::site_password_file(
        &fleet.hub_dir,
        "ct-fac",
    ))
    .unwrap();
    let as_client = ck_tests::RawClient::connect(
        fleet.hub.port(),
        &ck_authz::setup::leaf_user("ct-fac"),
        password.trim(),
    );
    assert!(as_client.is_err(), "the link user logged in as a client");
}

#[test]
fn reserved_and_malformed_fleet_names_are_refused_by_init() {
    let dir = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["--silo", "events"], "reserved"),
        (vec!["--silo", "a.b"], "must be 1–64"),
    ] {
        let target = dir.path().join(format!("d{}", args[1]));
        let password = dir.path().join("pw");
        std::fs::write(&password, "secret").unwrap();
        let out = Command::new(CK)
            .args(["authz", "init", target.to_str().unwrap()])
            .args(&args)
            .args([
                "--hub-leaf",
                "nats-leaf://127.0.0.1:7422",
                "--hub-password-file",
            ])
            .arg(&password)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
        assert!(
            !target.exists(),
            "nothing is written for a refused topology"
        );
    }
    let out = Command::new(CK)
        .args(["authz", "init"])
        .arg(dir.path().join("hub"))
        .args(["--leaf-listen", "127.0.0.1:-1", "--site", "hub"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("hub's JetStream domain"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_published_while_the_link_is_down_reaches_the_site_once() {
    use async_nats::jetstream;
    let mut fleet = fleet();
    let hub_js = link(&fleet).await;

    // The link cut: ct-fac's server is down while the operator publishes (and retries).
    fleet.sites[0].stop();
    let request = r#"{"kernel":"Demo.Echo","version":"v622","id":"req-1"}"#;
    let mut acks = Vec::new();
    for _ in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "req-1");
        acks.push(
            hub_js
                .publish_with_headers("fleet.install.ct-fac.request", headers, request.into())
                .await
                .unwrap()
                .await
                .expect("the hub keeps the request"),
        );
    }
    assert!(
        !acks[0].duplicate && acks[1].duplicate,
        "the retry is one request"
    );

    fleet.sites[0].restart().expect("ct-fac comes back");
    let site_js = jetstream::new(connect(&fleet.sites[0], TOOL).await);
    let stream = ck_manifest::topics::fleet_install_stream("ct-fac");
    let mirrored = first_message(&site_js, &stream, || fleet.sites[0].log()).await;
    assert_eq!(mirrored.subject.as_str(), "fleet.install.ct-fac.request");
    assert_eq!(&mirrored.payload[..], request.as_bytes());
    // Once: a moment later there is still one (the retry, refused as a duplicate at the hub,
    // does not follow it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(messages(&site_js, &stream).await, 1);

    // Reports the site keeps reach the hub's FLEET_REPORTS through the link.
    site_js
        .publish("fleet.install.ct-fac.done", r#"{"id":"req-1"}"#.into())
        .await
        .unwrap()
        .await
        .expect("the site keeps its report");
    let reports = ck_manifest::topics::FLEET_REPORTS_STREAM.to_owned();
    let report = first_message(&hub_js, &reports, || fleet.hub.log()).await;
    assert_eq!(report.subject.as_str(), "fleet.install.ct-fac.done");
}

/// Links every site to the hub (`ck fleet link-site` at each site as its operator, then `ck
/// fleet link-hub`, which returns once every site's mirror and source are active: nats-server
/// retries one that failed only after a back-off). Returns the hub's JetStream as the tool user.
async fn link(fleet: &Fleet) -> async_nats::jetstream::Context {
    // Each site's streams first: the hub's FLEET_REPORTS sources streams that exist.
    for (i, silo) in fleet.silos.iter().enumerate() {
        let url = fleet.sites[i].url();
        ck(&[
            "fleet",
            "link-site",
            "--nats",
            &url,
            "--nats-user",
            OPERATOR.0,
            "--nats-password",
            OPERATOR.1,
            "--silo",
            silo,
        ]);
    }
    let hub_url = fleet.hub.url();
    let mut args = vec![
        "fleet",
        "link-hub",
        "--nats",
        &hub_url,
        "--nats-user",
        TOOL.0,
        "--nats-password",
        TOOL.1,
    ];
    for silo in &fleet.silos {
        args.extend(["--site", silo]);
    }
    ck(&args);
    async_nats::jetstream::new(connect(&fleet.hub, TOOL).await)
}

/// How many messages stream `name` holds (0 while it cannot be read).
async fn messages(js: &async_nats::jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut stream) => stream.info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    }
}

/// The first message of stream `name`, waiting up to 30 s for one to arrive (through a mirror
/// or a source); the stream's state and `log` if none does.
async fn first_message(
    js: &async_nats::jetstream::Context,
    name: &str,
    log: impl Fn() -> String,
) -> async_nats::jetstream::message::StreamMessage {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while messages(js, name).await == 0 {
        if std::time::Instant::now() > deadline {
            let info = match js.get_stream(name).await {
                Ok(mut stream) => format!("{:?}", stream.info().await),
                Err(e) => e.to_string(),
            };
            panic!("nothing reached {name}: {info}\n{}", log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    js.get_stream(name)
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap()
}

/// Runs natscli (`scripts/ensure-natscli` builds v0.5.0; `scripts/test` exports its path as
/// CK_NATSCLI) against `server` as the hub's tool user, and returns the first line of its
/// output `wanted` accepts, failing the test with all it printed if none comes within 20 s.
fn natscli_first_line(server: &NatsServer, args: &[&str], wanted: impl Fn(&str) -> bool) -> String {
    use std::io::BufRead;
    let nats = std::env::var("CK_NATSCLI").expect(
        "CK_NATSCLI names natscli v0.5.0 (scripts/test sets it from scripts/ensure-natscli)",
    );
    let mut child = Command::new(&nats)
        .args([
            "--server",
            &server.url(),
            "--user",
            TOOL.0,
            "--password",
            TOOL.1,
        ])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{nats}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut printed = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if wanted(&line) => break Some(line),
            Ok(line) => printed.push(line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    found.unwrap_or_else(|| {
        panic!(
            "nats {args:?} never printed the line wanted:\n{}",
            printed.join("\n")
        )
    })
}

/// A long-running `ck` process whose log is kept in `log`.
fn ck_proc(args: &[&str], log: std::path::PathBuf) -> ck_tests::Proc {
    ck_tests::Proc::spawn(CK, args, &log)
}

/// The `done` on `subscriber` whose JSON `id` is `id`, with every `progress` of it seen before
/// (the subscriber sees the requests too).
async fn outcome_of(
    subscriber: &mut async_nats::Subscriber,
    id: &str,
    log: impl Fn() -> String,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut steps = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let message = tokio::time::timeout_at(deadline, subscriber.next())
            .await
            .unwrap_or_else(|_| panic!("no done for {id}; steps {steps:?}\n{}", log()))
            .expect("the subscription stays open");
        let report = [".done", ".progress"]
            .iter()
            .any(|kind| message.subject.ends_with(kind));
        if !report {
            continue;
        }
        let body = event_data(&message.payload);
        if body["id"] != id {
            continue;
        }
        if message.subject.ends_with(".done") {
            return (body, steps);
        }
        if message.subject.ends_with(".progress") {
            steps.push(body);
        }
    }
}

/// Publishes `body` on ct-fac's `kind` subject at the hub, with `msg_id` as `Nats-Msg-Id`.
async fn publish_at_hub(
    hub_js: &async_nats::jetstream::Context,
    kind: &str,
    msg_id: &str,
    body: &serde_json::Value,
) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    hub_js
        .publish_with_headers(
            format!("fleet.install.ct-fac.{kind}"),
            headers,
            body.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .expect("the hub keeps the request");
}

/// The audience the shipped install policy binds a proof to: the site, the request's id and
/// its digest (`scrub` for a scrub).
fn install_audience(silo: &str, id: &str, digest: &str) -> String {
    format!("ck-install:{silo}:{id}:{digest}")
}

/// A change made to a request (to make it a bad one).
type Edit<'a> = Box<dyn Fn(&mut serde_json::Value) + 'a>;

/// The operator allowed to install anywhere by the shipped install policy.
const ALICE: &str = "spiffe://ck.local/operator/alice";
const ECHO_GUID: &str = "0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d";
const TASKS_GUID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

/// The dev identity provider (the Workload API of every site's kernels, hosts and operators),
/// issuing in example.org (the kernels) and ck.local (operators and hosts); its socket.
fn identity_provider(root: &Path) -> (ck_tests::Proc, String) {
    identity_provider_named(root, "spiffe", &[])
}

/// A dev identity provider on socket `{name}.sock` signing with the same keys (`root/keys`)
/// as every other, with `extra` arguments (`--ttl`); its socket.
fn identity_provider_named(root: &Path, name: &str, extra: &[&str]) -> (ck_tests::Proc, String) {
    let socket = root.join(format!("{name}.sock")).display().to_string();
    let keys = root.join("keys");
    let mut args = vec![
        "identity",
        "serve",
        "--socket",
        &socket,
        "--dir",
        keys.to_str().unwrap(),
        "--trust-domain",
        "example.org",
        "--trust-domain",
        "ck.local",
    ];
    args.extend(extra);
    let log = if name == "spiffe" {
        "identity.log".to_owned()
    } else {
        format!("identity-{name}.log")
    };
    let identity = ck_proc(&args, root.join(log));
    identity.wait_for("identity.serving");
    (identity, socket)
}

/// `spiffe_id`'s JWT-SVID for `audience`, as the operator's `ck identity fetch` prints it.
fn fetch_proof(socket: &str, spiffe_id: &str, audience: &str) -> String {
    let out = Command::new(CK)
        .args(["identity", "fetch", spiffe_id, "--audience", audience])
        .args(["--socket", socket])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Site `silo`'s callout (`ck authz serve --control`: connects decided from the site's own
/// control plane), not yet waited for.
fn site_callout(root: &Path, silo: &str, url: &str, socket: &str) -> ck_tests::Proc {
    ck_proc(
        &[
            "authz",
            "serve",
            "--dir",
            root.join(silo).to_str().unwrap(),
            "--nats",
            url,
            "--control",
            "--trust-domain",
            "example.org",
            "--spiffe-socket",
            socket,
        ],
        root.join(format!("{silo}-authz.log")),
    )
}

/// The arguments of site `silo`'s `ck host` (its directory `{silo}-host`, its cache
/// `{silo}-cache`, host id h1, health checks of at most 10 s).
fn site_host_args(root: &Path, silo: &str, url: &str, socket: &str) -> Vec<String> {
    let dir = root.join(format!("{silo}-host"));
    let cache = root.join(format!("{silo}-cache"));
    [
        "host",
        "--silo",
        silo,
        "--nats",
        url,
        "--control-user",
        HOST.0,
        "--control-password",
        HOST.1,
        "--spiffe-socket",
        socket,
        "--site-dir",
        dir.to_str().unwrap(),
        "--host-id",
        "h1",
        "--health-timeout",
        "10",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Site ct-fac of a linked fleet, with an identity provider, the site's callout (deciding
/// connects from the site's own control plane) and one `ck host --silo ct-fac`; at the hub,
/// the operator's connection and a subscription to ct-fac's install subjects.
struct SiteRig {
    root: std::path::PathBuf,
    socket: String,
    hub_js: async_nats::jetstream::Context,
    hub: async_nats::Client,
    hub_operator: async_nats::Client,
    reports: async_nats::Subscriber,
    host: ck_tests::Proc,
    host_args: Vec<String>,
    served_dir: std::path::PathBuf,
    _identity: ck_tests::Proc,
    _callout: ck_tests::Proc,
}

impl SiteRig {
    async fn start(fleet: &Fleet) -> SiteRig {
        let hub_js = link(fleet).await;
        let root = fleet._dir.path().to_path_buf();
        let (identity, socket) = identity_provider(&root);
        let site_url = fleet.sites[0].url();
        let callout = site_callout(&root, "ct-fac", &site_url, &socket);
        callout.wait_for("authz.serving");
        let served_dir = root.join("ct-fac-host");
        let host_args = site_host_args(&root, "ct-fac", &site_url, &socket);
        let host = SiteRig::spawn_host(&host_args, &root, 1);
        let hub = connect(&fleet.hub, TOOL).await;
        let reports = hub.subscribe("fleet.install.ct-fac.>").await.unwrap();
        let hub_operator = connect(&fleet.hub, OPERATOR).await;
        SiteRig {
            root,
            socket,
            hub_js,
            hub,
            hub_operator,
            reports,
            host,
            host_args,
            served_dir,
            _identity: identity,
            _callout: callout,
        }
    }

    fn spawn_host(args: &[String], root: &Path, n: usize) -> ck_tests::Proc {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let host = ck_proc(&args, root.join(format!("host-{n}.log")));
        host.wait_for("site.serving");
        host
    }

    /// Kills the site's host and starts it again.
    fn restart_host(&mut self, n: usize) {
        self.host.kill();
        self.host = SiteRig::spawn_host(&self.host_args, &self.root, n);
    }

    /// The operator's checkout of `kernels/{name}` (`edit` changes it), built and published to
    /// the hub; returns its directory.
    fn publish(&self, name: &str, hub: &NatsServer, edit: impl Fn(&Path)) -> std::path::PathBuf {
        let kernel = self.root.join("operator").join(name);
        if !kernel.exists() {
            ck_tests::copy_kernel(name, &kernel);
        }
        edit(&kernel);
        ck_tests::ck_build(CK, &[&kernel]);
        ck(&[
            "publish",
            kernel.to_str().unwrap(),
            "--nats",
            &hub.url(),
            "--nats-user",
            OPERATOR.0,
            "--nats-password",
            OPERATOR.1,
        ]);
        kernel
    }

    /// `spiffe_id`'s JWT-SVID for `audience`, as the operator's `ck identity fetch` prints it.
    fn proof(&self, spiffe_id: &str, audience: &str) -> String {
        fetch_proof(&self.socket, spiffe_id, audience)
    }

    /// An install request by Alice of kernel `guid`'s newest published version.
    async fn install_request(&self, id: &str, kernel: &str, guid: &str) -> serde_json::Value {
        let hub_plane =
            ck_control::ControlPlane::open(async_nats::jetstream::new(self.hub_operator.clone()))
                .await
                .expect("the hub's control plane (created by the first `ck publish`)");
        let develop = hub_plane.develop(guid).await.unwrap().unwrap();
        let digest = hub_plane
            .tool_commit(guid, &develop.tool)
            .await
            .unwrap()
            .digest;
        self.request_for(id, kernel, guid, "develop".into(), &digest)
    }

    /// An install request by Alice of `version` of kernel `guid`, whose component is `digest`.
    fn request_for(
        &self,
        id: &str,
        kernel: &str,
        guid: &str,
        version: serde_json::Value,
        digest: &str,
    ) -> serde_json::Value {
        serde_json::json!({
            "id": id,
            "kernel": kernel,
            "guid": guid,
            "version": version,
            "digest": digest,
            "requested_by": ALICE,
            "proof": self.proof(ALICE, &install_audience("ct-fac", id, digest)),
        })
    }

    /// Publishes `body` at the hub and waits for its `done` (with its progress).
    async fn ask(
        &mut self,
        kind: &str,
        body: &serde_json::Value,
    ) -> (serde_json::Value, Vec<serde_json::Value>) {
        let id = body["id"].as_str().unwrap().to_owned();
        publish_at_hub(&self.hub_js, kind, &id, body).await;
        let (host, callout) = (&self.host, &self._callout);
        outcome_of(&mut self.reports, &id, || {
            format!("host:\n{}\nsite callout:\n{}", host.log(), callout.log())
        })
        .await
    }

    /// `action` of `kernel` called from the hub until it answers (within 30 s).
    async fn call_until_answered(&self, kernel: &str, action: &str) -> Option<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.call(kernel, action, serde_json::json!({})).await;
            if answer.is_some() || std::time::Instant::now() > deadline {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `action` of `kernel` called from the hub; None when nothing answers within 5 s.
    async fn call(
        &self,
        kernel: &str,
        action: &str,
        data: serde_json::Value,
    ) -> Option<serde_json::Value> {
        let body = serde_json::json!({"action": action, "data": data});
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            self.hub
                .request(format!("input.{kernel}"), body.to_string().into()),
        )
        .await
        .ok()?
        .ok()?;
        serde_json::from_slice(&reply.payload).ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_request_at_the_hub_is_carried_out_by_the_site_host_alone() {
    let fleet = fleet();
    let mut site = SiteRig::start(&fleet).await;
    // Every event the site and the build agent send the hub — install progress and done,
    // build done, the host's lifecycle — judged by the Python CloudEvents SDK through nats-py.
    let witness = ck_tests::Witness::start(
        &site.root,
        &fleet.hub.url(),
        OPERATOR,
        &[
            "fleet.install.ct-fac.progress",
            "fleet.install.ct-fac.done",
            "fleet.build.*.done",
            "fleet.events.ct-fac.>",
        ],
    );
    // The build pipeline at the hub: the operator's checkout built once (its TOOL loop), a
    // build agent answering for it; a build request at the hub is built, reproduced and
    // pushed to the hub's store.
    let kernel = site.root.join("operator/echo");
    ck_tests::copy_kernel("echo", &kernel);
    ck_tests::ck_build(CK, &[&kernel]);
    let hub_url = fleet.hub.url();
    let agent = ck_proc(
        &[
            "build-agent",
            kernel.to_str().unwrap(),
            "--nats",
            &hub_url,
            "--nats-user",
            OPERATOR.0,
            "--nats-password",
            OPERATOR.1,
        ],
        site.root.join("build-agent.log"),
    );
    agent.wait_for("build-agent.serving");
    let build = |body: &'static str| {
        let hub = site.hub.clone();
        async move {
            let reply = tokio::time::timeout(
                Duration::from_secs(60),
                hub.request(format!("fleet.build.{ECHO_GUID}.request"), body.into()),
            )
            .await
            .expect("the build agent answers within 60 s")
            .expect("the build agent answers");
            event_data(&reply.payload)
        }
    };
    let built = build(r#"{"ref":"develop","id":"b-1"}"#).await;
    assert_eq!(built["ok"], true, "{built}\n{}", agent.log());
    assert_eq!(built["pushed"], true, "{built}");
    assert_eq!(built["id"], "b-1");
    let unknown = build(r#"{"ref":"no-such-branch"}"#).await;
    assert_eq!(unknown["ok"], false, "{unknown}");
    assert!(
        unknown["error"]
            .as_str()
            .unwrap()
            .contains("names no commit or branch"),
        "{unknown}"
    );
    // A branch of the TOOL loop whose C does not compile (a developer pushed a broken change):
    // `done` is a failure carrying the compiler's own message, and nothing is pushed.
    push_tool_branch(&kernel, "broken", |source| {
        source.push_str("\nint broken( { this is not C\n");
    });
    let broken = build(r#"{"ref":"broken","id":"b-2"}"#).await;
    assert_eq!(broken["ok"], false, "{broken}");
    assert_eq!(broken["id"], "b-2", "{broken}");
    assert_ne!(broken["pushed"], true, "{broken}");
    let message = broken["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("echo.c") && message.contains("error:"),
        "the compiler's message names the file and the error: {broken}"
    );
    // The install names exactly what the build pushed.
    let install = site.request_for(
        "req-1",
        "Demo.Echo",
        ECHO_GUID,
        serde_json::json!({"ck": built["ck_commit"], "tool": built["tool_commit"]}),
        built["digest"].as_str().unwrap(),
    );
    let (done, steps) = site.ask("request", &install).await;
    assert_eq!(done["outcome"], "installed", "{done}\n{}", site.host.log());
    assert_eq!(done["receipt"]["requester"], ALICE);
    assert_eq!(done["receipt"]["digest"], install["digest"]);
    assert_eq!(
        done["receipt"]["host"],
        "spiffe://ck.local/ck/host/ct-fac/h1"
    );
    assert_eq!(done["kernels"][0]["name"], "Demo.Echo");
    assert_eq!(done["kernels"][0]["health"], "ok");
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    assert_eq!(
        names,
        ["verify", "fetch", "compile", "load", "health"],
        "{steps:?}"
    );
    assert!(
        steps.iter().all(|s| s["ok"] == true && s["ms"].is_u64()),
        "{steps:?}"
    );

    // The kernel answers a caller at the hub, across the link.
    let answer = site
        .call("Demo.Echo", "echo", serde_json::json!({"x": 1}))
        .await;
    let answer = answer.expect("echo answers at the hub");
    assert_eq!(answer["status"], "ok", "{answer}");
    assert_eq!(answer["data"]["x"], 1, "{answer}");

    // Each bad request is refused with its reason, and what the site serves is unchanged.
    let served = done["kernels"].clone();
    let intruder = "spiffe://ck.local/intruder/mallory";
    let digest = install["digest"].as_str().unwrap().to_owned();
    let intruder_proof = site.proof(intruder, &install_audience("ct-fac", "intruder", &digest));
    let other_site = site.proof(ALICE, &install_audience("ct-lab", "audience", &digest));
    // Alice's proof for what `body` asks (each bad request below is signed for itself unless
    // its change sets the proof).
    let socket = site.socket.clone();
    let alice_proof = |b: &serde_json::Value| -> serde_json::Value {
        let (id, digest) = (b["id"].as_str().unwrap(), b["digest"].as_str().unwrap());
        fetch_proof(&socket, ALICE, &install_audience("ct-fac", id, digest)).into()
    };
    let bad: Vec<(&str, Edit, &str)> = vec![
        (
            "dup",
            Box::new(|b| b["id"] = "req-1".into()),
            "duplicate request id `req-1`",
        ),
        (
            "digest",
            Box::new(|b| b["digest"] = format!("blake3:{}", "0".repeat(64)).into()),
            "names digest blake3:0000",
        ),
        (
            "missing",
            Box::new(|b| {
                b["version"] = serde_json::json!({"ck": "1".repeat(40), "tool": "2".repeat(40)})
            }),
            "was never published",
        ),
        (
            "intruder",
            Box::new(|b| {
                b["requested_by"] = intruder.into();
                b["proof"] = intruder_proof.clone().into();
            }),
            "no rule of the install policy lets spiffe://ck.local/intruder/mallory",
        ),
        (
            "audience",
            Box::new(|b| b["proof"] = other_site.clone().into()),
            "audience does not include 'ck-install:ct-fac:audience:blake3:",
        ),
        (
            // req-1's proof, read off the hub's stream, reused for another request.
            "replayed",
            Box::new(|b| b["proof"] = install["proof"].clone()),
            "audience does not include 'ck-install:ct-fac:replayed:blake3:",
        ),
        (
            // req-1's proof with its id, for another digest.
            "rebound",
            Box::new(|b| {
                b["digest"] = format!("blake3:{}", "0".repeat(64)).into();
                b["proof"] = fetch_proof(
                    &socket,
                    ALICE,
                    &install_audience("ct-fac", "rebound", &digest),
                )
                .into();
            }),
            "audience does not include 'ck-install:ct-fac:rebound:blake3:0000",
        ),
        (
            "guid",
            Box::new(|b| b["guid"] = "aaaaaaaa-0000-4000-8000-000000000000".into()),
            "Demo.Echo is served here as kernel 0e1c4a5b",
        ),
        (
            "claimed",
            Box::new(|b| b["requested_by"] = "spiffe://ck.local/operator/bob".into()),
            "not the requester spiffe://ck.local/operator/bob",
        ),
    ];
    for (msg_id, edit, why) in &bad {
        let mut body = install.clone();
        body["id"] = (*msg_id).into();
        body["proof"] = serde_json::Value::Null;
        edit(&mut body);
        if body["proof"].is_null() {
            body["proof"] = alice_proof(&body);
        }
        let id = body["id"].as_str().unwrap().to_owned();
        publish_at_hub(&site.hub_js, "request", msg_id, &body).await;
        let host = &site.host;
        let (done, steps) = outcome_of(&mut site.reports, &id, || host.log()).await;
        assert_eq!(done["outcome"], "refused", "{msg_id}: {done}");
        assert!(
            done["reason"].as_str().unwrap().contains(why),
            "{msg_id}: {done}"
        );
        assert_eq!(done["kernels"], served, "{msg_id} changed what is served");
        assert!(done.get("receipt").is_none(), "{msg_id}: {done}");
        assert_eq!(steps.last().unwrap()["ok"], false, "{msg_id}: {steps:?}");
    }
    // A malformed request (the fleet document's shorthand) is refused under its id too.
    site.hub
        .publish(
            "fleet.install.ct-fac.request",
            r#"{"v":"v622","id":"short"}"#.into(),
        )
        .await
        .unwrap();
    let host = &site.host;
    let (done, _) = outcome_of(&mut site.reports, "short", || host.log()).await;
    assert_eq!(done["outcome"], "refused");
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .starts_with("malformed request:"),
        "{done}"
    );
    assert_eq!(done["kernels"], served);
    let answer = site.call("Demo.Echo", "echo", serde_json::json!({})).await;
    assert_eq!(answer.expect("echo still answers")["status"], "ok");

    // The receipts are in the site's hash-chained audit ledger.
    let ledger = std::fs::read_to_string(site.served_dir.join("data/ledger/audit.jsonl")).unwrap();
    assert_eq!(
        ledger.matches("\"install.installed\"").count(),
        1,
        "{ledger}"
    );
    assert_eq!(
        ledger.matches("\"install.refused\"").count(),
        10,
        "{ledger}"
    );

    // The operator at the hub sees the site's host with the real natscli.
    let watched = natscli_first_line(
        &fleet.hub,
        &["kv", "watch", ck_manifest::topics::FLEET_STATE_BUCKET],
        |line| line.contains("ct-fac.host.h1") && line.contains("Demo.Echo"),
    );
    assert!(watched.contains("\"health\":\"serving\""), "{watched}");

    // A restarted host serves the site's set again with no request.
    site.restart_host(2);
    site.host.wait_for("site.reserved");
    let answer = site.call("Demo.Echo", "echo", serde_json::json!({})).await;
    assert_eq!(
        answer.expect("echo answers after the restart")["status"],
        "ok"
    );
    witness.expect_types(&[
        "ck.fleet.install.progress",
        "ck.fleet.install.done",
        "ck.fleet.build.done",
        "ck.fleet.boot",
        "ck.fleet.pod.ready",
    ]);
}

/// How many `done` reports of ct-fac the hub's FLEET_REPORTS holds, by request id.
/// Commits to a new branch `branch` of `kernel`'s TOOL loop (from `develop`) its C source as
/// `edit` leaves it — with git, as a developer pushing a change would.
fn push_tool_branch(kernel: &Path, branch: &str, edit: impl Fn(&mut String)) {
    let repo = kernel.join(".ck/tool.git");
    let work = tempfile::tempdir().unwrap();
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=dev",
                "-c",
                "user.email=dev@example.invalid",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(
        work.path(),
        &["clone", "-q", "-b", "develop", repo.to_str().unwrap(), "w"],
    );
    let checkout = work.path().join("w");
    git(&checkout, &["checkout", "-q", "-b", branch]);
    let source = checkout.join("tool/echo.c");
    let mut text = std::fs::read_to_string(&source).unwrap();
    edit(&mut text);
    std::fs::write(&source, text).unwrap();
    git(
        &checkout,
        &["commit", "-q", "-am", "a change that does not compile"],
    );
    git(&checkout, &["push", "-q", "origin", branch]);
}

async fn dones_at_hub(
    hub_js: &async_nats::jetstream::Context,
) -> std::collections::BTreeMap<String, usize> {
    let mut dones = std::collections::BTreeMap::new();
    let Ok(mut reports) = hub_js
        .get_stream(ck_manifest::topics::FLEET_REPORTS_STREAM)
        .await
    else {
        return dones;
    };
    let last = reports.info().await.map_or(0, |i| i.state.last_sequence);
    for seq in 1..=last {
        let Ok(message) = reports.get_raw_message(seq).await else {
            continue;
        };
        if message.subject.as_str() == "fleet.install.ct-fac.done" {
            let body = event_data(&message.payload);
            *dones
                .entry(body["id"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    dones
}

/// Writes `tool/echo.c` of a checkout of `kernels/echo` so that no instance of it can start:
/// 64 MiB of static memory, above the 16 MiB its manifest allows. It compiles and loads; only
/// starting it fails.
fn write_unstartable_echo(kernel: &Path) {
    let source = "#include \"kernel.h\"\n#include \"ck.h\"\n\
        static volatile char ballast[64 << 20];\n\
        bool exports_conceptkernel_kernel_handler_handle(ck_str *action, ck_str *data, ck_context *ctx, ck_str *ret, ck_error *err) {\n\
          (void)err;\n\
          ballast[data->len % sizeof ballast] = 1;\n\
          ck_buf b = {0};\n\
          ck_buf_puts(&b, \"{}\");\n\
          bool ok = ck_ok_buf(ret, &b);\n\
          kernel_string_free(data);\n\
          kernel_string_free(action);\n\
          exports_conceptkernel_kernel_handler_context_free(ctx);\n\
          return ok;\n\
        }\n";
    std::fs::write(kernel.join("tool/echo.c"), source).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_longer_than_its_proofs_lifetime_is_carried_out_and_a_late_proof_is_not() {
    let mut fleet = fleet();
    let mut site = SiteRig::start(&fleet).await;
    site.publish("echo", &fleet.hub, |_| {});
    // Alice's proofs from a provider signing with the same keys but living 6 s.
    let (_short_lived, short_socket) =
        identity_provider_named(&site.root, "short", &["--ttl", "6"]);
    let mut queued = site
        .install_request("queued-1", "Demo.Echo", ECHO_GUID)
        .await;
    let audience = install_audience("ct-fac", "queued-1", queued["digest"].as_str().unwrap());
    queued["proof"] = fetch_proof(&short_socket, ALICE, &audience).into();

    // The link cut longer than the proof lives: the hub stores the request while the proof
    // is valid, the site sees it only after the proof expired.
    fleet.sites[0].stop();
    publish_at_hub(&site.hub_js, "request", "queued-1", &queued).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    fleet.sites[0].restart().expect("ct-fac comes back");
    let host = &site.host;
    let (done, _) = outcome_of(&mut site.reports, "queued-1", || host.log()).await;
    assert_eq!(done["outcome"], "installed", "{done}\n{}", host.log());
    let host_log = site.host.log();
    let line = host_log
        .lines()
        .find(|l| l.contains("site.proof-valid-when-stored"))
        .unwrap_or_else(|| panic!("the host says the proof was checked when stored\n{host_log}"));
    assert!(line.contains(ALICE), "{line}");

    // A proof that expired before the operator published is refused, link up or not: the
    // time that counts is the hub's, not one the request could claim.
    let mut late = site.install_request("late-1", "Demo.Echo", ECHO_GUID).await;
    let audience = install_audience("ct-fac", "late-1", late["digest"].as_str().unwrap());
    late["proof"] = fetch_proof(&short_socket, ALICE, &audience).into();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (done, _) = site.ask("request", &late).await;
    assert_eq!(done["outcome"], "refused", "{done}");
    assert!(
        done["reason"].as_str().unwrap().contains("expired"),
        "{done}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_upgrade_rolls_back_and_a_scrub_archives_every_sealed_instance() {
    let mut fleet = fleet();
    let mut site = SiteRig::start(&fleet).await;
    site.publish("echo", &fleet.hub, |k| ck_tests::write_echo_version(k, 1));
    let v1 = site.install_request("echo-1", "Demo.Echo", ECHO_GUID).await;
    let (done, _) = site.ask("request", &v1).await;
    assert_eq!(done["outcome"], "installed", "{done}");
    // The link cut (the site's server stopped, its host and callout left running) while the
    // operator publishes a request, twice: carried out once, after the link returns.
    site.publish("tasks", &fleet.hub, |_| {});
    let tasks = site
        .install_request("tasks-1", "Demo.Tasks", TASKS_GUID)
        .await;
    fleet.sites[0].stop();
    publish_at_hub(&site.hub_js, "request", "tasks-1", &tasks).await;
    publish_at_hub(&site.hub_js, "request", "tasks-1", &tasks).await;
    fleet.sites[0].restart().expect("ct-fac comes back");
    let host = &site.host;
    let (done, _) = outcome_of(&mut site.reports, "tasks-1", || host.log()).await;
    assert_eq!(
        done["outcome"],
        "installed",
        "{done}\n{}",
        site._callout.log()
    );
    let v = |answer: Option<serde_json::Value>| answer.map(|a| a["data"]["v"].clone());
    // The site's kernels reconnect and the link carries their subscriptions again.
    assert_eq!(
        v(site.call_until_answered("Demo.Echo", "echo").await),
        Some(1.into())
    );

    // Version 2 cannot start: its health check fails and version 1 serves again, by itself.
    site.publish("echo", &fleet.hub, write_unstartable_echo);
    let v2 = site.install_request("echo-2", "Demo.Echo", ECHO_GUID).await;
    assert_ne!(v2["digest"], v1["digest"]);
    let (done, steps) = site.ask("request", &v2).await;
    assert_eq!(
        done["outcome"],
        "rolled_back",
        "{done}\n{}",
        site.host.log()
    );
    let reason = done["reason"].as_str().unwrap();
    assert!(reason.contains("health check failed"), "{reason}");
    assert!(reason.contains("rolled back"), "{reason}");
    let health = steps.iter().find(|s| s["step"] == "health").unwrap();
    assert_eq!(health["ok"], false, "{steps:?}");
    let rollback = steps.iter().find(|s| s["step"] == "rollback").unwrap();
    assert_eq!(rollback["ok"], true, "{steps:?}");
    assert_eq!(
        v(site.call("Demo.Echo", "echo", serde_json::json!({})).await),
        Some(1.into())
    );
    let echo = done["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "Demo.Echo")
        .unwrap()
        .clone();
    assert_eq!(echo["digest"], v1["digest"], "{done}");

    // A task sealed at the site, then the scrub.
    let start = site
        .call(
            "Demo.Tasks",
            "task.start",
            serde_json::json!({"task_id": "t-1"}),
        )
        .await;
    assert_eq!(start.expect("task.start answers")["status"], "ok");
    let complete = site
        .call(
            "Demo.Tasks",
            "task.complete",
            serde_json::json!({"task_id": "t-1", "output": {"n": 1}}),
        )
        .await
        .expect("task.complete answers");
    let instance = complete["data"]["instance_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{complete}"))
        .to_owned();
    let scrub = serde_json::json!({
        "id": "scrub-1",
        "reason": "engagement-complete",
        "requested_by": ALICE,
        "proof": site.proof(ALICE, &install_audience("ct-fac", "scrub-1", "scrub")),
    });
    let (done, _) = site.ask("scrub", &scrub).await;
    assert_eq!(done["outcome"], "scrubbed", "{done}\n{}", site.host.log());
    assert_eq!(done["kernels"], serde_json::json!([]), "{done}");
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .starts_with("engagement-complete")
    );
    assert_eq!(done["receipt"]["requester"], ALICE);
    assert!(
        site.call("Demo.Echo", "echo", serde_json::json!({}))
            .await
            .is_none()
    );

    // The sealed instance is in the archive, which verifies against what the site's cluster
    // recorded; nothing is served after a restart.
    let archived: Vec<std::path::PathBuf> = std::fs::read_dir(site.served_dir.join("archive"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let tasks_archive = archived
        .iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("Demo.Tasks-")
        })
        .unwrap_or_else(|| panic!("{archived:?}"));
    assert!(
        tasks_archive
            .join("data/instances")
            .join(&instance)
            .is_dir(),
        "{instance} is not in {}",
        tasks_archive.display()
    );
    // The sealed copy stays in the site's cluster store.
    let site_js = async_nats::jetstream::new(connect(&fleet.sites[0], TOOL).await);
    let sealed = site_js
        .get_object_store(ck_manifest::topics::sealed_store(TASKS_GUID))
        .await
        .expect("the site's sealed-instance store of Demo.Tasks");
    let mut names = Vec::new();
    let mut objects = sealed.list().await.unwrap();
    while let Some(Ok(object)) = objects.next().await {
        names.push(object.name);
    }
    assert!(
        names.iter().any(|n| n.contains(&instance)),
        "{instance} is not in the site's sealed store: {names:?}"
    );
    let verify = Command::new(CK)
        .arg("verify")
        .arg(tasks_archive)
        .args([
            "--nats",
            &fleet.sites[0].url(),
            "--user",
            TOOL.0,
            "--password",
            TOOL.1,
        ])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    site.restart_host(2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !site.host.log().contains("site.reserved"),
        "{}",
        site.host.log()
    );

    // Every request was carried out once: one done each in the hub's FLEET_REPORTS (sourced
    // from the site's stream; after the site's restart the hub's source resumes after its
    // back-off).
    let wanted = ["echo-1", "tasks-1", "echo-2", "scrub-1"];
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let dones = loop {
        let dones = dones_at_hub(&site.hub_js).await;
        if wanted.iter().all(|id| dones.contains_key(*id)) || std::time::Instant::now() > deadline {
            break dones;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for id in wanted {
        assert_eq!(dones.get(id), Some(&1), "{id}: {dones:?}");
    }
}

/// The README's fleet journey block (between its `fleet-journey` markers).
fn readme_journey() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme
        .find("<!-- fleet-journey -->")
        .expect("README marks its fleet journey");
    let end = readme[start..]
        .find("<!-- /fleet-journey -->")
        .expect("README ends its fleet journey")
        + start;
    readme[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_journey_runs_with_natscli_and_nothing_run_at_the_site() {
    let fleet = fleet();
    let site = SiteRig::start(&fleet).await;
    let kernel = site.root.join("operator/echo");
    ck_tests::copy_kernel("echo", &kernel);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/fleet-journey");
    // The commands the README shows are the script's.
    let journey = readme_journey();
    let script_text = std::fs::read_to_string(script).unwrap();
    let commands: Vec<&str> = journey
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("nats ") || l.contains("=$(ck "))
        .map(|l| l.split("  #").next().unwrap().trim().trim_end_matches(" &"))
        .collect();
    assert!(commands.len() >= 6, "{journey}");
    for command in &commands {
        assert!(
            script_text.contains(command),
            "the script does not run `{command}`"
        );
    }
    let ck_dir = Path::new(CK).parent().unwrap();
    let path = format!(
        "{}:{}",
        ck_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::task::spawn_blocking({
        let (kernel, socket, hub_url) = (kernel.clone(), site.socket.clone(), fleet.hub.url());
        move || {
            Command::new(script)
                .arg(&kernel)
                .arg("ct-fac")
                .env("PATH", path)
                .env("NATS_URL", hub_url)
                .env("NATS_USER", OPERATOR.0)
                .env("NATS_PASSWORD", OPERATOR.1)
                .env("SPIFFE_ENDPOINT_SOCKET", socket)
                .env("CK_REQUESTER", ALICE)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        site.host.log()
    );
    assert!(stdout.contains("== install: installed"), "{stdout}");
    assert!(stdout.contains("== scrub: scrubbed"), "{stdout}");
    // natscli showed the steps and the receipt, and the site's state at the hub.
    for step in ["verify", "fetch", "compile", "load", "health"] {
        assert!(
            stdout.contains(&format!("\"step\":\"{step}\"")),
            "{step}: {stdout}"
        );
    }
    assert!(stdout.contains("\"receipt\""), "{stdout}");
    assert!(
        stdout.contains("PUT FLEET_STATE > ct-fac.host.h1"),
        "{stdout}"
    );

    // `ck deploy` itself: published, requested, progress shown, the exit code from done.
    let deploy = |requester: &str, id: &str| {
        let out = Command::new(CK)
            .arg("deploy")
            .arg(&kernel)
            .args(["--silo", "ct-fac", "--as", requester, "--id", id])
            .args(["--spiffe-socket", &site.socket])
            .args(["--nats", &fleet.hub.url(), "--nats-user", OPERATOR.0])
            .args(["--nats-password", OPERATOR.1])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, stdout) = tokio::task::block_in_place(|| deploy(ALICE, "deploy-1"));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("ct-fac: installed"), "{stdout}");
    assert!(stdout.contains("  health   ok"), "{stdout}");
    assert!(
        stdout.contains(&format!("receipt: requested by {ALICE}")),
        "{stdout}"
    );
    let (code, stdout) =
        tokio::task::block_in_place(|| deploy("spiffe://ck.local/intruder/mallory", "deploy-2"));
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("ct-fac: refused: unauthorised"), "{stdout}");
    let scrub = tokio::task::block_in_place(|| {
        Command::new(CK)
            .args([
                "fleet", "scrub", "--silo", "ct-fac", "--reason", "done", "--id", "scrub-2",
            ])
            .args(["--as", ALICE, "--spiffe-socket", &site.socket])
            .args(["--nats", &fleet.hub.url(), "--nats-user", OPERATOR.0])
            .args(["--nats-password", OPERATOR.1])
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&scrub.stdout);
    assert!(scrub.status.success(), "{stdout}");
    assert!(stdout.contains("ct-fac: scrubbed: done"), "{stdout}");
}

/// The `p`th percentile of `samples` (sorted here), in milliseconds.
fn percentile_ms(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let rank = ((p / 100.0) * (samples.len() as f64 - 1.0)).round() as usize;
    samples[rank.min(samples.len() - 1)].as_secs_f64() * 1000.0
}

fn summary(name: &str, samples: &mut [Duration]) -> String {
    format!(
        "{name}: n={} p50 {:.1} ms p95 {:.1} ms max {:.1} ms",
        samples.len(),
        percentile_ms(samples, 50.0),
        percentile_ms(samples, 95.0),
        percentile_ms(samples, 100.0)
    )
}

/// Publishes `body` at the hub for `silo` and waits on `done` (subscribed to that silo's
/// `done`) for its outcome; the time from publishing to `done`.
async fn timed_install(
    hub_js: &async_nats::jetstream::Context,
    done: &mut async_nats::Subscriber,
    silo: &str,
    body: &serde_json::Value,
) -> (Duration, serde_json::Value) {
    let id = body["id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    hub_js
        .publish_with_headers(
            format!("fleet.install.{silo}.request"),
            headers,
            body.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(300), done.next())
            .await
            .unwrap_or_else(|_| panic!("no done for {id} at {silo}"))
            .unwrap();
        let report = event_data(&message.payload);
        if report["id"] == id.as_str() {
            return (started.elapsed(), report);
        }
    }
}

/// The fleet benchmark (docs/BENCHMARKS.md, issue 16): request-to-done of a small C kernel with
/// the artifact new to the site and already there, ten sites installing at once, and
/// build-request-to-done; beside it in the same run the bus alone (a plain JetStream consumer at
/// a site answering `done` for each request). Figures are printed, nothing is asserted on time:
///   cargo test --release -p ck-cli --test fleet bench_fleet_install -- --ignored --nocapture
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it with --ignored --nocapture (docs/BENCHMARKS.md)"]
async fn bench_fleet_install() {
    use async_nats::jetstream::{self, consumer};
    let rounds: usize = std::env::var("CK_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut names: Vec<String> = (0..10).map(|i| format!("site-{i:02}")).collect();
    names.push("base".into());
    let silo_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let fleet = fleet_of(&silo_refs);
    let hub_js = link(&fleet).await;
    let hub = connect(&fleet.hub, TOOL).await;
    let root = fleet._dir.path().to_path_buf();
    let mut report = Vec::new();

    // Baseline: the bus alone. A plain JetStream consumer on site `base`'s mirror answers each
    // request with a `done` into the site's reports stream.
    let base = 10;
    let site_js = jetstream::new(connect(&fleet.sites[base], TOOL).await);
    let requests = site_js.get_stream("FLEET_INSTALL_base").await.unwrap();
    let plain = requests
        .create_consumer(consumer::pull::Config {
            durable_name: Some("baseline".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let responder = tokio::spawn(async move {
        let mut messages = plain.messages().await.unwrap();
        while let Some(Ok(message)) = messages.next().await {
            let body: serde_json::Value =
                serde_json::from_slice(&message.payload).unwrap_or_default();
            let done = ck_events::structured(
                &format!("base:{}:done", body["id"]),
                "ck://bench/baseline",
                "ck.fleet.install.done",
                body["id"].as_str(),
                &ck_events::now(),
                &serde_json::json!({"id": body["id"], "outcome": "installed"}),
            )
            .unwrap();
            site_js
                .publish("fleet.install.base.done", done.to_string().into())
                .await
                .unwrap()
                .await
                .unwrap();
            message.ack().await.unwrap();
        }
    });
    let mut base_done = hub.subscribe("fleet.install.base.done").await.unwrap();
    let mut samples = Vec::new();
    for n in 0..rounds * 2 {
        let body = serde_json::json!({"id": format!("base-{n}")});
        samples.push(
            timed_install(&hub_js, &mut base_done, "base", &body)
                .await
                .0,
        );
    }
    report.push(summary(
        "baseline: the bus alone (hub stream → site mirror → plain consumer → done)",
        &mut samples,
    ));
    responder.abort();

    // Ten sites: a callout and a host each, one identity provider.
    let (_identity, socket) = identity_provider(&root);
    let mut site_procs = Vec::new();
    for (i, silo) in names.iter().take(10).enumerate() {
        let url = fleet.sites[i].url();
        let callout = site_callout(&root, silo, &url, &socket);
        let args = site_host_args(&root, silo, &url, &socket);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let host = ck_proc(&args, root.join(format!("{silo}-host.log")));
        site_procs.push((callout, host));
    }
    for (callout, host) in &site_procs {
        callout.wait_for("authz.serving");
        host.wait_for("site.serving");
    }

    // Versions of echo, each built and published at the hub (not timed).
    let kernel = root.join("operator/echo");
    ck_tests::copy_kernel("echo", &kernel);
    let hub_plane = |client: async_nats::Client| async move {
        ck_control::ControlPlane::open(jetstream::new(client))
            .await
            .unwrap()
    };
    let operator = connect(&fleet.hub, OPERATOR).await;
    let mut versions = Vec::new();
    for v in 1..=(rounds + 2) {
        ck_tests::write_echo_version(&kernel, v as u32);
        ck_tests::ck_build(CK, &[&kernel]);
        ck(&[
            "publish",
            kernel.to_str().unwrap(),
            "--nats",
            &fleet.hub.url(),
            "--nats-user",
            OPERATOR.0,
            "--nats-password",
            OPERATOR.1,
        ]);
        let plane = hub_plane(operator.clone()).await;
        let pin = plane.develop(ECHO_GUID).await.unwrap().unwrap();
        let digest = plane
            .tool_commit(ECHO_GUID, &pin.tool)
            .await
            .unwrap()
            .digest;
        versions.push((pin, digest));
    }
    // Each request with its own proof (fetched before any timing starts).
    let request = |id: String, silo: usize, v: usize| {
        let (pin, digest) = &versions[v];
        let proof = fetch_proof(&socket, ALICE, &install_audience(&names[silo], &id, digest));
        serde_json::json!({
            "id": id, "kernel": "Demo.Echo", "guid": ECHO_GUID,
            "version": {"ck": pin.ck, "tool": pin.tool}, "digest": digest,
            "requested_by": ALICE, "proof": proof,
        })
    };

    // Site 0, one request at a time: the first install (the kernel added), then upgrades to
    // versions the site never had (fetched across the link, compiled), then back to versions
    // it has (no fetch, compiled-component cache).
    let mut done0 = hub.subscribe("fleet.install.site-00.done").await.unwrap();
    let (first, outcome) = timed_install(
        &hub_js,
        &mut done0,
        "site-00",
        &request("first".into(), 0, 0),
    )
    .await;
    assert_eq!(outcome["outcome"], "installed", "{outcome}");
    let steps: Vec<String> = site_procs[0]
        .1
        .log()
        .lines()
        .filter(|l| l.contains("\"site.progress\"") && l.contains("\"id\":\"first\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| format!("{} {} ms", v["step"].as_str().unwrap_or_default(), v["ms"]))
        .collect();
    report.push(format!(
        "first install at a site (kernel added): {:.1} ms ({})",
        first.as_secs_f64() * 1000.0,
        steps.join(", ")
    ));
    let mut uncached = Vec::new();
    for v in 1..rounds {
        let (t, outcome) = timed_install(
            &hub_js,
            &mut done0,
            "site-00",
            &request(format!("new-{v}"), 0, v),
        )
        .await;
        assert_eq!(outcome["outcome"], "installed", "{outcome}");
        uncached.push(t);
    }
    report.push(summary("upgrade, artifact not at the site", &mut uncached));
    let mut cached = Vec::new();
    for v in 0..rounds {
        let (t, outcome) = timed_install(
            &hub_js,
            &mut done0,
            "site-00",
            &request(format!("again-{v}"), 0, v),
        )
        .await;
        assert_eq!(outcome["outcome"], "installed", "{outcome}");
        cached.push(t);
    }
    report.push(summary(
        "upgrade, artifact already at the site",
        &mut cached,
    ));

    // Ten sites at once, twice: a version new to every site (nine first installs and an
    // upgrade), then another (ten upgrades).
    for (round, v) in [(0, rounds), (1, rounds + 1)] {
        let mut subscribers = Vec::new();
        for silo in names.iter().take(10) {
            subscribers.push(
                hub.subscribe(format!("fleet.install.{silo}.done"))
                    .await
                    .unwrap(),
            );
        }
        let bodies: Vec<serde_json::Value> = (0..subscribers.len())
            .map(|i| request(format!("ten-{round}-{i}"), i, v))
            .collect();
        let started = std::time::Instant::now();
        let waits = subscribers
            .into_iter()
            .zip(bodies)
            .enumerate()
            .map(|(i, (mut sub, body))| {
                let hub_js = hub_js.clone();
                let silo = names[i].clone();
                async move { timed_install(&hub_js, &mut sub, &silo, &body).await }
            });
        let outcomes = futures::future::join_all(waits).await;
        let wall = started.elapsed();
        let mut times: Vec<Duration> = outcomes
            .iter()
            .map(|(t, outcome)| {
                assert_eq!(outcome["outcome"], "installed", "{outcome}");
                *t
            })
            .collect();
        report.push(format!(
            "{}; all ten done after {:.1} ms",
            summary(
                if round == 0 {
                    "ten sites at once (nine first installs)"
                } else {
                    "ten sites at once (ten upgrades)"
                },
                &mut times
            ),
            wall.as_secs_f64() * 1000.0
        ));
    }

    // The build pipeline: build-request-to-done at the hub.
    let agent = ck_proc(
        &[
            "build-agent",
            kernel.to_str().unwrap(),
            "--nats",
            &fleet.hub.url(),
            "--nats-user",
            OPERATOR.0,
            "--nats-password",
            OPERATOR.1,
        ],
        root.join("build-agent.log"),
    );
    agent.wait_for("build-agent.serving");
    let mut builds = Vec::new();
    for n in 0..rounds {
        let started = std::time::Instant::now();
        let reply = hub
            .request(
                format!("fleet.build.{ECHO_GUID}.request"),
                format!(r#"{{"ref":"develop","id":"bench-{n}"}}"#).into(),
            )
            .await
            .unwrap();
        builds.push(started.elapsed());
        let done = event_data(&reply.payload);
        assert_eq!(done["ok"], true, "{done}");
    }
    report.push(summary(
        "build request to done (build, reproduce, push)",
        &mut builds,
    ));
    println!(
        "\n== fleet benchmark ({} rounds)\n{}",
        rounds,
        report.join("\n")
    );
}

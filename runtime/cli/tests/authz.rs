//! SPIFFE identity and server-enforced ACLs, end to end: a real nats-server 2.15 with auth
//! callout, the real `ck authz` and `ck identity serve` processes, connections made as kernels
//! with JWT-SVIDs. Verdicts come from the server itself (raw protocol client), not from our code.

mod secured;

use std::process::Command;
use std::time::{Duration, Instant};

use ck_tests::seconds_from_env;
use secured::*;

#[test]
fn nats_enforces_each_kernels_grants() {
    let stack = Stack::start(1, 300);
    stack.register("Test.A", A_GUID, "");
    stack.register("Test.B", B_GUID, "");

    let mut a = stack.connect_as("Test.A", A_GUID);
    for own in [
        format!("ck.{A_GUID}.data.written"),
        format!("ck.{A_GUID}.tool.invoked"),
        "result.Test.A".into(),
        "event.Test.A".into(),
    ] {
        assert_eq!(a.publish(&own).unwrap(), Verdict::Allowed, "{own}");
    }
    assert_eq!(
        a.publish(&format!("ck.{B_GUID}.data.written")).unwrap(),
        Verdict::Denied
    );
    assert_eq!(
        a.subscribe(&format!("ck.{B_GUID}.data.>")).unwrap(),
        Verdict::Denied,
        "without a grant from B"
    );

    // B grants A read-storage (audited): a new connection of A may read B's DATA loop.
    stack.register(
        "Test.B",
        B_GUID,
        &format!(
            "  - identity: {}\n    actions: [read-storage]\n    expires: never\n    audit: true\n",
            spiffe("Test.A", A_GUID)
        ),
    );
    std::thread::sleep(Duration::from_millis(300)); // the registry rescans at most every 200 ms
    let mut a = stack.connect_as("Test.A", A_GUID);
    assert_eq!(
        a.subscribe(&format!("ck.{B_GUID}.data.>")).unwrap(),
        Verdict::Allowed,
        "after B's grant\n{}",
        stack.authz_logs()
    );
    assert_eq!(
        a.subscribe(&format!("ck.{B_GUID}.ck.>")).unwrap(),
        Verdict::Denied,
        "read-storage opens data, not identity"
    );
    let audit = ck_audit::read(&stack.kernel_dir("Test.B")).unwrap();
    assert!(
        audit.iter().any(|l| l["result"] == "allow"
            && l["caller_svid"] == spiffe("Test.A", A_GUID).as_str()
            && l["action"] == "read-storage"),
        "the audited grant's use is in B's ledger: {audit:?}"
    );

    // A grant that expires: the connection it opened is cut at expiry, and afterwards the
    // subscription is refused again.
    let expires = chrono::Utc::now() + chrono::Duration::seconds(3);
    stack.register(
        "Test.B",
        B_GUID,
        &format!(
            "  - identity: {}\n    actions: [read-storage]\n    expires: {}\n",
            spiffe("Test.A", A_GUID),
            expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut a = stack.connect_as("Test.A", A_GUID);
    assert_eq!(
        a.subscribe(&format!("ck.{B_GUID}.data.>")).unwrap(),
        Verdict::Allowed
    );
    std::thread::sleep(Duration::from_millis(4500));
    assert!(
        a.publish(&format!("ck.{A_GUID}.data.written")).is_err(),
        "the server closes a connection whose grant expired"
    );
    let mut a = stack.connect_as("Test.A", A_GUID);
    assert_eq!(
        a.subscribe(&format!("ck.{B_GUID}.data.>")).unwrap(),
        Verdict::Denied,
        "an expired grant is refused"
    );
}

#[test]
fn bad_proofs_are_refused_by_the_server_with_a_logged_reason() {
    let stack = Stack::start(1, 300);
    stack.register("Test.A", A_GUID, "");
    stack.register("Test.B", B_GUID, "");
    let a = spiffe("Test.A", A_GUID);
    let good = stack.svid(&a, None);

    // Forged: the claims altered (sub → B) without re-signing.
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = spiffe("Test.B", B_GUID).into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        engine.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    stack.assert_refused(
        &spiffe("Test.B", B_GUID),
        &forged,
        "signature does not verify",
    );

    // Signed by a key outside the trust bundle.
    let rogue_dir = stack.root().join("rogue");
    let rogue = ck_proc(
        &[
            "identity",
            "serve",
            "--socket",
            rogue_dir.join("sock").to_str().unwrap(),
            "--dir",
            rogue_dir.join("keys").to_str().unwrap(),
            "--trust-domain",
            DOMAIN,
        ],
        stack.root().join("rogue.log"),
    );
    rogue.wait_for("identity.serving");
    let out = Command::new(CK)
        .args(["identity", "fetch", &a, "--socket"])
        .arg(rogue_dir.join("sock"))
        .output()
        .unwrap();
    let rogue_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    stack.assert_refused(&a, &rogue_token, "is not in the trust bundle");

    // Wrong audience.
    let wrong_audience = stack.svid(&a, Some("nats.elsewhere.org"));
    stack.assert_refused(
        &a,
        &wrong_audience,
        "audience does not include 'nats.example.org'",
    );

    // Another trust domain (the provider issues it; ck authz does not accept it).
    let foreign = format!("spiffe://other.org/ck/Test.A/{A_GUID}");
    let foreign_token = stack.svid(&foreign, None);
    stack.assert_refused(
        &foreign,
        &foreign_token,
        "trust domain 'other.org' is not accepted",
    );

    // B's valid SVID presented as A.
    let b_token = stack.svid(&spiffe("Test.B", B_GUID), None);
    stack.assert_refused(&a, &b_token, "differs from the claimed user");

    // No token at all, and a kernel nobody registered.
    stack.assert_refused(&a, "", "no JWT-SVID presented");
    let stranger = spiffe("Test.Stranger", "cccccccc-3333-4ccc-8ccc-cccccccccccc");
    let stranger_token = stack.svid(&stranger, None);
    stack.assert_refused(&stranger, &stranger_token, "no kernel registered");

    // Every refusal of a registered kernel is in its audit ledger.
    let audit = ck_audit::read(&stack.kernel_dir("Test.A")).unwrap();
    let denies = audit
        .iter()
        .filter(|l| l["result"] == "deny" && l["action"] == "connect")
        .count();
    assert!(
        denies >= 4,
        "A's ledger has its refused connects: {audit:?}"
    );
    assert_eq!(
        ck_audit::verify_chain(&stack.kernel_dir("Test.A")).unwrap(),
        None,
        "the ledger's hash chain is intact"
    );

    // And a good SVID still gets in.
    stack
        .connect(&a, &good)
        .expect("the genuine SVID is admitted");
}

#[test]
fn expired_svids_are_refused() {
    let stack = Stack::start(1, 1);
    stack.register("Test.A", A_GUID, "");
    let a = spiffe("Test.A", A_GUID);
    let token = stack.svid(&a, None);
    std::thread::sleep(Duration::from_millis(2100));
    stack.assert_refused(&a, &token, "JWT-SVID expired");
}

#[test]
fn a_kernel_cannot_receive_replies_addressed_to_another() {
    let stack = Stack::start(1, 300);
    stack.register("Test.A", A_GUID, "");
    stack.register("Test.B", B_GUID, "");
    let mut a = stack.connect_as("Test.A", A_GUID);
    assert_eq!(
        a.subscribe(&format!("_INBOX_{A_GUID}.>")).unwrap(),
        Verdict::Allowed
    );
    for tap in [
        format!("_INBOX_{B_GUID}.>"),
        format!("_INBOX_{B_GUID}.abc"),
        "_INBOX.>".into(),
        ">".into(),
        "_INBOX_*.>".into(),
    ] {
        assert_eq!(a.subscribe(&tap).unwrap(), Verdict::Denied, "{tap}");
    }
}

#[test]
fn a_second_callout_takes_over_when_the_first_dies() {
    let mut stack = Stack::start(2, 300);
    stack.register("Test.A", A_GUID, "");
    let a = spiffe("Test.A", A_GUID);
    let token = stack.svid(&a, None);
    for _ in 0..10 {
        stack.connect(&a, &token).expect("both callouts up");
    }
    // SIGKILL the first: no goodbye to the server.
    let mut first = stack.authz.remove(0);
    first.kill();
    let started = Instant::now();
    for i in 0..20 {
        stack
            .connect(&a, &token)
            .unwrap_or_else(|e| panic!("connect {i} after failover: {e}"));
    }
    assert!(
        stack.authz_logs().matches("authz.allow").count() >= 20,
        "the survivor answered"
    );
    eprintln!("20 connects after failover in {:?}", started.elapsed());
}

/// A kernel served by `ck run` under 30-second SVIDs keeps answering for two minutes across
/// renewals, without losing a request.
#[test]
fn svid_rotation_under_load_loses_nothing() {
    let seconds = seconds_from_env("CK_ROTATION_TEST_SECONDS", 120).as_secs();
    let stack = Stack::start(1, 30);
    let host = stack.serve_echo();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (sent, failed) = runtime.block_on(async {
        let client = stack.observer().await;
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let (mut sent, mut failed) = (0u64, Vec::new());
        while Instant::now() < deadline {
            sent += 1;
            let body = format!("{{\"action\":\"echo\",\"data\":{{\"n\":{sent}}}}}");
            let request = async_nats::Request::new()
                .payload(body.into())
                .timeout(Some(Duration::from_secs(2)));
            match client.send_request("input.Demo.Echo", request).await {
                Ok(reply) => {
                    let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
                    if answer["data"]["n"] != sent {
                        failed.push(format!("{sent}: {answer}"));
                    }
                }
                Err(e) => failed.push(format!("{sent}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (sent, failed)
    });
    let rotations = host.log().matches("credentials.rotated").count() as u64;
    eprintln!(
        "{sent} requests, {} failed, {rotations} rotations",
        failed.len()
    );
    assert!(failed.is_empty(), "lost or wrong answers: {failed:?}");
    // 30 s SVIDs are renewed at 40-50 % of their life: at least one rotation per 15 s.
    assert!(
        rotations >= seconds / 15,
        "expected renewals every ≤ 15 s, saw {rotations} in {seconds} s\n{}",
        host.log()
    );
    assert!(sent > seconds * 50, "the load kept flowing: {sent}");
}

/// `auth` actions: the caller proves its SPIFFE ID with a JWT-SVID addressed to the kernel; the
/// kernel sees the proven ID; refusals are 401 and audited.
#[test]
fn callers_of_auth_actions_prove_who_they_are() {
    let stack = Stack::start(1, 300);
    stack.register("Test.A", A_GUID, "");
    let _host = stack.serve_echo();
    auth_callers_prove_who_they_are(&stack);
}

/// The same under `ck dev` (dev/prod parity): it verifies bearer SVIDs exactly as `ck run`.
#[test]
fn callers_of_auth_actions_prove_who_they_are_under_ck_dev() {
    let stack = Stack::start(1, 300);
    stack.register("Test.A", A_GUID, "");
    let dir = stack.kernel_dir("Demo.Echo");
    copy_kernel("echo", &dir);
    let dev = ck_proc(
        &[
            "dev",
            dir.to_str().unwrap(),
            "--nats",
            &stack.server.url(),
            "--spiffe-socket",
            &stack.socket(),
            "--cache-dir",
            stack.root().join("cache").to_str().unwrap(),
        ],
        stack.root().join("dev.log"),
    );
    dev.wait_for("\"dev.ready\"");
    auth_callers_prove_who_they_are(&stack);
}

/// Bearer JWT-SVIDs sent to the served echo kernel's `whoami.verified` (an `auth` action):
/// none, a valid one, a NATS token and one from a foreign trust domain.
fn auth_callers_prove_who_they_are(stack: &Stack) {
    let echo_id = spiffe("Demo.Echo", "0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d");
    let a = spiffe("Test.A", A_GUID);
    let for_echo = stack.svid(&a, Some(&echo_id));
    let for_nats = stack.svid(&a, None);
    let foreign = stack.svid(
        &format!("spiffe://other.org/ck/Test.A/{A_GUID}"),
        Some(&echo_id),
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answers = runtime.block_on(async {
        let client = stack.observer().await;
        let mut answers = Vec::new();
        for bearer in [None, Some(&for_echo), Some(&for_nats), Some(&foreign)] {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(token) = bearer {
                headers.insert("Authorization", format!("Bearer {token}").as_str());
            }
            let request = async_nats::Request::new()
                .payload(r#"{"action":"whoami.verified","data":{}}"#.into())
                .headers(headers)
                .timeout(Some(Duration::from_secs(5)));
            let reply = client
                .send_request("input.Demo.Echo", request)
                .await
                .unwrap();
            answers.push(serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap());
        }
        answers
    });
    assert_eq!(answers[0]["code"], 401, "no token: {}", answers[0]);
    assert_eq!(answers[1]["status"], "ok", "{}", answers[1]);
    assert_eq!(
        answers[1]["data"]["caller"],
        a.as_str(),
        "the kernel sees the proven caller"
    );
    assert_eq!(
        answers[2]["code"], 401,
        "a NATS token is not a call token: {}",
        answers[2]
    );
    assert!(
        answers[2]["message"].as_str().unwrap().contains("audience"),
        "{}",
        answers[2]
    );
    assert_eq!(answers[3]["code"], 401, "foreign domain: {}", answers[3]);
    let audit = || ck_audit::read(&stack.kernel_dir("Demo.Echo")).unwrap();
    eventually(
        Duration::from_secs(5),
        || {
            audit()
                .iter()
                .filter(|l| l["result"] == "deny" && l["action"] == "whoami.verified")
                .count()
                >= 3
        },
        || format!("3 audited refusals expected: {:?}", audit()),
    );
}

/// `LOCAL.*` kernels connect without SPIFFE only where the callout is told so, and then still
/// get only their own compiled permissions.
#[test]
fn local_kernels_connect_without_spiffe_only_when_allowed() {
    let local = "LOCAL.Scratch";
    let guid = "dddddddd-4444-4ddd-8ddd-dddddddddddd";
    let manifest = format!(
        "apiVersion: conceptkernel/v3\nkernel_class: {local}\nkernel_id: {guid}\n\
         spec:\n  actions:\n    common:\n      - {{name: status, access: anon}}\n"
    );
    let strict = Stack::start(1, 300);
    std::fs::create_dir_all(strict.kernel_dir(local)).unwrap();
    std::fs::write(
        strict.kernel_dir(local).join("conceptkernel.yaml"),
        &manifest,
    )
    .unwrap();
    strict.assert_refused(local, "", "does not allow those (--allow-local)");

    let relaxed = Stack::start_with(1, 300, &["--allow-local"]);
    std::fs::create_dir_all(relaxed.kernel_dir(local)).unwrap();
    std::fs::write(
        relaxed.kernel_dir(local).join("conceptkernel.yaml"),
        &manifest,
    )
    .unwrap();
    let mut client = relaxed
        .connect(local, "")
        .unwrap_or_else(|e| panic!("{e}\n{}", relaxed.authz_logs()));
    assert_eq!(
        client.publish("result.LOCAL.Scratch").unwrap(),
        Verdict::Allowed
    );
    assert_eq!(client.subscribe(">").unwrap(), Verdict::Denied);
    assert_eq!(
        client
            .publish(&format!("ck.{A_GUID}.data.written"))
            .unwrap(),
        Verdict::Denied
    );
    // A LOCAL name nobody registered is still refused.
    relaxed.assert_refused("LOCAL.Nobody", "", "no LOCAL kernel named LOCAL.Nobody");
}

/// A task kernel under the callout: its host keeps task state in JetStream over the kernel's
/// own connection, which reaches its own bucket and stream and nothing else of JetStream; a
/// kernel without task actions gets no JetStream at all.
#[test]
fn a_task_kernels_connection_reaches_only_its_own_jetstream() {
    const TASKS_GUID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
    let stack = Stack::start(1, 300);
    stack.register("Test.A", A_GUID, "");
    let host = stack.serve("tasks", "Demo.Tasks");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answers = runtime.block_on(async {
        let client = stack.observer().await;
        let mut answers = Vec::new();
        for body in [
            r#"{"action":"task.start","data":{"task_id":"t-1"}}"#,
            r#"{"action":"task.complete","data":{"task_id":"t-1","output":{"ok":true}}}"#,
            r#"{"action":"task.complete","data":{"task_id":"t-1","output":{"ok":true}}}"#,
        ] {
            let reply = client
                .request("input.Demo.Tasks", body.into())
                .await
                .unwrap();
            answers.push(serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap());
        }
        answers
    });
    assert_eq!(answers[0]["status"], "ok", "{}\n{}", answers[0], host.log());
    assert_eq!(answers[1]["data"]["state"], "completed", "{}", answers[1]);
    assert_eq!(answers[2]["code"], 409, "{}", answers[2]);
    let instance = answers[1]["data"]["instance_id"].as_str().unwrap();
    let sealed = stack
        .kernel_dir("Demo.Tasks")
        .join("data/instances")
        .join(instance);
    assert!(sealed.join("proof.json").is_file());

    let own = format!("ck_tasks_{}", TASKS_GUID.replace('-', "_"));
    let other = format!("ck_tasks_{}", A_GUID.replace('-', "_"));
    let mut tasks = stack.connect_as("Demo.Tasks", TASKS_GUID);
    assert_eq!(
        tasks.publish(&format!("$KV.{own}.t-2")).unwrap(),
        Verdict::Allowed
    );
    for refused in [
        format!("$KV.{other}.t-1"),
        format!("$JS.API.STREAM.DELETE.KV_{own}"),
        format!("$JS.API.STREAM.PURGE.KV_{own}"),
        "$JS.API.STREAM.CREATE.anything".to_owned(),
    ] {
        assert!(
            tasks.publish(&refused).unwrap() == Verdict::Denied,
            "{refused} must be refused"
        );
    }
    let mut plain = stack.connect_as("Test.A", A_GUID);
    assert_eq!(plain.publish("$JS.API.INFO").unwrap(), Verdict::Denied);
}

/// A grant counts at the callout once it is promoted: the callout decides from the kernel's
/// stable version (its CK commit in the serving record), not from an edited working manifest.
#[test]
fn a_grant_takes_effect_at_the_callout_when_it_is_promoted() {
    const ECHO_GUID: &str = "0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d";
    let stack = Stack::start(1, 300);
    stack.register("Test.A", A_GUID, "");
    let host = stack.serve_echo();
    let echo = stack.kernel_dir("Demo.Echo");
    let data = format!("ck.{ECHO_GUID}.data.>");
    let mut a = stack.connect_as("Test.A", A_GUID);
    assert_eq!(a.subscribe(&data).unwrap(), Verdict::Denied);

    // The working manifest grants Test.A read-storage and the build is recorded on develop:
    // nothing is promoted, so the callout still refuses.
    let manifest = std::fs::read_to_string(echo.join("conceptkernel.yaml")).unwrap();
    let granted = format!(
        "{manifest}  - identity: {}\n    actions: [read-storage]\n    expires: never\n",
        spiffe("Test.A", A_GUID)
    );
    std::fs::write(echo.join("conceptkernel.yaml"), granted).unwrap();
    ck_build(CK, &[&echo]);
    std::thread::sleep(Duration::from_millis(300)); // the registry rescans at most every 200 ms
    let mut a = stack.connect_as("Test.A", A_GUID);
    assert_eq!(
        a.subscribe(&data).unwrap(),
        Verdict::Denied,
        "an unpromoted grant opens nothing"
    );

    // Promoted: the next connection of Test.A gets it, and the host serves the new version.
    let out = Command::new(CK)
        .args(["promote", echo.to_str().unwrap(), "develop"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    host.wait_for("\"serving.changed\"");
    std::thread::sleep(Duration::from_millis(300));
    let mut a = stack.connect_as("Test.A", A_GUID);
    assert_eq!(
        a.subscribe(&data).unwrap(),
        Verdict::Allowed,
        "after the promotion\n{}",
        stack.authz_logs()
    );

    // Rolled back: refused again.
    let out = Command::new(CK)
        .args(["rollback", echo.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_millis(300));
    let mut a = stack.connect_as("Test.A", A_GUID);
    assert_eq!(
        a.subscribe(&data).unwrap(),
        Verdict::Denied,
        "after the rollback"
    );
}

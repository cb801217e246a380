//! The control plane's registry, secured: only the identities policies/control-plane.yaml
//! allows write the registry and the serving records — nats-server refuses everyone else —
//! and `ck authz serve --control` decides connects from the cluster's published stable
//! manifests, a promote reaching its next decision within milliseconds (measured, printed).

mod secured;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use secured::*;

const ECHO: &str = "0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d";
const CLIENT_CLASS: &str = "Demo.Client";
const CLIENT: &str = "cccccccc-3333-4ccc-8ccc-cccccccccccc";

/// `ck args` as `user`; (success, everything it printed).
fn ck_as(user: (&str, &str), url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(CK)
        .args(args)
        .args([
            "--nats",
            url,
            "--nats-user",
            user.0,
            "--nats-password",
            user.1,
        ])
        .env_remove("CK_NATS_PASSWORD")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A kernel directory on the operator's machine, built (its loops recorded).
fn kernel(root: &Path, name: &str, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let dir = root.join("operator").join(name);
    copy_kernel("echo", &dir);
    let manifest = dir.join("conceptkernel.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, edit(text)).unwrap();
    ck_build(CK, &[&dir]);
    dir
}

#[test]
fn only_operators_write_the_control_plane_and_the_callout_follows_it() {
    let mut stack = Stack::start(0, 300);
    let url = stack.server.url();
    let echo = kernel(stack.root(), "echo", |m| m);
    let client = kernel(stack.root(), "client", |m| {
        m.replace(
            "kernel_class: Demo.Echo",
            &format!("kernel_class: {CLIENT_CLASS}"),
        )
        .replace(ECHO, CLIENT)
    });
    let (echo_dir, client_dir) = (echo.to_str().unwrap(), client.to_str().unwrap());

    // The observer (a static user without a control-plane role) and the host user may not
    // create or write it; the operator may.
    let (ok, out) = ck_as(OBSERVER, &url, &["publish", echo_dir]);
    assert!(!ok, "the observer published: {out}");
    assert!(out.contains("Permissions Violation"), "{out}");
    let (ok, out) = ck_as(CONTROL_HOST, &url, &["publish", echo_dir]);
    assert!(!ok, "a host published: {out}");
    let (ok, out) = ck_as(OPERATOR, &url, &["publish", echo_dir, client_dir]);
    assert!(ok, "{out}");
    let (ok, out) = ck_as(OBSERVER, &url, &["promote", ECHO, "develop"]);
    assert!(!ok, "the observer promoted: {out}");
    let (ok, out) = ck_as(CONTROL_HOST, &url, &["rollback", ECHO]);
    assert!(!ok, "a host rolled back: {out}");

    // At the wire: nats-server itself refuses the writes.
    let serving = format!("$KV.CK_SERVING.{ECHO}");
    let registry = format!("$KV.CK_REGISTRY.{ECHO}.ck.0000");
    for (who, password) in [OBSERVER, CONTROL_HOST] {
        let mut raw = stack.connect(who, password).unwrap();
        for subject in [&serving, &registry, &"$O.CK_ARTIFACTS.C.x".to_owned()] {
            assert_eq!(
                raw.publish(subject).unwrap(),
                Verdict::Denied,
                "{who} may publish {subject}"
            );
        }
        for subject in [
            "$JS.API.STREAM.DELETE.KV_CK_SERVING",
            "$JS.API.STREAM.PURGE.KV_CK_REGISTRY",
        ] {
            assert_eq!(
                raw.publish(subject).unwrap(),
                Verdict::Denied,
                "{who} {subject}"
            );
        }
    }
    let mut host = stack.connect(CONTROL_HOST.0, CONTROL_HOST.1).unwrap();
    assert_eq!(
        host.publish("$JS.API.STREAM.INFO.KV_CK_SERVING").unwrap(),
        Verdict::Allowed,
        "a host reads the serving records"
    );

    // The callout decides from the cluster: the directory registry is empty, yet the
    // published kernels connect — and they cannot write the control plane either.
    stack.authz_flags = vec!["--control".into()];
    stack.add_authz();
    let mut as_client = stack.connect_as(CLIENT_CLASS, CLIENT);
    assert_eq!(as_client.publish(&serving).unwrap(), Verdict::Denied);
    let data = format!("ck.{ECHO}.data.>");
    assert_eq!(
        as_client.subscribe(&data).unwrap(),
        Verdict::Denied,
        "no grant yet"
    );

    // Version 2 of the echo kernel grants the client read-storage; published, then promoted
    // from a machine without the kernel. The next connect's decision has it.
    let grant = format!(
        "  - identity: {}\n    actions: [read-storage]\n    expires: never\n",
        spiffe(CLIENT_CLASS, CLIENT)
    );
    let manifest = echo.join("conceptkernel.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}{grant}")).unwrap();
    ck_build(CK, &[&echo]);
    let (ok, out) = ck_as(OPERATOR, &url, &["publish", echo_dir]);
    assert!(ok, "{out}");
    let (ok, out) = ck_as(OPERATOR, &url, &["promote", ECHO, "develop"]);
    assert!(ok, "{out}");
    let promoted = Instant::now();
    let mut connects = 0;
    loop {
        connects += 1;
        let mut fresh = stack.connect_as(CLIENT_CLASS, CLIENT);
        if fresh.subscribe(&data).unwrap() == Verdict::Allowed {
            break;
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(10),
            "the promoted grant never reached the callout:\n{}",
            stack.authz_logs()
        );
    }
    println!(
        "registry-change-to-callout ms={:.1} connects={connects} (from the end of `ck promote` to a connect whose permissions carry the promoted grant; each connect includes fetching an SVID)",
        promoted.elapsed().as_secs_f64() * 1e3
    );
    assert!(stack.authz_logs().contains("\"registry.reloaded\""));

    // A host serves from the cluster with the `host` role's read-only permissions: its
    // directory holds only the manifest; the version comes from the registry and the store.
    let host_dir = stack.root().join("host/echo");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(&manifest, host_dir.join("conceptkernel.yaml")).unwrap();
    let (socket, cache) = (
        stack.socket(),
        stack.root().join("cache").display().to_string(),
    );
    let served = ck_proc(
        &[
            "run",
            host_dir.to_str().unwrap(),
            "--nats",
            &url,
            "--spiffe-socket",
            &socket,
            "--cache-dir",
            &cache,
            "--control",
            "--control-user",
            CONTROL_HOST.0,
            "--control-password",
            CONTROL_HOST.1,
        ],
        stack.root().join("host-control.log"),
    );
    served.wait_for("\"ready\"");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status: serde_json::Value = runtime.block_on(async {
        let observer = stack.observer().await;
        let reply = observer
            .request(
                "input.Demo.Echo",
                bytes::Bytes::from_static(br#"{"action":"status","data":{}}"#),
            )
            .await
            .unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    });
    assert_eq!(status["status"], "ok", "{status}");
    let path = status["data"]["component"]["path"]
        .as_str()
        .unwrap_or_default();
    assert!(
        path.starts_with(host_dir.to_str().unwrap()),
        "served from the cluster's store into the host's directory: {status}"
    );
    assert!(
        !served.log().contains("Permissions Violation"),
        "{}",
        served.log()
    );
}

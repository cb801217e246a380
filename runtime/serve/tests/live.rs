//! Kernels added and removed live: while two kernels answer a steady load, a third is added,
//! answers, and is removed, again and again — none of the two others' requests is lost or
//! failed, and the host reports what it serves. A real nats-server and real components built
//! from C.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ck_serve::{Health, Host, IdentityMode, ServeConfig};

/// A copy of reference kernel `name` at `to`, renamed to `class` with `guid` when given, built.
fn kernel(name: &str, to: &Path, rename: Option<(&str, &str)>) -> ck_manifest::Kernel {
    ck_tests::copy_kernel(name, to);
    let manifest = to.join("conceptkernel.yaml");
    if let Some((class, guid)) = rename {
        let text = std::fs::read_to_string(&manifest).unwrap();
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("kernel_class:") {
                    format!("kernel_class: {class}")
                } else if l.starts_with("kernel_id:") {
                    format!("kernel_id: {guid}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&manifest, text).unwrap();
    }
    let loaded = ck_manifest::load_file(&manifest, chrono::Utc::now());
    let kernel = loaded
        .kernel
        .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    ck_build::build_kernel(&kernel, to).unwrap();
    kernel
}

struct Load {
    ok: AtomicU64,
    failed: std::sync::Mutex<Vec<String>>,
}

/// Sends `body` to `subject` with 4 requests in flight until `stop`; every answer must be ok.
fn steady(
    client: async_nats::Client,
    subject: String,
    body: &'static str,
    load: Arc<Load>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|_| {
            let (client, subject, load, stop) =
                (client.clone(), subject.clone(), load.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = async_nats::Request::new()
                        .payload(Bytes::from_static(body.as_bytes()))
                        .timeout(Some(Duration::from_secs(5)));
                    match client.send_request(subject.clone(), request).await {
                        Ok(reply) => {
                            let answer: serde_json::Value =
                                serde_json::from_slice(&reply.payload).unwrap_or_default();
                            if answer["status"] == "ok" {
                                load.ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                load.failed.lock().unwrap().push(answer.to_string());
                            }
                        }
                        Err(e) => load.failed.lock().unwrap().push(format!("{subject}: {e}")),
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_added_and_removed_live_never_interrupts_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ck_tests::nats("");
    let echo = kernel("echo", &tmp.path().join("echo"), None);
    let voting = kernel("voting", &tmp.path().join("voting"), None);
    let third = kernel(
        "echo",
        &tmp.path().join("third"),
        Some(("Demo.Third", "3a3b3c3d-3e3f-4a3b-9c3d-3e3f3a3b3c3d")),
    );
    let host = Host::start(ServeConfig {
        nats: server.url(),
        identity: IdentityMode::Insecure,
        cache_dir: Some(tmp.path().join("cache")),
        ..ServeConfig::default()
    })
    .await
    .unwrap();
    for k in [&echo, &voting] {
        let plan = host.plan_recorded(k, Vec::new(), "test").unwrap();
        host.add(plan).await.unwrap();
    }
    // A kernel is served once per host.
    let again = host
        .add(host.plan_recorded(&echo, Vec::new(), "test").unwrap())
        .await;
    assert_eq!(
        again.err().map(|e| e.kind()),
        Some(ck_serve::ServeErrorKind::AlreadyServed)
    );

    let client = async_nats::connect(server.url()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<Arc<Load>> = (0..2)
        .map(|_| {
            Arc::new(Load {
                ok: AtomicU64::new(0),
                failed: Default::default(),
            })
        })
        .collect();
    let mut callers = steady(
        client.clone(),
        echo.topics.input.clone(),
        r#"{"action":"echo","data":{"n":1}}"#,
        loads[0].clone(),
        stop.clone(),
    );
    callers.extend(steady(
        client.clone(),
        voting.topics.input.clone(),
        r#"{"action":"tally","data":{"ballots":["ada","grace","ada"]}}"#,
        loads[1].clone(),
        stop.clone(),
    ));

    let cycles = 5;
    let mut third_answered = 0;
    for cycle in 0..cycles {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let plan = host
            .plan_recorded(&third, vec![echo.clone(), voting.clone()], "test")
            .unwrap();
        host.add(plan).await.unwrap();
        let names = host.kernels().await;
        assert_eq!(
            names,
            ["CS.Voting", "Demo.Echo", "Demo.Third"],
            "cycle {cycle}"
        );
        for _ in 0..20 {
            let reply = client
                .request(
                    third.topics.input.clone(),
                    Bytes::from_static(br#"{"action":"echo","data":{"third":true}}"#),
                )
                .await
                .unwrap();
            let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            assert_eq!(answer["kernel"], "Demo.Third", "{answer}");
            assert_eq!(answer["data"]["third"], true, "{answer}");
            third_answered += 1;
        }
        let report = host.report().await;
        assert!(
            report.iter().all(|k| k.health == Health::Serving),
            "{report:?}"
        );
        let removed = host.remove("Demo.Third").await.unwrap();
        assert!(removed.drained, "cycle {cycle}");
        assert!(removed.answered >= 20, "cycle {cycle}: {removed:?}");
        // Gone: nobody answers its topic any more.
        let gone = client
            .request(third.topics.input.clone(), Bytes::from_static(b"{}"))
            .await;
        assert!(
            matches!(&gone, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
            "cycle {cycle}: {gone:?}"
        );
        assert_eq!(host.kernels().await, ["CS.Voting", "Demo.Echo"]);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    for (name, load) in ["Demo.Echo", "CS.Voting"].iter().zip(&loads) {
        let failed = load.failed.lock().unwrap();
        assert!(
            failed.is_empty(),
            "{name}: {} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        let ok = load.ok.load(Ordering::Relaxed);
        assert!(ok > 100, "{name}: the load kept flowing ({ok} answered)");
        eprintln!("{name}: {ok} answered while Demo.Third was added and removed {cycles} times");
    }
    assert_eq!(third_answered, 20 * cycles);
    let stopped = host.shutdown().await;
    assert_eq!(stopped.len(), 2);
    assert!(stopped.iter().all(|(_, r)| r.drained), "{stopped:?}");
    drop(server);
}

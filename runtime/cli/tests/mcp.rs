//! `ck mcp` checked by a real MCP client (the Python `mcp` SDK over stdio) against a stack of
//! two kernels, two subscriptions and one silo on a real nats-server.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const CK: &str = env!("CARGO_BIN_EXE_ck");

fn ck(args: &[&str]) -> String {
    let out = Command::new(CK).args(args).output().expect("ck runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ck {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_mcp_client_lists_the_tools_and_reads_the_stack() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ck_tests::nats_jetstream(&tmp.path().join("js"));
    let url = server.url();
    // Two kernels, built and published to the cluster's control plane.
    let operator = tmp.path().join("operator");
    let kernels: Vec<_> = ["echo", "voting"]
        .iter()
        .map(|name| {
            let dir = operator.join(name);
            ck_tests::copy_kernel(name, &dir);
            dir
        })
        .collect();
    ck_tests::ck_build(CK, &kernels);
    let dirs: Vec<&str> = kernels.iter().map(|k| k.to_str().unwrap()).collect();
    let mut publish = vec!["publish"];
    publish.extend(&dirs);
    publish.extend(["--nats", &url]);
    ck(&publish);
    ck(&["promote", dirs[0], "develop"]);
    // One silo: a host of ct-fac reporting to FLEET_STATE.
    let host_dir = tmp.path().join("site/echo");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(
        kernels[0].join("conceptkernel.yaml"),
        host_dir.join("conceptkernel.yaml"),
    )
    .unwrap();
    let _host = ck_tests::ck_run(
        CK,
        &url,
        &host_dir,
        tmp.path(),
        "site-host",
        &["--control", "--silo", "ct-fac", "--host-id", "h1"],
    );
    // Two subscriptions.
    let contracts = tmp.path().join("contracts");
    std::fs::create_dir_all(&contracts).unwrap();
    let examples = ck_tests::reference_kernels().join("../contracts/examples");
    for team in ["backend-core", "fleet-console"] {
        std::fs::copy(
            examples.join(format!("{team}.json")),
            contracts.join(format!("{team}.json")),
        )
        .unwrap();
    }
    // The family streams, and one delivery result in platform.delivery (published as the
    // bridge publishes its results: a CloudEvent inside the family).
    ck(&["platform", "streams", "--nats", &url]);
    ck(&[
        "platform",
        "publish",
        "platform.delivery.delivered.v1",
        "--nats",
        &url,
        "--type",
        "ck.platform.delivery.delivered",
        "--source",
        "ck://bridge/test",
        "--data",
        r#"{"subscriptionId":"backend-core-capabilities","status":200}"#,
    ]);

    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/mcp_client.py");
    let out = Command::new("python3")
        .arg(&client)
        .arg(CK)
        .args([
            "mcp",
            "--nats",
            &url,
            "--contracts",
            contracts.to_str().unwrap(),
        ])
        .args(["--kernel", dirs[0], "--kernel", dirs[1]])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the MCP client failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["tools"],
        serde_json::json!([
            "list_kernels",
            "list_silos",
            "list_subject_families",
            "list_subscriptions",
            "recent_delivery_results"
        ])
    );
    let answer = |tool: &str| -> Value {
        let a = &report["answers"][tool];
        assert_eq!(a["is_error"], false, "{tool}: {a}");
        a["json"][0].clone()
    };

    let kernels = answer("list_kernels");
    let names: Vec<&str> = kernels["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Demo.Echo", "CS.Voting"], "{kernels}");
    let echo = &kernels["kernels"][0];
    assert_eq!(echo["topics"]["input"], "input.Demo.Echo", "{echo}");
    assert!(
        echo["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "echo"),
        "{echo}"
    );
    assert!(
        echo["serving"]["stable"]["tool"].as_str().is_some(),
        "{echo}"
    );

    let subscriptions = answer("list_subscriptions");
    let listed = subscriptions["subscriptions"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{subscriptions}");
    assert_eq!(listed[0]["subscriptionId"], "backend-core-capabilities");
    assert_eq!(
        listed[0]["families"],
        serde_json::json!(["platform.capability"])
    );
    assert_eq!(listed[0]["auth"], "standard-webhooks");
    let text = subscriptions.to_string();
    assert!(
        !text.contains("secretRef") && !text.contains("BACKEND_CORE_WEBHOOK_SECRETS"),
        "a secret's whereabouts are listed: {text}"
    );

    let families = answer("list_subject_families");
    let delivery = families["families"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "platform.delivery")
        .unwrap()
        .clone();
    assert_eq!(delivery["stream"], "PLATFORM_DELIVERY", "{delivery}");
    assert_eq!(delivery["counts"]["messages"], 1, "{delivery}");
    assert_eq!(delivery["counts"]["last_hour"], 1, "{delivery}");
    assert!(
        families["families"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "fleet.install" && f.get("stream").is_none()),
        "{families}"
    );

    let results = answer("recent_delivery_results");
    assert_eq!(
        results["results"][0]["type"], "ck.platform.delivery.delivered",
        "{results}"
    );
    assert_eq!(results["results"][0]["data"]["status"], 200, "{results}");

    let silos = answer("list_silos");
    assert_eq!(silos["silos"][0]["silo"], "ct-fac", "{silos}");
    assert_eq!(silos["silos"][0]["hosts"][0]["host"], "h1", "{silos}");
    assert_eq!(silos["silos"][0]["hosts"][0]["live"], true, "{silos}");
}

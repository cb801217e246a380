//! `ck bench --cluster`: the kernel host on a 3-node nats-server cluster (JetStream on every
//! node, `sync_interval: always`).
//!
//! Throughput: 1, 2 and 3 plain async-nats responders, then 1, 2 and 3 `ck` hosts serving the
//! echo kernel, each a process of its own (`ck bench-serve`) connected to its own node (host
//! `i` on node `i`), one queue group per target; the load comes from node 1, so requests to
//! the responders on nodes 2 and 3 cross a route, as they would in a deployment. The CPU of
//! the serving processes and of the three nats-servers is reported per request.
//!
//! Seals (with `--tasks N`): the sealed-task benchmark ([`crate::tasks`]) on a lone server,
//! where every stream, bucket and the sealed-instance store have 1 replica, then on the
//! cluster, where each has 3 (replication on): the cost of replication, in the same run.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;

use crate::{BenchConfig, Target, measure, served::Served};

/// How long a served process may take to start serving.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// Instance-pool slots of each served host (more than the highest concurrency measured).
const POOL: u32 = 256;

/// Runs the cluster benchmark `args` describes.
pub(crate) async fn run(args: &BenchConfig) -> Result<()> {
    let cluster = ck_natsd::NatsCluster::start_with_jetstream(3, "sync_interval: always", "")?;
    let nodes: Vec<String> = cluster.nodes().iter().map(|n| n.url()).collect();
    println!(
        "3-node nats-server cluster ({}), JetStream on every node, sync_interval: always; {} s per run; ck built {}; load generator {}",
        nodes.join(", "),
        args.seconds,
        crate::profile(),
        if args.external {
            "in its own process, on node 1"
        } else {
            "in this process, on node 1"
        }
    );
    let client = async_nats::connect(&nodes[0]).await?;
    let body = Bytes::from(
        serde_json::json!({"action": "echo", "data": {"pad": "x".repeat(59)}}).to_string(),
    );
    let echo = std::fs::canonicalize(&args.echo)?;
    // Built once here, so that no served process builds it (they would race).
    crate::ensure_built(&crate::load_one(&echo)?)?;
    let server_pids: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.pid().to_string())
        .collect();
    let mut rows = Vec::new();
    for (target, label) in [
        ("baseline", "plain async-nats responder"),
        ("fresh", "ck host, echo, fresh instance"),
    ] {
        for n in 1..=3 {
            let mut served = Vec::new();
            for node in &nodes[..n] {
                let mut command = tokio::process::Command::new(&args.generator);
                command.args(crate::served::args(
                    node,
                    target,
                    &echo,
                    !args.no_events,
                    !args.no_tool_events,
                    POOL,
                ));
                served.push(Served::start(command, target, READY_WITHIN).await?);
            }
            // Interest on the other nodes travels over the routes: warm every path first.
            let subject = served[0].subject.clone();
            warm(&client, &subject, &body, 64 * n).await?;
            let cpu_before: Vec<Duration> = served
                .iter()
                .map(|s| crate::cpu_time(&s.pid.to_string()))
                .collect();
            let on = Target {
                client: &client,
                url: nodes[0].clone(),
                server_pids: server_pids.clone(),
                serving_pids: served.iter().map(|s| s.pid.to_string()).collect(),
            };
            let plural = if n == 1 { "" } else { "s" };
            measure(
                &mut rows,
                &on,
                &format!("{n} × {label}{plural}"),
                &subject,
                &body,
                args,
            )
            .await;
            // How the queue group spread the work: each process's share of the CPU used.
            let used: Vec<f64> = served
                .iter()
                .zip(&cpu_before)
                .map(|(s, before)| {
                    crate::cpu_time(&s.pid.to_string())
                        .saturating_sub(*before)
                        .as_secs_f64()
                })
                .collect();
            let total: f64 = used.iter().sum::<f64>().max(f64::EPSILON);
            let shares: Vec<String> = used
                .iter()
                .enumerate()
                .map(|(i, u)| format!("node {}: {:.0} %", i + 1, 100.0 * u / total))
                .collect();
            println!(
                "    CPU of the serving processes, by node: {}",
                shares.join(", ")
            );
            for s in served {
                s.stop(Duration::from_secs(30)).await;
            }
        }
    }
    if let Some(tasks) = args.tasks {
        let dir = tempfile::tempdir()?;
        let lone = ck_natsd::NatsServer::start(&format!(
            "jetstream {{ store_dir: \"{}\", sync_interval: always }}",
            dir.path().join("js").display()
        ))?;
        println!(
            "seals: a lone nats-server (R1) beside the 3-node cluster (R3), {tasks} tasks per level"
        );
        let mut seal_rows = crate::tasks::measure(
            &lone.url(),
            ", lone server R1",
            &args.tasks_kernel,
            tasks,
            &args.concurrency,
            &dir.path().join("lone"),
        )
        .await?;
        drop(lone);
        seal_rows.extend(
            crate::tasks::measure(
                &nodes[0],
                ", 3-node cluster R3",
                &args.tasks_kernel,
                tasks,
                &args.concurrency,
                &dir.path().join("cluster"),
            )
            .await?,
        );
        if let Some(path) = &args.json {
            std::fs::write(
                path,
                serde_json::to_vec_pretty(
                    &serde_json::json!({"requests": rows, "seals": seal_rows}),
                )?,
            )?;
        }
    } else if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&serde_json::json!({"requests": rows}))?,
        )?;
    }
    Ok(())
}

/// Sends `requests` requests one after the other (failures allowed while interest spreads),
/// or fails when fewer than that were answered within 30 s.
async fn warm(
    client: &async_nats::Client,
    subject: &str,
    body: &Bytes,
    requests: usize,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut answered = 0;
    while answered < requests {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{subject}: the served processes did not answer {requests} requests within 30 s"
        );
        if client
            .request(subject.to_owned(), body.clone())
            .await
            .is_ok()
        {
            answered += 1;
        }
    }
    Ok(())
}

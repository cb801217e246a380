//! `ck fleet`: the streams that carry a site's install traffic across its leaf link
//! (`ck_control::link`), and a site's scrub (`ck_control::install`).

use std::process::ExitCode;

use anyhow::Result;

use crate::publish::{ClusterArgs, Refusals};

/// Arguments of `ck fleet`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// At the hub: a stream per site keeping its install requests (deduplicated by request
    /// id) and FLEET_REPORTS sourcing every site's reports. Run again after adding sites.
    LinkHub(LinkHubArgs),
    /// At a site: the mirror of its requests at the hub (carried out once the link returns
    /// after a cut) and the stream of its progress and done reports.
    LinkSite(LinkSiteArgs),
    /// At the hub: ask a site to stop and remove every kernel it serves, archiving their DATA
    /// (sealed instances are kept: in the site's store and its archive); shows its progress,
    /// exit 0 once scrubbed.
    Scrub(ScrubArgs),
}

#[derive(clap::Args)]
struct ScrubArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The site.
    #[arg(long, value_name = "SILO")]
    silo: String,
    /// Why (kept in the receipt and the site's ledger).
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    requester: crate::deploy::RequesterArgs,
}

#[derive(clap::Args)]
struct LinkHubArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// A site linked to this hub (repeatable).
    #[arg(long = "site", value_name = "SILO", required = true)]
    sites: Vec<String>,
    /// Replicas of the hub's streams (3 on a 3-node cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: u8,
    /// Seconds to wait until every site's mirror of its requests and the hub's source of its
    /// reports are active (0: do not wait).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    wait: u64,
}

#[derive(clap::Args)]
struct LinkSiteArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// This site.
    #[arg(long, value_name = "SILO")]
    silo: String,
    /// The hub's JetStream domain.
    #[arg(long, value_name = "NAME", default_value = "hub")]
    hub_domain: String,
}

/// Runs `ck fleet`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let refusals = Refusals::default();
        match &args.command {
            Command::LinkHub(a) => {
                let js = a.cluster.connect(&refusals).await?;
                ck_control::link::provision_hub(&js, &a.sites, usize::from(a.replicas))
                    .await
                    .map_err(|e| refusals.explain(e.into()))?;
                for silo in &a.sites {
                    println!(
                        "hub: {} keeps {silo}'s requests",
                        ck_manifest::topics::fleet_install_stream(silo)
                    );
                }
                println!(
                    "hub: {} sources {} site(s)",
                    ck_manifest::topics::FLEET_REPORTS_STREAM,
                    a.sites.len()
                );
                if a.wait > 0 {
                    println!(
                        "hub: waiting up to {} s for each site's mirror and source to be active",
                        a.wait
                    );
                    let inactive = ck_control::link::wait_active(
                        &js,
                        &a.sites,
                        std::time::Duration::from_secs(a.wait),
                    )
                    .await;
                    for (silo, state) in &inactive {
                        eprintln!(
                            "{silo}: {}{} after {} s: is the site linked (`ck fleet link-site --silo {silo}`) and its leaf node up?",
                            if state.mirror { "" } else { "its mirror of its requests is not active" },
                            match (state.mirror, state.source) {
                                (false, false) => "; the hub does not source its reports",
                                (true, false) => "the hub does not source its reports",
                                _ => "",
                            },
                            a.wait
                        );
                    }
                    if !inactive.is_empty() {
                        return Ok(ExitCode::FAILURE);
                    }
                    println!("hub: every site's link is active");
                }
            }
            Command::LinkSite(a) => {
                let js = a.cluster.connect(&refusals).await?;
                ck_control::link::provision_site(&js, &a.silo, &a.hub_domain)
                    .await
                    .map_err(|e| refusals.explain(e.into()))?;
                println!(
                    "site {}: {} mirrors the hub's, {} keeps its reports",
                    a.silo,
                    ck_manifest::topics::fleet_install_stream(&a.silo),
                    ck_manifest::topics::fleet_reports_stream(&a.silo)
                );
            }
            Command::Scrub(a) => {
                if let Some(problem) = ck_manifest::topics::silo_name_problem(&a.silo) {
                    anyhow::bail!("--silo: {problem}");
                }
                let id = a.requester.id()?;
                let mut request = ck_control::install::ScrubRequest {
                    id: id.clone(),
                    reason: a.reason.clone(),
                    requested_by: a.requester.requester.clone(),
                    proof: String::new(),
                };
                request.proof = a
                    .requester
                    .proof(&a.silo, &request.proof_binding())
                    .await?;
                if a.requester.print_request {
                    println!("{}", serde_json::to_string(&request)?);
                    return Ok(ExitCode::SUCCESS);
                }
                let js = a.cluster.connect(&refusals).await?;
                let watch = ck_control::install::send(
                    &js,
                    &a.silo,
                    ck_manifest::topics::InstallSubject::Scrub,
                    &id,
                    &request,
                )
                .await
                .map_err(|e| refusals.explain(e.into()))?;
                println!("{id}: scrub requested at the hub; {}:", a.silo);
                return crate::deploy::follow(
                    watch,
                    &a.silo,
                    std::time::Duration::from_secs(a.requester.timeout),
                )
                .await;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

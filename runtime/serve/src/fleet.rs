//! Reporting a host to the fleet (`ck_control::fleet`): the reporter opened over the control
//! plane's connection, and what the host serves as the fleet sees it.

use ck_control::ControlPlane;
use ck_control::fleet::{FleetReporter, KernelState};

use crate::config::FleetConfig;
use crate::error::{Kinded, ServeError, ServeErrorKind};
use crate::host::KernelReport;

/// The host's reporter, and for a site's host whose hub could not be reached when it started,
/// the hub it should report to: its state goes to the site's own FLEET_STATE meanwhile, and to
/// the hub's from the first report after the hub answers.
pub(crate) struct FleetLink {
    reporter: FleetReporter,
    hub_pending: Option<async_nats::jetstream::Context>,
}

impl FleetLink {
    /// The reporter, moved to the hub's FLEET_STATE first if it is waiting for it and the hub
    /// now answers.
    pub(crate) async fn reporter(&mut self) -> &mut FleetReporter {
        if let Some(hub) = &self.hub_pending
            && let Ok(state) = ck_control::fleet::fleet_state(hub).await
        {
            self.reporter.report_to(state);
            self.hub_pending = None;
            tracing::info!("fleet.state-hub");
        }
        &mut self.reporter
    }
}

/// Opens the reporter for `config`'s silo and host. A site's host keeps its state in the hub's
/// FLEET_STATE (`hub`, through the hub's domain), where the operator watches every site; while
/// the hub cannot be reached (the link is cut, or the hub has no control plane yet), in the
/// site's own.
pub(crate) async fn open(
    config: &FleetConfig,
    plane: &ControlPlane,
    hub: Option<&async_nats::jetstream::Context>,
) -> Result<FleetLink, ServeError> {
    let mut state = plane.jetstream().clone();
    let mut hub_pending = None;
    if let Some(hub) = hub {
        match ck_control::fleet::fleet_state(hub).await {
            Ok(_) => state = hub.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "fleet.state-local");
                hub_pending = Some(hub.clone());
            }
        }
    }
    let reporter = FleetReporter::open(
        plane.jetstream().client(),
        &state,
        config.policy.clone(),
        &config.silo,
        &config.host,
    )
    .await
    .kinded(ServeErrorKind::Control, || {
        format!("reporting host {} of silo {}", config.host, config.silo)
    })?;
    Ok(FleetLink {
        reporter,
        hub_pending,
    })
}

/// The fleet's view of the kernels a host serves.
pub(crate) fn kernel_states(report: Vec<KernelReport>) -> Vec<KernelState> {
    report
        .into_iter()
        .map(|k| KernelState {
            stable: format!(
                "ck@{}/tool@{}",
                ck_loops::serving::short(&k.stable.ck),
                ck_loops::serving::short(&k.stable.tool)
            ),
            canary: k.canary.map(|(c, w)| {
                format!(
                    "ck@{}/tool@{} {w}%",
                    ck_loops::serving::short(&c.ck),
                    ck_loops::serving::short(&c.tool)
                )
            }),
            health: serde_json::to_value(k.health)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            ok: k.stats.ok,
            errors: k.stats.errors,
            name: k.name,
            guid: k.guid,
        })
        .collect()
}

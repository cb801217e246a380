//! Reporting a host to the fleet (`ck_control::fleet`): the reporter opened over the control
//! plane's connection, and what the host serves as the fleet sees it.

use ck_control::ControlPlane;
use ck_control::fleet::{FleetReporter, KernelState};

use crate::config::FleetConfig;
use crate::error::{Kinded, ServeError, ServeErrorKind};
use crate::host::KernelReport;

/// Opens the reporter for `config`'s silo and host. A site's host keeps its state in the hub's
/// FLEET_STATE (`hub`, through the hub's domain), where the operator watches every site; when
/// the hub cannot be reached as it starts (the link is cut), in the site's own.
pub(crate) async fn open(
    config: &FleetConfig,
    plane: &ControlPlane,
    hub: Option<&async_nats::jetstream::Context>,
) -> Result<FleetReporter, ServeError> {
    let mut state = plane.jetstream().clone();
    if let Some(hub) = hub {
        match ck_control::fleet::fleet_state(hub).await {
            Ok(_) => state = hub.clone(),
            Err(e) => tracing::warn!(error = %e, "fleet.state-local"),
        }
    }
    FleetReporter::open(
        plane.jetstream().client(),
        &state,
        config.policy.clone(),
        &config.silo,
        &config.host,
    )
    .await
    .kinded(ServeErrorKind::Control, || {
        format!("reporting host {} of silo {}", config.host, config.silo)
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

//! Swapping versions of one served kernel behind its running subscription: the one place that
//! decides whether a version may be served (its topics must not move), binds it to the
//! kernel's connection, swaps it in, and renews the connection when the kernel's own
//! permissions change (only a new connection gets them from the auth callout). The serving
//! record's follower and `ck dev`'s reloads both come through here.

use std::sync::{Arc, Mutex};

use ck_bus::Publisher;
use ck_host::{HostEngine, KernelService, VersionLabel};
use ck_manifest::Kernel;
use ck_subject::Permissions;

use crate::access::CallerVerifier;
use crate::dispatch::VersionService;
use crate::error::{Kinded, ServeError, ServeErrorKind};
use crate::version::{PreparedVersion, topics_moved};
use crate::versioned::{Route, Versioned};

/// Everything a service of a kernel needs besides its version.
#[derive(Clone)]
pub(crate) struct ServiceParts {
    /// The kernel's connection.
    pub(crate) publisher: Publisher,
    /// Verifies callers of `auth`/`owner` actions.
    pub(crate) verifier: Option<Arc<dyn CallerVerifier>>,
    /// The kernel's task lifecycle.
    pub(crate) lifecycle: Option<Arc<ck_task::Lifecycle>>,
    /// Publish `tool.invoked` / `tool.completed` / `tool.failed` per call.
    pub(crate) tool_events: bool,
}

impl ServiceParts {
    /// A service for `version`: its guest, behind the router.
    pub(crate) fn service(
        &self,
        engine: &HostEngine,
        version: PreparedVersion,
    ) -> Result<Arc<VersionService>, ServeError> {
        let name = version.kernel.name.clone();
        let mut guest = KernelService::new(
            engine,
            version.kernel.clone(),
            version.component,
            version.permissions,
            self.publisher.clone(),
        )
        .kinded(ServeErrorKind::Engine, || {
            format!("{name}: building its service")
        })?
        .with_version(version.label.clone());
        if self.tool_events {
            guest = guest.with_tool_events();
        }
        Ok(Arc::new(VersionService::new(
            version.kernel,
            version.label,
            version.warnings,
            guest,
            self.lifecycle.clone(),
            self.verifier.clone(),
        )))
    }

    /// A route for a stable version and an optional canary.
    pub(crate) fn route(
        &self,
        engine: &HostEngine,
        stable: PreparedVersion,
        canary: Option<(PreparedVersion, u8)>,
    ) -> Result<Route, ServeError> {
        Ok(Route {
            stable: self.service(engine, stable)?,
            canary: match canary {
                Some((version, weight)) => Some((self.service(engine, version)?, weight)),
                None => None,
            },
        })
    }
}

/// What a swap did.
#[derive(Debug, Clone)]
pub struct Swapped {
    /// The stable version served before.
    pub previous: Option<VersionLabel>,
    /// The stable version served now.
    pub current: VersionLabel,
    /// The kernel's permissions changed: its connection is being renewed.
    pub permissions_changed: bool,
}

/// The swappable versions of one served kernel.
pub(crate) struct Swapper {
    /// The kernel as served (its topics are the subscription's).
    pub(crate) kernel: Kernel,
    pub(crate) engine: HostEngine,
    pub(crate) parts: ServiceParts,
    pub(crate) versioned: Arc<Versioned>,
    /// The stable version's permissions, as the connection has them.
    permissions: Mutex<Permissions>,
    /// Notified to renew the connection when those change.
    pub(crate) renew: Arc<tokio::sync::Notify>,
}

impl Swapper {
    /// Serves `stable` (and `canary`) of `kernel` on the connection `parts` holds.
    pub(crate) fn new(
        kernel: Kernel,
        engine: HostEngine,
        parts: ServiceParts,
        stable: PreparedVersion,
        canary: Option<(PreparedVersion, u8)>,
        renew: Arc<tokio::sync::Notify>,
    ) -> Result<Self, ServeError> {
        let permissions = Mutex::new(stable.permissions.clone());
        let versioned = Arc::new(Versioned::new(parts.route(&engine, stable, canary)?));
        Ok(Self {
            kernel,
            engine,
            parts,
            versioned,
            permissions,
            renew,
        })
    }

    /// Serves `stable` (and `canary`) from the next message on; messages in flight finish on
    /// the versions they started with. Refused, with the current versions still serving, when
    /// a version's topics move.
    pub(crate) fn swap(
        &self,
        stable: PreparedVersion,
        canary: Option<(PreparedVersion, u8)>,
    ) -> Result<Swapped, ServeError> {
        if let Some(why) = std::iter::once(&stable)
            .chain(canary.as_ref().map(|c| &c.0))
            .find_map(|v| topics_moved(&self.kernel, &v.kernel))
        {
            return Err(ServeError::new(
                ServeErrorKind::TopicsMoved,
                format!(
                    "{why}: a running host keeps its subscription, so this version needs a restart to be served"
                ),
            ));
        }
        let new_permissions = stable.permissions.clone();
        let current = stable.label.clone();
        let route = self.parts.route(&self.engine, stable, canary)?;
        let previous = Some(self.versioned.swap(route).stable.version().clone());
        let permissions_changed = {
            let mut held = self
                .permissions
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let changed = *held != new_permissions;
            *held = new_permissions;
            changed
        };
        if permissions_changed {
            tracing::info!(kernel = %self.kernel.name, "serving.permissions-changed");
            self.renew.notify_one();
        }
        Ok(Swapped {
            previous,
            current,
            permissions_changed,
        })
    }
}

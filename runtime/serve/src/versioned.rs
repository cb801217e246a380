//! One kernel served in several versions at once: the stable one and, optionally, a canary
//! answering a fixed share of the messages. The set of versions is replaced atomically while
//! messages flow: a message already being handled finishes on the version it started with, the
//! next one goes to the new set, and the subscription is never touched.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use ck_bus::{Failure, Request};
use serde_json::value::RawValue;

use crate::dispatch::VersionService;

/// Which versions answer, and how the messages are shared.
pub struct Route {
    /// Answers every message the canary does not take.
    pub stable: Arc<VersionService>,
    /// A version and the percentage of messages it answers.
    pub canary: Option<(Arc<VersionService>, u8)>,
}

/// A [`ck_bus::Handler`] over swappable versions of one kernel.
pub struct Versioned {
    route: ArcSwap<Route>,
    messages: AtomicU64,
}

impl Versioned {
    /// Serves `route`.
    pub fn new(route: Route) -> Self {
        Self {
            route: ArcSwap::from_pointee(route),
            messages: AtomicU64::new(0),
        }
    }

    /// Serves `route` from the next message on; returns the route it replaces (whose messages
    /// in flight finish on it).
    pub fn swap(&self, route: Route) -> Arc<Route> {
        self.route.swap(Arc::new(route))
    }

    /// The route serving now.
    pub fn current(&self) -> Arc<Route> {
        self.route.load_full()
    }

    fn pick(&self) -> Arc<VersionService> {
        let route = self.route.load();
        match &route.canary {
            Some((canary, weight)) => {
                let n = self.messages.fetch_add(1, Ordering::Relaxed);
                if ck_loops::serving::goes_to_canary(n, *weight) {
                    canary.clone()
                } else {
                    route.stable.clone()
                }
            }
            None => route.stable.clone(),
        }
    }
}

impl ck_bus::Handler for Versioned {
    async fn handle(&self, request: Request) -> Result<Box<RawValue>, Failure> {
        let service = self.pick();
        ck_bus::Handler::handle(service.as_ref(), request).await
    }

    fn refused(&self, refusal: &ck_bus::Refusal) {
        ck_bus::Handler::refused(self.pick().as_ref(), refusal);
    }

    /// Only when every version serving now agrees (a canary cannot widen the broadcast).
    fn broadcasts(&self, action: &str) -> bool {
        let route = self.route.load();
        ck_bus::Handler::broadcasts(route.stable.as_ref(), action)
            && route
                .canary
                .as_ref()
                .is_none_or(|(canary, _)| ck_bus::Handler::broadcasts(canary.as_ref(), action))
    }
}

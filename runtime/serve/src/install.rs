//! A fleet site's install bus, served by a host started for the silo (`ck host --silo`): the
//! site runs no command of its own. The host takes each request from the site's mirror of its
//! requests at the hub (`ck_control::link`), one at a time through the durable consumer its
//! hosts share, and carries it out:
//!
//! | step | what is checked or done |
//! |---|---|
//! | verify | the message's shape (`ck_control::install::Request::parse`); the requester's JWT-SVID against the trust bundles, addressed to the site's install audience and proving `requested_by`; the install policy; the request id new at this site |
//! | fetch | manifest and component from the hub's registry and store through its domain, the component checked by SHA-256, blake3 and the request's digest, copied into the site's own control plane |
//! | compile | the component compiled (or taken from the compiled-component cache) |
//! | load | the site's serving record moved to the version; a new kernel added, a served one swapped by its follower |
//! | health | the installed version serves: connected, the version answering is the one installed, and a guest instance starts |
//!
//! Each step is published on `fleet.install.{silo}.progress` with its duration; the outcome on
//! `fleet.install.{silo}.done` with what the site serves and a receipt (requester, digest,
//! this host's SPIFFE ID, time) that is also appended to the site's audit ledger. A refused
//! request changes nothing the site serves; a failed health check rolls back to the version
//! served before. A scrub stops and removes every kernel and moves its directory (DATA, sealed
//! instances and all) into the site's archive. What the site serves is kept in its bucket
//! (`CK_SITE`) and served again when a host starts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use ck_control::ControlPlane;
use ck_control::install::{
    Claim, Done, InstallRequest, Malformed, Outcome, Progress, Receipt, Request, ScrubRequest,
    ServedEntry, ServedKernel, SiteStore, Step,
};
use ck_loops::serving::VersionRef;
use ck_manifest::topics::{self, InstallSubject};
use futures::StreamExt;

use crate::config::SiteConfig;
use crate::error::{Kinded, ServeError, ServeErrorKind};
use crate::host::{Health, Host};

/// What a site host holds besides its kernels.
pub(crate) struct SiteParts {
    config: SiteConfig,
    silo: String,
    /// The hub's JetStream, through its domain (answers on the site's inbox prefix).
    hub_js: jetstream::Context,
    store: SiteStore,
    requests: consumer::Consumer<consumer::pull::Config>,
}

impl SiteParts {
    /// Opens the site's bucket and the consumer of its requests over the host's control-plane
    /// connection (whose inbox prefix is the site's).
    pub(crate) async fn open(
        config: &SiteConfig,
        silo: &str,
        plane: &ControlPlane,
    ) -> Result<Self, ServeError> {
        let js = plane.jetstream();
        let store = SiteStore::open(js)
            .await
            .kinded(ServeErrorKind::Control, || format!("silo {silo}"))?;
        let stream_name = topics::fleet_install_stream(silo);
        let requests = async {
            js.get_stream(&stream_name)
                .await
                .map_err(|e| e.to_string())?
                .get_consumer(topics::INSTALL_CONSUMER)
                .await
                .map_err(|e| e.to_string())
        }
        .await
        .map_err(|e| {
            ServeError::new(
                ServeErrorKind::Control,
                format!(
                    "silo {silo}: the consumer {} of {stream_name} cannot be opened ({e}); `ck fleet link-site` creates it",
                    topics::INSTALL_CONSUMER
                ),
            )
        })?;
        Ok(Self {
            config: config.clone(),
            silo: silo.to_owned(),
            hub_js: jetstream::with_domain(js.client(), &config.hub_domain),
            store,
            requests,
        })
    }

    /// The hub's JetStream, through its domain.
    pub(crate) fn hub_js(&self) -> &jetstream::Context {
        &self.hub_js
    }

    fn kernel_dir(&self, kernel: &str) -> PathBuf {
        self.config.dir.join("kernels").join(kernel)
    }
}

/// A request that ends before anything changed: the step it ended at and why.
struct Refusal {
    step: Step,
    reason: String,
}

fn refuse(step: Step, reason: impl Into<String>) -> Refusal {
    Refusal {
        step,
        reason: reason.into(),
    }
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Host {
    /// Serves the site until the host stops: first what its bucket says it serves, then its
    /// install requests and scrubs, one at a time. Returns at once on a host without a site.
    pub async fn run_site(&self) {
        let Some(site) = &self.site else {
            return;
        };
        self.serve_site_set(site).await;
        loop {
            let mut messages = match site.requests.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "site.requests-unavailable");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    next = messages.next() => next,
                };
                let message = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "site.requests-failed");
                        break;
                    }
                    None => break,
                };
                // The time the hub's server stored the request (a mirror keeps the origin's
                // timestamp): the proof must have been valid then, however long the site was
                // cut off before the request reached it.
                let Ok((seq, stored_at)) = message
                    .info()
                    .map(|i| (i.stream_sequence, std::time::SystemTime::from(i.published)))
                else {
                    // Not a JetStream delivery of the mirror: nothing to carry out or resume.
                    tracing::warn!(subject = %message.subject, "site.request-unreadable");
                    let _ = message.ack_with(jetstream::AckKind::Term).await;
                    continue;
                };
                let done = self
                    .carry_out(
                        site,
                        message.subject.as_str(),
                        &message.payload,
                        seq,
                        stored_at,
                    )
                    .await;
                if let Err(e) = self.report_done(site, &done).await {
                    // Handed out again in a moment; the request resumes under its id.
                    tracing::warn!(error = %e, id = ?done.id, "site.done-unpublished");
                    let delay = Some(Duration::from_secs(5));
                    let _ = message.ack_with(jetstream::AckKind::Nak(delay)).await;
                    continue;
                }
                if let Err(e) = message.double_ack().await {
                    tracing::warn!(error = %e, id = ?done.id, "site.ack-failed");
                }
                // The operator watching FLEET_STATE sees the change now, not at the next
                // heartbeat.
                self.pulse_fleet().await;
            }
        }
    }

    /// Serves again every kernel the site's bucket lists (a restarted host, a new host of the
    /// site): each from the version the site's own control plane names for it.
    async fn serve_site_set(&self, site: &SiteParts) {
        let served = match site.store.served().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "site.served-set-unreadable");
                return;
            }
        };
        for entry in served {
            match self.serve_installed(site, &entry.kernel, &entry.guid).await {
                Ok(()) => {
                    tracing::info!(kernel = %entry.kernel, version = %entry.pin.short(), "site.reserved")
                }
                Err(e) => {
                    tracing::error!(kernel = %entry.kernel, error = %e, "site.reserve-failed")
                }
            }
        }
    }

    /// Adds kernel `name` as the site's serving record names it; its directory is written
    /// from the published manifest when missing.
    async fn serve_installed(
        &self,
        site: &SiteParts,
        name: &str,
        guid: &str,
    ) -> Result<(), ServeError> {
        let plane = self.local_plane()?;
        let dir = site.kernel_dir(name);
        let manifest = dir.join(ck_manifest::MANIFEST_FILE);
        if !manifest.exists() {
            let (record, _) = plane
                .record(guid)
                .await
                .kinded(ServeErrorKind::Control, || {
                    format!("{name}: its serving record")
                })?
                .ok_or_else(|| {
                    ServeError::new(
                        ServeErrorKind::Control,
                        format!("{name}: the site has no serving record for it"),
                    )
                })?;
            let doc = plane
                .ck_commit(guid, &record.stable.ck)
                .await
                .kinded(ServeErrorKind::Control, || format!("{name}: its manifest"))?;
            write_kernel_dir(&dir, &doc.manifest, doc.ck_guid.as_deref())
                .kinded(ServeErrorKind::Manifest, || {
                    format!("{name}: writing {}", dir.display())
                })?;
        }
        let loaded = ck_manifest::load_file(&manifest, chrono::Utc::now());
        let why = loaded.first_error();
        let kernel = loaded.kernel.ok_or_else(|| {
            ServeError::new(
                ServeErrorKind::Manifest,
                format!("{}: {why}", manifest.display()),
            )
        })?;
        let plan = self.plan_cluster(&kernel, Vec::new()).await?;
        self.add(plan).await
    }

    fn local_plane(&self) -> Result<&ControlPlane, ServeError> {
        self.control().ok_or_else(|| {
            ServeError::new(
                ServeErrorKind::Control,
                "a site host needs the site's control plane",
            )
        })
    }

    /// Carries one request out; what to publish on `done`.
    async fn carry_out(
        &self,
        site: &SiteParts,
        subject: &str,
        payload: &[u8],
        seq: u64,
        stored_at: std::time::SystemTime,
    ) -> Done {
        let started = Instant::now();
        let request = match Request::parse(&site.silo, subject, payload) {
            Ok(r) => r,
            Err(Malformed { id, reason }) => {
                let reason = format!("malformed request: {reason}");
                return self
                    .refused(site, id, "", refuse(Step::Verify, reason), started)
                    .await;
            }
        };
        let id = request.id().to_owned();
        // This very message handed out again (its host stopped before acknowledging it): it
        // resumes as the requester verified when it was taken on, whose proof may have expired
        // since.
        let resumed = match site.store.claimed(&id).await {
            Ok(Some((first, requester))) if first == seq => Some(requester),
            _ => None,
        };
        let requester = match resumed {
            Some(requester) => {
                tracing::info!(id = %id, seq, requester = %requester, "site.request-resumed");
                requester
            }
            None => match self.verify(site, &request, stored_at).await {
                Ok(r) => r,
                Err(refusal) => {
                    let claimed = request.requester().0.to_owned();
                    return self
                        .refused(site, Some(id), &claimed, refusal, started)
                        .await;
                }
            },
        };
        self.progress(site, &id, Step::Verify, true, started, None)
            .await;
        let outcome = match &request {
            Request::Install(r) => self.install(site, r, &requester, seq).await,
            Request::Scrub(r) => self.scrub(site, r, &requester, seq).await,
        };
        match outcome {
            Ok(done) => done,
            Err(refusal) => {
                self.refused(site, Some(id), &requester, refusal, started)
                    .await
            }
        }
    }

    /// The requester, verified: proof (valid when the hub stored the request, at
    /// `stored_at`), policy, and the id new at this site.
    async fn verify(
        &self,
        site: &SiteParts,
        request: &Request,
        stored_at: std::time::SystemTime,
    ) -> Result<String, Refusal> {
        let (claimed, proof) = request.requester();
        let Some(verifier) = &self.verifier else {
            return Err(refuse(
                Step::Verify,
                "this host has no trust bundles to verify requesters with (start it with --spiffe-socket)",
            ));
        };
        let audience = site
            .config
            .policy
            .audience_for(&site.silo, &request.proof_binding());
        let trust_domains: Vec<ck_identity::TrustDomain> = site
            .config
            .policy
            .rules
            .iter()
            .flat_map(|r| r.requesters.iter())
            .filter_map(|r| ck_identity::SpiffeId::new(r.trim_end_matches("/*")).ok())
            .map(|id| id.trust_domain().clone())
            .collect();
        let verified = ck_identity::verify_bearer_at(
            proof,
            &audience,
            &trust_domains,
            &verifier.bundles,
            stored_at,
        )
        .map_err(|e| {
            refuse(
                Step::Verify,
                format!("unauthorised: the proof is refused: {e}"),
            )
        })?;
        let proven = verified.spiffe_id.to_string();
        if verified.expires_at <= std::time::SystemTime::now() {
            let queued_s = stored_at.elapsed().map(|d| d.as_secs()).unwrap_or(0);
            tracing::info!(requester = %proven, queued_s, "site.proof-valid-when-stored");
        }
        if proven != claimed {
            return Err(refuse(
                Step::Verify,
                format!(
                    "unauthorised: the proof proves {proven}, not the requester {claimed} the request names"
                ),
            ));
        }
        let kernel = match request {
            Request::Install(r) => r.kernel.as_str(),
            // Scrubbing removes every kernel: only a requester allowed all of them may.
            Request::Scrub(_) => "*",
        };
        site.config
            .policy
            .allows(&proven, &site.silo, kernel)
            .map_err(|e| refuse(Step::Verify, format!("unauthorised: {e}")))?;
        Ok(proven)
    }

    /// Takes the request's id on; refused when another request had it first.
    async fn claim(
        &self,
        site: &SiteParts,
        id: &str,
        seq: u64,
        requester: &str,
    ) -> Result<(), Refusal> {
        match site.store.claim(id, seq, requester).await {
            Ok(Claim::New | Claim::Resumed) => Ok(()),
            Ok(Claim::Duplicate(first)) => Err(refuse(
                Step::Verify,
                format!(
                    "duplicate request id `{id}`: the site took it on already (request {first}); a request is carried out once, so use a new id"
                ),
            )),
            Err(e) => Err(refuse(Step::Verify, format!("the site's bucket: {e}"))),
        }
    }

    async fn install(
        &self,
        site: &SiteParts,
        r: &InstallRequest,
        requester: &str,
        seq: u64,
    ) -> Result<Done, Refusal> {
        let plane = self
            .local_plane()
            .map_err(|e| refuse(Step::Fetch, e.to_string()))?;
        self.claim(site, &r.id, seq, requester).await?;
        // One kernel per class name at a site: another GUID under a served name is refused
        // (it would never swap in, and its failure would stop the one serving).
        if let Some(other) = site
            .store
            .served()
            .await
            .map_err(|e| refuse(Step::Verify, e.to_string()))?
            .into_iter()
            .find(|e| e.kernel == r.kernel && e.guid != r.guid)
        {
            return Err(refuse(
                Step::Verify,
                format!(
                    "{} is served here as kernel {}, not {}: scrub the site first",
                    r.kernel, other.guid, r.guid
                ),
            ));
        }

        // Fetch: from the hub, checked, into the site's own plane.
        let step = Instant::now();
        let hub = ControlPlane::open(site.hub_js.clone())
            .await
            .map_err(|e| refuse(Step::Fetch, format!("the hub's control plane: {e}")))?;
        let pin = match &r.version {
            ck_control::install::VersionSpec::Pin(p) => p.clone(),
            ck_control::install::VersionSpec::Named(_) => hub
                .develop(&r.guid)
                .await
                .map_err(|e| refuse(Step::Fetch, e.to_string()))?
                .ok_or_else(|| {
                    refuse(
                        Step::Fetch,
                        format!(
                            "{} ({}) has no published develop version at the hub",
                            r.kernel, r.guid
                        ),
                    )
                })?,
        };
        let imported = plane
            .import(&hub, &r.kernel, &r.guid, &pin, &r.digest)
            .await
            .map_err(|e| refuse(Step::Fetch, e.to_string()))?;
        self.progress(
            site,
            &r.id,
            Step::Fetch,
            true,
            step,
            Some(format!(
                "{} {} ({})",
                r.kernel,
                pin.short(),
                if imported.uploaded {
                    "fetched from the hub"
                } else {
                    "the site had it"
                }
            )),
        )
        .await;

        // Compile: the component, into the cache the load then uses.
        let step = Instant::now();
        let dir = site.kernel_dir(&r.kernel);
        let snapshot = plane
            .materialize(&dir, &r.guid, &pin)
            .await
            .map_err(|e| refuse(Step::Compile, e.to_string()))?;
        let (engine, cache, path) = (
            self.engine().clone(),
            self.cache.clone(),
            snapshot.component,
        );
        tokio::task::spawn_blocking(move || {
            ck_host::KernelComponent::load(&engine, &path, cache.as_ref()).map(|_| ())
        })
        .await
        .map_err(|e| refuse(Step::Compile, format!("compiling panicked: {e}")))?
        .map_err(|e| {
            refuse(
                Step::Compile,
                format!("the component does not compile: {e:#}"),
            )
        })?;
        self.progress(site, &r.id, Step::Compile, true, step, None)
            .await;

        // Load: the site's record moves; a new kernel is added, a served one swapped.
        let step = Instant::now();
        let served_before = self.kernels().await.contains(&r.kernel);
        let current = plane
            .record(&r.guid)
            .await
            .map_err(|e| refuse(Step::Load, e.to_string()))?;
        let previous = match current {
            // A resumed request that got this far already.
            Some((record, _)) if record.stable == pin => {
                record.previous.last().cloned().filter(|_| served_before)
            }
            _ => {
                plane
                    .install(&r.kernel, &r.guid, &pin)
                    .await
                    .map_err(|e| refuse(Step::Load, e.to_string()))?
                    .1
                    // A version the site's record remembers from before a scrub is not served:
                    // there is nothing to roll back to.
                    .filter(|_| served_before)
            }
        };
        if !served_before {
            if !dir.join(ck_manifest::MANIFEST_FILE).exists() {
                write_kernel_dir(&dir, &imported.manifest, imported.ck_guid.as_deref())
                    .map_err(|e| refuse(Step::Load, format!("writing {}: {e}", dir.display())))?;
            }
            if let Err(e) = self.serve_installed(site, &r.kernel, &r.guid).await {
                return Ok(self
                    .failed(
                        site,
                        r,
                        requester,
                        seq,
                        previous.as_ref(),
                        format!("loading failed: {e}"),
                    )
                    .await);
            }
        }
        self.progress(site, &r.id, Step::Load, true, step, None)
            .await;

        // Health: the installed version serves.
        let step = Instant::now();
        match self
            .health(&r.kernel, &pin, site.config.health_timeout)
            .await
        {
            Ok(()) => {
                self.progress(site, &r.id, Step::Health, true, step, None)
                    .await;
            }
            Err(why) => {
                self.progress(site, &r.id, Step::Health, false, step, Some(why.clone()))
                    .await;
                return Ok(self
                    .failed(
                        site,
                        r,
                        requester,
                        seq,
                        previous.as_ref(),
                        format!("health check failed: {why}"),
                    )
                    .await);
            }
        }
        let entry = ServedEntry {
            kernel: r.kernel.clone(),
            guid: r.guid.clone(),
            pin: pin.clone(),
            digest: imported.digest.clone(),
            request: r.id.clone(),
            installed_at: ck_events::now(),
        };
        if let Err(e) = site.store.put_served(&entry).await {
            tracing::error!(kernel = %r.kernel, error = %e, "site.served-set-unwritten");
        }
        let receipt = self
            .receipt(
                site,
                requester,
                Some(&imported.digest),
                seq,
                "install.installed",
                &format!(
                    "installed {} {} ({})",
                    r.kernel,
                    pin.short(),
                    imported.digest
                ),
            )
            .await;
        Ok(Done {
            id: Some(r.id.clone()),
            outcome: Outcome::Installed,
            reason: None,
            kernels: self.served_kernels(site).await,
            receipt: Some(receipt),
        })
    }

    /// The installed version did not serve: back to `previous`, or stopped when there was
    /// none.
    async fn failed(
        &self,
        site: &SiteParts,
        r: &InstallRequest,
        requester: &str,
        seq: u64,
        previous: Option<&VersionRef>,
        why: String,
    ) -> Done {
        let step = Instant::now();
        let (outcome, reason) = match (previous, self.local_plane()) {
            (Some(previous), Ok(plane)) => {
                match plane.change(&r.guid, |record| record.rollback()).await {
                    Ok(_) => {
                        let back = self
                            .health(&r.kernel, previous, site.config.health_timeout)
                            .await;
                        self.progress(
                            site,
                            &r.id,
                            Step::Rollback,
                            back.is_ok(),
                            step,
                            Some(match &back {
                                Ok(()) => format!("{} serves again", previous.short()),
                                Err(e) => e.clone(),
                            }),
                        )
                        .await;
                        match back {
                            Ok(()) => (
                                Outcome::RolledBack,
                                format!("{why}; rolled back: {} serves again", previous.short()),
                            ),
                            Err(e) => (
                                Outcome::Failed,
                                format!(
                                    "{why}; rolled back to {}, which does not serve either: {e}",
                                    previous.short()
                                ),
                            ),
                        }
                    }
                    Err(e) => (Outcome::Failed, format!("{why}; rolling back failed: {e}")),
                }
            }
            _ => {
                if let Err(e) = self.remove(&r.kernel).await {
                    tracing::warn!(kernel = %r.kernel, error = %e, "site.remove-failed");
                }
                if let Err(e) = site.store.remove_served(&r.kernel).await {
                    tracing::warn!(kernel = %r.kernel, error = %e, "site.served-set-unwritten");
                }
                (
                    Outcome::Failed,
                    format!(
                        "{why}; nothing was served before, so {} is stopped",
                        r.kernel
                    ),
                )
            }
        };
        let receipt = self
            .receipt(
                site,
                requester,
                Some(&r.digest),
                seq,
                "install.failed",
                &reason,
            )
            .await;
        Done {
            id: Some(r.id.clone()),
            outcome,
            reason: Some(reason),
            kernels: self.served_kernels(site).await,
            receipt: Some(receipt),
        }
    }

    /// Whether `kernel` serves `pin`: connected, the answering version is `pin`, and a guest
    /// instance starts. Waits up to `timeout` for the version to be swapped in.
    async fn health(
        &self,
        kernel: &str,
        pin: &VersionRef,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.report().await;
            let state = report.iter().find(|k| k.name == kernel);
            let why = match state {
                None => format!("{kernel} is not served"),
                Some(k) if k.stable.ck != pin.ck || k.stable.tool != pin.tool => format!(
                    "{kernel} still serves ck@{}/tool@{}",
                    ck_loops::serving::short(&k.stable.ck),
                    ck_loops::serving::short(&k.stable.tool)
                ),
                Some(k) if k.health != Health::Serving => {
                    format!("{kernel} is {:?}", k.health).to_lowercase()
                }
                Some(_) => {
                    let service = self.service(kernel).await.map_err(|e| e.to_string())?;
                    return if service.guest().instantiate_timings(1).await.len() == 1 {
                        Ok(())
                    } else {
                        Err(format!(
                            "{kernel} {}: no guest instance starts (its memory or start-up exceeds its limits)",
                            pin.short()
                        ))
                    };
                }
            };
            if Instant::now() >= deadline {
                return Err(format!("{why} after {} s", timeout.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn scrub(
        &self,
        site: &SiteParts,
        r: &ScrubRequest,
        requester: &str,
        seq: u64,
    ) -> Result<Done, Refusal> {
        self.claim(site, &r.id, seq, requester).await?;
        let step = Instant::now();
        let served = site
            .store
            .served()
            .await
            .map_err(|e| refuse(Step::Scrub, e.to_string()))?;
        let archive = site.config.dir.join("archive");
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ").to_string();
        let mut archived = Vec::new();
        for entry in &served {
            if self.kernels().await.contains(&entry.kernel) {
                let removed = self.remove(&entry.kernel).await;
                tracing::info!(kernel = %entry.kernel, drained = ?removed.as_ref().map(|r| r.drained), "site.kernel-stopped");
            }
            let from = site.kernel_dir(&entry.kernel);
            let to = archive.join(format!("{}-{stamp}", entry.kernel));
            let moved = if from.exists() {
                std::fs::create_dir_all(&archive)
                    .and_then(|()| std::fs::rename(&from, &to))
                    .and_then(|()| ck_fs::sync_dir(&archive))
                    .and_then(|()| ck_fs::sync_dir(&site.config.dir.join("kernels")))
                    .map_err(|e| format!("archiving {} into {}: {e}", from.display(), to.display()))
            } else {
                Ok(())
            };
            let outcome = match moved {
                Ok(()) => site
                    .store
                    .remove_served(&entry.kernel)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                // Part way: some kernels are stopped (and archived) already, so this is not
                // a refusal that changed nothing.
                let reason = format!(
                    "scrub failed at {}: {e}; archived so far: [{}]",
                    entry.kernel,
                    archived.join(", ")
                );
                self.progress(site, &r.id, Step::Scrub, false, step, Some(reason.clone()))
                    .await;
                return Ok(Done {
                    id: Some(r.id.clone()),
                    outcome: Outcome::Failed,
                    reason: Some(reason),
                    kernels: self.served_kernels(site).await,
                    receipt: None,
                });
            }
            if from.exists() || to.exists() {
                archived.push(to.display().to_string());
            }
        }
        let detail = format!(
            "{} kernel(s) stopped; DATA archived in {}",
            served.len(),
            archive.display()
        );
        self.progress(site, &r.id, Step::Scrub, true, step, Some(detail.clone()))
            .await;
        let reason = if r.reason.is_empty() {
            detail
        } else {
            format!("{}: {detail}", r.reason)
        };
        let receipt = self
            .receipt(
                site,
                requester,
                None,
                seq,
                "install.scrubbed",
                &format!("{reason} ({})", archived.join(", ")),
            )
            .await;
        Ok(Done {
            id: Some(r.id.clone()),
            outcome: Outcome::Scrubbed,
            reason: Some(reason),
            kernels: self.served_kernels(site).await,
            receipt: Some(receipt),
        })
    }

    /// A refusal: its step on `progress` (not ok), an audit line, and the `done` to publish.
    async fn refused(
        &self,
        site: &SiteParts,
        id: Option<String>,
        claimed: &str,
        refusal: Refusal,
        started: Instant,
    ) -> Done {
        tracing::warn!(id = ?id, step = ?refusal.step, reason = %refusal.reason, "site.request-refused");
        let progress = Progress {
            id: id.clone(),
            step: refusal.step,
            ok: false,
            ms: ms(started),
            detail: Some(refusal.reason.clone()),
        };
        self.publish_progress(site, &progress).await;
        let record = ck_audit::AuditRecord::now(
            if claimed.is_empty() {
                "unknown"
            } else {
                claimed
            },
            "install",
            ck_audit::Verdict::Deny,
            refusal.reason.clone(),
            site.config.host_spiffe_id.clone(),
        )
        .keyed("install.refused")
        .subject(topics::fleet_install_subject(
            &site.silo,
            InstallSubject::Request,
        ));
        self.ledger(site, record).await;
        Done {
            id,
            outcome: Outcome::Refused,
            reason: Some(refusal.reason),
            kernels: self.served_kernels(site).await,
            receipt: None,
        }
    }

    async fn receipt(
        &self,
        site: &SiteParts,
        requester: &str,
        digest: Option<&str>,
        seq: u64,
        key: &str,
        what: &str,
    ) -> Receipt {
        let receipt = Receipt {
            requester: requester.to_owned(),
            digest: digest.map(str::to_owned),
            host: site.config.host_spiffe_id.clone(),
            at: ck_events::now(),
            seq,
        };
        let record = ck_audit::AuditRecord::now(
            requester,
            "install",
            ck_audit::Verdict::Allow,
            what,
            site.config.host_spiffe_id.clone(),
        )
        .keyed(key)
        .subject(topics::fleet_install_subject(
            &site.silo,
            InstallSubject::Request,
        ));
        self.ledger(site, record).await;
        receipt
    }

    async fn ledger(&self, site: &SiteParts, record: ck_audit::AuditRecord) {
        let dir = site.config.dir.clone();
        let who = format!("site {}", site.silo);
        let appended =
            tokio::task::spawn_blocking(move || ck_audit::append(&dir, &who, &record)).await;
        if !matches!(appended, Ok(Ok(()))) {
            tracing::error!(outcome = ?appended, "site.ledger-unwritten");
        }
    }

    async fn progress(
        &self,
        site: &SiteParts,
        id: &str,
        step: Step,
        ok: bool,
        since: Instant,
        detail: Option<String>,
    ) {
        let progress = Progress {
            id: Some(id.to_owned()),
            step,
            ok,
            ms: ms(since),
            detail,
        };
        tracing::info!(id, step = ?step, ok, ms = progress.ms, "site.progress");
        self.publish_progress(site, &progress).await;
    }

    /// Publishes one step's progress report.
    async fn publish_progress(&self, site: &SiteParts, progress: &Progress) -> bool {
        self.publish(
            site,
            InstallSubject::Progress,
            progress.id.as_deref(),
            progress,
        )
        .await
    }

    /// Publishes into the site's reports stream (kept while the link is down), waiting for
    /// the stream's acknowledgement.
    async fn publish<T: serde::Serialize>(
        &self,
        site: &SiteParts,
        subject: InstallSubject,
        request: Option<&str>,
        body: &T,
    ) -> bool {
        let Ok(plane) = self.local_plane() else {
            return false;
        };
        let kind = subject;
        let subject = topics::fleet_install_subject(&site.silo, kind);
        let (id, event) = match ck_control::install::report_event(
            &site.silo,
            kind,
            request,
            &site.config.host_spiffe_id,
            body,
        ) {
            Ok(formed) => formed,
            Err(e) => {
                tracing::error!(subject, error = %e, "site.report-unformable");
                return false;
            }
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ck_bus::envelope::MSG_ID, id.as_str());
        match plane
            .jetstream()
            .publish_with_headers(subject.clone(), headers, event.to_string().into())
            .await
        {
            Ok(ack) => match ack.await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(subject, error = %e, "site.report-unacknowledged");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(subject, error = %e, "site.report-failed");
                false
            }
        }
    }

    async fn report_done(&self, site: &SiteParts, done: &Done) -> Result<(), String> {
        tracing::info!(id = ?done.id, outcome = ?done.outcome, reason = ?done.reason, "site.done");
        if self
            .publish(site, InstallSubject::Done, done.id.as_deref(), done)
            .await
        {
            Ok(())
        } else {
            Err("the site's reports stream did not acknowledge done".into())
        }
    }

    /// What the site serves, as `done` reports it.
    async fn served_kernels(&self, site: &SiteParts) -> Vec<ServedKernel> {
        let entries = site.store.served().await.unwrap_or_default();
        let report = self.report().await;
        entries
            .into_iter()
            .map(|e| {
                let state = report.iter().find(|k| k.name == e.kernel);
                ServedKernel {
                    version: state
                        .map(|k| {
                            format!(
                                "ck@{}/tool@{}",
                                ck_loops::serving::short(&k.stable.ck),
                                ck_loops::serving::short(&k.stable.tool)
                            )
                        })
                        .unwrap_or_else(|| e.pin.short()),
                    health: match state.map(|k| k.health) {
                        Some(Health::Serving) => "ok".into(),
                        Some(h) => format!("{h:?}").to_lowercase(),
                        None => "not served".into(),
                    },
                    name: e.kernel,
                    guid: e.guid,
                    digest: e.digest,
                }
            })
            .collect()
    }
}

/// Writes a kernel directory for a version installed at the site: its manifest (and its
/// `.ck-guid`), durably.
fn write_kernel_dir(dir: &Path, manifest: &str, ck_guid: Option<&str>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if let Some(guid) = ck_guid {
        ck_fs::write_atomic(&dir.join(ck_manifest::GUID_FILE), guid.as_bytes())?;
    }
    ck_fs::write_atomic(&dir.join(ck_manifest::MANIFEST_FILE), manifest.as_bytes())
}

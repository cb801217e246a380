//! The fleet's build pipeline (issue 16 point 4). A build agent (`ck build-agent`) answers
//! `fleet.build.{guid}.request` `{ref}` for the kernels it was given:
//!
//! 1. it reads the kernel's TOOL loop at `ref` (a branch such as `develop`, or the start of a
//!    commit id): the sources of that TOOL commit and the manifest of `develop`'s CK commit;
//! 2. builds the component from them with the kernel's declared build (`spec.tool.build`, or
//!    its C sources) in a scratch directory, never in the kernel's own;
//! 3. checks it is the component that TOOL commit recorded: a build that does not reproduce
//!    is refused and nothing is pushed;
//! 4. publishes that version to the hub's control plane (component into the store, both
//!    commits into the registry) and answers `fleet.build.{guid}.done` `{digest, pushed: true,
//!    tool_commit, ck_commit}` — what an install request names. A failed build is a `done`
//!    with the compiler's message.
//!
//! It owns the build request and its answer. Building is `ck_build`'s, the loops `ck_loops`',
//! the store and registry `ck_control`'s; who may ask is the server's (the agent's user
//! permissions).

use std::path::Path;
use std::time::Instant;

use ck_control::ControlPlane;
use ck_manifest::{Kernel, topics};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Largest build request.
pub const MAX_BUILD_REQUEST: usize = 4096;

/// `fleet.build.{guid}.request`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// The TOOL ref to build: a branch (`develop`) or the start of a commit id.
    #[serde(rename = "ref", default = "develop")]
    pub reference: String,
    /// An id the answer carries back.
    #[serde(default)]
    pub id: Option<String>,
}

fn develop() -> String {
    "develop".into()
}

/// `fleet.build.{guid}.done`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct BuildDone {
    /// The request's id.
    pub id: Option<String>,
    /// The kernel's class name.
    pub kernel: String,
    /// Its GUID.
    pub guid: String,
    /// The ref asked for.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Built, reproduced and pushed.
    pub ok: bool,
    /// The component and both commits are in the hub's store and registry.
    pub pushed: bool,
    /// The component's digest (`blake3:…`), when built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The TOOL commit built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_commit: Option<String>,
    /// The CK commit its manifest comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ck_commit: Option<String>,
    /// Milliseconds from request to answer.
    pub ms: u64,
    /// Why not, for a failed build (the compiler's message) or a refused request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
#[error("subscribing to {subject}: {why}")]
pub struct PipelineError {
    /// The subject.
    pub subject: String,
    /// The server's or client's answer.
    pub why: String,
}

/// A build agent over the hub's control plane.
pub struct BuildAgent {
    plane: ControlPlane,
    kernels: Vec<Kernel>,
}

/// What one build produced before it is pushed.
struct Built {
    pin: ck_loops::serving::VersionRef,
    digest: String,
    recorded: String,
}

impl BuildAgent {
    /// An agent building `kernels` (their directories hold their loops) and pushing to `plane`.
    pub fn new(plane: ControlPlane, kernels: Vec<Kernel>) -> Self {
        Self { plane, kernels }
    }

    /// The request subjects it answers, with their kernels.
    pub fn subjects(&self) -> Vec<(String, &Kernel)> {
        self.kernels
            .iter()
            .map(|k| (topics::fleet_build_subject(&k.guid, false), k))
            .collect()
    }

    /// Answers build requests, one at a time, until `stop` is cancelled.
    pub async fn run(&self, stop: CancellationToken) -> Result<(), PipelineError> {
        let client = self.plane.jetstream().client();
        let mut streams = Vec::new();
        for (i, (subject, _)) in self.subjects().into_iter().enumerate() {
            let subscriber = client
                .queue_subscribe(subject.clone(), "ck-build-agent".into())
                .await
                .map_err(|e| PipelineError {
                    subject: subject.clone(),
                    why: e.to_string(),
                })?;
            streams.push(subscriber.map(move |m| (i, m)).boxed());
        }
        let mut requests = futures::stream::select_all(streams);
        loop {
            let (i, message) = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = requests.next() => match next {
                    Some(next) => next,
                    None => return Ok(()),
                },
            };
            let kernel = &self.kernels[i];
            let done = self.build(kernel, &message.payload).await;
            let body = match done_event(kernel, &done) {
                Ok(event) => event.to_string().into_bytes(),
                Err(e) => {
                    // The requester still gets an answer rather than a timeout.
                    tracing::error!(kernel = %kernel.name, error = %e, "build.done-unformable");
                    if let Some(reply) = message.reply {
                        let refusal = serde_json::json!({"ok": false, "error": e.to_string()});
                        let _ = client.publish(reply, refusal.to_string().into()).await;
                    }
                    continue;
                }
            };
            let subject = topics::fleet_build_subject(&kernel.guid, true);
            tracing::info!(kernel = %kernel.name, ok = done.ok, ms = done.ms, error = ?done.error, "build.done");
            if let Err(e) = client.publish(subject, body.clone().into()).await {
                tracing::warn!(error = %e, "build.done-unpublished");
            }
            if let Some(reply) = message.reply
                && let Err(e) = client.publish(reply, body.into()).await
            {
                tracing::warn!(error = %e, "build.reply-failed");
            }
        }
    }

    /// Carries out one build request of `kernel`.
    pub async fn build(&self, kernel: &Kernel, payload: &[u8]) -> BuildDone {
        let started = Instant::now();
        let request = if payload.len() > MAX_BUILD_REQUEST {
            Err(format!(
                "the request is {} bytes, over the {MAX_BUILD_REQUEST}-byte limit",
                payload.len()
            ))
        } else if payload.iter().all(u8::is_ascii_whitespace) {
            Ok(BuildRequest {
                reference: develop(),
                id: None,
            })
        } else {
            serde_json::from_slice::<BuildRequest>(payload)
                .map_err(|e| format!("malformed build request: {e}"))
        };
        let mut done = BuildDone {
            id: request
                .as_ref()
                .ok()
                .and_then(|r| r.id.clone())
                .filter(|id| topics::is_fleet_name(id)),
            kernel: kernel.name.clone(),
            guid: kernel.guid.clone(),
            reference: request
                .as_ref()
                .map(|r| r.reference.clone())
                .unwrap_or_default(),
            ok: false,
            pushed: false,
            digest: None,
            tool_commit: None,
            ck_commit: None,
            ms: 0,
            error: None,
        };
        let outcome = match request {
            Err(e) => Err(e),
            Ok(r) if r.id.as_deref().is_some_and(|id| !topics::is_fleet_name(id)) => {
                Err("field `id` must be 1–64 of A-Z a-z 0-9 - _ (one per request)".to_owned())
            }
            Ok(r) if !valid_ref(&r.reference) => Err(format!(
                "`ref` must be 1–100 of A-Z a-z 0-9 . _ / - (a branch or a commit id), not `{}`",
                r.reference.chars().take(100).collect::<String>()
            )),
            Ok(r) => self.build_and_push(kernel, r.reference, &mut done).await,
        };
        if let Err(e) = outcome {
            done.error = Some(e);
        }
        done.ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        done
    }

    async fn build_and_push(
        &self,
        kernel: &Kernel,
        reference: String,
        done: &mut BuildDone,
    ) -> Result<(), String> {
        let k = kernel.clone();
        let built = tokio::task::spawn_blocking(move || build_at(&k, &reference))
            .await
            .map_err(|e| format!("the build panicked: {e}"))??;
        done.digest = Some(built.digest.clone());
        done.tool_commit = Some(built.pin.tool.clone());
        done.ck_commit = Some(built.pin.ck.clone());
        if built.digest != built.recorded {
            return Err(format!(
                "the rebuilt component ({}) is not the one TOOL commit {} recorded ({}): the build does not reproduce, so nothing is pushed",
                built.digest,
                ck_loops::serving::short(&built.pin.tool),
                built.recorded
            ));
        }
        self.plane
            .publish_pin(kernel, &built.pin)
            .await
            .map_err(|e| format!("pushing to the hub: {e}"))?;
        done.ok = true;
        done.pushed = true;
        Ok(())
    }
}

/// A build's `done` as the CloudEvent it is published (and answered) as: type
/// `ck.fleet.build.done`, `source` `ck://build-agent/{guid}`, `subject` the request's id (or
/// none), `id` the kernel, the request and the answer's own blake3 digest (the same answer
/// has the same id, two different answers never do).
pub fn done_event(
    kernel: &Kernel,
    done: &BuildDone,
) -> Result<serde_json::Value, ck_events::EventError> {
    let data = serde_json::to_value(done).unwrap_or_default();
    // Only a checked request id names the event (a refused request's is dropped).
    let about = done.id.as_deref();
    let id = format!(
        "{}:build:{}:{}",
        kernel.guid,
        about.unwrap_or("-"),
        ck_events::content_key(&data)
    );
    ck_events::EventSpec {
        id: &id,
        source: &format!("ck://build-agent/{}", kernel.guid),
        ty: "ck.fleet.build.done",
        subject: about,
        time: &ck_events::now(),
        data,
        extensions: Vec::new(),
    }
    .structured()
}

fn valid_ref(r: &str) -> bool {
    (1..=100).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
        && !r.contains("..")
}

/// Builds `kernel` at TOOL ref `reference` in a scratch directory (blocking: git, the
/// compiler).
fn build_at(kernel: &Kernel, reference: &str) -> Result<Built, String> {
    let at = ck_loops::state::Loops::open(kernel)
        .and_then(|loops| loops.sources_at(reference))
        .map_err(|e| e.to_string())?;
    let scratch = tempfile::tempdir().map_err(|e| format!("a scratch directory: {e}"))?;
    let dir = scratch.path();
    let write = |path: &Path, bytes: &[u8]| -> Result<(), String> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(
        &dir.join(ck_manifest::MANIFEST_FILE),
        at.manifest.as_bytes(),
    )?;
    if let Some(guid) = &at.ck_guid {
        write(&dir.join(ck_manifest::GUID_FILE), guid.as_bytes())?;
    }
    for (path, bytes) in &at.sources {
        // Paths come from our own loop, but a tree is still not trusted to stay inside.
        if path.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(format!("TOOL commit holds an unsafe path `{path}`"));
        }
        write(&dir.join(path), bytes)?;
    }
    let loaded = ck_manifest::load_file(&dir.join(ck_manifest::MANIFEST_FILE), chrono::Utc::now());
    let why = loaded.first_error();
    let scratch_kernel = loaded
        .kernel
        .ok_or_else(|| format!("the manifest of CK commit {}: {why}", at.pin.ck))?;
    let report = ck_build::build_kernel(&scratch_kernel, dir).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&report.component)
        .map_err(|e| format!("{}: {e}", report.component.display()))?;
    Ok(Built {
        digest: format!("blake3:{}", blake3::hash(&bytes).to_hex()),
        recorded: at.recorded_digest,
        pin: at.pin,
    })
}

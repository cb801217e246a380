//! The fleet's host lifecycle and last-value state (`policies/fleet.yaml`): a host started for
//! a silo announces `boot`, each readiness change (`pod.ready`), a heartbeat (`gamma1.pulse`)
//! and a fall of its memory tier (`mal.tier_down`) on `fleet.events.{silo}.…`, and keeps its
//! state in the KV bucket `FLEET_STATE` — its own key `{silo}.host.{host}`, the silo's summary
//! `{silo}` and memory tiers `{silo}.memory`. The bucket's max age is the heartbeat window: the
//! keys of a host that stops pulsing are removed by the server, which leaves a marker every
//! watcher sees (limit markers, nats-server 2.11+), so a dead host shows as stale without
//! anyone noticing it died.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use ck_manifest::topics::{self, FleetEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ControlError;

/// The shipped fleet policy (policies/fleet.yaml).
pub const FLEET_POLICY: &str = include_str!("../../../policies/fleet.yaml");

/// One memory tier: its name and the least available memory it takes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierRule {
    /// FULL, RICH, MID, THIN, DARK.
    pub tier: String,
    /// The floor, in MiB of available memory.
    pub min_available_mb: u64,
}

/// `policies/fleet.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetPolicy {
    /// Format version (1).
    pub version: u32,
    /// Seconds between heartbeats.
    pub heartbeat_seconds: u64,
    /// Heartbeats a host may miss before it is stale.
    pub stale_after_heartbeats: u32,
    /// Tiers, highest first.
    pub memory_tiers: Vec<TierRule>,
}

impl FleetPolicy {
    /// Parses and checks a policy.
    pub fn parse(text: &str) -> Result<Self, ControlError> {
        let policy: FleetPolicy = serde_norway::from_str(text)
            .map_err(|e| ControlError::Refused(format!("fleet policy: {e}")))?;
        if policy.version != 1 {
            return Err(ControlError::Refused(format!(
                "fleet policy: version {} is not supported (this ck reads version 1)",
                policy.version
            )));
        }
        if policy.heartbeat_seconds == 0 || policy.stale_after_heartbeats == 0 {
            return Err(ControlError::Refused(
                "fleet policy: heartbeat_seconds and stale_after_heartbeats must be at least 1"
                    .into(),
            ));
        }
        let floors: Vec<u64> = policy
            .memory_tiers
            .iter()
            .map(|t| t.min_available_mb)
            .collect();
        if floors.is_empty() || floors.windows(2).any(|w| w[0] <= w[1]) || floors.last() != Some(&0)
        {
            return Err(ControlError::Refused(
                "fleet policy: memory_tiers must go from the highest floor down to 0".into(),
            ));
        }
        Ok(policy)
    }

    /// The shipped policy.
    pub fn shipped() -> Self {
        Self::parse(FLEET_POLICY).unwrap_or_else(|e| panic!("policies/fleet.yaml: {e}"))
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_seconds)
    }

    /// How long a silent host stays fresh.
    pub fn window(&self) -> Duration {
        self.heartbeat() * self.stale_after_heartbeats
    }

    /// The tier (index, name) of `available_mb` of available memory.
    pub fn tier(&self, available_mb: u64) -> (usize, &str) {
        self.memory_tiers
            .iter()
            .enumerate()
            .find(|(_, t)| available_mb >= t.min_available_mb)
            .map(|(i, t)| (i, t.tier.as_str()))
            .unwrap_or((self.memory_tiers.len(), "DARK"))
    }

    /// The `FLEET_STATE` bucket: last value only, removed after the window with a marker.
    pub fn bucket(&self, replicas: usize) -> kv::Config {
        kv::Config {
            bucket: topics::FLEET_STATE_BUCKET.into(),
            description: "ck fleet: last-known state of every silo and host".into(),
            history: 1,
            max_age: self.window(),
            limit_markers: Some(self.window()),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        }
    }
}

/// A host's memory, read from `/proc/meminfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryState {
    /// Its tier.
    pub tier: String,
    /// MemAvailable, MiB.
    pub available_mb: u64,
    /// MemTotal, MiB.
    pub total_mb: u64,
}

/// MemTotal and MemAvailable in MiB, where the system tells.
pub fn read_memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb / 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// The machine's GPUs, counted by model, from the NVIDIA driver's
/// `{root}/driver/nvidia/gpus/*/information` files (`root`: `/proc`): empty where there are
/// none or no driver. Other vendors' GPUs are not counted yet.
pub fn read_gpus(root: &std::path::Path) -> BTreeMap<String, u32> {
    let mut pools = BTreeMap::new();
    let Ok(gpus) = std::fs::read_dir(root.join("driver/nvidia/gpus")) else {
        return pools;
    };
    for gpu in gpus.flatten() {
        let Ok(text) = std::fs::read_to_string(gpu.path().join("information")) else {
            continue;
        };
        let model = text
            .lines()
            .find_map(|l| l.strip_prefix("Model:"))
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        *pools.entry(model).or_insert(0) += 1;
    }
    pools
}

/// One kernel a host serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelState {
    /// Its name.
    pub name: String,
    /// Its GUID.
    pub guid: String,
    /// The stable version, `ck@…/tool@…`.
    pub stable: String,
    /// The canary and its weight, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// serving, degraded, reconnecting, stopped.
    pub health: String,
    /// Answers given.
    pub ok: u64,
    /// Errors answered.
    pub errors: u64,
}

/// What a host reports of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// Its silo.
    pub silo: String,
    /// Its name in the silo.
    pub host: String,
    /// The machine's name.
    pub hostname: String,
    /// The process.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub boot_at: String,
    /// When this report was made.
    pub at: String,
    /// Whether every kernel it was started with serves.
    pub ready: bool,
    /// Heartbeats sent.
    pub pulses: u64,
    /// Its memory.
    pub memory: Option<MemoryState>,
    /// Its GPUs: how many of each model ([`read_gpus`]; empty without any).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpus: BTreeMap<String, u32>,
    /// What it serves.
    pub kernels: Vec<KernelState>,
}

/// A host in a silo's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    /// When it last reported.
    pub at: String,
    /// Ready then.
    pub ready: bool,
    /// Its memory tier.
    pub tier: Option<String>,
    /// `{name} {version} {health}` of each kernel.
    pub kernels: Vec<String>,
    /// Silent for longer than the heartbeat window (as seen by the last host to write).
    #[serde(default)]
    pub stale: bool,
}

/// The silo's summary, key `{silo}`: every host that reported, and when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiloState {
    /// The silo.
    pub silo: String,
    /// By host name.
    pub hosts: BTreeMap<String, HostSummary>,
}

/// The machine's name (empty where the system does not tell).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// A host name for the fleet when none is given: the machine's name (cut to a subject
/// token's characters) and this process's id, so several hosts on one machine differ.
pub fn default_host_name() -> String {
    let name: String = hostname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    format!(
        "{}-{}",
        if name.is_empty() { "host" } else { &name },
        std::process::id()
    )
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn older_than(at: &str, window: Duration) -> bool {
    chrono::DateTime::parse_from_rfc3339(at).is_ok_and(|t| {
        chrono::Utc::now()
            .signed_duration_since(t)
            .to_std()
            .unwrap_or_default()
            > window
    })
}

/// Reports one host of one silo.
pub struct FleetReporter {
    client: async_nats::Client,
    kv: kv::Store,
    policy: FleetPolicy,
    silo: String,
    host: String,
    /// The machine's name, read once.
    hostname: String,
    /// The machine's GPUs by model, read once.
    gpus: BTreeMap<String, u32>,
    boot_at: String,
    pulses: u64,
    ready: Option<bool>,
    tier: Option<usize>,
}

impl FleetReporter {
    /// Opens the fleet state in `state`'s domain (an operator's `ck publish` creates it) for
    /// host `host` of silo `silo`; its events are published over `client`.
    pub async fn open(
        client: async_nats::Client,
        state: &jetstream::Context,
        policy: FleetPolicy,
        silo: &str,
        host: &str,
    ) -> Result<Self, ControlError> {
        if let Some(problem) = topics::silo_name_problem(silo) {
            return Err(ControlError::Refused(problem));
        }
        if !topics::is_fleet_name(host) {
            return Err(ControlError::Refused(format!(
                "host name `{host}` must be 1–64 of A-Z a-z 0-9 - _ (it is a subject token)"
            )));
        }
        let kv = fleet_state(state).await?;
        Ok(Self {
            client,
            kv,
            policy,
            silo: silo.to_owned(),
            host: host.to_owned(),
            hostname: hostname(),
            gpus: read_gpus(std::path::Path::new("/proc")),
            boot_at: now(),
            pulses: 0,
            ready: None,
            tier: None,
        })
    }

    /// Keeps this host's state in `state` from now on (a site's host reaching the hub's
    /// FLEET_STATE once its link is up).
    pub fn report_to(&mut self, state: kv::Store) {
        self.kv = state;
    }

    /// The policy it reports under.
    pub fn policy(&self) -> &FleetPolicy {
        &self.policy
    }

    /// This host's state as of now, serving `kernels`.
    fn state(&self, kernels: Vec<KernelState>) -> HostState {
        HostState {
            silo: self.silo.clone(),
            host: self.host.clone(),
            hostname: self.hostname.clone(),
            pid: std::process::id(),
            boot_at: self.boot_at.clone(),
            at: now(),
            ready: self.ready.unwrap_or(false),
            pulses: self.pulses,
            memory: read_memory().map(|(total_mb, available_mb)| MemoryState {
                tier: self.policy.tier(available_mb).1.to_owned(),
                available_mb,
                total_mb,
            }),
            gpus: self.gpus.clone(),
            kernels,
        }
    }

    async fn announce(
        &self,
        event: FleetEvent,
        key: &str,
        data: serde_json::Value,
    ) -> Result<(), ControlError> {
        let subject = topics::fleet_event_subject(&self.silo, event);
        let id = format!("{}:{}:{}:{key}", self.silo, self.host, event.name());
        let source = format!("ck://fleet/{}/{}", self.silo, self.host);
        let body = ck_events::structured(
            &id,
            &source,
            &format!("ck.fleet.{}", event.name()),
            Some(&self.host),
            &ck_events::now(),
            &data,
        )
        .map_err(|e| ControlError::Refused(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ck_bus::envelope::MSG_ID, id.as_str());
        // A feed: subscribers have it once the server took it (the last value of each host
        // is what FLEET_STATE keeps).
        self.client
            .publish_with_headers(subject.clone(), headers, body.to_string().into())
            .await
            .map_err(|e| ControlError::Nats {
                what: format!("publishing {subject}"),
                why: e.to_string(),
            })?;
        self.client.flush().await.map_err(|e| ControlError::Nats {
            what: format!("publishing {subject}"),
            why: e.to_string(),
        })?;
        tracing::info!(target: "ck::fleet", silo = %self.silo, host = %self.host, subject = %subject, "fleet.event");
        Ok(())
    }

    async fn write_state(&self, state: &HostState) -> Result<(), ControlError> {
        let key = topics::fleet_host_key(&self.silo, &self.host);
        let value = serde_json::to_vec(state).unwrap_or_default();
        self.kv
            .put(&key, value.into())
            .await
            .map_err(|e| ControlError::Nats {
                what: format!("writing {} {key}", topics::FLEET_STATE_BUCKET),
                why: e.to_string(),
            })?;
        if let Some(memory) = &state.memory {
            self.merge_host_entry(topics::fleet_memory_key(&self.silo), json!(memory))
                .await?;
        }
        if !state.gpus.is_empty() {
            self.merge_host_entry(topics::fleet_gpu_key(&self.silo), json!(state.gpus))
                .await?;
        }
        self.merge_summary(state).await
    }

    /// Writes this host into the silo's summary by a revision-checked update (other hosts of
    /// the silo write theirs), marking hosts silent for longer than the window stale.
    async fn merge_summary(&self, state: &HostState) -> Result<(), ControlError> {
        let window = self.policy.window();
        self.merge(topics::fleet_silo_key(&self.silo), |current| {
            let mut summary = current
                .and_then(|v| serde_json::from_slice::<SiloState>(v).ok())
                .unwrap_or_default();
            summary.silo = self.silo.clone();
            for host in summary.hosts.values_mut() {
                host.stale = older_than(&host.at, window);
            }
            summary.hosts.insert(
                self.host.clone(),
                HostSummary {
                    at: state.at.clone(),
                    ready: state.ready,
                    tier: state.memory.as_ref().map(|m| m.tier.clone()),
                    kernels: state
                        .kernels
                        .iter()
                        .map(|k| format!("{} {} {}", k.name, k.stable, k.health))
                        .collect(),
                    stale: false,
                },
            );
            serde_json::to_vec(&summary).unwrap_or_default()
        })
        .await
    }

    /// Puts this host's `value` under `hosts` of the silo-wide key `key` (`{silo}.memory`,
    /// `{silo}.gpu`), keeping the other hosts' entries.
    async fn merge_host_entry(
        &self,
        key: String,
        value: serde_json::Value,
    ) -> Result<(), ControlError> {
        self.merge(key, |current| {
            let mut doc = current
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                .filter(|d| d["hosts"].is_object())
                .unwrap_or_else(|| json!({"hosts": {}}));
            doc["silo"] = json!(self.silo);
            doc["hosts"][&self.host] = value.clone();
            serde_json::to_vec(&doc).unwrap_or_default()
        })
        .await
    }

    /// A revision-checked read-modify-write of `key`: `change` is given the current value (none
    /// when absent or deleted) and returns the new one; retried when another host wrote first.
    async fn merge(
        &self,
        key: String,
        change: impl Fn(Option<&[u8]>) -> Vec<u8>,
    ) -> Result<(), ControlError> {
        for _ in 0..8 {
            let entry = self.kv.entry(&key).await.map_err(|e| ControlError::Nats {
                what: format!("reading {} {key}", topics::FLEET_STATE_BUCKET),
                why: e.to_string(),
            })?;
            let (current, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    (Some(&e.value[..]), Some(e.revision))
                }
                _ => (None, None),
            };
            let value: bytes::Bytes = change(current).into();
            let written = match revision {
                Some(r) => self
                    .kv
                    .update(&key, value, r)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    }),
                None => self.kv.create(&key, value).await.map(|_| ()).map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
            };
            match written {
                Ok(()) => return Ok(()),
                Err((true, _)) => continue,
                Err((false, why)) => {
                    return Err(ControlError::Nats {
                        what: format!("writing {} {key}", topics::FLEET_STATE_BUCKET),
                        why,
                    });
                }
            }
        }
        Err(ControlError::Refused(format!(
            "{key}: other hosts of the silo kept writing it first"
        )))
    }

    /// `boot`: the host started.
    pub async fn boot(&mut self, kernels: Vec<KernelState>) -> Result<(), ControlError> {
        let state = self.state(kernels);
        self.tier = state
            .memory
            .as_ref()
            .map(|m| self.policy.tier(m.available_mb).0);
        self.write_state(&state).await?;
        let data = serde_json::to_value(&state).unwrap_or_default();
        self.announce(FleetEvent::Boot, &self.boot_at.clone(), data)
            .await
    }

    /// `pod.ready`, when readiness changed.
    pub async fn ready(
        &mut self,
        ready: bool,
        kernels: Vec<KernelState>,
    ) -> Result<(), ControlError> {
        if self.ready == Some(ready) {
            return Ok(());
        }
        self.ready = Some(ready);
        let state = self.state(kernels);
        self.write_state(&state).await?;
        let key = format!("{}:{}", self.boot_at, state.at);
        self.announce(
            FleetEvent::PodReady,
            &key,
            json!({"ready": ready, "host": self.host, "kernels": state.kernels}),
        )
        .await
    }

    /// `gamma1.pulse`: the heartbeat, with the state rewritten; `mal.tier_down` first when the
    /// memory tier fell since the last report.
    pub async fn pulse(&mut self, kernels: Vec<KernelState>) -> Result<(), ControlError> {
        self.pulses += 1;
        let state = self.state(kernels);
        if let Some(memory) = &state.memory {
            let (tier, _) = self.policy.tier(memory.available_mb);
            if let Some(before) = self.tier
                && tier > before
            {
                let from = self.policy.memory_tiers[before].tier.clone();
                self.announce(
                    FleetEvent::TierDown,
                    &state.at,
                    json!({"from": from, "to": memory.tier, "available_mb": memory.available_mb, "total_mb": memory.total_mb}),
                )
                .await?;
            }
            self.tier = Some(tier);
        }
        self.write_state(&state).await?;
        let key = format!("{}:{}", self.boot_at, self.pulses);
        self.announce(
            FleetEvent::Pulse,
            &key,
            json!({"host": self.host, "pulses": self.pulses, "ready": state.ready, "tier": state.memory.as_ref().map(|m| m.tier.clone())}),
        )
        .await
    }
}

/// Opens `FLEET_STATE` for reading (`ck status`).
pub async fn fleet_state(js: &jetstream::Context) -> Result<kv::Store, ControlError> {
    js.get_key_value(topics::FLEET_STATE_BUCKET)
        .await
        .map_err(|e| ControlError::Nats {
            what: format!("opening {}", topics::FLEET_STATE_BUCKET),
            why: format!("{e} (an operator's `ck publish` creates it)"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_policy_reads_and_tiers_fall_with_available_memory() {
        let policy = FleetPolicy::shipped();
        assert_eq!(policy.heartbeat(), Duration::from_secs(30));
        assert_eq!(policy.window(), Duration::from_secs(90));
        assert_eq!(policy.tier(20_000).1, "FULL");
        assert_eq!(policy.tier(4096).1, "RICH");
        assert_eq!(policy.tier(1000).1, "THIN");
        assert_eq!(policy.tier(0).1, "DARK");
        assert!(policy.tier(100).0 > policy.tier(5000).0);
    }

    #[test]
    fn gpus_are_counted_by_model_from_the_driver_files() {
        let root = tempfile::tempdir().unwrap();
        assert!(read_gpus(root.path()).is_empty(), "no driver: no GPUs");
        for (bus, model) in [
            ("0000:3b:00.0", "NVIDIA A100-SXM4-80GB"),
            ("0000:5e:00.0", "NVIDIA A100-SXM4-80GB"),
            ("0000:86:00.0", "NVIDIA L4"),
        ] {
            let dir = root.path().join("driver/nvidia/gpus").join(bus);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("information"),
                format!("Model: \t\t {model}\nIRQ:   \t\t 123\nBus Location: \t {bus}\n"),
            )
            .unwrap();
        }
        let pools = read_gpus(root.path());
        assert_eq!(pools.get("NVIDIA A100-SXM4-80GB"), Some(&2));
        assert_eq!(pools.get("NVIDIA L4"), Some(&1));
        assert_eq!(pools.len(), 2);
    }

    #[test]
    fn a_policy_with_unordered_tiers_is_refused() {
        let text = FLEET_POLICY.replace("min_available_mb: 4096", "min_available_mb: 9999");
        assert!(FleetPolicy::parse(&text).is_err());
    }
}

/// One host as `ck status` shows it.
#[derive(Debug, Clone)]
pub struct HostView {
    /// Its name.
    pub host: String,
    /// Its own key still stands (it pulsed within the window); otherwise it is stale.
    pub live: bool,
    /// Its line in the silo summary.
    pub summary: Option<HostSummary>,
    /// Its own last report, while it stands.
    pub state: Option<HostState>,
}

/// One silo as `ck status` shows it.
#[derive(Debug, Clone)]
pub struct SiloView {
    /// The silo.
    pub silo: String,
    /// Its hosts, by name.
    pub hosts: Vec<HostView>,
}

/// What `FLEET_STATE` holds now, by silo: hosts whose own key the server removed (silent for
/// longer than the window) are shown stale.
pub async fn fleet_view(kv: &kv::Store) -> Result<Vec<SiloView>, ControlError> {
    use futures::StreamExt;
    let failed = |e: String| ControlError::Nats {
        what: format!("reading {}", topics::FLEET_STATE_BUCKET),
        why: e,
    };
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(|e| failed(e.to_string()))?
        .filter_map(|k| async { k.ok() })
        .collect()
        .await;
    let mut silos: BTreeMap<String, BTreeMap<String, HostView>> = BTreeMap::new();
    for key in &keys {
        let Some(bytes) = kv.get(key).await.map_err(|e| failed(e.to_string()))? else {
            continue;
        };
        let mut parts = key.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(silo), None, None) => {
                let summary: SiloState = serde_json::from_slice(&bytes).unwrap_or_default();
                let hosts = silos.entry(silo.to_owned()).or_default();
                for (name, line) in summary.hosts {
                    let view = hosts.entry(name.clone()).or_insert(HostView {
                        host: name,
                        live: false,
                        summary: None,
                        state: None,
                    });
                    view.summary = Some(line);
                }
            }
            (Some(silo), Some("host"), Some(host)) => {
                let state: Option<HostState> = serde_json::from_slice(&bytes).ok();
                let view = silos
                    .entry(silo.to_owned())
                    .or_default()
                    .entry(host.to_owned())
                    .or_insert(HostView {
                        host: host.to_owned(),
                        live: false,
                        summary: None,
                        state: None,
                    });
                view.live = true;
                view.state = state;
            }
            _ => {}
        }
    }
    Ok(silos
        .into_iter()
        .map(|(silo, hosts)| SiloView {
            silo,
            hosts: hosts.into_values().collect(),
        })
        .collect())
}

/// A change of `FLEET_STATE`, as `nats kv watch FLEET_STATE` shows it.
#[derive(Debug, Clone)]
pub struct FleetChange {
    /// The key.
    pub key: String,
    /// Its value, or None when the server removed it (max age: the host or silo went
    /// silent) or someone deleted it.
    pub value: Option<serde_json::Value>,
    /// PUT, DEL or PURGE.
    pub operation: String,
}

/// Follows `FLEET_STATE`: every current value, then every change.
pub struct FleetWatch {
    inner: kv::Watch,
}

impl FleetWatch {
    /// Opens the watch.
    pub async fn open(kv: &kv::Store) -> Result<Self, ControlError> {
        let inner = kv
            .watch_with_history(">")
            .await
            .map_err(|e| ControlError::Nats {
                what: format!("watching {}", topics::FLEET_STATE_BUCKET),
                why: e.to_string(),
            })?;
        Ok(Self { inner })
    }

    /// The next change; None when the watch ended.
    pub async fn next(&mut self) -> Option<Result<FleetChange, ControlError>> {
        use futures::StreamExt;
        let entry = match self.inner.next().await? {
            Ok(e) => e,
            Err(e) => {
                return Some(Err(ControlError::Nats {
                    what: format!("watching {}", topics::FLEET_STATE_BUCKET),
                    why: e.to_string(),
                }));
            }
        };
        let operation = match entry.operation {
            kv::Operation::Put => "PUT",
            kv::Operation::Delete => "DEL",
            kv::Operation::Purge => "PURGE",
        };
        Some(Ok(FleetChange {
            value: (entry.operation == kv::Operation::Put)
                .then(|| serde_json::from_slice(&entry.value).ok())
                .flatten(),
            key: entry.key,
            operation: operation.to_owned(),
        }))
    }
}

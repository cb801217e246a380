//! Serving records in the cluster: one per kernel in the KV bucket `CK_SERVING` (key
//! `{guid}`), changed only by the rule of `ck_loops::serving` under a revision check — of two
//! operators changing one record at once, one lands and the other is re-applied to what
//! landed — and followed by every host serving the kernel through a KV watch.

use async_nats::jetstream::kv;
use ck_events::LoopCloudEvent;
use ck_loops::serving::{RolledBack, ServingRecord, ServingRefused, VersionRef, short};
use ck_manifest::topics::{self, LoopEvent};
use futures::StreamExt;
use serde_json::json;

use crate::{ControlError, ControlPlane, MAX_SERVING_RECORD};

/// How many times a change is re-applied when other changes keep landing first.
const MAX_ATTEMPTS: usize = 16;

/// A serving record changed in the cluster.
#[derive(Debug, Clone)]
pub struct Changed {
    /// The record as stored.
    pub record: ServingRecord,
    /// What changed, for people.
    pub what: String,
    /// The loop events announced (their stream had them already when `false`).
    pub events: Vec<(String, bool)>,
}

fn decode(bytes: &[u8], key: &str) -> Result<ServingRecord, ControlError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ControlError::Integrity(format!(
            "{} {key}: not a serving record: {e}",
            topics::SERVING_BUCKET
        ))
    })
}

fn encode(record: &ServingRecord) -> Result<bytes::Bytes, ControlError> {
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    if bytes.len() > MAX_SERVING_RECORD {
        return Err(ControlError::Refused(format!(
            "the serving record of {} would be {} bytes, over the {MAX_SERVING_RECORD}-byte limit (it lists {} earlier versions)",
            record.kernel,
            bytes.len(),
            record.previous.len()
        )));
    }
    Ok(bytes.into())
}

/// The updates of one kernel's serving record: the current one first, then each change.
pub struct ServingWatch {
    key: String,
    inner: kv::Watch,
}

impl ServingWatch {
    /// The next record; None when the watch ended (the connection closed). Deleted or purged
    /// keys are skipped: a kernel whose record is removed keeps serving what it serves.
    pub async fn next(&mut self) -> Option<Result<ServingRecord, ControlError>> {
        loop {
            let entry = match self.inner.next().await? {
                Ok(entry) => entry,
                Err(e) => {
                    return Some(Err(ControlError::Nats {
                        what: format!("watching {} {}", topics::SERVING_BUCKET, self.key),
                        why: e.to_string(),
                    }));
                }
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            return Some(decode(&entry.value, &self.key));
        }
    }
}

/// Every kernel's serving record: the current ones first, then each change.
pub struct ServingFeed {
    inner: kv::Watch,
}

/// One entry of a [`ServingFeed`].
#[derive(Debug, Clone)]
pub struct ServingUpdate {
    /// The kernel's GUID (the key).
    pub guid: String,
    /// Its record; None when the key was deleted or purged.
    pub record: Option<ServingRecord>,
    /// Whether the feed has delivered every current record (later entries are changes).
    pub current: bool,
}

impl ServingFeed {
    /// The next entry; None when the feed ended. An unreadable record is reported as an
    /// error for its key (the feed goes on).
    pub async fn next(&mut self) -> Option<Result<ServingUpdate, ControlError>> {
        let entry = match self.inner.next().await? {
            Ok(entry) => entry,
            Err(e) => {
                return Some(Err(ControlError::Nats {
                    what: format!("watching {}", topics::SERVING_BUCKET),
                    why: e.to_string(),
                }));
            }
        };
        let current = entry.delta == 0 || entry.seen_current;
        if entry.operation != kv::Operation::Put {
            return Some(Ok(ServingUpdate {
                guid: entry.key,
                record: None,
                current,
            }));
        }
        Some(
            decode(&entry.value, &entry.key).map(|record| ServingUpdate {
                guid: entry.key.clone(),
                record: Some(record),
                current,
            }),
        )
    }
}

impl ControlPlane {
    /// Follows every kernel's serving record (the callout's view of the cluster).
    pub async fn watch_serving(&self) -> Result<ServingFeed, ControlError> {
        let inner = self
            .serving
            .watch_with_history(">")
            .await
            .map_err(|e| ControlError::Nats {
                what: format!("watching {}", topics::SERVING_BUCKET),
                why: e.to_string(),
            })?;
        Ok(ServingFeed { inner })
    }

    /// Kernel `guid`'s serving record and its KV revision, None when it has none.
    pub async fn record(&self, guid: &str) -> Result<Option<(ServingRecord, u64)>, ControlError> {
        let key = topics::serving_key(guid);
        let entry = self
            .serving
            .entry(&key)
            .await
            .map_err(|e| ControlError::Nats {
                what: format!("reading {} {key}", topics::SERVING_BUCKET),
                why: e.to_string(),
            })?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((decode(&e.value, &key)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Stores a first serving record; when another landed first, that one is returned.
    pub(crate) async fn create_record(
        &self,
        record: &ServingRecord,
    ) -> Result<ServingRecord, ControlError> {
        let key = topics::serving_key(&record.guid);
        match self.serving.create(&key, encode(record)?).await {
            Ok(_) => Ok(record.clone()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => self
                .record(&record.guid)
                .await?
                .map(|(r, _)| r)
                .ok_or_else(|| ControlError::NotPublished {
                    guid: record.guid.clone(),
                }),
            Err(e) => Err(ControlError::Nats {
                what: format!("creating {} {key}", topics::SERVING_BUCKET),
                why: e.to_string(),
            }),
        }
    }

    /// Applies `change` to kernel `guid`'s serving record and stores the result only if no
    /// other change landed since it was read; otherwise reads again and re-applies (a change
    /// that is refused on the newer record is refused).
    pub async fn change<T>(
        &self,
        guid: &str,
        mut change: impl FnMut(&mut ServingRecord) -> Result<T, ServingRefused>,
    ) -> Result<(ServingRecord, T), ControlError> {
        let key = topics::serving_key(guid);
        for _ in 0..MAX_ATTEMPTS {
            let (mut record, revision) =
                self.record(guid)
                    .await?
                    .ok_or_else(|| ControlError::NotPublished {
                        guid: guid.to_owned(),
                    })?;
            let outcome = change(&mut record).map_err(|e| ControlError::Refused(e.0))?;
            record.stamp();
            match self.serving.update(&key, encode(&record)?, revision).await {
                Ok(_) => return Ok((record, outcome)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => {
                    return Err(ControlError::Nats {
                        what: format!("updating {} {key}", topics::SERVING_BUCKET),
                        why: e.to_string(),
                    });
                }
            }
        }
        Err(ControlError::Refused(format!(
            "{MAX_ATTEMPTS} other changes of {key}'s serving record landed first; try again"
        )))
    }

    /// Follows kernel `guid`'s serving record: the current one, then every change.
    pub async fn watch(&self, guid: &str) -> Result<ServingWatch, ControlError> {
        let key = topics::serving_key(guid);
        let inner =
            self.serving
                .watch_with_history(&key)
                .await
                .map_err(|e| ControlError::Nats {
                    what: format!("watching {} {key}", topics::SERVING_BUCKET),
                    why: e.to_string(),
                })?;
        Ok(ServingWatch { key, inner })
    }

    /// The serving record of the kernel named `kernel` (a GUID, or a name that only one
    /// kernel in the cluster has).
    pub async fn find(&self, kernel: &str) -> Result<ServingRecord, ControlError> {
        if let Some((record, _)) = self.record(kernel).await? {
            return Ok(record);
        }
        let keys: Vec<String> = match self.serving.keys().await {
            Ok(keys) => keys.filter_map(|k| async { k.ok() }).collect().await,
            Err(e) => {
                return Err(ControlError::Nats {
                    what: format!("listing {}", topics::SERVING_BUCKET),
                    why: e.to_string(),
                });
            }
        };
        let mut named = Vec::new();
        for key in keys {
            if let Some((record, _)) = self.record(&key).await?
                && record.kernel == kernel
            {
                named.push(record);
            }
        }
        match named.len() {
            1 => Ok(named.remove(0)),
            0 => Err(ControlError::Refused(format!(
                "no kernel named or with GUID `{kernel}` has a serving record in {} (publish it with `ck publish KERNEL_DIR --nats URL`)",
                topics::SERVING_BUCKET
            ))),
            _ => Err(ControlError::Refused(format!(
                "{} kernels are named `{kernel}` (GUIDs {}): name one by its GUID",
                named.len(),
                named
                    .iter()
                    .map(|r| r.guid.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The version `spec` names for kernel `record`: `develop` (the newest published),
    /// `stable`, `canary`, or the start (4+ characters) of a published CK or TOOL commit (a loop
    /// it does not name keeps its stable commit). Refused unless that version was published.
    pub async fn resolve(
        &self,
        record: &ServingRecord,
        spec: &str,
    ) -> Result<VersionRef, ControlError> {
        let guid = &record.guid;
        let pin = match spec {
            "develop" => self.develop(guid).await?.ok_or_else(|| {
                ControlError::Refused(format!(
                    "{} has no published develop version",
                    record.kernel
                ))
            })?,
            "stable" => record.stable.clone(),
            "canary" => record
                .canary
                .as_ref()
                .map(|c| c.pin.clone())
                .ok_or_else(|| {
                    ControlError::Refused(format!("{} runs no canary", record.kernel))
                })?,
            prefix if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) => {
                let (ck, tool) = self.commits_with_prefix(guid, prefix).await?;
                match (ck.as_slice(), tool.as_slice()) {
                    ([ck], []) => VersionRef {
                        ck: ck.clone(),
                        tool: record.stable.tool.clone(),
                    },
                    ([], [tool]) => VersionRef {
                        ck: record.stable.ck.clone(),
                        tool: tool.clone(),
                    },
                    ([], []) => {
                        return Err(ControlError::Refused(format!(
                            "`{spec}` starts no published CK or TOOL commit of {} (publish it with `ck publish`, or try `develop`)",
                            record.kernel
                        )));
                    }
                    _ => {
                        return Err(ControlError::Refused(format!(
                            "`{spec}` starts several published commits of {}: give more of it",
                            record.kernel
                        )));
                    }
                }
            }
            _ => {
                return Err(ControlError::Refused(format!(
                    "`{spec}` names no version of {}: use `develop`, `stable`, `canary` or the start of a commit id (4+ hex digits)",
                    record.kernel
                )));
            }
        };
        // Both halves must be readable back, or no host could serve it.
        self.ck_commit(guid, &pin.ck).await?;
        self.tool_commit(guid, &pin.tool).await?;
        Ok(pin)
    }

    /// Makes the version `spec` names stable for kernel `kernel` (name or GUID), from any
    /// machine; announces `ck.promote` (and `tool.promote` when the component changes).
    pub async fn promote(&self, kernel: &str, spec: &str) -> Result<Changed, ControlError> {
        let current = self.find(kernel).await?;
        let to = self.resolve(&current, spec).await?;
        let (record, from) = self
            .change(&current.guid, |r| r.promote(to.clone()))
            .await?;
        let data = json!({"from": from, "to": to, "ref": spec, "revision": record.revision});
        let mut events = vec![(LoopEvent::CkPromote, data.clone())];
        if from.tool != to.tool {
            events.push((LoopEvent::ToolPromote, data));
        }
        let events = self.announce(&record, events).await?;
        Ok(Changed {
            what: format!("stable {} → {}", from.short(), to.short()),
            record,
            events,
        })
    }

    /// Sends `weight` percent of kernel `kernel`'s messages to the version `spec` names (0
    /// ends the canary); announces `ck.canary`.
    pub async fn canary(
        &self,
        kernel: &str,
        spec: &str,
        weight: u8,
    ) -> Result<Changed, ControlError> {
        let current = self.find(kernel).await?;
        let pin = self.resolve(&current, spec).await?;
        let (record, ()) = self
            .change(&current.guid, |r| r.set_canary(pin.clone(), weight))
            .await?;
        let data = json!({"canary": pin, "weight": weight, "stable": record.stable, "ref": spec, "revision": record.revision});
        let events = self
            .announce(&record, vec![(LoopEvent::CkCanary, data)])
            .await?;
        Ok(Changed {
            what: if weight == 0 {
                "canary ended".to_owned()
            } else {
                format!("canary {} at {weight}%", pin.short())
            },
            record,
            events,
        })
    }

    /// Ends kernel `kernel`'s canary or makes its previous stable version stable again;
    /// announces `ck.rollback`.
    pub async fn rollback(&self, kernel: &str) -> Result<Changed, ControlError> {
        let current = self.find(kernel).await?;
        let (record, rolled) = self.change(&current.guid, |r| r.rollback()).await?;
        let what = match &rolled {
            RolledBack::CanaryEnded(c) => format!(
                "canary {} ({}%) ended; {} answers everything",
                c.pin.short(),
                c.weight,
                record.stable.short()
            ),
            RolledBack::Stable { from } => {
                format!("stable {} → {}", from.short(), record.stable.short())
            }
        };
        let data = json!({"from": rolled.from(), "to": record.stable, "revision": record.revision});
        let events = self
            .announce(&record, vec![(LoopEvent::CkRollback, data)])
            .await?;
        Ok(Changed {
            what,
            record,
            events,
        })
    }

    /// Makes `pin` stable for kernel `guid` (class `kernel`), creating its serving record when
    /// it has none (a site's first install of it); announces `ck.promote`. Returns the change
    /// and the version that was stable before (None for a new record).
    pub async fn install(
        &self,
        kernel: &str,
        guid: &str,
        pin: &VersionRef,
    ) -> Result<(Changed, Option<VersionRef>), ControlError> {
        if self.record(guid).await?.is_none() {
            let mut record = ServingRecord {
                kernel: kernel.to_owned(),
                guid: guid.to_owned(),
                revision: 0,
                updated_at: String::new(),
                stable: pin.clone(),
                canary: None,
                previous: Vec::new(),
            };
            record.stamp();
            let record = self.create_record(&record).await?;
            if record.stable == *pin {
                let data = json!({"to": pin, "ref": "install", "revision": record.revision});
                let events = self
                    .announce(&record, vec![(LoopEvent::CkPromote, data)])
                    .await?;
                return Ok((
                    Changed {
                        what: format!("stable {}", pin.short()),
                        record,
                        events,
                    },
                    None,
                ));
            }
        }
        let (record, from) = self.change(guid, |r| r.promote(pin.clone())).await?;
        let data = json!({"from": from, "to": pin, "ref": "install", "revision": record.revision});
        let mut events = vec![(LoopEvent::CkPromote, data.clone())];
        if from.tool != pin.tool {
            events.push((LoopEvent::ToolPromote, data));
        }
        let events = self.announce(&record, events).await?;
        Ok((
            Changed {
                what: format!("stable {} → {}", from.short(), pin.short()),
                record,
                events,
            },
            Some(from),
        ))
    }

    /// Publishes the loop events of a change of `record` to the loop event stream, keyed by
    /// its revision (as a host's journal keys the same change).
    async fn announce(
        &self,
        record: &ServingRecord,
        events: Vec<(LoopEvent, serde_json::Value)>,
    ) -> Result<Vec<(String, bool)>, ControlError> {
        let urn = self
            .ck_commit(&record.guid, &record.stable.ck)
            .await
            .map(|d| d.urn)
            .unwrap_or_else(|_| format!("ckp://Kernel#{}", record.kernel));
        let key = format!("rev{}", record.revision);
        let time = ck_events::now();
        let mut announced = Vec::new();
        for (event, mut data) in events {
            data["event"] = json!(event.to_string());
            data["kernel"] = json!(record.kernel);
            data["guid"] = json!(record.guid);
            data["timestamp"] = json!(time);
            let cloud = LoopCloudEvent {
                guid: &record.guid,
                source: &urn,
                event,
                key: &key,
                about: None,
                time: &time,
                data,
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(ck_bus::envelope::MSG_ID, cloud.id().as_str());
            let duplicate = crate::publish_loop_event(
                &self.js,
                cloud.nats_subject(),
                headers,
                cloud
                    .body()
                    .map_err(|e| ControlError::Refused(e.to_string()))?
                    .to_string()
                    .into(),
            )
            .await?;
            announced.push((cloud.nats_subject(), duplicate));
        }
        tracing::info!(target: "ck::control", kernel = %record.kernel, revision = record.revision, stable = %short(&record.stable.ck), "serving.record-changed");
        Ok(announced)
    }
}

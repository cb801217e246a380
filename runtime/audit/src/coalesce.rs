//! Refusals an unproven caller can cause at will (a request without a token, a reply subject
//! that is not an inbox, a connect with a bogus credential) are coalesced: per kernel and key
//! (what was refused, and to whom), the first refusal of an interval is written and the others
//! are counted; the next line written for that key carries the count (`coalesced`). A flood
//! therefore writes at most one line per key and interval, and at most [`MAX_KEYS`] keys are
//! tracked per kernel (beyond that its new keys share one overflow key: a caller changing its
//! claimed name on every call gains nothing), so it cannot fill the disk — nor, since every
//! kernel has its own keys, silence a neighbour's refusals.
//! Every refusal is still counted ([`coalesced_total`]) and logged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::AuditRecord;

/// How long one line stands for all refusals of its key.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Most keys tracked at once per kernel; new keys beyond share [`OVERFLOW_KEY`].
pub const MAX_KEYS: usize = 32;

/// The key every refusal shares once [`MAX_KEYS`] keys are tracked.
pub const OVERFLOW_KEY: &str = "*";

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write its line; `coalesced` refusals of the same key were counted since the last one.
    Write {
        /// Refusals not written since the key's last line.
        coalesced: u64,
    },
    /// Counted, not written.
    Suppressed,
}

struct Window {
    opened: Instant,
    suppressed: u64,
}

/// Coalesces refusals per kernel, key and interval.
pub struct Coalescer {
    interval: Duration,
    max_keys: usize,
    /// Per kernel, per key.
    windows: Mutex<HashMap<String, HashMap<String, Window>>>,
    suppressed: AtomicU64,
}

impl Coalescer {
    /// A coalescer writing one line per key and `interval`, tracking at most `max_keys` keys.
    pub fn new(interval: Duration, max_keys: usize) -> Self {
        Self {
            interval,
            max_keys,
            windows: Mutex::new(HashMap::new()),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether the refusal of `kernel` keyed `key` at `now` is written.
    pub fn admit(&self, kernel: &str, key: &str, now: Instant) -> Admit {
        let mut all = self
            .windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let windows = all.entry(kernel.to_owned()).or_default();
        let mut key = key;
        if !windows.contains_key(key) && windows.len() >= self.max_keys {
            let interval = self.interval;
            windows.retain(|_, w| now.duration_since(w.opened) < interval);
            if windows.len() >= self.max_keys {
                key = OVERFLOW_KEY;
            }
        }
        match windows.get_mut(key) {
            Some(w) if now.duration_since(w.opened) < self.interval => {
                w.suppressed += 1;
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                Admit::Suppressed
            }
            Some(w) => {
                let coalesced = std::mem::take(&mut w.suppressed);
                w.opened = now;
                Admit::Write { coalesced }
            }
            None => {
                windows.insert(
                    key.to_owned(),
                    Window {
                        opened: now,
                        suppressed: 0,
                    },
                );
                Admit::Write { coalesced: 0 }
            }
        }
    }

    /// Refusals counted and not written, since start.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

static REFUSALS: LazyLock<Coalescer> = LazyLock::new(|| Coalescer::new(INTERVAL, MAX_KEYS));

/// Records a refusal an unproven caller caused: written (on a blocking thread, like
/// [`crate::append_detached`]) unless one of the same kernel and `key` was written in this
/// interval; then only counted. Logged either way.
pub fn append_refusal(kernel_dir: PathBuf, kernel: String, key: &str, mut record: AuditRecord) {
    match REFUSALS.admit(&kernel_dir.to_string_lossy(), key, Instant::now()) {
        Admit::Write { coalesced } => {
            record.coalesced = (coalesced > 0).then_some(coalesced);
            crate::append_detached(kernel_dir, kernel, record);
        }
        Admit::Suppressed => {
            tracing::debug!(target: "ck::audit", kernel = %kernel, key, action = %record.action, "audit.coalesced");
        }
    }
}

/// Refusals counted but not written (coalesced), since this process started.
pub fn coalesced_total() -> u64 {
    REFUSALS.suppressed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_and_interval_with_the_count_on_the_next() {
        let c = Coalescer::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        assert_eq!(c.admit("K", "a", t0), Admit::Write { coalesced: 0 });
        for i in 1..=5 {
            assert_eq!(
                c.admit("K", "a", t0 + Duration::from_secs(i)),
                Admit::Suppressed
            );
        }
        assert_eq!(
            c.admit("K", "a", t0 + Duration::from_secs(11)),
            Admit::Write { coalesced: 5 }
        );
        assert_eq!(c.suppressed(), 5);
        // Keys beyond the bound share the overflow key.
        assert_eq!(c.admit("K", "b", t0), Admit::Write { coalesced: 0 });
        assert_eq!(c.admit("K", "c", t0), Admit::Write { coalesced: 0 });
        assert_eq!(
            c.admit("K", "d", t0 + Duration::from_secs(1)),
            Admit::Suppressed
        );
        assert_eq!(
            c.admit("K", "e", t0 + Duration::from_secs(2)),
            Admit::Suppressed
        );
        // Another kernel has keys of its own.
        assert_eq!(c.admit("L", "d", t0), Admit::Write { coalesced: 0 });
        // Expired windows make room again.
        assert_eq!(
            c.admit("K", "f", t0 + Duration::from_secs(30)),
            Admit::Write { coalesced: 0 }
        );
    }
}

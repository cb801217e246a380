//! Compiled-artifact cache: a component compiled once is loaded in microseconds afterwards.
//!
//! Entries are keyed by the engine's compatibility hash and the component's blake3 digest, so a
//! new wasmtime or different engine settings never load an old artifact. Each entry carries a
//! blake3 checksum of itself: a corrupt, truncated or foreign file is a miss (and is replaced),
//! never a failure — and never handed to `Component::deserialize`, which must only see bytes
//! that `serialize` produced.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 8] = b"CKCWASM1";

/// A directory of precompiled components.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

/// Feeds `Hash` output into blake3, for a key that is stable across processes.
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        let bytes = self.0.finalize();
        u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or_default())
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl ArtifactCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default location: `$CK_CACHE_DIR`, else `$XDG_CACHE_HOME/ck/components`, else
    /// `~/.cache/ck/components`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("CK_CACHE_DIR") {
            return PathBuf::from(dir);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("ck").join("components")
    }

    /// The file an artifact for `digest` compiled by `engine` lives in.
    pub fn entry_path(&self, engine: &Engine, digest: &blake3::Hash) -> PathBuf {
        let mut h = Blake3Hasher(blake3::Hasher::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        h.0.update(digest.as_bytes());
        self.dir
            .join(format!("{}.cwasm", &h.0.finalize().to_hex()[..32]))
    }

    /// Loads a cached artifact, or `None` on any miss (absent, corrupt, incompatible).
    #[allow(unsafe_code)]
    pub fn load(&self, engine: &Engine, digest: &blake3::Hash) -> Option<Component> {
        let bytes = std::fs::read(self.entry_path(engine, digest)).ok()?;
        let payload = verified_payload(&bytes)?;
        // SAFETY: the payload is byte-for-byte what `Component::serialize` wrote (checked by
        // the blake3 checksum above), and wasmtime itself refuses artifacts from an
        // incompatible engine.
        unsafe { Component::deserialize(engine, payload) }.ok()
    }

    /// Stores an artifact (atomically: a reader sees the old file or the whole new one).
    pub fn store(
        &self,
        engine: &Engine,
        digest: &blake3::Hash,
        component: &Component,
    ) -> std::io::Result<()> {
        let payload = component.serialize().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.entry_path(engine, digest);
        let mut bytes = Vec::with_capacity(MAGIC.len() + 32 + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(blake3::hash(&payload).as_bytes());
        bytes.extend_from_slice(&payload);
        ck_fs::write_atomic(&path, &bytes)
    }
}

fn verified_payload(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC)?;
    if rest.len() < 32 {
        return None;
    }
    let (sum, payload) = rest.split_at(32);
    (blake3::hash(payload).as_bytes() == sum).then_some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_guards_the_payload() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(blake3::hash(b"payload").as_bytes());
        bytes.extend_from_slice(b"payload");
        assert_eq!(verified_payload(&bytes), Some(&b"payload"[..]));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(verified_payload(&bytes), None);
        assert_eq!(verified_payload(b"CKCWASM1short"), None);
        assert_eq!(verified_payload(b"garbage"), None);
    }
}

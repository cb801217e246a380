//! Compiled-artifact cache: a component compiled once is loaded in microseconds afterwards.
//!
//! An entry is native code that `Component::deserialize` maps and runs, so whoever can write
//! the cache can run code in the host. Three rules keep it the host's alone:
//! - the directory must be owned by the host's user and writable by nobody else (created 0700;
//!   an existing one that fails the check is refused with the fix, never used);
//! - there is no shared fallback location: without `CK_CACHE_DIR`, `XDG_CACHE_HOME` or `HOME`
//!   there is no cache (components are compiled each time);
//! - every entry is authenticated with a keyed blake3 MAC over its name and bytes, the key
//!   being 32 random bytes in `.key` (mode 0600, owner checked) that only the host's user can
//!   read. An entry whose MAC does not verify — corrupt, truncated, foreign, or forged by
//!   someone who knows the (unkeyed) layout — is a miss and is replaced, never deserialised.
//!
//! Entries are keyed by the engine's compatibility hash and the component's blake3 digest, so a
//! new wasmtime or different engine settings never load an old artifact.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 8] = b"CKCWASM2";
const KEY_FILE: &str = ".key";

/// Why a cache directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// It (or its key) is owned by another user.
    #[error(
        "artifact cache {path}: owned by uid {owner}, not by this host's uid {me}; anyone who can write it can run code in the host (use a directory of your own with --cache-dir, or --no-cache)"
    )]
    NotOwned {
        /// The directory or key file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// Group or others may write it (or read its key).
    #[error(
        "artifact cache {path}: mode {mode:o} lets others {what}; anyone who can write it can run code in the host (chmod {fix:o} {path}, or use --cache-dir / --no-cache)"
    )]
    TooOpen {
        /// The directory or key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// What others may do.
        what: &'static str,
        /// The mode to set.
        fix: u32,
    },
    /// It is not a directory, or its key is not a regular 32-byte file.
    #[error("artifact cache {path}: {why}")]
    Invalid {
        /// The path at fault.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A file operation failed.
    #[error("artifact cache {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
}

/// A directory of precompiled components, authenticated with the host's key.
#[derive(Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Refuses `path` unless it is owned by this process's user and `forbidden` mode bits are
/// clear.
#[cfg(unix)]
fn check_private(
    path: &Path,
    meta: &std::fs::Metadata,
    forbidden: u32,
    what: &'static str,
    fix: u32,
) -> Result<(), CacheError> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(CacheError::NotOwned {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & forbidden != 0 {
        return Err(CacheError::TooOpen {
            path: path.to_owned(),
            mode,
            what,
            fix,
        });
    }
    Ok(())
}

impl ArtifactCache {
    /// Opens (creating, mode 0700) the cache in `dir` and its key (creating it, mode 0600):
    /// refused when the directory or the key belongs to another user, when others may write
    /// the directory, or when others may read the key.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let dir = dir.into();
        if !dir.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder.create(&dir).map_err(io(&dir))?;
        }
        let meta = std::fs::symlink_metadata(&dir).map_err(io(&dir))?;
        if !meta.is_dir() {
            return Err(CacheError::Invalid {
                path: dir,
                why: "not a directory (a symbolic link is not followed)".into(),
            });
        }
        #[cfg(unix)]
        check_private(&dir, &meta, 0o022, "write it", 0o700)?;
        let key = load_or_create_key(&dir.join(KEY_FILE))?;
        Ok(Self { dir, key })
    }

    /// The default location: `$CK_CACHE_DIR`, else `$XDG_CACHE_HOME/ck/components`, else
    /// `~/.cache/ck/components`; `None` when none of them is set (there is no shared
    /// fallback such as a temporary directory).
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("CK_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("ck").join("components"))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file an artifact for `digest` compiled by `engine` lives in.
    pub fn entry_path(&self, engine: &Engine, digest: &blake3::Hash) -> PathBuf {
        let mut h = Blake3Hasher(blake3::Hasher::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        h.0.update(digest.as_bytes());
        self.dir
            .join(format!("{}.cwasm", &h.0.finalize().to_hex()[..32]))
    }

    /// Loads a cached artifact, or `None` on any miss (absent, unauthenticated, incompatible).
    #[allow(unsafe_code)]
    pub fn load(&self, engine: &Engine, digest: &blake3::Hash) -> Option<Component> {
        let path = self.entry_path(engine, digest);
        let bytes = std::fs::read(&path).ok()?;
        let Some(payload) = self.verified_payload(&path, &bytes) else {
            tracing::warn!(entry = %path.display(), "cache.entry_refused; its MAC does not verify, it is recompiled");
            return None;
        };
        // SAFETY: the payload is byte-for-byte what `Component::serialize` wrote in this
        // cache: its MAC, keyed with a secret only this user can read, verified above. And
        // wasmtime itself refuses artifacts from an incompatible engine.
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
        let path = self.entry_path(engine, digest);
        let mut bytes = Vec::with_capacity(MAGIC.len() + 32 + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(self.mac(&path, &payload).as_bytes());
        bytes.extend_from_slice(&payload);
        ck_fs::write_atomic_private(&path, &bytes)
    }

    /// The MAC of an entry: keyed blake3 over its file name and payload (an entry moved to
    /// another name does not verify either).
    fn mac(&self, path: &Path, payload: &[u8]) -> blake3::Hash {
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default();
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name);
        h.update(payload);
        h.finalize()
    }

    fn verified_payload<'a>(&self, path: &Path, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let rest = bytes.strip_prefix(MAGIC)?;
        if rest.len() < 32 {
            return None;
        }
        let (sum, payload) = rest.split_at(32);
        let sum: [u8; 32] = sum.try_into().ok()?;
        // `blake3::Hash` compares in constant time.
        (self.mac(path, payload) == blake3::Hash::from(sum)).then_some(payload)
    }
}

/// Reads the cache key, or creates it: 32 random bytes, written 0600 and published without
/// replacing a key another host created at the same moment.
fn load_or_create_key(path: &Path) -> Result<[u8; 32], CacheError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.is_file() {
                return Err(CacheError::Invalid {
                    path: path.to_owned(),
                    why: "the key is not a regular file".into(),
                });
            }
            #[cfg(unix)]
            check_private(path, &meta, 0o077, "read or write it", 0o600)?;
            let bytes = std::fs::read(path).map_err(io(path))?;
            bytes.try_into().map_err(|b: Vec<u8>| CacheError::Invalid {
                path: path.to_owned(),
                why: format!(
                    "the key is {} bytes, not 32 (delete it to start a new cache)",
                    b.len()
                ),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| CacheError::Io {
                path: path.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let staging = ck_fs::staging_path(path);
            let write = || -> std::io::Result<()> {
                let mut options = std::fs::OpenOptions::new();
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let mut file = options.write(true).create_new(true).open(&staging)?;
                file.write_all(&key)?;
                file.sync_all()
            };
            let published = write().and_then(|()| std::fs::hard_link(&staging, path));
            let _ = std::fs::remove_file(&staging);
            match published {
                Ok(()) => Ok(key),
                // Another host made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path),
                Err(e) => Err(io(path)(e)),
            }
        }
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_guards_payload_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path().join("c")).unwrap();
        let path = cache.dir().join("a.cwasm");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(cache.mac(&path, b"payload").as_bytes());
        bytes.extend_from_slice(b"payload");
        assert_eq!(cache.verified_payload(&path, &bytes), Some(&b"payload"[..]));
        assert_eq!(
            cache.verified_payload(&cache.dir().join("b.cwasm"), &bytes),
            None
        );
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(cache.verified_payload(&path, &bytes), None);
        // An unkeyed checksum (what anyone can compute) does not pass.
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(blake3::hash(b"payload").as_bytes());
        forged.extend_from_slice(b"payload");
        assert_eq!(cache.verified_payload(&path, &forged), None);
        // The key persists: a second open authenticates the first one's entries.
        let again = ArtifactCache::open(cache.dir()).unwrap();
        assert_eq!(again.key, cache.key);
    }

    #[cfg(unix)]
    #[test]
    fn an_open_directory_or_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ArtifactCache::open(&open).unwrap_err();
        assert!(matches!(e, CacheError::TooOpen { .. }), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
        let cache = ArtifactCache::open(&open).unwrap();
        let mode = std::fs::metadata(cache.dir().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(
            cache.dir().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = ArtifactCache::open(&open).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        let made = ArtifactCache::open(dir.path().join("new/deeper")).unwrap();
        let mode = std::fs::metadata(made.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_of_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = if rustix::process::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            theirs
        } else {
            // Owned by root and not writable by others: refused for its owner alone.
            PathBuf::from("/")
        };
        let e = ArtifactCache::open(&theirs).unwrap_err();
        assert!(matches!(e, CacheError::NotOwned { .. }), "{e}");
    }
}

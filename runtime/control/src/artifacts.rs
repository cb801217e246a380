//! Components in the cluster's object store, named by their blake3 digest (hex). Every read is
//! checked twice: by the store's own SHA-256 (the reader fails at the end on a mismatch, and an
//! object without one is refused) and by blake3 against its name.

use std::collections::HashMap;

use async_nats::jetstream::object_store::ObjectMetadata;
use tokio::io::AsyncReadExt;

use crate::{ControlError, ControlPlane};

/// Largest component the store hands out (a component this large is a mistake or an attack
/// on the host's memory).
pub const MAX_COMPONENT: usize = 128 * 1024 * 1024;

/// The metadata key holding the blake3 digest beside the store's SHA-256.
const BLAKE3_META: &str = "blake3";

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("blake3:").unwrap_or(digest)
}

impl ControlPlane {
    /// Stores `bytes` under their blake3 digest unless the store has them already. Returns
    /// whether they were uploaded.
    pub(crate) async fn put_component(&self, bytes: &[u8]) -> Result<bool, ControlError> {
        let hex = blake3::hash(bytes).to_hex().to_string();
        if let Ok(info) = self.artifacts.info(&hex).await
            && !info.deleted
            && info.size == bytes.len()
            && info.digest.is_some()
        {
            return Ok(false);
        }
        let meta = ObjectMetadata {
            name: hex.clone(),
            description: Some("ck component".into()),
            metadata: HashMap::from([(BLAKE3_META.to_owned(), hex.clone())]),
            ..Default::default()
        };
        let mut reader = bytes;
        self.artifacts
            .put(meta, &mut reader)
            .await
            .map_err(|e| ControlError::Nats {
                what: format!(
                    "storing component {hex} in {}",
                    ck_manifest::topics::ARTIFACT_STORE
                ),
                why: e.to_string(),
            })?;
        Ok(true)
    }

    /// Whether the store holds the component with digest `digest` whole (with its SHA-256);
    /// reading it still checks both digests.
    pub async fn has_component(&self, digest: &str) -> bool {
        self.artifacts
            .info(hex_of(digest))
            .await
            .is_ok_and(|info| !info.deleted && info.digest.is_some())
    }

    /// The component with digest `digest` (`blake3:{hex}` or `{hex}`), checked by the store's
    /// SHA-256 and by blake3.
    pub async fn fetch_component(&self, digest: &str) -> Result<Vec<u8>, ControlError> {
        let hex = hex_of(digest);
        let store = ck_manifest::topics::ARTIFACT_STORE;
        let what = format!("fetching component {hex} from {store}");
        let info = self
            .artifacts
            .info(hex)
            .await
            .map_err(|e| ControlError::Nats {
                what: what.clone(),
                why: e.to_string(),
            })?;
        if info.digest.is_none() {
            return Err(ControlError::Integrity(format!(
                "{what}: the object carries no SHA-256 digest, so the store cannot vouch for it; refused"
            )));
        }
        if info.size > MAX_COMPONENT {
            return Err(ControlError::Refused(format!(
                "{what}: {} bytes is over the {MAX_COMPONENT}-byte limit",
                info.size
            )));
        }
        let mut object = self
            .artifacts
            .get(hex)
            .await
            .map_err(|e| ControlError::Nats {
                what: what.clone(),
                why: e.to_string(),
            })?;
        let mut bytes = Vec::with_capacity(info.size);
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| ControlError::Integrity(format!("{what}: {e}")))?;
        let actual = blake3::hash(&bytes).to_hex();
        if actual.as_str() != hex {
            return Err(ControlError::Integrity(format!(
                "{what}: its bytes hash to blake3:{actual}, not to the name they are stored under; refused"
            )));
        }
        Ok(bytes)
    }
}

//! Standard Webhooks (v1.0.0) headers of one delivery attempt: `webhook-id` (the CloudEvent's
//! id: stable across retries, the receiver's idempotency key), `webhook-timestamp` (the
//! attempt, Unix seconds) and `webhook-signature` (`v1,` HMAC-SHA256 of `id.timestamp.body`
//! with each key, space-separated during a rotation), signed by the `standardwebhooks` crate.

use standardwebhooks::Webhook;

/// Why a delivery could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("signing the delivery: {0}")]
pub struct SignError(String);

/// The `webhook-id` of the CloudEvent `event_id`: `msg_` and the first 32 hex digits of its
/// blake3 — the same for every attempt, and free of the `.` that CloudEvent ids of loop
/// events hold (`{guid}:ck.commit:{commit}`) and the signed content cannot.
pub fn webhook_id(event_id: &str) -> String {
    format!("msg_{}", &blake3::hash(event_id.as_bytes()).to_hex()[..32])
}

/// The three headers of an attempt at `timestamp` delivering `body` with webhook id `id`
/// (from [`webhook_id`]).
pub fn headers(
    id: &str,
    timestamp: i64,
    body: &[u8],
    keys: &[Vec<u8>],
) -> Result<[(&'static str, String); 3], SignError> {
    if id.contains('.') {
        // The signed content is `id.timestamp.body`: an id with a dot would be ambiguous.
        return Err(SignError(format!("webhook-id `{id}` holds a '.'")));
    }
    let signatures = keys
        .iter()
        .map(|key| {
            Webhook::from_bytes(key.clone())
                .and_then(|w| w.sign(id, timestamp, body))
                .map_err(|e| SignError(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok([
        (standardwebhooks::HEADER_WEBHOOK_ID, id.to_owned()),
        (
            standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
            timestamp.to_string(),
        ),
        (
            standardwebhooks::HEADER_WEBHOOK_SIGNATURE,
            signatures.join(" "),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_signs_and_the_standard_verifier_accepts_either() {
        let (old, new) = (vec![1u8; 32], vec![2u8; 32]);
        let now = chrono::Utc::now().timestamp();
        let body = br#"{"specversion":"1.0"}"#;
        let signed = headers("evt-1", now, body, &[old.clone(), new.clone()]).unwrap();
        assert_eq!(signed[2].1.split(' ').count(), 2);
        let mut map = standardwebhooks_http_headers(&signed);
        for key in [old, new] {
            Webhook::from_bytes(key)
                .unwrap()
                .verify(body, &map)
                .unwrap();
        }
        assert!(
            Webhook::from_bytes(vec![3u8; 32])
                .unwrap()
                .verify(body, &map)
                .is_err()
        );
        map.insert(
            standardwebhooks::HEADER_WEBHOOK_ID,
            "evt-2".parse().unwrap(),
        );
        assert!(
            Webhook::from_bytes(vec![1u8; 32])
                .unwrap()
                .verify(body, &map)
                .is_err()
        );
        assert!(headers("a.b", now, body, &[vec![1u8; 32]]).is_err());
        let id = webhook_id("g-1:ck.commit:abc");
        assert!(
            !id.contains('.') && id == webhook_id("g-1:ck.commit:abc"),
            "{id}"
        );
        assert!(headers(&id, now, body, &[vec![1u8; 32]]).is_ok());
    }

    fn standardwebhooks_http_headers(signed: &[(&'static str, String); 3]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in signed {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }
}

//! Where a webhook subscription's consumer starts, from its contract's `replayPolicy`:
//! `new-only` → JetStream `DeliverPolicy::New`, `from-sequence` → `ByStartSequence`,
//! `latest-per-key` → `LastPerSubject` (the key is the subject's last token, so the latest
//! message of each subject is the latest of each key; the server requires the consumer's
//! filter subjects, which a contract always has). A deliver policy cannot be changed on an
//! existing consumer: a contract that changes it needs a new `subscriptionId`.

use async_nats::jetstream::consumer::DeliverPolicy;
use ck_contracts::{ReplayPolicy, Subscription};

/// The deliver policy of `subscription`'s consumers.
pub fn deliver_policy(subscription: &Subscription) -> DeliverPolicy {
    match subscription.replay_policy {
        ReplayPolicy::NewOnly => DeliverPolicy::New,
        ReplayPolicy::FromSequence => DeliverPolicy::ByStartSequence {
            start_sequence: subscription.start_sequence.unwrap_or(1),
        },
        ReplayPolicy::LatestPerKey => DeliverPolicy::LastPerSubject,
    }
}

/// The durable consumer of `subscription` on `stream` (one per stream its filters reach):
/// `bridge_{subscriptionId}_{stream}`, in the characters durable names allow.
pub fn durable_name(subscription_id: &str, stream: &str) -> String {
    format!("bridge_{subscription_id}_{stream}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_replay_policy_maps_to_its_deliver_policy() {
        let families = ck_acl_families();
        let checker = ck_contracts::ContractChecker::new(&families);
        let base = r#"{"version":1,"subscriptionId":"t-1","owner":"t","deliveryMode":"nats",
            "subjectFilters":["platform.capability.>"],"auth":{"class":"nats-user"}"#;
        let with = |replay: &str| checker.check("<t>", &format!("{base},{replay}}}")).unwrap();
        assert_eq!(
            deliver_policy(&with(r#""replayPolicy":"new-only""#)),
            DeliverPolicy::New
        );
        assert_eq!(
            deliver_policy(&with(
                r#""replayPolicy":"from-sequence","startSequence":42"#
            )),
            DeliverPolicy::ByStartSequence { start_sequence: 42 }
        );
        assert_eq!(
            deliver_policy(&with(r#""replayPolicy":"latest-per-key""#)),
            DeliverPolicy::LastPerSubject
        );
        assert_eq!(
            durable_name("backend-core.x", "PLATFORM_CAPABILITY"),
            "bridge_backend-core_x_PLATFORM_CAPABILITY"
        );
    }

    fn ck_acl_families() -> ck_acl::families::Families {
        ck_acl::families::Families::builtin()
    }
}

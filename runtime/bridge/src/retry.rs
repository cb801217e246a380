//! What a sink's answer means for the message (the CloudEvents HTTP webhook spec and Standard
//! Webhooks' guidance): 2xx delivered; 410 Gone stops the subscription; 429 and 503 wait as
//! long as `Retry-After` says (capped); anything else — other statuses, redirects (never
//! followed), timeouts, refused connections — is retried on the schedule; after the last
//! attempt the message is parked.

use std::time::Duration;

/// What one attempt got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP status, with the `Retry-After` header if there was one.
    Status {
        /// The status code.
        code: u16,
        /// `Retry-After`, as sent.
        retry_after: Option<String>,
    },
    /// No HTTP answer: the connection failed or the request timed out.
    NoAnswer(String),
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Delivered: acknowledge it.
    Delivered,
    /// Deliver again after this long (a negative acknowledgement with that delay).
    Retry(Duration),
    /// The sink is gone (410): stop delivering to it at all.
    Stop,
    /// Out of attempts: set it aside (terminate it and record it as parked).
    Park,
}

/// A subscription's retry rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay before attempt n+1 after attempt n failed (the last entry repeats).
    pub schedule: Vec<Duration>,
    /// Attempts before a message is parked.
    pub max_attempts: u32,
    /// The longest `Retry-After` honoured.
    pub retry_after_cap: Duration,
}

impl Default for RetryPolicy {
    /// Standard Webhooks' example schedule, shortened at the tail: 5 s, 5 min, 30 min, 2 h,
    /// 5 h, 10 h; 8 attempts; `Retry-After` honoured up to an hour.
    fn default() -> Self {
        RetryPolicy {
            schedule: [5, 300, 1800, 7200, 18_000, 36_000]
                .map(Duration::from_secs)
                .to_vec(),
            max_attempts: 8,
            retry_after_cap: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// The decision after attempt `attempt` (1 for the first) got `answer`, at `now`.
    pub fn decide(
        &self,
        answer: &Answer,
        attempt: u32,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Decision {
        let waited = match answer {
            Answer::Status { code, .. } if (200..300).contains(code) => {
                return Decision::Delivered;
            }
            Answer::Status { code: 410, .. } => return Decision::Stop,
            Answer::Status {
                code: 429 | 503,
                retry_after: Some(header),
            } => retry_after(header, now).map(|d| d.min(self.retry_after_cap)),
            _ => None,
        };
        if attempt >= self.max_attempts {
            return Decision::Park;
        }
        let scheduled = self
            .schedule
            .get(attempt.saturating_sub(1) as usize)
            .or(self.schedule.last())
            .copied()
            .unwrap_or_default();
        Decision::Retry(waited.unwrap_or(scheduled))
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP date.
pub fn retry_after(header: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let header = header.trim();
    if let Ok(seconds) = header.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(header).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, retry_after: Option<&str>) -> Answer {
        Answer::Status {
            code,
            retry_after: retry_after.map(str::to_owned),
        }
    }

    #[test]
    fn each_answer_gets_its_decision() {
        let policy = RetryPolicy {
            schedule: vec![Duration::from_millis(100), Duration::from_secs(1)],
            max_attempts: 3,
            retry_after_cap: Duration::from_secs(60),
        };
        let now = chrono::Utc::now();
        assert_eq!(
            policy.decide(&status(204, None), 1, now),
            Decision::Delivered
        );
        assert_eq!(policy.decide(&status(410, None), 1, now), Decision::Stop);
        assert_eq!(
            policy.decide(&status(500, None), 1, now),
            Decision::Retry(Duration::from_millis(100))
        );
        assert_eq!(
            policy.decide(&Answer::NoAnswer("timed out".into()), 2, now),
            Decision::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            policy.decide(&status(429, Some("7")), 1, now),
            Decision::Retry(Duration::from_secs(7))
        );
        assert_eq!(
            policy.decide(&status(503, Some("86400")), 1, now),
            Decision::Retry(Duration::from_secs(60))
        );
        assert_eq!(
            policy.decide(&status(302, None), 1, now),
            Decision::Retry(Duration::from_millis(100))
        );
        assert_eq!(policy.decide(&status(500, None), 3, now), Decision::Park);
        let date = (now + chrono::Duration::seconds(30)).to_rfc2822();
        let waited = retry_after(&date, now).unwrap();
        assert!(
            (Duration::from_secs(29)..=Duration::from_secs(30)).contains(&waited),
            "{waited:?}"
        );
        assert_eq!(retry_after("soon", now), None);
    }
}

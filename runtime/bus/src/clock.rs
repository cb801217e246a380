//! RFC 3339 UTC timestamps for message bodies.
//!
//! Every answer and every TOOL event carries one, so they are on the hot path: the date and
//! time of day are formatted once per second per thread, and each timestamp only appends its
//! fraction. The output is what `chrono`'s `to_rfc3339_opts(…, true)` gives
//! (`2026-11-27T04:07:23.123Z`).

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// How many digits of the second a timestamp carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// `.123`
    Millis,
    /// `.123456`
    Micros,
}

thread_local! {
    /// The second last formatted on this thread and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// Appends the current time to `out`.
pub fn write_now(out: &mut Vec<u8>, precision: Precision) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    write_at(out, since.as_secs(), since.subsec_micros(), precision);
}

/// The current time as a string.
pub fn now(precision: Precision) -> String {
    let mut out = Vec::with_capacity(27);
    write_now(&mut out, precision);
    // Only ASCII digits and separators were written.
    String::from_utf8(out).unwrap_or_default()
}

fn write_at(out: &mut Vec<u8>, secs: u64, micros: u32, precision: Precision) {
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, format_second(secs));
        }
        out.extend_from_slice(&cached.1);
    });
    let (fraction, digits) = match precision {
        Precision::Millis => (micros / 1000, 3),
        Precision::Micros => (micros, 6),
    };
    out.push(b'.');
    push_digits(out, fraction, digits);
    out.push(b'Z');
}

fn push_digits(out: &mut Vec<u8>, value: u32, digits: u32) {
    for i in (0..digits).rev() {
        out.push(b'0' + u8::try_from(value / 10u32.pow(i) % 10).unwrap_or(0));
    }
}

fn format_second(secs: u64) -> [u8; 19] {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    let text = chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let mut fixed = [b'0'; 19];
    let n = text.len().min(19);
    fixed[..n].copy_from_slice(&text.as_bytes()[..n]);
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_as_chrono() {
        for (secs, micros) in [
            (0u64, 0u32),
            (1_795_000_000, 7),
            (1_795_000_000, 123_456),
            (1_795_000_001, 999_999),
            (4_102_444_799, 500_000),
        ] {
            let at = chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap(), micros * 1000)
                .unwrap();
            for (precision, format) in [
                (Precision::Millis, chrono::SecondsFormat::Millis),
                (Precision::Micros, chrono::SecondsFormat::Micros),
            ] {
                let mut out = Vec::new();
                write_at(&mut out, secs, micros, precision);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    at.to_rfc3339_opts(format, true)
                );
            }
        }
    }

    #[test]
    fn now_parses_and_is_current() {
        let text = now(Precision::Micros);
        let parsed = chrono::DateTime::parse_from_rfc3339(&text).unwrap();
        let skew = chrono::Utc::now().signed_duration_since(parsed);
        assert!(skew.num_seconds().abs() < 5, "{text}");
    }
}

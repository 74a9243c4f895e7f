//! Wall-clock formatting for the control protocol (RFC 3339, UTC; the date arithmetic is
//! [`keel_bundle::time`], shared with the host tool) and deadline arithmetic that cannot
//! overflow.

pub use keel_bundle::time::rfc3339;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The furthest ahead the supervisor schedules anything. Durations from `runtime.json` and the
/// kernel command line are bounded when they are read (a day at most); this cap is the last
/// line, so that no value, however it got in, makes `Instant + Duration` overflow and panic.
pub const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// `now + wait`, with `wait` capped at [`MAX_WAIT`]; never panics. Should even that overflow
/// the clock (it cannot: `Instant` counts seconds in an `i64`), the deadline is `now`, which
/// makes it due at once rather than never.
pub fn after(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait.min(MAX_WAIT)).unwrap_or(now)
}

/// `t` as RFC 3339 in UTC with millisecond precision, e.g. `2026-11-23T06:11:09.042Z` (the
/// timestamp of log lines).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let millis = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    let secs = rfc3339(t);
    format!("{}.{millis:03}Z", secs.trim_end_matches('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_never_overflow() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(after(now, Duration::MAX), now + MAX_WAIT);
        assert_eq!(after(now, Duration::from_secs(u64::MAX)), now + MAX_WAIT);
        assert_eq!(after(now, Duration::ZERO), now);
    }

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661); // 2000-02-29 01:01:01
        assert_eq!(rfc3339(t), "2000-02-29T01:01:01Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // last second of 2026
        assert_eq!(rfc3339(t), "2026-12-31T23:59:59Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_798_761_599_042);
        assert_eq!(rfc3339_millis(t), "2026-12-31T23:59:59.042Z");
    }
}

//! Timestamps as the API and the store carry them: RFC 3339 in UTC with whole seconds, such as
//! `2026-01-31T12:00:00Z`. The fixed width makes text comparison match time order, which the
//! store's expiry query relies on.

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

/// Current time, truncated to whole seconds.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond")
}

/// Formats a time as RFC 3339 UTC with whole seconds.
pub fn format(at: OffsetDateTime) -> String {
    let utc = at
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    utc.format(&Rfc3339)
        .expect("a UTC time with a four-digit year formats as RFC 3339")
}

/// Computes the expiry time of a sandbox created at `created_at` with a time to live of
/// `timeout_secs`. Returns `None` for a timeout of 0, because such a sandbox never expires.
pub fn expiry(created_at: OffsetDateTime, timeout_secs: i64) -> Option<OffsetDateTime> {
    (timeout_secs > 0).then(|| created_at + Duration::seconds(timeout_secs))
}

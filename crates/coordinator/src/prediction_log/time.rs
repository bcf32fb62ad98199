//! RFC 3339 timestamps for records and for `chorus logs export --since/--until`, in UTC, with
//! the `time` crate's calendar.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The instant `unix_ms` (clamped to what `time` can represent).
fn instant(unix_ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `unix_ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`: always three fraction digits, so records' times
/// line up and sort as text.
pub fn format_rfc3339_ms(unix_ms: i64) -> String {
    let t = instant(unix_ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// `unix_ms` as `YYYYMMDDTHHMMSSZ`, for file names (sorts as it reads).
pub fn format_compact(unix_ms: i64) -> String {
    let t = instant(unix_ms);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp: `2025-01-31T12:00:00Z`, with
/// optional fractional seconds and a `Z` or `±HH:MM` offset.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let parsed = OffsetDateTime::parse(text.trim(), &Rfc3339).map_err(|_| {
        format!(
            "'{text}' is not an RFC 3339 time; write it like 2025-01-31T12:00:00Z or 2025-01-31T13:00:00+01:00"
        )
    })?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("'{text}' is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_known_instants() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(format_compact(1_700_000_000_123), "20231114T221320Z");
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123Z"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.1+01:00"),
            Ok(1_700_000_000_100)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T21:13:20-01:00"),
            Ok(1_700_000_000_000)
        );
    }

    #[test]
    fn round_trips_and_refuses_junk() {
        for ms in [0, 1, 86_399_999, 1_234_567_890_123, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339(&format_rfc3339_ms(ms)), Ok(ms));
        }
        for junk in [
            "",
            "2023-11-14",
            "2023-13-01T00:00:00Z",
            "2023-11-14T00:00:00",
            "2023-11-14T00:00:00+0100",
            "yesterday",
        ] {
            let error = parse_rfc3339(junk).unwrap_err();
            assert!(error.contains("RFC 3339"), "{error}");
        }
    }
}

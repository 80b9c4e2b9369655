//! gRPC metadata NSM reads and writes: the per-RPC token pair and `grpc-timeout`.
//!
//! Times are RFC 3339 as Go's `time.RFC3339Nano` prints them: UTC with `Z`, fractional seconds with
//! trailing zeros trimmed (and no fraction at all on a whole second). Parsing accepts any offset.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nsm_core::NsmError;
use nsm_core::token::Token;
use nsm_core::values::IncomingToken;
use tonic::metadata::{MetadataMap, MetadataValue};

/// Metadata key of the per-RPC token (a JWT in production).
pub const TOKEN_KEY: &str = "nsm-client-token";
/// Metadata key of the per-RPC token's expiry (RFC 3339 with nanoseconds).
pub const TOKEN_EXPIRES_KEY: &str = "nsm-client-token-expires";

const SECS_PER_DAY: i64 = 86_400;

/// Writes `token` as the per-RPC token metadata of an outgoing call.
pub fn attach_token<T>(req: &mut tonic::Request<T>, token: &Token) -> Result<(), NsmError> {
    let bad = |what: &str| NsmError::internal("grpc", format!("{what} is not valid gRPC metadata"));
    let value = MetadataValue::try_from(token.token.as_str()).map_err(|_| bad("the token"))?;
    let expires = MetadataValue::try_from(format_rfc3339_nanos(token.expires).as_str())
        .map_err(|_| bad("the token expiry"))?;
    let md = req.metadata_mut();
    md.insert(TOKEN_KEY, value);
    md.insert(TOKEN_EXPIRES_KEY, expires);
    Ok(())
}

/// The caller's per-RPC token, if both keys are present exactly once and the expiry parses.
pub fn incoming_token(md: &MetadataMap) -> Option<IncomingToken> {
    let single = |key: &str| {
        let mut values = md.get_all(key).iter();
        let first = values.next()?.to_str().ok()?;
        values.next().is_none().then_some(first)
    };
    Some(IncomingToken {
        token: single(TOKEN_KEY)?.to_string(),
        expires: parse_rfc3339(single(TOKEN_EXPIRES_KEY)?)?,
    })
}

/// The call's timeout from `grpc-timeout` (`<up to 8 digits><H|M|S|m|u|n>`), if present and valid.
pub fn grpc_timeout(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats `t` as Go's `time.RFC3339Nano` does for a UTC time.
pub fn format_rfc3339_nanos(t: SystemTime) -> String {
    // Token expiries are never before 1970; clamp rather than fail.
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
    let (days, rem) = (secs.div_euclid(SECS_PER_DAY), secs.rem_euclid(SECS_PER_DAY));
    let (y, m, day) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let nanos = d.subsec_nanos();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parses an RFC 3339 time (`2025-11-28T03:20:00.123456789Z`, any offset, 0–9 fraction digits).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return None;
        }
        nanos = format!("{:0<9}", &frac[..n]).parse().ok()?;
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            let (oh, om): (i64, i64) = (oh.parse().ok()?, om.parse().ok()?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs = days_from_civil(y, mo, d) * SECS_PER_DAY + h * 3600 + mi * 60 + sec - offset;
    UNIX_EPOCH.checked_add(Duration::new(u64::try_from(secs).ok()?, nanos))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn formats_like_go_rfc3339nano() {
        // 2025-11-28T03:20:00Z = 1764300000
        assert_eq!(
            format_rfc3339_nanos(at(1_764_300_000, 123_456_789)),
            "2025-11-28T03:20:00.123456789Z"
        );
        assert_eq!(
            format_rfc3339_nanos(at(1_764_300_000, 120_000_000)),
            "2025-11-28T03:20:00.12Z"
        );
        assert_eq!(
            format_rfc3339_nanos(at(1_764_300_000, 0)),
            "2025-11-28T03:20:00Z"
        );
        assert_eq!(
            format_rfc3339_nanos(at(951_782_400, 0)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(format_rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn parses_offsets_fractions_and_round_trips() {
        let t = at(1_764_300_000, 123_456_789);
        assert_eq!(parse_rfc3339("2025-11-28T03:20:00.123456789Z"), Some(t));
        assert_eq!(
            parse_rfc3339("2025-11-28T04:20:00.123456789+01:00"),
            Some(t)
        );
        assert_eq!(
            parse_rfc3339("2025-11-27T22:20:00.123456789-05:00"),
            Some(t)
        );
        assert_eq!(
            parse_rfc3339("2025-11-28T03:20:00.5Z"),
            Some(at(1_764_300_000, 500_000_000))
        );
        for secs in [0u64, 951_782_400, 1_764_300_000, 4_102_444_800 + 86_399] {
            for nanos in [0u32, 1, 10, 999_999_999] {
                let t = at(secs, nanos);
                assert_eq!(parse_rfc3339(&format_rfc3339_nanos(t)), Some(t));
            }
        }
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        for s in [
            "",
            "yesterday",
            "2025-11-28",
            "2025-13-28T03:20:00Z",
            "2025-02-30T03:20:00Z",
            "2025-11-28T03:20:00",
            "2025-11-28T03:20:00.Z",
            "2025-11-28T03:20:00.1234567891Z",
            "2025-11-28T03:20:00+0100",
            "2025-11-28T03:20:00Zjunk",
            "1969-12-31T23:59:59Z",
            "２025-11-28T03:20:00Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s:?}");
        }
    }

    #[test]
    fn token_round_trips_through_metadata() {
        let token = Token {
            token: "TestToken".into(),
            expires: at(1_764_300_000, 123_000_000),
        };
        let mut req = tonic::Request::new(());
        attach_token(&mut req, &token).unwrap();
        assert_eq!(
            req.metadata().get(TOKEN_EXPIRES_KEY).unwrap(),
            "2025-11-28T03:20:00.123Z"
        );
        let got = incoming_token(req.metadata()).unwrap();
        assert_eq!((got.token, got.expires), (token.token, token.expires));

        let mut bad = tonic::Request::new(());
        bad.metadata_mut().insert(TOKEN_KEY, "t".parse().unwrap());
        bad.metadata_mut()
            .insert(TOKEN_EXPIRES_KEY, "never".parse().unwrap());
        assert_eq!(
            incoming_token(bad.metadata()),
            None,
            "garbage expiry means no token"
        );
        bad.metadata_mut().remove(TOKEN_EXPIRES_KEY);
        assert_eq!(
            incoming_token(bad.metadata()),
            None,
            "missing expiry means no token"
        );
    }

    #[test]
    fn grpc_timeout_units() {
        let t = |v: &str| {
            let mut md = MetadataMap::new();
            md.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&md)
        };
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("5S"), Some(Duration::from_secs(5)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(t("123456789n"), None, "more than 8 digits");
        assert_eq!(t("5"), None);
        assert_eq!(t("S"), None);
        assert_eq!(t("5s"), None);
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }
}

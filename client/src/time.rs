//! Times on the command line: RFC 3339 (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.5+02:00`)
//! or milliseconds since the Unix epoch, and RFC 3339 output in UTC.

/// Parses a time into milliseconds since the Unix epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty time".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .map_err(|_| format!("{s:?} is too large for milliseconds since the epoch"));
    }
    parse_rfc3339(s).map_err(|why| {
        format!("invalid time {s:?}: {why} (expected RFC 3339 such as 2024-05-01T12:00:00Z, or milliseconds since the epoch)")
    })
}

fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err("too short".into());
    }
    // Every position below is a byte offset; non-ASCII text would split a character.
    if !s.is_ascii() {
        return Err("not ASCII".into());
    }
    let num = |range: std::ops::Range<usize>, what: &str| -> Result<i64, String> {
        let part = &s[range];
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("{what} {part:?} is not a number"));
        }
        part.parse::<i64>().map_err(|e| format!("{what}: {e}"))
    };
    let sep = |i: usize, expected: &[u8]| -> Result<(), String> {
        if expected.contains(&b[i]) {
            Ok(())
        } else {
            Err(format!(
                "expected {:?} at position {}",
                expected[0] as char,
                i + 1
            ))
        }
    };
    let year = num(0..4, "year")?;
    sep(4, b"-")?;
    let month = num(5..7, "month")?;
    sep(7, b"-")?;
    let day = num(8..10, "day")?;
    sep(10, b"Tt ")?;
    let hour = num(11..13, "hour")?;
    sep(13, b":")?;
    let minute = num(14..16, "minute")?;
    sep(16, b":")?;
    let second = num(17..19, "second")?;
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} is out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(format!("day {day} does not exist in {year}-{month:02}"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err("hour, minute or second out of range".into());
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return Err("empty fraction of a second".into());
        }
        // Keep milliseconds, drop finer digits.
        let digits = &s[start..end.min(start + 3)];
        millis =
            digits.parse::<i64>().map_err(|e| e.to_string())? * 10i64.pow(3 - digits.len() as u32);
        i = end;
    }
    let offset_secs = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) if i + 6 == b.len() => {
            sep(i + 3, b":")?;
            let oh = num(i + 1..i + 3, "offset hours")?;
            let om = num(i + 4..i + 6, "offset minutes")?;
            if oh > 23 || om > 59 {
                return Err("offset out of range".into());
            }
            let secs = oh * 3600 + om * 60;
            if c == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return Err("missing or malformed time zone (Z or +HH:MM)".into()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Ok(secs * 1000 + millis)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

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

/// Formats milliseconds since the epoch as RFC 3339 in UTC with milliseconds.
/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_is_not_ascii_is_refused_not_split() {
        assert!(parse_time("2024-0é-01T00:00:00Z").is_err());
        assert!(parse_time("2024-05-01T00:00:00.é5Z").is_err());
        assert!(parse_time("2024-05-01T00:00:00+0é:00").is_err());
    }

    #[test]
    fn parses_milliseconds() {
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(parse_time(" 1714564800000 "), Ok(1_714_564_800_000));
        assert!(parse_time("99999999999999999999").is_err());
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2024-05-01T12:00:00Z"), Ok(1_714_564_800_000));
        assert_eq!(parse_time("2024-05-01t12:00:00z"), Ok(1_714_564_800_000));
        assert_eq!(parse_time("2024-05-01 12:00:00Z"), Ok(1_714_564_800_000));
        assert_eq!(
            parse_time("2024-05-01T14:00:00+02:00"),
            Ok(1_714_564_800_000)
        );
        assert_eq!(
            parse_time("2024-05-01T07:30:00-04:30"),
            Ok(1_714_564_800_000)
        );
        assert_eq!(parse_time("2024-05-01T12:00:00.5Z"), Ok(1_714_564_800_500));
        assert_eq!(
            parse_time("2024-05-01T12:00:00.123456789Z"),
            Ok(1_714_564_800_123)
        );
        assert_eq!(parse_time("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        assert_eq!(parse_time("1969-12-31T23:59:59Z"), Ok(-1000));
    }

    #[test]
    fn rejects_bad_times() {
        for bad in [
            "",
            "yesterday",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00Zjunk",
            "2024/05/01T12:00:00Z",
            "-5",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} was accepted");
        }
        let msg = parse_time("2024-13-01T00:00:00Z").unwrap_err();
        assert!(msg.contains("month 13"), "{msg}");
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_714_564_800_123), "2024-05-01T12:00:00.123Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999Z");
        for ms in [0, 951_782_400_000, 1_709_164_800_000, 4_102_444_799_999] {
            assert_eq!(parse_time(&format_time(ms)), Ok(ms));
        }
    }
}

//! Timestamps written into JSON exactly as chrono writes them (RFC 3339 in UTC, `Z`, with 0, 3,
//! 6 or 9 fraction digits: as few as the value needs), without chrono's `Display` machinery.
//! chrono's `Serialize` formats through `core::fmt` one character at a time; on a list page of
//! 50 contacts (100 timestamps) that was a few per cent of the request's CPU in a profile. For
//! `#[serde(serialize_with = "…")]` on the response types of the hot paths.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serializer;

/// `2026-12-05T23:41:07.123456Z`: the longest is 30 bytes (9 fraction digits).
fn format(t: &DateTime<Utc>, buf: &mut [u8; 30]) -> Option<usize> {
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    let (mut sec, mut nano) = (t.second(), t.nanosecond());
    // A leap second is stored as second 59 with a nanosecond count past 1e9 (chrono writes 60).
    if nano >= 1_000_000_000 {
        sec += 1;
        nano -= 1_000_000_000;
    }
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut v = value;
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    put(17, sec, 2);
    let mut len = 19;
    let fraction = if nano == 0 {
        None
    } else if nano % 1_000_000 == 0 {
        Some((nano / 1_000_000, 3))
    } else if nano % 1_000 == 0 {
        Some((nano / 1_000, 6))
    } else {
        Some((nano, 9))
    };
    if let Some((value, digits)) = fraction {
        put(20, value, digits);
        len += 1 + digits;
    }
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        buf[at] = c;
    }
    buf[len] = b'Z';
    Some(len + 1)
}

pub fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match format(t, &mut buf).and_then(|n| std::str::from_utf8(&buf[..n]).ok()) {
        Some(text) => s.serialize_str(text),
        // Years outside 0–9999 (signed, five digits or more): chrono's own.
        None => serde::Serialize::serialize(t, s),
    }
}

pub fn rfc3339_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, NaiveDate, TimeZone};

    use super::*;

    #[derive(serde::Serialize)]
    struct Ours<'a> {
        #[serde(serialize_with = "rfc3339")]
        t: &'a DateTime<Utc>,
        #[serde(serialize_with = "rfc3339_opt")]
        o: Option<DateTime<Utc>>,
    }

    #[derive(serde::Serialize)]
    struct Chronos<'a> {
        t: &'a DateTime<Utc>,
        o: Option<DateTime<Utc>>,
    }

    /// The same text as chrono's `Serialize` for every precision, both ends of the 4-digit
    /// years, a leap second and years outside them; `None` stays `null`.
    #[test]
    fn writes_what_chrono_writes() -> Result<(), Box<dyn std::error::Error>> {
        let base = Utc.with_ymd_and_hms(2026, 12, 5, 23, 41, 7).unwrap();
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .map(|n| n.and_utc())
            .ok_or("a leap second")?;
        let mut cases = vec![
            base,
            base + Duration::milliseconds(120),
            base + Duration::microseconds(123_450),
            base + Duration::nanoseconds(123_456_789),
            base + Duration::nanoseconds(1),
            leap,
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()
                + Duration::nanoseconds(999_999_999),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 6, 15, 12, 0, 0).unwrap(),
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
        ];
        // Every day of a leap year and microsecond fractions of every size.
        let start = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        cases.extend(
            (0..367).map(|d| start + Duration::days(d) + Duration::microseconds(d * 7_919)),
        );
        for t in cases {
            for o in [None, Some(t)] {
                let ours = serde_json::to_string(&Ours { t: &t, o })?;
                let chronos = serde_json::to_string(&Chronos { t: &t, o })?;
                assert_eq!(ours, chronos, "{t:?}");
            }
        }
        Ok(())
    }
}

//! `event_time`: reads a record's event time, advances the watermark, routes late records.

use keel::failure::reason;
use keel::{Context, Failure};

use super::{DocStep, Next};
use crate::config::TimeUnit;
use crate::doc::{Doc, FieldPath};

/// The event-time step.
#[derive(Clone)]
pub struct EventTimeStep {
    field: FieldPath,
    unit: TimeUnit,
}

impl EventTimeStep {
    /// Event time from `field`, written in `unit`.
    pub fn new(field: FieldPath, unit: TimeUnit) -> Self {
        EventTimeStep { field, unit }
    }

    fn millis(&self, doc: &Doc) -> Result<i64, Failure> {
        let missing = || {
            Failure::permanent(
                reason::MISSING_FIELD,
                format!("event time field `{}` is missing", self.field),
            )
            .with_field(self.field.as_str())
        };
        let found = doc.get_path(&self.field).ok_or_else(missing)?;
        let v = found.value();
        let bad = |what: &str| {
            Failure::permanent(reason::BAD_TYPE, format!("event time field `{}`: {what}", self.field))
                .with_field(self.field.as_str())
        };
        match self.unit {
            TimeUnit::Ms => doc.as_i64(v).ok_or_else(|| bad("expected integer milliseconds")),
            TimeUnit::Us => doc
                .as_i64(v)
                .map(|x| x.div_euclid(1000))
                .ok_or_else(|| bad("expected integer microseconds")),
            TimeUnit::Ns => doc
                .as_i64(v)
                .map(|x| x.div_euclid(1_000_000))
                .ok_or_else(|| bad("expected integer nanoseconds")),
            TimeUnit::S => doc
                .as_f64(v)
                .map(|x| (x * 1000.0).floor() as i64)
                .ok_or_else(|| bad("expected seconds")),
            TimeUnit::Rfc3339 => {
                let s = doc.as_str(v).ok_or_else(|| bad("expected an RFC 3339 string"))?;
                parse_rfc3339(&s).ok_or_else(|| bad(&format!("`{s}` is not an RFC 3339 time")))
            }
        }
    }
}

impl DocStep for EventTimeStep {
    fn apply(&mut self, doc: &mut Doc, cx: &mut Context<'_>, _more: &mut Vec<Doc>) -> Result<Next, Failure> {
        let ts = self.millis(doc)?;
        Ok(if cx.observe_event_time(ts)? {
            Next::Keep
        } else {
            Next::Drop
        })
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}

/// Milliseconds since the Unix epoch of `YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]`.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        let padded: String = frac.chars().chain("000".chars()).take(3).collect();
        millis = padded.parse().ok()?;
    }
    let offset_min = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let m = oh * 60 + om;
            if sign == b'+' { m } else { -m }
        }
        _ => return None,
    };
    // days from civil (Howard Hinnant's algorithm)
    let (yy, mm) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// `2023-11-14T01:00:00.123Z` for milliseconds since the Unix epoch.
pub fn format_ms(ms: u64) -> String {
    keel::util::format_rfc3339_ms(ms)
}

#[cfg(test)]
mod tests {
    use super::{format_ms, parse_rfc3339};

    #[test]
    fn format_and_parse_agree() {
        for ms in [0u64, 951_825_600_123, 1_699_923_600_500, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&format_ms(ms)), Some(ms as i64), "{}", format_ms(ms));
        }
        assert_eq!(format_ms(1_699_923_600_000), "2023-11-14T01:00:00.000Z");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2023-11-14T01:00:00Z"), Some(1_699_923_600_000));
        assert_eq!(parse_rfc3339("2023-11-14T02:00:00.5+01:00"), Some(1_699_923_600_500));
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00.123Z"), Some(951_825_600_123));
        assert_eq!(parse_rfc3339("2023-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}

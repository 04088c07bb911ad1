//! Delta reads from SQL sources: the predicate on the delta column, with an overlap window
//! so a row committed late with an older delta value is still read. Re-reads are harmless:
//! the engine recognizes unchanged rows by their content hash.

use crate::sql::ident;

/// How the delta column's type subtracts an overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaKind {
    /// timestamp, timestamptz, date: overlap is an interval.
    Time,
    /// integers and numerics (row versions, sequence numbers): overlap is a number.
    Number,
}

impl DeltaKind {
    /// From `format_type()` of the column, or the type's catalog name (`timestamptz`, `int8`).
    pub fn of_type(type_name: &str) -> Option<DeltaKind> {
        let t = type_name.to_ascii_lowercase();
        if t.starts_with("timestamp") || t == "date" {
            Some(DeltaKind::Time)
        } else if ["smallint", "integer", "bigint", "int2", "int4", "int8"].contains(&t.as_str())
            || t.starts_with("numeric")
        {
            Some(DeltaKind::Number)
        } else {
            None
        }
    }

    /// Default overlap: five minutes for times (covers long transactions), none for numbers.
    pub fn default_overlap(&self) -> &'static str {
        match self {
            DeltaKind::Time => "5 minutes",
            DeltaKind::Number => "0",
        }
    }
}

/// `s."col" > ($1::type - $2::interval)` with `$1` the watermark text and `$2` the overlap.
pub fn predicate(column: &str, type_name: &str, kind: DeltaKind) -> String {
    let overlap_type = match kind {
        DeltaKind::Time => "interval",
        DeltaKind::Number => type_name,
    };
    format!(
        "s.{} > ($1::text::{type_name} - $2::text::{overlap_type})",
        ident(column)
    )
}

/// A time watermark as a source wrote it, `seconds` earlier and in the same form: a date
/// (`2026-11-03`), a date and time with `T` or a space (with or without a fraction), or one
/// with an offset (`2026-11-03T10:00:00+02:00`). None when it is none of these.
pub fn minus_seconds(mark: &str, seconds: i64) -> Option<String> {
    use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime};
    let earlier = Duration::seconds(seconds);
    if let Ok(t) = DateTime::parse_from_rfc3339(mark) {
        return Some(datetimeoffset_text(t - earlier));
    }
    for (format, separator) in [("%Y-%m-%dT%H:%M:%S%.f", 'T'), ("%Y-%m-%d %H:%M:%S%.f", ' ')] {
        if let Ok(t) = NaiveDateTime::parse_from_str(mark, format) {
            return Some(datetime_text(t - earlier, separator));
        }
    }
    let day = NaiveDate::parse_from_str(mark, "%Y-%m-%d").ok()?;
    Some((day.and_hms_opt(0, 0, 0)? - earlier).date().format("%Y-%m-%d").to_string())
}

/// A date and time as SQL Server reads it back from text: at most 7 fractional digits (its
/// `datetime2` precision; a longer fraction is refused), trailing zeros left out.
pub fn datetime_text(t: chrono::NaiveDateTime, separator: char) -> String {
    use chrono::Timelike;
    let whole = t.format(&format!("%Y-%m-%d{separator}%H:%M:%S")).to_string();
    let ticks = t.nanosecond() % 1_000_000_000 / 100;
    if ticks == 0 {
        return whole;
    }
    let fraction = format!("{ticks:07}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// A date, time and offset as SQL Server reads it back (see `datetime_text`).
pub fn datetimeoffset_text(t: chrono::DateTime<chrono::FixedOffset>) -> String {
    format!("{}{}", datetime_text(t.naive_local(), 'T'), t.format("%:z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_mark_moves_back_by_the_overlap_in_its_own_form() {
        assert_eq!(minus_seconds("2026-11-03T10:00:00.5", 300).as_deref(), Some("2026-11-03T09:55:00.5"));
        // datetime2's seven digits stay seven (chrono would write nine, which SQL Server refuses)
        assert_eq!(minus_seconds("2026-11-03T10:00:00.1234567", 0).as_deref(), Some("2026-11-03T10:00:00.1234567"));
        assert_eq!(minus_seconds("2026-11-03 10:00:00", 300).as_deref(), Some("2026-11-03 09:55:00"));
        assert_eq!(minus_seconds("2026-11-03T10:00:00+02:00", 3600).as_deref(), Some("2026-11-03T09:00:00+02:00"));
        assert_eq!(
            minus_seconds("2026-11-03T10:00:00.1234567-05:00", 0).as_deref(),
            Some("2026-11-03T10:00:00.1234567-05:00")
        );
        // A date goes back to the day the overlap reaches: same-day changes are read again.
        assert_eq!(minus_seconds("2026-11-03", 300).as_deref(), Some("2026-11-02"));
        assert_eq!(minus_seconds("2026-11-03", 0).as_deref(), Some("2026-11-03"));
        assert_eq!(minus_seconds("0x00000000000007d1", 300), None);
    }

    #[test]
    fn kinds() {
        assert_eq!(
            DeltaKind::of_type("timestamp with time zone"),
            Some(DeltaKind::Time)
        );
        assert_eq!(DeltaKind::of_type("date"), Some(DeltaKind::Time));
        assert_eq!(DeltaKind::of_type("bigint"), Some(DeltaKind::Number));
        assert_eq!(DeltaKind::of_type("numeric(20,0)"), Some(DeltaKind::Number));
        assert_eq!(DeltaKind::of_type("text"), None);
        assert_eq!(DeltaKind::of_type("timestamptz"), Some(DeltaKind::Time));
        assert_eq!(DeltaKind::of_type("int8"), Some(DeltaKind::Number));
    }

    #[test]
    fn predicate_binds_watermark_and_overlap() {
        assert_eq!(
            predicate("modified_at", "timestamp with time zone", DeltaKind::Time),
            "s.\"modified_at\" > ($1::text::timestamp with time zone - $2::text::interval)"
        );
        assert_eq!(
            predicate("rv", "bigint", DeltaKind::Number),
            "s.\"rv\" > ($1::text::bigint - $2::text::bigint)"
        );
    }
}

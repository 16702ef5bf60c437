//! Periods in a time zone: which calendar day, week (Monday first) or month an instant
//! falls in, and when that period starts. Calendar arithmetic on local dates, so a
//! daylight-saving change never makes a day 23 or 25 hours "long" for counting.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use datafusion::arrow::array::timezone::Tz;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Day,
    Week,
    Month,
}

impl Unit {
    pub fn parse(s: &str) -> Option<Unit> {
        match s {
            "day" => Some(Unit::Day),
            "week" => Some(Unit::Week),
            "month" => Some(Unit::Month),
            _ => None,
        }
    }
}

/// 1970-01-01 was a Thursday, 3 days after Monday 1969-12-29, where week 0 starts.
const EPOCH_MONDAY: i64 = 3;

pub fn local_date(us: i64, tz: &Tz) -> NaiveDate {
    let utc = DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default();
    tz.from_utc_datetime(&utc.naive_utc()).date_naive()
}

pub fn days_since_epoch(d: NaiveDate) -> i64 {
    d.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid"))
        .num_days()
}

/// The number of the calendar period `us` falls in (consecutive periods differ by 1).
pub fn calendar_period(us: i64, unit: Unit, tz: &Tz) -> i64 {
    let d = local_date(us, tz);
    match unit {
        Unit::Day => days_since_epoch(d),
        Unit::Week => (days_since_epoch(d) + EPOCH_MONDAY).div_euclid(7),
        Unit::Month => d.year() as i64 * 12 + d.month0() as i64,
    }
}

/// The first local date of a calendar period.
pub fn period_first_day(period: i64, unit: Unit) -> NaiveDate {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid");
    match unit {
        Unit::Day => epoch + chrono::Duration::days(period),
        Unit::Week => epoch + chrono::Duration::days(period * 7 - EPOCH_MONDAY),
        Unit::Month => NaiveDate::from_ymd_opt(
            period.div_euclid(12) as i32,
            period.rem_euclid(12) as u32 + 1,
            1,
        )
        .expect("a valid month"),
    }
}

/// The instant (µs, UTC) a calendar period starts: local midnight of its first day, or
/// the first instant after it where a daylight-saving gap swallows midnight.
pub fn period_start(period: i64, unit: Unit, tz: &Tz) -> i64 {
    let day = period_first_day(period, unit);
    let mut local = day.and_hms_opt(0, 0, 0).expect("midnight");
    for _ in 0..48 {
        if let Some(t) = tz.from_local_datetime(&local).earliest() {
            return t.timestamp_micros();
        }
        local += chrono::Duration::minutes(30);
    }
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight"))
        .timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn us(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn days_weeks_and_months_in_a_time_zone() {
        let utc = Tz::from_str("UTC").unwrap();
        let sh = Tz::from_str("Asia/Shanghai").unwrap();
        // 2026-03-01T23:59Z is March 2nd 07:59 in Shanghai.
        let t = us("2026-03-01T23:59:00Z");
        assert_eq!(
            calendar_period(t, Unit::Day, &sh) - calendar_period(t, Unit::Day, &utc),
            1
        );
        // Weeks start on Monday: Sunday 2026-03-01 and Monday 2026-03-02 differ.
        let sun = us("2026-03-01T12:00:00Z");
        let mon = us("2026-03-02T12:00:00Z");
        assert_eq!(
            calendar_period(mon, Unit::Week, &utc) - calendar_period(sun, Unit::Week, &utc),
            1
        );
        assert_eq!(
            period_start(calendar_period(mon, Unit::Week, &utc), Unit::Week, &utc),
            us("2026-03-02T00:00:00Z")
        );
        // A week spanning a month boundary is one week.
        let fri = us("2026-01-30T12:00:00Z");
        let sun2 = us("2026-02-01T12:00:00Z");
        assert_eq!(
            calendar_period(fri, Unit::Week, &utc),
            calendar_period(sun2, Unit::Week, &utc)
        );
        assert_eq!(
            calendar_period(sun2, Unit::Month, &utc) - calendar_period(fri, Unit::Month, &utc),
            1
        );
        assert_eq!(
            period_start(calendar_period(sun2, Unit::Month, &sh), Unit::Month, &sh),
            us("2026-01-31T16:00:00Z")
        );
    }

    #[test]
    fn daylight_saving_days_are_still_one_day() {
        let ny = Tz::from_str("America/New_York").unwrap();
        // Clocks went forward on 2026-03-08: that local day has 23 hours.
        let before = us("2026-03-08T04:30:00Z"); // 23:30 on March 7th, EST
        let after = us("2026-03-09T03:30:00Z"); // 23:30 on March 8th, EDT
        assert_eq!(
            calendar_period(after, Unit::Day, &ny) - calendar_period(before, Unit::Day, &ny),
            1
        );
        let day = calendar_period(after, Unit::Day, &ny);
        assert_eq!(
            period_start(day, Unit::Day, &ny),
            us("2026-03-08T05:00:00Z")
        );
        assert_eq!(
            period_start(day + 1, Unit::Day, &ny),
            us("2026-03-09T04:00:00Z")
        );
    }
}

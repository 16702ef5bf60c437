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

/// A time zone's calendar. Zones whose offset never changes (UTC, `+08:00`) skip the
/// time-zone database: their local date is plain arithmetic.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: Tz,
    /// The offset in microseconds, for a zone that always has the same one.
    fixed_offset_us: Option<i64>,
}

impl Calendar {
    /// An IANA zone name (`Asia/Shanghai`) or an offset (`+08:00`).
    pub fn parse(name: &str) -> Option<Calendar> {
        let tz: Tz = name.parse().ok()?;
        // Sample the offset twice a year over two centuries: constant means fixed.
        let offset_at = |secs: i64| {
            let t = DateTime::<Utc>::from_timestamp(secs, 0)
                .expect("in range")
                .naive_utc();
            chrono::Offset::fix(&tz.offset_from_utc_datetime(&t)).local_minus_utc() as i64
        };
        let first = offset_at(-2_208_988_800); // 1900
        let fixed = (0..400).all(|i| offset_at(-2_208_988_800 + i * 15_778_800) == first);
        Some(Calendar {
            tz,
            fixed_offset_us: fixed.then_some(first * 1_000_000),
        })
    }

    pub fn tz(&self) -> &Tz {
        &self.tz
    }
}

pub fn local_date(us: i64, calendar: &Calendar) -> NaiveDate {
    if let Some(offset) = calendar.fixed_offset_us {
        let days = (us + offset).div_euclid(86_400_000_000);
        return NaiveDate::from_num_days_from_ce_opt((days + 719_163) as i32).unwrap_or_default();
    }
    let utc = DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default();
    calendar.tz.from_utc_datetime(&utc.naive_utc()).date_naive()
}

pub fn days_since_epoch(d: NaiveDate) -> i64 {
    d.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid"))
        .num_days()
}

/// The number of the calendar period `us` falls in (consecutive periods differ by 1).
pub fn calendar_period(us: i64, unit: Unit, calendar: &Calendar) -> i64 {
    if let (Some(offset), Unit::Day | Unit::Week) = (calendar.fixed_offset_us, unit) {
        let days = (us + offset).div_euclid(86_400_000_000);
        return if unit == Unit::Day {
            days
        } else {
            (days + EPOCH_MONDAY).div_euclid(7)
        };
    }
    let d = local_date(us, calendar);
    match unit {
        Unit::Day => days_since_epoch(d),
        Unit::Week => (days_since_epoch(d) + EPOCH_MONDAY).div_euclid(7),
        Unit::Month => d.year() as i64 * 12 + d.month0() as i64,
    }
}

/// [`calendar_period`] for instants that mostly fall in the same period as the one
/// before (rows of one person in time order, or a time-ordered file): with a fixed
/// offset and days or weeks it remembers the last period's bounds and compares, where
/// otherwise every row pays two divisions or a time-zone lookup.
pub struct PeriodFinder<'a> {
    unit: Unit,
    calendar: &'a Calendar,
    /// The last period found and the instants it spans, `[from, until)` (empty at first,
    /// and always for zones with changing offsets and for months).
    from: i64,
    until: i64,
    period: i64,
}

impl<'a> PeriodFinder<'a> {
    pub fn new(unit: Unit, calendar: &'a Calendar) -> Self {
        PeriodFinder {
            unit,
            calendar,
            from: 0,
            until: 0,
            period: 0,
        }
    }

    #[inline]
    pub fn period(&mut self, us: i64) -> i64 {
        if self.from <= us && us < self.until {
            return self.period;
        }
        self.find(us)
    }

    fn find(&mut self, us: i64) -> i64 {
        let period = calendar_period(us, self.unit, self.calendar);
        let first_day = match self.unit {
            Unit::Day => Some(period),
            Unit::Week => period.checked_mul(7).map(|d| d - EPOCH_MONDAY),
            Unit::Month => None,
        };
        let days = if self.unit == Unit::Week { 7 } else { 1 };
        let bounds = first_day
            .zip(self.calendar.fixed_offset_us)
            .and_then(|(day, offset)| {
                let from = day.checked_mul(86_400_000_000)?.checked_sub(offset)?;
                Some((from, from.checked_add(days * 86_400_000_000)?))
            });
        (self.from, self.until) = bounds.unwrap_or((0, 0));
        self.period = period;
        period
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
pub fn period_start(period: i64, unit: Unit, calendar: &Calendar) -> i64 {
    let tz = &calendar.tz;
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

    #[test]
    fn fixed_offsets_are_recognised_and_agree_with_the_zone_database() {
        assert!(Calendar::parse("UTC").unwrap().fixed_offset_us == Some(0));
        assert!(Calendar::parse("+08:00").unwrap().fixed_offset_us == Some(8 * 3_600_000_000));
        assert!(Calendar::parse("America/New_York")
            .unwrap()
            .fixed_offset_us
            .is_none());
        let fixed = Calendar::parse("+08:00").unwrap();
        let zone = Calendar {
            tz: fixed.tz.clone(),
            fixed_offset_us: None,
        };
        for us in [
            -86_400_000_001i64,
            -1,
            0,
            1_772_409_540_000_000,
            1_772_409_600_000_000,
        ] {
            for unit in [Unit::Day, Unit::Week, Unit::Month] {
                assert_eq!(
                    calendar_period(us, unit, &fixed),
                    calendar_period(us, unit, &zone),
                    "{us} {unit:?}"
                );
            }
        }
    }

    fn us(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn days_weeks_and_months_in_a_time_zone() {
        let utc = Calendar::parse("UTC").unwrap();
        let sh = Calendar::parse("Asia/Shanghai").unwrap();
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
    fn the_period_finder_agrees_with_calendar_period() {
        let mut r = crate::test_random::Random(5);
        for zone in ["UTC", "+08:00", "-03:30", "America/New_York"] {
            let calendar = Calendar::parse(zone).unwrap();
            for unit in [Unit::Day, Unit::Week, Unit::Month] {
                let mut finder = PeriodFinder::new(unit, &calendar);
                // Mostly small steps forward, sometimes back, sometimes far, and the
                // instants either side of local midnights.
                let mut us = us("2026-03-01T00:00:00Z");
                for _ in 0..5000 {
                    us += match r.below(10) {
                        0 => -(r.below(1 << 20) as i64) * 1_000_000,
                        1 => r.below(1 << 30) as i64 * 1_000_000,
                        _ => r.below(1 << 14) as i64 * 1_000_000,
                    };
                    // A quarter-hour boundary just after an instant before it: at a
                    // period's end the finder must not keep the period it had.
                    let quarter = us - us.rem_euclid(900_000_000);
                    for t in [us, quarter - 1, quarter, quarter + 1] {
                        assert_eq!(
                            finder.period(t),
                            calendar_period(t, unit, &calendar),
                            "{zone} {unit:?} {t}"
                        );
                    }
                }
            }
        }
        // Instants so far out that a period's bounds overflow still get their period.
        let utc = Calendar::parse("UTC").unwrap();
        let mut finder = PeriodFinder::new(Unit::Week, &utc);
        for t in [i64::MAX, i64::MIN, i64::MAX - 1, 0] {
            assert_eq!(finder.period(t), calendar_period(t, Unit::Week, &utc));
        }
    }

    #[test]
    fn daylight_saving_days_are_still_one_day() {
        let ny = Calendar::parse("America/New_York").unwrap();
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

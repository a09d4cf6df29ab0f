//! Calendar billing periods in an IANA time zone.
//!
//! A month is the calendar month in the plan's zone (not 30 days from the epoch, as in Envoy's
//! ratelimit), a day runs from local midnight to the next local midnight (23 or 25 hours across DST
//! changes), and weeks start on Monday. Counters are keyed by the period's start instant, so a period
//! stays countable until its last second, whatever the zone.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, ToSpan};

use crate::resources::Period;

/// One occurrence of a period: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeriodWindow {
    /// First instant of the period.
    pub start: Timestamp,
    /// First instant of the next period.
    pub end: Timestamp,
}

impl PeriodWindow {
    /// The period's length in whole seconds (the RateLimit header's `w` for calendar quotas).
    pub fn length_seconds(&self) -> u64 {
        seconds_between(self.start, self.end)
    }

    /// Whole seconds from `now` until the period ends, rounded up so a client that waits this long is
    /// in the next period (never 0 while the period lasts).
    pub fn seconds_until_end(&self, now: Timestamp) -> u64 {
        let nanos = self.end.as_nanosecond() - now.as_nanosecond();
        if nanos <= 0 {
            0
        } else {
            u64::try_from((nanos + 999_999_999) / 1_000_000_000).unwrap_or(u64::MAX)
        }
    }
}

fn seconds_between(a: Timestamp, b: Timestamp) -> u64 {
    u64::try_from(b.as_second() - a.as_second()).unwrap_or(0)
}

/// The occurrence of `period` in `tz` that contains `at`.
pub fn window(period: Period, tz: &TimeZone, at: Timestamp) -> PeriodWindow {
    if period == Period::Hour {
        return hour_window(tz, at);
    }
    let date = tz.to_datetime(at).date();
    let (first, next) = match period {
        Period::Hour => unreachable_hour(date),
        Period::Day => (date, add_days(date, 1)),
        Period::Week => {
            let monday = add_days(date, -i64::from(date.weekday().to_monday_zero_offset()));
            (monday, add_days(monday, 7))
        }
        Period::Month => {
            let first = date.first_of_month();
            (first, add(first, 1.month()))
        }
        Period::Year => {
            let first = date.first_of_year();
            (first, add(first, 1.year()))
        }
    };
    PeriodWindow {
        start: start_of_day(tz, first),
        end: start_of_day(tz, next),
    }
}

// `window` returns early for hours; this keeps the match exhaustive without a panic path.
fn unreachable_hour(date: Date) -> (Date, Date) {
    (date, add_days(date, 1))
}

/// Wall-clock hours: from minute 0 of the local hour. Computed with the offset in force at `at`, so
/// the repeated hour when clocks go back is two separate one-hour periods, and the hour before a
/// spring-forward gap ends when the gap starts.
fn hour_window(tz: &TimeZone, at: Timestamp) -> PeriodWindow {
    let offset = tz.to_offset(at);
    let local = offset.to_datetime(at);
    let truncated = DateTime::from_parts(
        local.date(),
        Time::new(local.hour(), 0, 0, 0).unwrap_or(Time::midnight()),
    );
    let start = offset.to_timestamp(truncated).unwrap_or(at);
    // A zone may shift by less than an hour; never start after `at`.
    let start = if start > at { at } else { start };
    let end = start.checked_add(1.hour()).unwrap_or(Timestamp::MAX);
    PeriodWindow { start, end }
}

/// The first instant of `date` in `tz`: local midnight, or the end of the gap when a DST change skips
/// midnight (as in America/Sao_Paulo until 2019), or the first of two midnights when clocks go back.
fn start_of_day(tz: &TimeZone, date: Date) -> Timestamp {
    let ambiguous = tz.to_ambiguous_timestamp(date.to_datetime(Time::midnight()));
    match ambiguous.compatible() {
        Ok(ts) => ts,
        // Only possible at the edges of the supported range (years -9999 and 9999).
        Err(_) => Timestamp::MAX,
    }
}

fn add_days(date: Date, days: i64) -> Date {
    add(date, Span::new().days(days))
}

fn add(date: Date, span: Span) -> Date {
    date.checked_add(span).unwrap_or(Date::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).expect("zone in the bundled tzdb")
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("valid RFC 3339")
    }

    fn win(period: Period, zone: &str, at: &str) -> (String, String) {
        let w = window(period, &tz(zone), ts(at));
        (w.start.to_string(), w.end.to_string())
    }

    #[test]
    fn month_is_the_calendar_month_not_thirty_days() {
        assert_eq!(
            win(Period::Month, "UTC", "2026-01-31T23:59:59Z"),
            ("2026-01-01T00:00:00Z".into(), "2026-02-01T00:00:00Z".into())
        );
        let feb = window(Period::Month, &tz("UTC"), ts("2026-02-10T00:00:00Z"));
        assert_eq!(feb.length_seconds(), 28 * 86_400);
        let leap = window(Period::Month, &tz("UTC"), ts("2028-02-29T12:00:00Z"));
        assert_eq!(leap.length_seconds(), 29 * 86_400);
        assert_eq!(leap.end.to_string(), "2028-03-01T00:00:00Z");
    }

    #[test]
    fn month_in_a_zone_follows_local_midnight() {
        // 2026-11-30T23:30 UTC is already December 1st in Berlin (UTC+1).
        assert_eq!(
            win(Period::Month, "Europe/Berlin", "2026-11-30T23:30:00Z"),
            ("2026-11-30T23:00:00Z".into(), "2026-12-31T23:00:00Z".into())
        );
        // March in Berlin loses an hour to DST: 31 days minus one hour.
        let march = window(
            Period::Month,
            &tz("Europe/Berlin"),
            ts("2026-03-15T12:00:00Z"),
        );
        assert_eq!(march.start.to_string(), "2026-02-28T23:00:00Z");
        assert_eq!(march.end.to_string(), "2026-03-31T22:00:00Z");
        assert_eq!(march.length_seconds(), 31 * 86_400 - 3_600);
    }

    #[test]
    fn day_is_23_or_25_hours_across_dst_changes() {
        let spring = window(
            Period::Day,
            &tz("America/New_York"),
            ts("2026-03-08T12:00:00Z"),
        );
        assert_eq!(spring.length_seconds(), 23 * 3_600);
        assert_eq!(spring.start.to_string(), "2026-03-08T05:00:00Z");
        let autumn = window(
            Period::Day,
            &tz("America/New_York"),
            ts("2026-11-01T12:00:00Z"),
        );
        assert_eq!(autumn.length_seconds(), 25 * 3_600);
        assert_eq!(autumn.start.to_string(), "2026-11-01T04:00:00Z");
    }

    #[test]
    fn day_starts_after_a_gap_that_skips_midnight() {
        // Sao Paulo, 2018-11-04: clocks jumped from 00:00 to 01:00 (-03 to -02).
        let w = window(
            Period::Day,
            &tz("America/Sao_Paulo"),
            ts("2018-11-04T15:00:00Z"),
        );
        assert_eq!(w.start.to_string(), "2018-11-04T03:00:00Z");
        assert_eq!(w.length_seconds(), 23 * 3_600);
    }

    #[test]
    fn week_starts_on_monday() {
        // 2026-11-25 is a Wednesday.
        assert_eq!(
            win(Period::Week, "UTC", "2026-11-25T10:00:00Z"),
            ("2026-11-23T00:00:00Z".into(), "2026-11-30T00:00:00Z".into())
        );
        // A Sunday evening belongs to the week that started six days earlier.
        assert_eq!(
            win(Period::Week, "UTC", "2026-11-29T23:59:59Z"),
            ("2026-11-23T00:00:00Z".into(), "2026-11-30T00:00:00Z".into())
        );
        // A week across year end.
        assert_eq!(
            win(Period::Week, "UTC", "2027-01-01T00:00:00Z"),
            ("2026-12-28T00:00:00Z".into(), "2027-01-04T00:00:00Z".into())
        );
    }

    #[test]
    fn year_handles_leap_years() {
        let leap = window(Period::Year, &tz("UTC"), ts("2028-06-01T00:00:00Z"));
        assert_eq!(leap.length_seconds(), 366 * 86_400);
        let plain = window(Period::Year, &tz("Asia/Tokyo"), ts("2026-12-31T15:00:00Z"));
        // Already 2027 in Tokyo (UTC+9).
        assert_eq!(plain.start.to_string(), "2026-12-31T15:00:00Z");
        assert_eq!(plain.length_seconds(), 365 * 86_400);
    }

    #[test]
    fn hours_follow_the_local_wall_clock() {
        // Kolkata is UTC+5:30: local hours start at half past in UTC.
        assert_eq!(
            win(Period::Hour, "Asia/Kolkata", "2026-11-25T10:10:00Z"),
            ("2026-11-25T09:30:00Z".into(), "2026-11-25T10:30:00Z".into())
        );
        // New York, 2026-11-01: 01:00-02:00 happens twice; each is its own one-hour period.
        let first = window(
            Period::Hour,
            &tz("America/New_York"),
            ts("2026-11-01T05:30:00Z"),
        );
        let second = window(
            Period::Hour,
            &tz("America/New_York"),
            ts("2026-11-01T06:30:00Z"),
        );
        assert_eq!(first.start.to_string(), "2026-11-01T05:00:00Z");
        assert_eq!(second.start.to_string(), "2026-11-01T06:00:00Z");
        assert_eq!(first.end, second.start);
    }

    #[test]
    fn period_boundaries_are_half_open() {
        let at_boundary = window(Period::Day, &tz("UTC"), ts("2026-11-26T00:00:00Z"));
        assert_eq!(at_boundary.start.to_string(), "2026-11-26T00:00:00Z");
        let just_before = window(Period::Day, &tz("UTC"), ts("2026-11-25T23:59:59.999Z"));
        assert_eq!(just_before.end, at_boundary.start);
    }

    #[test]
    fn seconds_until_end_rounds_up() {
        let w = window(Period::Day, &tz("UTC"), ts("2026-11-25T23:59:59.5Z"));
        assert_eq!(w.seconds_until_end(ts("2026-11-25T23:59:59.5Z")), 1);
        assert_eq!(w.seconds_until_end(ts("2026-11-25T00:00:00Z")), 86_400);
    }
}

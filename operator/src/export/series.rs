//! One exported series (a tenant's quota in one period) and the decisions about it that need no
//! I/O: the next event, its identifier and time, and when the series is done.

use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};
use tollgate_crds::resources::{ExportStatus, PendingExport};

/// How long after its period ends a series is still read and exported: proxies settle a
/// request up to `--settle-after` (at most 1 h) after its admission, flush every second and
/// retry while Redis is away, so usage of the period's last hour (and of a Redis outage shorter
/// than the rest) still goes out. Later additions to an ended period are not exported.
pub const KEPT_AFTER_PERIOD: SignedDuration = SignedDuration::from_secs(2 * 3600);

/// How long an event may stay unacknowledged before it is no longer sent: Stripe drops a
/// repeated identifier for at least 24 hours, so a copy sent later might be counted twice.
/// Such a series stops and says so (for a person to reconcile with the sink).
pub const STUCK_AFTER: SignedDuration = SignedDuration::from_hours(20);

/// The idempotency identifier of the event that brings a series from `from` to `to` units:
/// `tg1-` and the SHA-256 of the tenant's UID, the plan, the quota (with `#overage` for the
/// usage beyond its limit), the period start, and the range (68 characters; Stripe allows 100). The same range always gets the same identifier,
/// whichever replica sends it; a Tenant deleted and created again under the same name gets a
/// new UID, so its series never collide with the old one's.
pub fn identifier(
    tenant_uid: &str,
    plan: &str,
    quota: &str,
    period_start: &str,
    from: u64,
    to: u64,
) -> String {
    let mut h = Sha256::new();
    for part in [tenant_uid, plan, quota, period_start] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(from.to_be_bytes());
    h.update(to.to_be_bytes());
    format!("tg1-{}", hex::encode(h.finalize()))
}

/// The time an event is stamped with: `now`, moved into the period (its last second at the
/// latest), so a sink that aggregates by time puts the usage in the period it was metered in.
pub fn event_time(now: Timestamp, period_start: Timestamp, period_end: Timestamp) -> Timestamp {
    let last = period_end
        .checked_sub(SignedDuration::from_secs(1))
        .unwrap_or(period_start);
    now.clamp(period_start, last.max(period_start))
}

/// What a series needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing to send.
    Nothing,
    /// Record this event as pending, then send it.
    Record(PendingExport),
    /// Send the pending event again (same identifier, value and time).
    Resend,
    /// The pending event is older than [`STUCK_AFTER`]: not sent again.
    Stuck,
}

/// Decides what `series` needs, given what the fleet has settled (`metered`, whole units) and
/// the tenant's UID.
pub fn next(series: &ExportStatus, metered: u64, tenant_uid: &str, now: Timestamp) -> Next {
    if let Some(pending) = &series.pending {
        let created = pending.created.parse::<Timestamp>().unwrap_or(now);
        if now.duration_since(created) > STUCK_AFTER {
            return Next::Stuck;
        }
        return Next::Resend;
    }
    // The settled key only grows; a reading below what was acknowledged (Redis restored from an
    // older backup) exports nothing until it passes it again.
    if metered <= series.acknowledged {
        return Next::Nothing;
    }
    let quota = if series.overage {
        format!("{}#overage", series.quota)
    } else {
        series.quota.clone()
    };
    let (Ok(start), Ok(end)) = (
        series.period_start.parse::<Timestamp>(),
        series.period_end.parse::<Timestamp>(),
    ) else {
        return Next::Nothing;
    };
    Next::Record(PendingExport {
        id: identifier(
            tenant_uid,
            &series.quota_policy,
            &quota,
            &series.period_start,
            series.acknowledged,
            metered,
        ),
        from: series.acknowledged,
        to: metered,
        timestamp: event_time(now, start, end).to_string(),
        created: now.to_string(),
        // Filled in by the caller, who knows the Tenant.
        customer: String::new(),
    })
}

/// The units of a quota's settled usage `settled` that a series covers: all of it, or split at
/// `split_at` (the limit in whole units, with an overage event name) the part up to it, or
/// (`overage`) beyond it. An overage series without a split point covers nothing.
pub fn share(settled: u64, split_at: Option<u64>, overage: bool) -> u64 {
    match (split_at, overage) {
        (None, false) => settled,
        (None, true) => 0,
        (Some(at), false) => settled.min(at),
        (Some(at), true) => settled.saturating_sub(at),
    }
}

/// Whether two entries are the same series (plan, quota, period, part).
pub fn same(a: &ExportStatus, b: &ExportStatus) -> bool {
    a.quota_policy == b.quota_policy
        && a.quota == b.quota
        && a.period_start == b.period_start
        && a.overage == b.overage
}

/// Whether `series` is done: its period ended more than [`KEPT_AFTER_PERIOD`] ago and nothing
/// is pending (it then leaves the status).
pub fn is_done(series: &ExportStatus, now: Timestamp) -> bool {
    series.pending.is_none()
        && series
            .period_end
            .parse::<Timestamp>()
            .is_ok_and(|end| now.duration_since(end) > KEPT_AFTER_PERIOD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(acknowledged: u64, pending: Option<PendingExport>) -> ExportStatus {
        ExportStatus {
            quota_policy: "gold".into(),
            quota: "monthly".into(),
            period_start: "2026-12-01T00:00:00Z".into(),
            period_end: "2027-01-01T00:00:00Z".into(),
            event_name: "api_requests".into(),
            overage: false,
            split_at: None,
            metered: acknowledged,
            acknowledged,
            pending,
            last_error: None,
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn the_identifier_depends_on_every_part_and_only_on_them() {
        let id = identifier("uid-1", "gold", "monthly", "2026-12-01T00:00:00Z", 0, 10);
        assert_eq!(id.len(), 68);
        assert!(id.starts_with("tg1-"));
        assert_eq!(
            id,
            identifier("uid-1", "gold", "monthly", "2026-12-01T00:00:00Z", 0, 10)
        );
        let others = [
            identifier("uid-2", "gold", "monthly", "2026-12-01T00:00:00Z", 0, 10),
            identifier("uid-1", "silver", "monthly", "2026-12-01T00:00:00Z", 0, 10),
            identifier("uid-1", "gold", "daily", "2026-12-01T00:00:00Z", 0, 10),
            identifier("uid-1", "gold", "monthly", "2026-11-01T00:00:00Z", 0, 10),
            identifier("uid-1", "gold", "monthly", "2026-12-01T00:00:00Z", 1, 10),
            identifier("uid-1", "gold", "monthly", "2026-12-01T00:00:00Z", 0, 11),
            // The separator: parts that concatenate alike differ.
            identifier("uid-1g", "old", "monthly", "2026-12-01T00:00:00Z", 0, 10),
        ];
        for other in others {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn an_event_is_stamped_inside_its_period() {
        let (start, end) = (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"));
        let inside = at("2026-12-15T10:00:00Z");
        assert_eq!(event_time(inside, start, end), inside);
        // Sent after the period ended (its last usage flushed late): its last second.
        assert_eq!(
            event_time(at("2027-01-01T00:00:05Z"), start, end),
            at("2026-12-31T23:59:59Z")
        );
        // A clock behind the proxies': the period's first second.
        assert_eq!(event_time(at("2026-11-30T23:59:59Z"), start, end), start);
    }

    #[test]
    fn new_usage_is_recorded_from_the_acknowledged_units() {
        let now = at("2026-12-15T10:00:00Z");
        let Next::Record(p) = next(&series(7, None), 12, "uid-1", now) else {
            panic!("expected an event");
        };
        assert_eq!((p.from, p.to), (7, 12));
        assert_eq!(
            p.id,
            identifier("uid-1", "gold", "monthly", "2026-12-01T00:00:00Z", 7, 12)
        );
        assert_eq!(p.timestamp, now.to_string());
        assert_eq!(p.created, now.to_string());
        assert_eq!(next(&series(12, None), 12, "uid-1", now), Next::Nothing);
        // A reading below the acknowledged units sends nothing (never a negative event).
        assert_eq!(next(&series(12, None), 3, "uid-1", now), Next::Nothing);
    }

    #[test]
    fn a_pending_event_is_resent_unchanged_until_it_is_too_old() {
        let now = at("2026-12-15T10:00:00Z");
        let pending = PendingExport {
            id: "tg1-x".into(),
            from: 0,
            to: 5,
            timestamp: "2026-12-15T09:00:00Z".into(),
            created: "2026-12-15T09:00:00Z".into(),
            customer: "cus_1".into(),
        };
        // Even when more usage came since: that goes in the next event.
        assert_eq!(
            next(&series(0, Some(pending.clone())), 9, "uid-1", now),
            Next::Resend
        );
        let later = at("2026-12-16T05:00:01Z");
        assert_eq!(
            next(&series(0, Some(pending)), 9, "uid-1", later),
            Next::Stuck
        );
    }

    #[test]
    fn the_usage_up_to_the_limit_and_beyond_it_are_two_series_with_their_own_ids() {
        assert_eq!(share(150, None, false), 150);
        assert_eq!(share(150, Some(100), false), 100);
        assert_eq!(share(150, Some(100), true), 50);
        assert_eq!(share(80, Some(100), false), 80);
        assert_eq!(share(80, Some(100), true), 0);
        assert_eq!(share(80, None, true), 0);
        let now = at("2026-12-15T10:00:00Z");
        let overage = ExportStatus {
            overage: true,
            ..series(0, None)
        };
        let (Next::Record(a), Next::Record(b)) = (
            next(&series(0, None), 50, "uid-1", now),
            next(&overage, 50, "uid-1", now),
        ) else {
            panic!("expected two events");
        };
        assert_ne!(a.id, b.id, "same range, different series");
        assert!(!same(&series(0, None), &overage));
    }

    #[test]
    fn a_series_is_done_two_hours_after_its_period_with_nothing_pending() {
        let s = series(5, None);
        assert!(!is_done(&s, at("2026-12-31T23:00:00Z")));
        assert!(!is_done(&s, at("2027-01-01T01:59:00Z")));
        assert!(is_done(&s, at("2027-01-01T02:00:01Z")));
        let pending = PendingExport {
            created: "2027-01-01T00:00:00Z".into(),
            ..PendingExport::default()
        };
        assert!(!is_done(
            &series(5, Some(pending)),
            at("2027-01-01T02:00:00Z")
        ));
    }
}

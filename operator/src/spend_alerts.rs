//! Spend alerts: when a tenant's usage of a quota reaches one of its plan's `alertAt`
//! percentages, the leader says so once per period: an Event on the Tenant, a metric, and the
//! threshold in `status.usage[].alertsSent`. The status is what makes "once" hold across
//! restarts and leader changes; the leader also remembers what it announced, because its cache
//! shows its own status write only a moment later.
//!
//! The Event goes out before the status write that records it: a leader that stops between the
//! two repeats an alert rather than losing it.

use std::collections::HashSet;

use rust_decimal::Decimal;

/// One announcement: a quota of a tenant reached a threshold in a period.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpendAlert {
    /// `namespace/name` of the tenant.
    pub tenant: String,
    /// The plan's name.
    pub plan: String,
    /// The quota's name.
    pub quota: String,
    /// The period's start, RFC 3339.
    pub period_start: String,
    /// Percent of the limit.
    pub threshold: u32,
}

impl SpendAlert {
    /// The Event's note: who, what, how much, and which period.
    pub fn note(&self, used: &str, limit: &str) -> String {
        format!(
            "Tenant {} used {}% of quota {} of plan {}: {used} of {limit} in the period from {}",
            self.tenant, self.threshold, self.quota, self.plan, self.period_start
        )
    }
}

/// The thresholds of `alert_at` (ascending) that `used` of `limit` has reached. A limit of zero
/// admits nothing and alerts on nothing.
pub fn reached(used: Decimal, limit: Decimal, alert_at: &[u32]) -> Vec<u32> {
    if limit <= Decimal::ZERO {
        return Vec::new();
    }
    let Some(percent_used) = used.checked_mul(Decimal::ONE_HUNDRED) else {
        return alert_at.to_vec();
    };
    alert_at
        .iter()
        .copied()
        .filter(|&at| {
            limit
                .checked_mul(Decimal::from(at))
                .is_some_and(|needed| percent_used >= needed)
        })
        .collect()
}

/// What the leader has announced, per (tenant, plan, quota, period, threshold); forgotten once
/// its period is no longer current (the status keeps only current periods).
#[derive(Debug, Default)]
pub struct Announced {
    sent: HashSet<SpendAlert>,
}

impl Announced {
    /// Whether `alert` was announced by this leader.
    pub fn contains(&self, alert: &SpendAlert) -> bool {
        self.sent.contains(alert)
    }

    /// Records `alert` as announced.
    pub fn insert(&mut self, alert: SpendAlert) {
        self.sent.insert(alert);
    }

    /// Forgets everything about periods that are not in `current` (tenant, plan, quota, period).
    pub fn keep_only(&mut self, current: &HashSet<(String, String, String, String)>) {
        self.sent.retain(|a| {
            current.contains(&(
                a.tenant.clone(),
                a.plan.clone(),
                a.quota.clone(),
                a.period_start.clone(),
            ))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal")
    }

    #[test]
    fn thresholds_are_reached_at_their_percentage_exactly() {
        let at = [50, 80, 100];
        assert!(reached(d("4"), d("10"), &at).is_empty());
        assert_eq!(reached(d("5"), d("10"), &at), [50]);
        assert_eq!(reached(d("7.99"), d("10"), &at), [50]);
        assert_eq!(reached(d("8"), d("10"), &at), [50, 80]);
        assert_eq!(reached(d("10"), d("10"), &at), [50, 80, 100]);
        // Past the limit (a Cost quota's last call may overshoot): every threshold.
        assert_eq!(reached(d("10.000001"), d("10"), &at), [50, 80, 100]);
        // Cost in millionths.
        assert_eq!(reached(d("2.500000"), d("5"), &at), [50]);
    }

    #[test]
    fn a_zero_limit_alerts_on_nothing() {
        assert!(reached(d("0"), d("0"), &[50, 100]).is_empty());
        assert!(reached(d("3"), d("0"), &[50, 100]).is_empty());
    }

    #[test]
    fn what_was_announced_is_forgotten_with_its_period() {
        let alert = |period: &str| SpendAlert {
            tenant: "shop/acme".into(),
            plan: "starter".into(),
            quota: "monthly".into(),
            period_start: period.into(),
            threshold: 50,
        };
        let mut announced = Announced::default();
        announced.insert(alert("2026-11-01T00:00:00Z"));
        announced.insert(alert("2026-12-01T00:00:00Z"));
        let current = HashSet::from([(
            "shop/acme".to_owned(),
            "starter".to_owned(),
            "monthly".to_owned(),
            "2026-12-01T00:00:00Z".to_owned(),
        )]);
        announced.keep_only(&current);
        assert!(announced.contains(&alert("2026-12-01T00:00:00Z")));
        assert!(!announced.contains(&alert("2026-11-01T00:00:00Z")));
    }
}

//! What each tenant's metered calls used this month, by token type and in money: the numbers
//! behind `/usage`, the usage reports (summed by the operator into `Tenant.status.callUsage`).
//!
//! Quotas count what a plan limits (tokens or cost per period); the ledger counts what a finance
//! team asks for: calls, input, cached, cache-write, output and reasoning tokens, and cost in the
//! plan's currency, per calendar month in the plan's time zone. It is this proxy's share: the
//! operator sums the fleet's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::Timestamp;
use parking_lot::Mutex;
use rust_decimal::Decimal;
use tollgate_crds::period::{PeriodWindow, window};
use tollgate_crds::resources::Period;
use tollgate_crds::stream::{CallUsageRecord, TokenCounts};

use crate::quota::PlanEntry;

/// One tenant's calls under one plan in one month.
#[derive(Debug)]
struct Entry {
    month: PeriodWindow,
    requests: u64,
    tokens: TokenCounts,
    cost: Decimal,
}

/// `(tenant, plan)` ids.
type Key = (Arc<str>, Arc<str>);

/// Calls, tokens and cost per (tenant, plan), for the current month.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: Mutex<HashMap<Key, Entry>>,
    /// Changed since the last [`Ledger::take_dirty`].
    dirty: AtomicBool,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one settled call of `tenant` under `plan`, admitted at `admitted`.
    pub fn record(
        &self,
        tenant: &Arc<str>,
        plan: &PlanEntry,
        admitted: Timestamp,
        tokens: &TokenCounts,
        cost: Decimal,
    ) {
        let month = window(Period::Month, &plan.tz, admitted);
        let mut entries = self.entries.lock();
        let entry = entries
            .entry((Arc::clone(tenant), Arc::clone(&plan.id)))
            .or_insert_with(|| Entry {
                month,
                requests: 0,
                tokens: TokenCounts::default(),
                cost: Decimal::ZERO,
            });
        if month.start >= entry.month.end {
            // A new month starts from nothing.
            *entry = Entry {
                month,
                requests: 0,
                tokens: TokenCounts::default(),
                cost: Decimal::ZERO,
            };
        } else if month.end <= entry.month.start {
            // A call admitted last month and settled in this one was counted there, by the
            // quotas; the ledger keeps the month it is in.
            return;
        } else {
            // The same month, maybe shifted by a change of the plan's time zone: kept, in the
            // current zone's bounds.
            entry.month = month;
        }
        entry.requests += 1;
        entry.tokens.add(tokens);
        entry.cost += cost;
        self.dirty.store(true, Ordering::Release);
    }

    /// Takes back what was saved before a restart (rows of months that are over are dropped by
    /// the next [`Ledger::current`]).
    pub fn restore(&self, rows: Vec<CallUsageRecord>) {
        let mut entries = self.entries.lock();
        for row in rows {
            entries.insert(
                (Arc::from(row.tenant), Arc::from(row.plan)),
                Entry {
                    month: PeriodWindow {
                        start: row.period_start,
                        end: row.period_end,
                    },
                    requests: row.requests,
                    tokens: row.tokens,
                    cost: row.cost,
                },
            );
        }
    }

    /// Whether anything was recorded since the last call (then it is worth saving).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// The entries of months not over at `now`, with the currency of each plan in `currency_of`
    /// (`None` for a plan without prices, or one no longer configured). Months that are over are
    /// forgotten: their totals were reported while they ran.
    pub fn current(
        &self,
        now: Timestamp,
        currency_of: impl Fn(&str) -> Option<String>,
    ) -> Vec<CallUsageRecord> {
        let mut entries = self.entries.lock();
        entries.retain(|_, e| now < e.month.end);
        let mut rows: Vec<CallUsageRecord> = entries
            .iter()
            .map(|((tenant, plan), e)| CallUsageRecord {
                tenant: tenant.to_string(),
                plan: plan.to_string(),
                period_start: e.month.start,
                period_end: e.month.end,
                requests: e.requests,
                tokens: e.tokens,
                cost: e.cost,
                currency: currency_of(plan),
            })
            .collect();
        drop(entries);
        rows.sort_by(|a, b| (&a.tenant, &a.plan).cmp(&(&b.tenant, &b.plan)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use jiff::ToSpan;
    use serde_json::json;

    use super::*;

    #[test]
    fn calls_add_up_per_tenant_and_plan_and_a_new_month_starts_from_nothing() {
        let plan = PlanEntry::from_spec(json!({"timezone": "Europe/Berlin"}));
        let ledger = Ledger::new();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("shop/a"), Arc::from("shop/b"));
        let tokens = TokenCounts {
            input: 10,
            cached_input: 5,
            output: 20,
            reasoning: 3,
            ..TokenCounts::default()
        };
        // Mid-month in Berlin, whatever today is.
        let now = Timestamp::now();
        let month = window(Period::Month, &plan.tz, now);
        let mid = month.start + 36.hours();
        let cost = Decimal::new(55, 5);
        ledger.record(&a, &plan, mid, &tokens, cost);
        ledger.record(&a, &plan, mid, &tokens, cost);
        ledger.record(&b, &plan, mid, &tokens, Decimal::ZERO);
        let rows = ledger.current(mid, |_| Some("EUR".into()));
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].requests,
                rows[0].tokens.input,
                rows[0].tokens.reasoning
            ),
            (2, 20, 6)
        );
        assert_eq!(rows[0].cost, Decimal::new(110, 5));
        assert_eq!(rows[0].currency.as_deref(), Some("EUR"));
        assert_eq!(rows[0].period_start, month.start);
        // The next month: the old totals are no longer current, and a call starts anew.
        let next = month.end + 1.hour();
        assert!(ledger.current(next, |_| None).is_empty());
        ledger.record(&a, &plan, next, &tokens, cost);
        let rows = ledger.current(next, |_| None);
        assert_eq!((rows.len(), rows[0].requests), (1, 1));
        // A call admitted in the old month and settled late is not added to the new one.
        ledger.record(&a, &plan, mid, &tokens, cost);
        assert_eq!(ledger.current(next, |_| None)[0].requests, 1);
        assert_eq!(
            ledger.entries.lock().len(),
            1,
            "b's ended month is forgotten"
        );
        // A plan moved to another time zone mid-month keeps its month (before: the entry was
        // reset, or every call dropped until the next month).
        let west = PlanEntry::from_spec(json!({"timezone": "America/Los_Angeles"}));
        let west_mid = window(Period::Month, &west.tz, next).start + 36.hours();
        ledger.record(&a, &west, west_mid, &tokens, cost);
        assert_eq!(ledger.current(west_mid, |_| None)[0].requests, 2);
        // What was saved comes back after a restart.
        assert!(ledger.take_dirty() && !ledger.take_dirty());
        let restarted = Ledger::new();
        restarted.restore(ledger.current(next, |_| None));
        assert_eq!(
            restarted.current(next, |_| None),
            ledger.current(next, |_| None)
        );
    }
}

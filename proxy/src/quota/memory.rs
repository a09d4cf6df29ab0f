//! In-memory counters (standalone mode), persisted to the state dir by [`super::persist`].
//!
//! One mutex per (tenant, plan): requests of different tenants never contend, and a tenant's own
//! concurrent requests are serialized only for the few nanoseconds of check-and-charge.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::Timestamp;
use parking_lot::{Mutex, RwLock};
use rust_decimal::Decimal;
use tollgate_crds::period::{PeriodWindow, window};
use tollgate_crds::resources::Metric;

use super::decision::{Admission, LimitState, Metered};
use super::gcra::{Gcra, GcraDecision};
use super::plan::PlanEntry;
use super::store::{CounterStore, Subject, UsageRow};
use crate::fast_map::FastMap;

/// A tenant's counters by plan id.
type PlanCounters = FastMap<Arc<str>, Arc<Mutex<Counters>>>;

/// Counters in process memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// By tenant id, then plan id: two lookups by `&str`, where one by a (tenant, plan) key had
    /// to build the key (two reference counts up and down per request).
    subjects: RwLock<FastMap<Arc<str>, PlanCounters>>,
    dirty: AtomicBool,
}

#[derive(Debug, Default)]
struct Counters {
    quotas: Vec<QuotaCounter>,
    rates: Vec<RateCounter>,
}

#[derive(Debug, Clone)]
struct QuotaCounter {
    name: String,
    window: PeriodWindow,
    used: Decimal,
}

#[derive(Debug)]
struct RateCounter {
    name: String,
    gcra: Gcra,
}

impl Counters {
    /// The counter of quota `index` for the period containing `now` (rolled over if needed).
    fn quota(&mut self, plan: &PlanEntry, index: usize, now: Timestamp) -> &mut QuotaCounter {
        let quota = &plan.plan.quotas[index];
        let pos = match self.quotas.iter().position(|c| c.name == quota.name) {
            Some(pos) => pos,
            None => {
                self.quotas.push(QuotaCounter {
                    name: quota.name.clone(),
                    window: window(quota.period, &plan.tz, now),
                    used: Decimal::ZERO,
                });
                self.quotas.len() - 1
            }
        };
        let counter = &mut self.quotas[pos];
        if now >= counter.window.end || now < counter.window.start {
            let current = window(quota.period, &plan.tz, now);
            if current.start != counter.window.start {
                counter.used = Decimal::ZERO;
            }
            counter.window = current;
        }
        counter
    }

    fn rate(&mut self, name: &str) -> &mut Gcra {
        let pos = match self.rates.iter().position(|c| c.name == name) {
            Some(pos) => pos,
            None => {
                self.rates.push(RateCounter {
                    name: name.to_owned(),
                    gcra: Gcra::default(),
                });
                self.rates.len() - 1
            }
        };
        &mut self.rates[pos].gcra
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn counters(&self, subject: Subject<'_>) -> Arc<Mutex<Counters>> {
        let (tenant, plan) = (subject.tenant, &subject.plan.id);
        if let Some(c) = self
            .subjects
            .read()
            .get(&**tenant)
            .and_then(|plans| plans.get(&**plan))
        {
            return c.clone();
        }
        self.subjects
            .write()
            .entry(tenant.clone())
            .or_default()
            .entry(plan.clone())
            .or_default()
            .clone()
    }

    /// Whether counters changed since the last [`MemoryStore::take_dirty`].
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Restores persisted counters (at start-up, before serving).
    pub fn restore(&self, rows: Vec<UsageRow>) {
        let mut subjects = self.subjects.write();
        for row in rows {
            let counters = subjects
                .entry(Arc::from(row.tenant.as_str()))
                .or_default()
                .entry(Arc::from(row.plan.as_str()))
                .or_default();
            counters.lock().quotas.push(QuotaCounter {
                name: row.quota,
                window: PeriodWindow {
                    start: row.period_start,
                    end: row.period_end,
                },
                used: row.used,
            });
        }
    }

    fn peek_now(&self, subject: Subject<'_>, now: Timestamp) -> (Vec<LimitState>, Vec<LimitState>) {
        let plan = subject.plan;
        let now_ns = i64::try_from(now.as_nanosecond()).unwrap_or(i64::MAX);
        let counters = self.counters(subject);
        let mut c = counters.lock();
        let quotas = plan
            .plan
            .quotas
            .iter()
            .enumerate()
            .map(|(i, quota)| {
                let counter = c.quota(plan, i, now);
                LimitState {
                    index: i,
                    remaining: (quota.limit - counter.used).max(Decimal::ZERO),
                    used: counter.used,
                    reset_seconds: counter.window.seconds_until_end(now),
                    window: Some(counter.window),
                }
            })
            .collect();
        let rate_limits = plan
            .plan
            .rate_limits
            .iter()
            .enumerate()
            .map(|(i, rl)| {
                let (remaining, reset_ms) =
                    c.rate(&rl.name)
                        .remaining(rl.requests, rl.window_ms, now_ns);
                LimitState {
                    index: i,
                    remaining: Decimal::from(remaining),
                    used: Decimal::from(rl.requests - remaining),
                    reset_seconds: reset_ms.div_ceil(1000),
                    window: None,
                }
            })
            .collect();
        (rate_limits, quotas)
    }

    fn admit_now(&self, subject: Subject<'_>, now: Timestamp) -> Admission {
        let plan = subject.plan;
        let now_ns = i64::try_from(now.as_nanosecond()).unwrap_or(i64::MAX);
        let counters = self.counters(subject);
        let mut c = counters.lock();

        let mut quotas = Vec::with_capacity(plan.plan.quotas.len());
        let mut exhausted = None;
        for (i, quota) in plan.plan.quotas.iter().enumerate() {
            let counter = c.quota(plan, i, now);
            let fits = if quota.metric == Metric::Requests {
                counter.used + Decimal::ONE <= quota.limit
            } else {
                counter.used < quota.limit
            };
            let state = LimitState {
                index: i,
                remaining: (quota.limit - counter.used).max(Decimal::ZERO),
                used: counter.used,
                reset_seconds: counter.window.seconds_until_end(now),
                window: Some(counter.window),
            };
            if !fits && exhausted.is_none() {
                exhausted = Some(state.clone());
            }
            quotas.push(state);
        }

        let mut rate_limits = Vec::with_capacity(plan.plan.rate_limits.len());
        let mut exceeded = None;
        for (i, rl) in plan.plan.rate_limits.iter().enumerate() {
            let gcra = c.rate(&rl.name);
            let decision = gcra.check(rl.requests, rl.window_ms, now_ns);
            let (remaining, reset_ms) = gcra.remaining(rl.requests, rl.window_ms, now_ns);
            let mut state = LimitState {
                index: i,
                remaining: Decimal::from(remaining),
                used: Decimal::from(rl.requests - remaining),
                reset_seconds: reset_ms.div_ceil(1000),
                window: None,
            };
            match decision {
                GcraDecision::Allow { .. } => {}
                GcraDecision::Deny { retry_after_ms } => {
                    state.remaining = Decimal::ZERO;
                    state.reset_seconds = retry_after_ms.div_ceil(1000).max(1);
                    if exceeded.is_none() {
                        exceeded = Some(state.clone());
                    }
                }
            }
            rate_limits.push(state);
        }

        if let Some(exhausted) = exhausted {
            return Admission::QuotaExhausted {
                exhausted,
                rate_limits,
                quotas,
            };
        }
        if let Some(exceeded) = exceeded {
            return Admission::RateLimited {
                exceeded,
                rate_limits,
                quotas,
            };
        }

        // Charge: one request to each Requests quota, and advance each rate limit.
        for &i in &plan.request_quotas {
            let counter = c.quota(plan, i, now);
            counter.used += Decimal::ONE;
            quotas[i].used = counter.used;
            quotas[i].remaining = (quotas[i].remaining - Decimal::ONE).max(Decimal::ZERO);
        }
        for (i, rl) in plan.plan.rate_limits.iter().enumerate() {
            let gcra = c.rate(&rl.name);
            // Checked again rather than remembered from above (no list to allocate): under the
            // same lock and clock, the answer is the same one, an Allow.
            if let GcraDecision::Allow { new_tat_ns } =
                gcra.check(rl.requests, rl.window_ms, now_ns)
            {
                gcra.commit(new_tat_ns);
            }
            let (remaining, reset_ms) = gcra.remaining(rl.requests, rl.window_ms, now_ns);
            rate_limits[i].remaining = Decimal::from(remaining);
            rate_limits[i].used = Decimal::from(rl.requests - remaining);
            rate_limits[i].reset_seconds = reset_ms.div_ceil(1000);
        }
        drop(c);
        self.dirty.store(true, Ordering::Release);
        Admission::Admitted {
            rate_limits,
            quotas,
        }
    }
}

impl CounterStore for MemoryStore {
    async fn admit(&self, subject: Subject<'_>, now: Timestamp) -> Admission {
        self.admit_now(subject, now)
    }

    async fn peek(
        &self,
        subject: Subject<'_>,
        now: Timestamp,
    ) -> (Vec<LimitState>, Vec<LimitState>) {
        self.peek_now(subject, now)
    }

    async fn refund(&self, subject: Subject<'_>, now: Timestamp) {
        let plan = subject.plan;
        let counters = self.counters(subject);
        let mut c = counters.lock();
        for &i in &plan.request_quotas {
            let counter = c.quota(plan, i, now);
            counter.used = (counter.used - Decimal::ONE).max(Decimal::ZERO);
        }
        self.dirty.store(true, Ordering::Release);
    }

    async fn charge(&self, subject: Subject<'_>, metered: Metered, now: Timestamp) {
        let plan = subject.plan;
        let counters = self.counters(subject);
        let mut c = counters.lock();
        for (i, quota) in plan.plan.quotas.iter().enumerate() {
            let amount = match quota.metric {
                Metric::Requests => continue,
                Metric::InputTokens => Decimal::from(metered.input_tokens),
                Metric::OutputTokens => Decimal::from(metered.output_tokens),
                Metric::TotalTokens => Decimal::from(metered.input_tokens + metered.output_tokens),
                Metric::Cost => metered.cost,
            };
            if !amount.is_zero() {
                c.quota(plan, i, now).used += amount;
            }
        }
        self.dirty.store(true, Ordering::Release);
    }

    fn usage(&self) -> Vec<UsageRow> {
        let subjects = self.subjects.read();
        let mut rows = Vec::new();
        let each = subjects
            .iter()
            .flat_map(|(tenant, plans)| plans.iter().map(move |(plan, c)| (tenant, plan, c)));
        for (tenant, plan, counters) in each {
            for q in &counters.lock().quotas {
                rows.push(UsageRow {
                    tenant: tenant.to_string(),
                    plan: plan.to_string(),
                    quota: q.name.clone(),
                    period_start: q.window.start,
                    period_end: q.window.end,
                    used: q.used,
                });
            }
        }
        rows.sort_by(|a, b| (&a.tenant, &a.plan, &a.quota).cmp(&(&b.tenant, &b.plan, &b.quota)));
        rows
    }
}

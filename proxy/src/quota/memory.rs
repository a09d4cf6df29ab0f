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

/// A tenant's counters by plan id: a list, as a tenant has one plan or a few. Memory is per active
/// tenant here (10,000 of them in the benchmark's world): a map's smallest table took five
/// times the memory of the one entry most tenants have.
type PlanCounters = Vec<(Arc<str>, Arc<Mutex<Counters>>)>;

/// The counters of `plan` in `plans`.
fn of_plan<'a>(plans: &'a PlanCounters, plan: &str) -> Option<&'a Arc<Mutex<Counters>>> {
    plans
        .iter()
        .find(|(id, _)| &**id == plan)
        .map(|(_, counters)| counters)
}

/// The counters of `plan` in `plans`, new ones added if there are none.
fn of_plan_or_new<'a>(plans: &'a mut PlanCounters, plan: &Arc<str>) -> &'a Arc<Mutex<Counters>> {
    let pos = match plans.iter().position(|(id, _)| id == plan) {
        Some(pos) => pos,
        None => push_exact(plans, (plan.clone(), Arc::default())),
    };
    &plans[pos].1
}

/// Pushes `item` growing `vec` by one, not to the usual four or double (the vectors here are
/// per tenant, and rarely grow); its index.
fn push_exact<T>(vec: &mut Vec<T>, item: T) -> usize {
    vec.reserve_exact(1);
    vec.push(item);
    vec.len() - 1
}

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

impl QuotaCounter {
    /// Moves to the period containing `now`; a new period starts from zero.
    fn roll_to(&mut self, plan: &PlanEntry, index: usize, now: Timestamp) {
        let current = window(plan.plan.quotas[index].period, &plan.tz, now);
        if current.start != self.window.start {
            self.used = Decimal::ZERO;
        }
        self.window = current;
    }
}

#[derive(Debug)]
struct RateCounter {
    name: String,
    gcra: Gcra,
}

/// How long before a counter's period a fresh clock reading still counts in that period: two
/// requests that read the clock either side of a period's end may take the counter's lock in the
/// other order, and the later must not take the counter back to the period that ended (it did:
/// the new period's count was lost at the next request). Readings further back mean the clock
/// itself was set back, and the counter follows it.
const CLOCK_RACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

impl Counters {
    /// The counter of quota `index` for a fresh clock reading `now`: rolled over to the period
    /// containing `now` (see [`CLOCK_RACE`] for a reading just before the counter's period).
    fn quota(&mut self, plan: &PlanEntry, index: usize, now: Timestamp) -> &mut QuotaCounter {
        let pos = self.position(plan, index, now);
        let counter = &mut self.quotas[pos];
        let racing =
            now < counter.window.start && counter.window.start.duration_since(now) <= CLOCK_RACE;
        if (now >= counter.window.end || now < counter.window.start) && !racing {
            counter.roll_to(plan, index, now);
        }
        counter
    }

    /// The counter of quota `index` for a request admitted at `admitted` (a refund, or usage
    /// metered when its response ended): `None` when the counter has moved on to a later period
    /// since. The usage belongs to a period that is over (the Redis store charges it to that
    /// period's key, which limits nothing any more); taking the counter back to it would lose the
    /// new period's count, as a response streamed across midnight did. A request that read the
    /// clock within [`CLOCK_RACE`] of the end but was counted in the new period is not told
    /// apart here: it is not refunded (one unit, in a race of microseconds), where applying every
    /// such refund to the new period would take units off it for requests the old one counted.
    fn quota_admitted_at(
        &mut self,
        plan: &PlanEntry,
        index: usize,
        admitted: Timestamp,
    ) -> Option<&mut QuotaCounter> {
        let pos = self.position(plan, index, admitted);
        let counter = &mut self.quotas[pos];
        if admitted < counter.window.start {
            return None;
        }
        if admitted >= counter.window.end {
            counter.roll_to(plan, index, admitted);
        }
        Some(counter)
    }

    fn position(&mut self, plan: &PlanEntry, index: usize, now: Timestamp) -> usize {
        let quota = &plan.plan.quotas[index];
        match self.quotas.iter().position(|c| c.name == quota.name) {
            Some(pos) => pos,
            None => push_exact(
                &mut self.quotas,
                QuotaCounter {
                    name: quota.name.clone(),
                    window: window(quota.period, &plan.tz, now),
                    used: Decimal::ZERO,
                },
            ),
        }
    }

    fn rate(&mut self, name: &str) -> &mut Gcra {
        let pos = match self.rates.iter().position(|c| c.name == name) {
            Some(pos) => pos,
            None => push_exact(
                &mut self.rates,
                RateCounter {
                    name: name.to_owned(),
                    gcra: Gcra::default(),
                },
            ),
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
            .and_then(|plans| of_plan(plans, plan))
        {
            return c.clone();
        }
        let mut subjects = self.subjects.write();
        of_plan_or_new(subjects.entry(tenant.clone()).or_default(), plan).clone()
    }

    /// Whether counters changed since the last [`MemoryStore::take_dirty`].
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Restores persisted counters (at start-up, before serving).
    pub fn restore(&self, rows: Vec<UsageRow>) {
        let mut subjects = self.subjects.write();
        for row in rows {
            let plans = subjects.entry(Arc::from(row.tenant.as_str())).or_default();
            let counters = of_plan_or_new(plans, &Arc::from(row.plan.as_str()));
            push_exact(
                &mut counters.lock().quotas,
                QuotaCounter {
                    name: row.quota,
                    window: PeriodWindow {
                        start: row.period_start,
                        end: row.period_end,
                    },
                    used: row.used,
                },
            );
        }
    }

    /// Adds `delta(metric)` to each quota of the period of `admitted` (never below zero).
    fn adjust(
        &self,
        subject: Subject<'_>,
        admitted: Timestamp,
        delta: impl Fn(usize, Metric) -> Decimal,
    ) {
        let plan = subject.plan;
        let counters = self.counters(subject);
        let mut c = counters.lock();
        for (i, quota) in plan.plan.quotas.iter().enumerate() {
            let delta = delta(i, quota.metric);
            if !delta.is_zero()
                && let Some(counter) = c.quota_admitted_at(plan, i, admitted)
            {
                counter.used = (counter.used + delta).max(Decimal::ZERO);
            }
        }
        self.dirty.store(true, Ordering::Release);
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

    fn admit_now(&self, subject: Subject<'_>, now: Timestamp, reservation: &Metered) -> Admission {
        let plan = subject.plan;
        let now_ns = i64::try_from(now.as_nanosecond()).unwrap_or(i64::MAX);
        let counters = self.counters(subject);
        let mut c = counters.lock();

        let mut quotas = Vec::with_capacity(plan.plan.quotas.len());
        let mut exhausted = None;
        for (i, quota) in plan.plan.quotas.iter().enumerate() {
            let counter = c.quota(plan, i, now);
            let state = LimitState {
                index: i,
                remaining: (quota.limit - counter.used).max(Decimal::ZERO),
                used: counter.used,
                reset_seconds: counter.window.seconds_until_end(now),
                window: Some(counter.window),
            };
            // A quota for other models neither counts nor refuses the request.
            let Some(needed) = reservation.share(i, quota.metric) else {
                quotas.push(state);
                continue;
            };
            // An overage quota serves past its limit (and says so in a header).
            let fits = quota.overage
                || (counter.used < quota.limit && counter.used + needed <= quota.limit);
            if !fits && exhausted.is_none() {
                exhausted = Some((state.clone(), needed));
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

        if let Some((exhausted, needed)) = exhausted {
            return Admission::QuotaExhausted {
                exhausted,
                needed,
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

        // Charge: one request to each Requests quota, the reservation to the others, and
        // advance each rate limit.
        for (i, quota) in plan.plan.quotas.iter().enumerate() {
            let taken = reservation.share(i, quota.metric).unwrap_or(Decimal::ZERO);
            if taken.is_zero() {
                continue;
            }
            let counter = c.quota(plan, i, now);
            counter.used += taken;
            quotas[i].used = counter.used;
            quotas[i].remaining = (quotas[i].remaining - taken).max(Decimal::ZERO);
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
    async fn admit(
        &self,
        subject: Subject<'_>,
        now: Timestamp,
        reservation: &Metered,
    ) -> Admission {
        self.admit_now(subject, now, reservation)
    }

    async fn peek(
        &self,
        subject: Subject<'_>,
        now: Timestamp,
    ) -> (Vec<LimitState>, Vec<LimitState>) {
        self.peek_now(subject, now)
    }

    async fn refund(&self, subject: Subject<'_>, reservation: &Metered, now: Timestamp) {
        self.adjust(subject, now, |i, metric| {
            -reservation.share(i, metric).unwrap_or(Decimal::ZERO)
        });
    }

    async fn settle(
        &self,
        subject: Subject<'_>,
        reserved: &Metered,
        used: &Metered,
        now: Timestamp,
    ) {
        self.adjust(subject, now, |i, metric| {
            if !reserved.counts_in(i) {
                return Decimal::ZERO;
            }
            match (used.amount(metric), reserved.amount(metric)) {
                (Some(used), Some(reserved)) => used - reserved,
                _ => Decimal::ZERO,
            }
        });
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
                    used: q.used.normalize(),
                });
            }
        }
        rows.sort_by(|a, b| (&a.tenant, &a.plan, &a.quota).cmp(&(&b.tenant, &b.plan, &b.quota)));
        rows
    }
}

#[cfg(test)]
mod tests {
    //! The in-memory store with the clock in the test's hands: every instant is derived from now.

    use jiff::SignedDuration;
    use serde_json::json;

    use super::*;

    fn daily(limit: u64, metric: &str) -> PlanEntry {
        PlanEntry::from_spec(
            json!({"quotas": [{"name": "daily", "metric": metric, "limit": limit.to_string(), "period": "Day"}]}),
        )
    }

    fn tenant() -> Arc<str> {
        Arc::from("shop/acme")
    }

    /// The day containing now, and instants in it and after it.
    fn today() -> PeriodWindow {
        window(
            tollgate_crds::resources::Period::Day,
            &jiff::tz::TimeZone::UTC,
            Timestamp::now(),
        )
    }

    fn used(store: &MemoryStore) -> Vec<(Decimal, Timestamp)> {
        store
            .usage()
            .iter()
            .map(|r| (r.used, r.period_start))
            .collect()
    }

    fn admitted(a: &Admission) -> bool {
        matches!(a, Admission::Admitted { .. })
    }

    #[tokio::test]
    async fn a_requests_quota_admits_exactly_its_limit_and_starts_over_each_period() {
        let (plan, tenant, store) = (daily(2, "Requests"), tenant(), MemoryStore::new());
        let subject = Subject {
            tenant: &tenant,
            plan: &plan,
        };
        let day = today();
        let late = day
            .end
            .checked_sub(SignedDuration::from_secs(1))
            .expect("instant");
        assert!(admitted(
            &store.admit(subject, day.start, &Metered::default()).await
        ));
        assert!(admitted(
            &store.admit(subject, late, &Metered::default()).await
        ));
        match store.admit(subject, late, &Metered::default()).await {
            Admission::QuotaExhausted { exhausted, .. } => {
                assert_eq!(exhausted.used, Decimal::from(2));
                assert_eq!(exhausted.reset_seconds, 1);
                assert_eq!(exhausted.window, Some(day));
            }
            other => panic!("the third request of the day: {other:?}"),
        }
        // The next day starts from zero.
        assert!(admitted(
            &store.admit(subject, day.end, &Metered::default()).await
        ));
        assert_eq!(used(&store), vec![(Decimal::ONE, day.end)]);
    }

    #[tokio::test]
    async fn a_refund_gives_the_request_back_and_never_goes_below_zero() {
        let (plan, tenant, store) = (daily(1, "Requests"), tenant(), MemoryStore::new());
        let subject = Subject {
            tenant: &tenant,
            plan: &plan,
        };
        let now = Timestamp::now();
        assert!(admitted(
            &store.admit(subject, now, &Metered::default()).await
        ));
        assert!(!admitted(
            &store.admit(subject, now, &Metered::default()).await
        ));
        store.refund(subject, &Metered::default(), now).await;
        assert!(
            admitted(&store.admit(subject, now, &Metered::default()).await),
            "the refunded unit is usable"
        );
        store.refund(subject, &Metered::default(), now).await;
        store.refund(subject, &Metered::default(), now).await;
        assert_eq!(used(&store)[0].0, Decimal::ZERO);
    }

    #[tokio::test]
    async fn token_quotas_admit_while_below_the_limit_and_count_what_was_metered() {
        let (plan, tenant, store) = (daily(100, "TotalTokens"), tenant(), MemoryStore::new());
        let subject = Subject {
            tenant: &tenant,
            plan: &plan,
        };
        let now = Timestamp::now();
        assert!(admitted(
            &store.admit(subject, now, &Metered::default()).await
        ));
        let metered = Metered {
            input_tokens: 60,
            output_tokens: 39,
            ..Metered::default()
        };
        store.charge(subject, metered, now).await;
        assert!(
            admitted(&store.admit(subject, now, &Metered::default()).await),
            "99 of 100 used"
        );
        store
            .charge(
                subject,
                Metered {
                    output_tokens: 5,
                    ..Metered::default()
                },
                now,
            )
            .await;
        // The last request may overshoot by its own usage; the next is refused.
        assert_eq!(used(&store)[0].0, Decimal::from(104));
        assert!(!admitted(
            &store.admit(subject, now, &Metered::default()).await
        ));
    }

    /// Regression: usage metered for a request admitted before midnight, charged after the
    /// counter moved on to the new day, took the counter back to the old day, and the new day's
    /// count was lost at the next request.
    #[tokio::test]
    async fn usage_from_a_period_that_ended_leaves_the_new_periods_count_alone() {
        // A stream admitted well before midnight, and one admitted within the minute a clock
        // reading may race (it was counted in the old day all the same).
        for before in [SignedDuration::from_mins(10), SignedDuration::from_secs(30)] {
            let (plan, tenant, store) = (daily(1_000, "TotalTokens"), tenant(), MemoryStore::new());
            let subject = Subject {
                tenant: &tenant,
                plan: &plan,
            };
            let day = today();
            let started = day.end.checked_sub(before).expect("instant");
            assert!(
                admitted(&store.admit(subject, started, &Metered::default()).await),
                "a long stream starts"
            );
            let next_day = day
                .end
                .checked_add(SignedDuration::from_mins(5))
                .expect("instant");
            assert!(admitted(
                &store.admit(subject, next_day, &Metered::default()).await
            ));
            store
                .charge(
                    subject,
                    Metered {
                        output_tokens: 300,
                        ..Metered::default()
                    },
                    next_day,
                )
                .await;
            // The stream admitted before midnight ends now; another request of that day failed.
            store
                .charge(
                    subject,
                    Metered {
                        output_tokens: 700,
                        ..Metered::default()
                    },
                    started,
                )
                .await;
            store.refund(subject, &Metered::default(), started).await;
            assert_eq!(
                used(&store),
                vec![(Decimal::from(300), day.end)],
                "{before:?} before"
            );
            assert!(
                admitted(&store.admit(subject, next_day, &Metered::default()).await),
                "the new day still has room"
            );
        }
    }

    /// Regression: two requests reading the clock either side of midnight took the lock in the
    /// other order; the later one moved the counter back to the old day, and the next request
    /// found the new day's count gone.
    #[tokio::test]
    async fn a_request_that_read_the_clock_just_before_the_period_ended_counts_in_the_new_one() {
        let (plan, tenant, store) = (daily(10, "Requests"), tenant(), MemoryStore::new());
        let subject = Subject {
            tenant: &tenant,
            plan: &plan,
        };
        let day = today();
        let just_before = day
            .end
            .checked_sub(SignedDuration::from_millis(1))
            .expect("instant");
        let just_after = day
            .end
            .checked_add(SignedDuration::from_millis(1))
            .expect("instant");
        assert!(admitted(
            &store.admit(subject, just_after, &Metered::default()).await
        ));
        assert!(admitted(
            &store.admit(subject, just_before, &Metered::default()).await
        ));
        assert!(admitted(
            &store.admit(subject, just_after, &Metered::default()).await
        ));
        assert_eq!(used(&store), vec![(Decimal::from(3), day.end)]);
    }

    #[tokio::test]
    async fn a_clock_set_back_a_day_is_followed() {
        let (plan, tenant, store) = (daily(10, "Requests"), tenant(), MemoryStore::new());
        let subject = Subject {
            tenant: &tenant,
            plan: &plan,
        };
        let day = today();
        assert!(admitted(
            &store.admit(subject, day.end, &Metered::default()).await
        ));
        assert!(admitted(
            &store.admit(subject, day.start, &Metered::default()).await
        ));
        assert_eq!(used(&store), vec![(Decimal::ONE, day.start)]);
    }

    #[tokio::test]
    async fn restored_counters_carry_on_in_their_period() {
        let (plan, tenant, store) = (daily(3, "Requests"), tenant(), MemoryStore::new());
        let subject = Subject {
            tenant: &tenant,
            plan: &plan,
        };
        let now = Timestamp::now();
        assert!(admitted(
            &store.admit(subject, now, &Metered::default()).await
        ));
        assert!(admitted(
            &store.admit(subject, now, &Metered::default()).await
        ));
        let restored = MemoryStore::new();
        restored.restore(store.usage());
        assert!(admitted(
            &restored.admit(subject, now, &Metered::default()).await
        ));
        assert!(
            !admitted(&restored.admit(subject, now, &Metered::default()).await),
            "2 restored + 1 = the limit"
        );
    }
}

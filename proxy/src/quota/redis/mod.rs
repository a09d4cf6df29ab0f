//! Fleet-wide quotas in Redis, without a Redis round trip per request while a tenant is far from
//! its limit, and exact near it.
//!
//! Each counter is one Redis key per (tenant, plan, quota, period start), expiring a week after
//! the period ends (a month stays countable to its last second). The proxy's clock decides the
//! period and when it ends; Redis's clock only counts a key's lifetime down (see
//! [`time_to_live`]), so clocks that disagree never make Redis drop a key early. A proxy does not increment it per
//! request: it *leases* a slice of the remaining allowance with one atomic Lua call and spends the
//! slice locally. Slices are 1/64 of what remains (at most 1000), so they shrink to a single unit
//! near the limit, where every admission asks Redis. Redis never grants past the limit, so while it
//! is reachable the fleet never admits more than the limit (overshoot 0); a proxy may refuse while
//! another still holds unused units (at most one slice per proxy), and idle slices go back to
//! Redis after 2 s and on shutdown. A proxy killed with SIGKILL loses at most its current slices.
//!
//! Token and Cost quotas take a call's reservation at admission with the same Lua call, granting
//! exactly the reservation or nothing (Cost in millionths), so the fleet's reservations never add
//! up past the limit; the response's usage then replaces the reservation (an at-most-once
//! change, below). A call that reserves nothing (a route that reads no tokens, under a token
//! quota) is admitted while the last known total is below the limit.
//!
//! When Redis cannot be reached: FailClosed plans answer 503; FailOpen plans admit, count locally,
//! and add what they admitted to Redis when it is back (nothing lost).
//!
//! A call can fail after Redis applied it (Redis dies before answering, or answers after the
//! timeout). So every write is applied at most once and can be asked about: a lease leaves a
//! record of its grant, and every other change (giving units back, adding FailOpen debt, charging
//! tokens) carries an operation id that Redis remembers. A proxy retries an unanswered change with
//! the same id, and after an unanswered lease it asks for the record and keeps the grant if there
//! is one. Records live 10 minutes (an outage longer than that may count a lost lease's slice).
//!
//! Rate limits are fleet-wide too, as fixed windows counted the same way (one key per window):
//! at most the limit per window across the fleet, so a client can get up to twice the limit in
//! the two windows around a boundary (in memory, GCRA never allows that).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use parking_lot::Mutex;
use rust_decimal::Decimal;
use tollgate_crds::counter_store::{
    StoreConnection, StoreError, StoreTarget, Timeouts, counter_key, from_units, op_record_key,
    rate_window_key, settled_key, to_units as units,
};
use tollgate_crds::period::{PeriodWindow, window};
use tollgate_crds::resources::{FailurePolicy, Metric};

use super::decision::{Admission, LimitState, Metered};
use super::plan::PlanEntry;
use super::store::{CounterStore, Subject, UsageRow};
use crate::telemetry::metrics::StoreMetrics;
use crate::telemetry::warn_throttle::{Reachability, ReachabilityChange};

/// Grants a lease: a slice of a counter's remaining allowance (contract in the file).
const LEASE: &str = include_str!("lease.lua");

/// Applies a change to a counter at most once (contract in the file).
const ADJUST_ONCE: &str = include_str!("adjust_once.lua");

/// How long Redis remembers a lease's grant and an applied operation id.
const RECORD_SECONDS: i64 = 600;

const KEEP_AFTER_PERIOD: i64 = 7 * 86_400;

/// Admissions are grouped by this many seconds on their way to settled usage.
const SETTLE_GRAIN: i64 = 5;

/// Settled keys flushed at once.
const CONCURRENT_FLUSHES: usize = 32;

/// The limit Redis grants against for a quota that serves past its limit (`Overage`).
const OVERAGE_BOUND: i64 = 1 << 52;

/// Seconds for Redis to keep a key that, by this proxy's clock (`now`), expires at `expire_at`.
///
/// Whose clock: the proxy's decides which period a request counts in (the key's name) and when
/// that period ends; Redis's clock only counts the lifetime it is given down (EXPIRE, never
/// EXPIREAT). So a key lives [`KEEP_AFTER_PERIOD`] past its period's end as the proxies see it,
/// however far Redis's clock is from theirs. With an instant (EXPIREAT), a proxy whose clock ran
/// a rate-limit window behind Redis's had each window's key deleted as it was written (the
/// fleet's rate limits stopped holding), a week behind did the same to quotas, and a proxy ahead
/// kept keys past their time. Proxies whose clocks disagree with each other still count a request
/// near a boundary in the period their own clock says: a boundary is as sharp as the fleet's
/// clock sync.
fn time_to_live(expire_at: i64, now: Timestamp) -> i64 {
    (expire_at - now.as_second()).max(1)
}

/// When (by this proxy's clock, in Unix seconds) the key of a counter for `window` may go: a
/// quota's a week after its period, a rate-limit window's once the next window has ended too.
fn key_expiry(window: PeriodWindow, rate: bool) -> i64 {
    let end = window.end.as_second();
    if rate {
        end + 1 + (end - window.start.as_second())
    } else {
        end + KEEP_AFTER_PERIOD
    }
}

/// A process-unique id: operation ids must not collide across proxies or restarts.
fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}{:x}", std::process::id())
}
const IDLE_RETURN: Duration = Duration::from_secs(2);

/// One counter as this proxy sees it.
#[derive(Debug)]
struct Counter {
    tenant: Arc<str>,
    plan: Arc<str>,
    quota: String,
    window: PeriodWindow,
    /// Units leased from Redis and not spent yet.
    leased: u64,
    /// The Redis total after our last call (for headers and Token/Cost admission).
    redis_used: i64,
    /// What this proxy admitted or charged in the period (its share, for usage reports).
    spent: Decimal,
    /// Settled units: requests admitted and past the time they could be given back, calls'
    /// final tokens and cost (never a reservation). Added to the counter's settled key in Redis
    /// ([`settled_key`]), which only grows: the operator exports it to billing.
    settled: i64,
    /// Requests admitted recently, by the second they become settled (admission plus
    /// `--settle-after`, rounded up to [`SETTLE_GRAIN`]): a 502 or 504 may still give them back.
    maturing: VecDeque<(i64, i64)>,
    /// The part of `settled` Redis has confirmed. A refund after a flush leaves `settled` below
    /// it for a while; nothing is taken back (the settled key never goes down).
    flushed: i64,
    /// A flush of settled units sent without an answer, retried with the same id until one comes.
    flushing: Option<Adjustment>,
    /// Admitted while Redis was unreachable (FailOpen), to add when it is back.
    debt: i64,
    /// Changes sent without an answer, retried with the same id until one comes.
    unanswered: Vec<Adjustment>,
    /// Leases sent without an answer: their records, to ask for the grant.
    unanswered_leases: Vec<String>,
    /// When the counter's key expires by this proxy's clock ([`key_expiry`], sent as a lifetime
    /// with every write).
    expire_at: i64,
    last_used: Instant,
    /// A rate-limit window (not reported as quota usage).
    rate: bool,
    /// A token or Cost quota: calls take reservations, never slices, so units it holds (a
    /// reservation put back after a refusal, an unanswered one found granted) go back to Redis
    /// at the next settle instead of waiting for the counter to idle.
    reserves: bool,
}

/// A change to a counter, applied at most once (see [`ADJUST_ONCE`]).
#[derive(Debug, Clone)]
struct Adjustment {
    /// Operation record key.
    op: String,
    delta: i64,
}

impl Counter {
    /// A counter this proxy has not used yet: quota or rate-limit window `name` of `subject`.
    fn new(subject: &Subject<'_>, name: &str, window: PeriodWindow, rate: bool) -> Self {
        Self {
            tenant: subject.tenant.clone(),
            plan: subject.plan.id.clone(),
            quota: name.to_owned(),
            window,
            leased: 0,
            redis_used: 0,
            spent: Decimal::ZERO,
            settled: 0,
            maturing: VecDeque::new(),
            flushed: 0,
            flushing: None,
            debt: 0,
            unanswered: Vec::new(),
            unanswered_leases: Vec::new(),
            expire_at: key_expiry(window, rate),
            last_used: Instant::now(),
            rate,
            reserves: false,
        }
    }

    /// Units this proxy counted that Redis has not confirmed (FailOpen debt, unanswered changes).
    fn unconfirmed(&self) -> i64 {
        self.debt + self.unanswered.iter().map(|a| a.delta).sum::<i64>()
    }
}

/// What a request took from a counter.
#[derive(Debug, Clone, Copy)]
enum Taken {
    /// Units granted by Redis (a unit of a slice, or a reservation).
    Units(i64),
    /// Units counted locally while Redis was unreachable (FailOpen).
    Debt(i64),
}

/// Counters in Redis, leased in slices.
pub struct RedisStore {
    conn: StoreConnection,
    metrics: StoreMetrics,
    /// Lease slices (false: one Redis call per admission, as a naive INCR-per-request store does;
    /// for comparison in benchmarks).
    slices: bool,
    /// How long after admission a request is settled (`--settle-after`), in seconds.
    settle_after: i64,
    lease: redis::Script,
    adjust_once: redis::Script,
    counters: Mutex<HashMap<String, Counter>>,
    /// Unique per process: operation and lease ids are `{instance}-{sequence}`.
    instance: String,
    sequence: AtomicU64,
    /// Whether round trips fail, for the log.
    reachability: Reachability,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects lazily to `target` (one server, TLS or a cluster): the proxy starts and serves
    /// (per failure policy) even when Redis is down.
    pub fn connect(
        target: &StoreTarget,
        slices: bool,
        settle_after: Duration,
        metrics: StoreMetrics,
    ) -> Result<Arc<Self>, StoreError> {
        let conn = target.connect(Timeouts {
            connect: Duration::from_millis(500),
            // A request near its limit waits on this; a slow Redis is treated as a down one.
            response: Duration::from_millis(250),
        })?;
        Ok(Arc::new(Self {
            conn,
            metrics,
            slices,
            // Whole seconds, rounded up: never earlier than asked.
            settle_after: i64::try_from(
                settle_after.as_secs() + u64::from(settle_after.subsec_nanos() > 0),
            )
            .unwrap_or(3600)
            .max(1),
            lease: redis::Script::new(LEASE),
            adjust_once: redis::Script::new(ADJUST_ONCE),
            counters: Mutex::new(HashMap::new()),
            instance: instance_id(),
            sequence: AtomicU64::new(0),
            reachability: Reachability::new(Duration::from_secs(10)),
        }))
    }

    fn window_key(subject: &Subject<'_>, index: usize, now: Timestamp) -> (String, PeriodWindow) {
        let quota = &subject.plan.plan.quotas[index];
        let w = window(quota.period, &subject.plan.tz, now);
        (
            counter_key(subject.tenant, &subject.plan.id, &quota.name, w.start),
            w,
        )
    }

    fn counter<'a>(
        counters: &'a mut HashMap<String, Counter>,
        subject: &Subject<'_>,
        index: usize,
        key: &str,
        w: PeriodWindow,
    ) -> &'a mut Counter {
        counters.entry(key.to_owned()).or_insert_with(|| {
            let quota = &subject.plan.plan.quotas[index];
            Counter {
                reserves: quota.metric != Metric::Requests,
                ..Counter::new(subject, &quota.name, w, false)
            }
        })
    }

    /// Leases from `key`: a slice, or exactly `exact` units (or nothing when they do not fit).
    async fn lease_from_redis(
        &self,
        key: &str,
        limit: i64,
        ttl: i64,
        exact: Option<i64>,
    ) -> redis::RedisResult<(i64, i64)> {
        let mut conn = self.conn.clone();
        let started = Instant::now();
        let mut call = self.lease.key(key);
        // The naive comparison mode (a call per admission) keeps no records.
        let record = (self.slices || exact.is_some()).then(|| self.record_key(key));
        if let Some(record) = &record {
            call.key(record);
        }
        let amount = match exact {
            Some(n) => n.to_string(),
            None if self.slices => "slice".to_owned(),
            None => "1".to_owned(),
        };
        let result: redis::RedisResult<(i64, i64)> = call
            .arg(limit)
            .arg(ttl)
            .arg(amount)
            .arg(RECORD_SECONDS)
            .invoke_async(&mut conn)
            .await;
        self.observe("lease", started, result.as_ref().err());
        if result.is_err()
            && let Some(record) = record
            && let Some(c) = self.counters.lock().get_mut(key)
        {
            c.unanswered_leases.push(record);
        }
        if let Ok((grant, _)) = &result {
            self.metrics
                .leased_units
                .inc_by(u64::try_from(*grant).unwrap_or(0));
        }
        result
    }

    /// A fresh record key for an operation on `counter`, in the counter's Redis Cluster slot.
    fn record_key(&self, counter: &str) -> String {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        op_record_key(counter, &format!("{}-{n}", self.instance))
    }

    /// Applies `a` to `counter` at most once and keeps the counter `ttl` seconds more; its new
    /// total.
    async fn adjust(
        &self,
        counter: &str,
        a: &Adjustment,
        ttl: i64,
        label: &str,
    ) -> redis::RedisResult<i64> {
        let mut conn = self.conn.clone();
        let started = Instant::now();
        let result = self
            .adjust_once
            .key(counter)
            .key(&a.op)
            .arg(a.delta)
            .arg(ttl)
            .arg(RECORD_SECONDS)
            .invoke_async(&mut conn)
            .await;
        self.observe(label, started, result.as_ref().err());
        result
    }

    /// Records a round trip to Redis; `error` when it failed.
    fn observe(&self, op: &str, started: Instant, error: Option<&redis::RedisError>) {
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .round_trips
            .with_label_values(&[op, if error.is_some() { "error" } else { "ok" }])
            .inc();
        self.metrics.partitioned.set(i64::from(error.is_some()));
        // Logged when reachability changes, not per call: while Redis is down every request
        // that needs it fails, and a line each would flood the log (and slow the workers).
        match (
            self.reachability.observe(error.is_some(), Instant::now()),
            error,
        ) {
            (
                Some(ReachabilityChange::Lost {
                    failures_not_logged,
                }),
                Some(e),
            ) => tracing::warn!(
                error = %e,
                failures_not_logged,
                "Redis unreachable: FailClosed plans answer 503 quota-store-unavailable, \
                 FailOpen plans admit and count locally until it is back"
            ),
            (Some(ReachabilityChange::Regained), _) => {
                tracing::info!("Redis reachable again: counting there resumes")
            }
            _ => {}
        }
    }

    fn state(
        c: &Counter,
        limit: Decimal,
        metric: Metric,
        index: usize,
        now: Timestamp,
    ) -> LimitState {
        let used = from_units(
            metric,
            c.redis_used - i64::try_from(c.leased).unwrap_or(0) + c.unconfirmed(),
        );
        LimitState {
            index,
            remaining: (limit - used).max(Decimal::ZERO),
            used: used.max(Decimal::ZERO),
            reset_seconds: c.window.seconds_until_end(now),
            window: Some(c.window),
        }
    }

    /// Takes one unit of the counter `key` (which must exist): from this proxy's slice, or from a
    /// new slice leased from Redis (whose key then lives `ttl` seconds more). `Ok(false)`: Redis
    /// has nothing left to grant.
    async fn take_one(&self, key: &str, limit: i64, ttl: i64) -> redis::RedisResult<bool> {
        {
            let mut counters = self.counters.lock();
            if let Some(c) = counters.get_mut(key)
                && c.leased > 0
            {
                c.leased -= 1;
                self.metrics.local_admissions.inc();
                return Ok(true);
            }
        }
        let (grant, used) = self.lease_from_redis(key, limit, ttl, None).await?;
        if let Some(c) = self.counters.lock().get_mut(key) {
            c.redis_used = used;
            c.leased += u64::try_from(grant - 1).unwrap_or(0);
        }
        Ok(grant > 0)
    }

    /// Takes a call's reservation of `units` from the counter `key` (which must exist), in one
    /// atomic call: all of them, or `Ok(false)` when they do not fit.
    async fn take_reservation(
        &self,
        key: &str,
        limit: i64,
        ttl: i64,
        units: i64,
    ) -> redis::RedisResult<bool> {
        let (grant, used) = self.lease_from_redis(key, limit, ttl, Some(units)).await?;
        if let Some(c) = self.counters.lock().get_mut(key) {
            c.redis_used = used;
        }
        Ok(grant > 0)
    }

    /// Takes `units` of `key` for this request (`None`: one unit, from a slice), per the plan's
    /// failure policy; records what was taken in `taken` so a later refusal can put it back.
    /// `Err(())`: Redis is unreachable and the plan is FailClosed.
    #[allow(clippy::too_many_arguments)]
    async fn take_for_request(
        &self,
        key: &str,
        (limit, local_limit): (i64, i64),
        ttl: i64,
        units: Option<i64>,
        fail_open: bool,
        counts_debt: bool,
        taken: &mut Vec<(String, Taken)>,
    ) -> Result<bool, ()> {
        let result = match units {
            None => self.take_one(key, limit, ttl).await,
            Some(n) => self.take_reservation(key, limit, ttl, n).await,
        };
        let n = units.unwrap_or(1);
        match result {
            Ok(true) => {
                taken.push((key.to_owned(), Taken::Units(n)));
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(_) if fail_open => {
                let mut counters = self.counters.lock();
                // A reservation is checked against the last total Redis gave, plus what this
                // proxy counted since: an outage does not lift a token or Cost quota.
                if let (Some(n), Some(c)) = (units, counters.get(key))
                    && c.redis_used + c.unconfirmed() + n > local_limit
                {
                    return Ok(false);
                }
                if counts_debt && let Some(c) = counters.get_mut(key) {
                    c.debt += n;
                    self.metrics.unreconciled_units.add(n);
                    taken.push((key.to_owned(), Taken::Debt(n)));
                }
                Ok(true)
            }
            Err(_) => Err(()),
        }
    }

    async fn admit_inner(
        &self,
        subject: Subject<'_>,
        now: Timestamp,
        reservation: &Metered,
    ) -> Admission {
        let plan: &PlanEntry = subject.plan;
        let fail_open = plan.plan.failure_policy == FailurePolicy::FailOpen;
        let mut taken: Vec<(String, Taken)> = Vec::new();
        let mut exhausted = None;
        // Each quota's period and Redis key, computed once per request (time-zone arithmetic).
        let windows: Vec<(String, PeriodWindow)> = (0..plan.plan.quotas.len())
            .map(|i| Self::window_key(&subject, i, now))
            .collect();
        // 1. Quotas: one unit of every Requests quota, the reservation of the others (those
        // that reserve nothing: by their last known total).
        for (i, quota) in plan.plan.quotas.iter().enumerate() {
            if !reservation.counts_in(i) {
                // A quota for other models neither counts nor refuses the request.
                continue;
            }
            let (key, w) = (&windows[i].0, windows[i].1);
            let limit = units(quota.metric, quota.limit);
            let reserve = reservation
                .amount(quota.metric)
                .map(|amount| units(quota.metric, amount));
            let over = {
                let mut counters = self.counters.lock();
                let c = Self::counter(&mut counters, &subject, i, key, w);
                !quota.overage && c.redis_used + c.unconfirmed() >= limit
            };
            if exhausted.is_some() || (reserve == Some(0) && over) {
                if over {
                    exhausted.get_or_insert(i);
                }
                continue;
            }
            if reserve == Some(0) {
                continue;
            }
            let ttl = time_to_live(key_expiry(w, false), now);
            // With Redis away (FailOpen), an overage quota admits whatever it has counted:
            // only Redis's refusal sends it to the second lease below.
            let local_limit = if quota.overage { OVERAGE_BOUND } else { limit };
            let mut took = self
                .take_for_request(
                    key,
                    (limit, local_limit),
                    ttl,
                    reserve,
                    fail_open,
                    true,
                    &mut taken,
                )
                .await;
            if quota.overage && took == Ok(false) {
                // Past the limit, an overage quota still serves: Redis grants against a bound
                // no fleet reaches (exact in Lua's doubles) and counts every unit. Below it,
                // the real limit keeps slices small, so the count near it stays exact.
                took = self
                    .take_for_request(
                        key,
                        (OVERAGE_BOUND, OVERAGE_BOUND),
                        ttl,
                        reserve,
                        fail_open,
                        true,
                        &mut taken,
                    )
                    .await;
            }
            match took {
                Ok(true) => {}
                Ok(false) => {
                    exhausted = Some(i);
                }
                Err(()) => {
                    self.put_back(&taken);
                    return Admission::StoreUnavailable;
                }
            }
        }
        // 2. Rate limits, fleet-wide: fixed windows counted in Redis with the same slices.
        let mut exceeded = None;
        let mut rate_limits = Vec::with_capacity(plan.plan.rate_limits.len());
        let now_ms = now.as_millisecond();
        for (i, rl) in plan.plan.rate_limits.iter().enumerate() {
            let window_ms = i64::try_from(rl.window_ms.max(1)).unwrap_or(i64::MAX);
            let index = now_ms.div_euclid(window_ms);
            let start = Timestamp::from_millisecond(index * window_ms).unwrap_or(now);
            let end = Timestamp::from_millisecond((index + 1) * window_ms).unwrap_or(now);
            let w = PeriodWindow { start, end };
            let key = rate_window_key(subject.tenant, &plan.id, &rl.name, index);
            let limit = i64::try_from(rl.requests).unwrap_or(i64::MAX);
            Self::rate_counter(&mut self.counters.lock(), &subject, &rl.name, &key, w);
            let mut denied = false;
            if exhausted.is_none() && exceeded.is_none() {
                // FailOpen admits the window locally; there is nothing to reconcile for it.
                let ttl = time_to_live(key_expiry(w, true), now);
                match self
                    .take_for_request(
                        &key,
                        (limit, limit),
                        ttl,
                        None,
                        fail_open,
                        false,
                        &mut taken,
                    )
                    .await
                {
                    Ok(admitted) => denied = !admitted,
                    Err(()) => {
                        self.put_back(&taken);
                        return Admission::StoreUnavailable;
                    }
                }
            }
            let counters = self.counters.lock();
            let (used, leased) = counters
                .get(&key)
                .map_or((0, 0), |c| (c.redis_used, c.leased));
            let remaining = (limit - used + i64::try_from(leased).unwrap_or(0)).clamp(0, limit);
            let state = LimitState {
                index: i,
                remaining: Decimal::from(if denied { 0 } else { remaining }),
                used: Decimal::from(limit - remaining),
                reset_seconds: w.seconds_until_end(now).max(1),
                window: None,
            };
            if denied {
                exceeded.get_or_insert(state.clone());
            }
            rate_limits.push(state);
        }
        if exhausted.is_some() || exceeded.is_some() {
            self.put_back(&taken);
        }
        // 3. Decide, and account what this proxy spent.
        let mut counters = self.counters.lock();
        let mut quotas = Vec::with_capacity(plan.plan.quotas.len());
        for (i, quota) in plan.plan.quotas.iter().enumerate() {
            let (key, w) = (&windows[i].0, windows[i].1);
            let c = Self::counter(&mut counters, &subject, i, key, w);
            if exhausted.is_none() && exceeded.is_none() {
                c.spent += reservation.share(i, quota.metric).unwrap_or(Decimal::ZERO);
                if quota.metric == Metric::Requests && reservation.counts_in(i) {
                    let due = self.settles_at(now);
                    match c.maturing.back_mut() {
                        Some((at, n)) if *at == due => *n += 1,
                        _ => c.maturing.push_back((due, 1)),
                    }
                }
                c.last_used = Instant::now();
            }
            quotas.push(Self::state(c, quota.limit, quota.metric, i, now));
        }
        drop(counters);
        if let Some(i) = exhausted {
            let quota = &plan.plan.quotas[i];
            let needed = reservation.amount(quota.metric).unwrap_or(Decimal::ONE);
            let mut state = quotas[i].clone();
            if needed <= state.remaining {
                // Redis knew better than this proxy's last reading: the quota is used up.
                state.used = state.used.max(quota.limit);
                state.remaining = Decimal::ZERO;
            }
            return Admission::QuotaExhausted {
                exhausted: state,
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
        Admission::Admitted {
            rate_limits,
            quotas,
        }
    }

    fn rate_counter<'a>(
        counters: &'a mut HashMap<String, Counter>,
        subject: &Subject<'_>,
        name: &str,
        key: &str,
        w: PeriodWindow,
    ) -> &'a mut Counter {
        counters
            .entry(key.to_owned())
            .or_insert_with(|| Counter::new(subject, name, w, true))
    }

    /// Returns what a refused request took: units to the local slice, FailOpen debt un-counted.
    fn put_back(&self, taken: &[(String, Taken)]) {
        let mut counters = self.counters.lock();
        for (key, what) in taken {
            if let Some(c) = counters.get_mut(key) {
                match *what {
                    // Kept as this proxy's to give back to Redis (or spend, for a unit).
                    Taken::Units(n) => c.leased += u64::try_from(n).unwrap_or(0),
                    Taken::Debt(n) => {
                        c.debt -= n;
                        self.metrics.unreconciled_units.sub(n);
                    }
                }
            }
        }
    }

    /// Brings Redis up to date: keeps the grants of unanswered leases, gives back idle slices (or
    /// all of them), adds FailOpen debts, and retries unanswered changes (with their ids).
    pub async fn settle(&self, all: bool) {
        self.settle_at(Timestamp::now(), all).await;
    }

    /// [`RedisStore::settle`] as of `now` (for tests at a period boundary).
    pub async fn settle_at(&self, now: Timestamp, all: bool) {
        self.recover_unanswered_leases().await;
        let work: Vec<(String, i64, Vec<Adjustment>)> = {
            let mut counters = self.counters.lock();
            // An ended period is done with once Redis has its usage and its unspent slice back.
            // An ended rate-limit window's unspent slice changes nothing (the window is over and
            // its key expires): it is dropped, not sent back.
            counters.retain(|_, c| {
                c.window.end > now
                    || (c.leased > 0 && !c.rate)
                    || c.debt != 0
                    || !c.unanswered.is_empty()
                    || c.settled > c.flushed
                    || !c.maturing.is_empty()
                    || c.flushing.is_some()
            });
            let mut work = Vec::new();
            for (key, c) in counters.iter_mut() {
                let ended = c.window.end <= now;
                if ended && c.rate {
                    c.leased = 0;
                }
                if c.leased > 0
                    && (all || ended || c.reserves || c.last_used.elapsed() > IDLE_RETURN)
                {
                    let back = i64::try_from(std::mem::take(&mut c.leased)).unwrap_or(i64::MAX);
                    c.unanswered.push(Adjustment {
                        op: self.record_key(key),
                        delta: -back,
                    });
                }
                if c.debt != 0 {
                    c.unanswered.push(Adjustment {
                        op: self.record_key(key),
                        delta: std::mem::take(&mut c.debt),
                    });
                }
                if !c.unanswered.is_empty() {
                    work.push((key.clone(), c.expire_at, c.unanswered.clone()));
                }
            }
            work
        };
        self.flush_settled(now, all).await;
        for (key, expire_at, changes) in work {
            for a in changes {
                let ttl = time_to_live(expire_at, now);
                let Ok(total) = self.adjust(&key, &a, ttl, "settle").await else {
                    continue; // Unanswered: retried with the same id next time.
                };
                if a.delta < 0 {
                    self.metrics.returned_units.inc_by(a.delta.unsigned_abs());
                } else {
                    self.metrics.unreconciled_units.sub(a.delta);
                }
                if let Some(c) = self.counters.lock().get_mut(&key) {
                    c.unanswered.retain(|u| u.op != a.op);
                    c.redis_used = total;
                }
            }
        }
    }

    /// When a request admitted at `admitted` settles: more than a grain past `--settle-after`
    /// later, on a multiple of [`SETTLE_GRAIN`] (so a busy counter keeps one entry per grain).
    /// The grain covers the admission's own time (its Redis calls come before the backend's
    /// timeout starts) and the second's fraction `as_second` drops.
    fn settles_at(&self, admitted: Timestamp) -> i64 {
        let at = admitted.as_second() + self.settle_after + SETTLE_GRAIN;
        (at + SETTLE_GRAIN - 1).div_euclid(SETTLE_GRAIN) * SETTLE_GRAIN
    }

    /// Adds each counter's settled units that Redis has not confirmed to its settled key, at
    /// most once each (an unanswered flush is sent again with the same id). Requests whose time
    /// to be given back has passed (all of them with `all`, at shutdown) settle first.
    async fn flush_settled(&self, now: Timestamp, all: bool) {
        let work: Vec<(String, String, i64, Adjustment)> = {
            let mut counters = self.counters.lock();
            let mut work = Vec::new();
            for (key, c) in counters.iter_mut() {
                while let Some(&(due, n)) = c.maturing.front() {
                    if due > now.as_second() && !all {
                        break;
                    }
                    c.settled += n;
                    c.maturing.pop_front();
                }
                if c.flushing.is_none() && c.settled <= c.flushed {
                    continue;
                }
                let settled = settled_key(&c.tenant, &c.plan, &c.quota, c.window.start);
                let a = c.flushing.get_or_insert_with(|| Adjustment {
                    op: self.record_key(&settled),
                    delta: c.settled - c.flushed,
                });
                work.push((key.clone(), settled, c.expire_at, a.clone()));
            }
            work
        };
        let flushes = work
            .into_iter()
            .map(|(key, settled, expire_at, a)| async move {
                let ttl = time_to_live(expire_at, now);
                if self.adjust(&settled, &a, ttl, "settled").await.is_err() {
                    return; // Unanswered: sent again with the same id next time.
                }
                if let Some(c) = self.counters.lock().get_mut(&key) {
                    c.flushed += a.delta;
                    c.flushing = None;
                }
            });
        futures::stream::iter(flushes)
            .buffer_unordered(CONCURRENT_FLUSHES)
            .for_each(|()| async {})
            .await;
    }

    /// Asks Redis whether leases sent without an answer were granted; keeps what was.
    async fn recover_unanswered_leases(&self) {
        let work: Vec<(String, Vec<String>)> = self
            .counters
            .lock()
            .iter_mut()
            .filter(|(_, c)| !c.unanswered_leases.is_empty())
            .map(|(k, c)| (k.clone(), std::mem::take(&mut c.unanswered_leases)))
            .collect();
        for (key, records) in work {
            for record in records {
                let mut conn = self.conn.clone();
                let grant: redis::RedisResult<Option<i64>> = redis::cmd("GETDEL")
                    .arg(&record)
                    .query_async(&mut conn)
                    .await;
                let mut counters = self.counters.lock();
                let Some(c) = counters.get_mut(&key) else {
                    continue;
                };
                match grant {
                    // Granted: the units are this proxy's, to spend or give back.
                    Ok(Some(units)) => {
                        c.leased += u64::try_from(units).unwrap_or(0);
                        self.metrics
                            .leased_units
                            .inc_by(u64::try_from(units).unwrap_or(0));
                    }
                    // Never applied (or forgotten after RECORD_SECONDS).
                    Ok(None) => {}
                    Err(_) => c.unanswered_leases.push(record),
                }
            }
        }
    }
}

impl CounterStore for RedisStore {
    async fn admit(
        &self,
        subject: Subject<'_>,
        now: Timestamp,
        reservation: &Metered,
    ) -> Admission {
        self.admit_inner(subject, now, reservation).await
    }

    async fn peek(
        &self,
        subject: Subject<'_>,
        now: Timestamp,
    ) -> (Vec<LimitState>, Vec<LimitState>) {
        let mut counters = self.counters.lock();
        let quotas = subject
            .plan
            .plan
            .quotas
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (key, w) = Self::window_key(&subject, i, now);
                Self::state(
                    Self::counter(&mut counters, &subject, i, &key, w),
                    q.limit,
                    q.metric,
                    i,
                    now,
                )
            })
            .collect();
        (Vec::new(), quotas)
    }

    async fn refund(&self, subject: Subject<'_>, reservation: &Metered, now: Timestamp) {
        {
            let mut counters = self.counters.lock();
            for &i in &subject.plan.request_quotas {
                if !reservation.counts_in(i) {
                    continue;
                }
                let (key, w) = Self::window_key(&subject, i, now);
                let c = Self::counter(&mut counters, &subject, i, &key, w);
                c.leased += 1;
                c.spent = (c.spent - Decimal::ONE).max(Decimal::ZERO);
                // Given back before it settled, as a refund comes within the backend's timeout;
                // one that comes later is taken from what settles next (the key never goes down).
                let due = self.settles_at(now);
                match c.maturing.iter_mut().find(|(at, n)| *at == due && *n > 0) {
                    Some((_, n)) => *n -= 1,
                    None => c.settled -= 1,
                }
            }
        }
        CounterStore::settle(self, subject, reservation, &Metered::default(), now).await;
    }

    async fn settle(
        &self,
        subject: Subject<'_>,
        reserved: &Metered,
        used: &Metered,
        now: Timestamp,
    ) {
        let plan = subject.plan;
        for (i, quota) in plan.plan.quotas.iter().enumerate() {
            let (Some(used), Some(reserved)) =
                (used.amount(quota.metric), reserved.share(i, quota.metric))
            else {
                continue;
            };
            let (key, w) = Self::window_key(&subject, i, now);
            let used_units = units(quota.metric, used);
            // The call's final amount is settled whatever its reservation was.
            if used_units != 0 {
                let mut counters = self.counters.lock();
                Self::counter(&mut counters, &subject, i, &key, w).settled += used_units;
            }
            let delta = used_units - units(quota.metric, reserved);
            if delta == 0 {
                continue;
            }
            let change = Adjustment {
                op: self.record_key(&key),
                delta,
            };
            let ttl = time_to_live(key_expiry(w, false), now);
            let result = self.adjust(&key, &change, ttl, "charge").await;
            let mut counters = self.counters.lock();
            let c = Self::counter(&mut counters, &subject, i, &key, w);
            c.spent = (c.spent + used - reserved).max(Decimal::ZERO);
            match result {
                Ok(total) => c.redis_used = total,
                // Usage already happened: whatever the failure policy, it is kept and retried
                // (with the same id: if Redis did apply it, it is not counted twice). Units
                // given back are counted as returned when they arrive.
                Err(_) => {
                    c.unanswered.push(change);
                    if delta > 0 {
                        self.metrics.unreconciled_units.add(delta);
                    }
                }
            }
        }
    }

    fn usage(&self) -> Vec<UsageRow> {
        let counters = self.counters.lock();
        let mut rows: Vec<UsageRow> = counters
            .values()
            .filter(|c| !c.rate && !c.spent.is_zero())
            .map(|c| UsageRow {
                tenant: c.tenant.to_string(),
                plan: c.plan.to_string(),
                quota: c.quota.clone(),
                period_start: c.window.start,
                period_end: c.window.end,
                used: c.spent.normalize(),
            })
            .collect();
        rows.sort_by(|a, b| (&a.tenant, &a.plan, &a.quota).cmp(&(&b.tenant, &b.plan, &b.quota)));
        rows
    }
}

#[cfg(test)]
mod tests {
    //! The store while Redis cannot be reached: a loopback port nothing listens on refuses every
    //! connection, as a Redis that is down does. (Counting against a live Redis is tested with a
    //! real server in `proxy/tests/redis_store.rs`.)

    use serde_json::json;

    use super::*;

    fn unreachable_store() -> (Arc<RedisStore>, StoreMetrics) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let metrics = StoreMetrics::new(&prometheus::Registry::new()).expect("metrics");
        let target = StoreTarget {
            url: format!("redis://127.0.0.1:{port}"),
            tls: Default::default(),
        };
        let store = RedisStore::connect(&target, true, Duration::from_secs(60), metrics.clone())
            .expect("a lazy connection");
        (store, metrics)
    }

    /// What the next settle adds to Redis's count of one quota: units counted while it was down
    /// (FailOpen admissions, charges kept to be resent) less the unspent units it gives back (a
    /// refund puts its unit into the local slice).
    fn owed(store: &RedisStore, quota: &str) -> i64 {
        let counters = store.counters.lock();
        let owed = |c: &Counter| c.unconfirmed() - i64::try_from(c.leased).unwrap_or(i64::MAX);
        counters
            .values()
            .filter(|c| c.quota == quota)
            .map(owed)
            .sum()
    }

    #[tokio::test]
    async fn fail_open_admits_while_redis_is_down_and_owes_exactly_what_it_admitted() {
        let (store, metrics) = unreachable_store();
        let plan = PlanEntry::from_spec(json!({
            "failurePolicy": "FailOpen",
            "rateLimits": [{"name": "per-second", "requests": 1, "window": "1s"}],
            "quotas": [{"name": "monthly", "metric": "Requests", "limit": "100", "period": "Month"},
                       {"name": "tokens", "metric": "TotalTokens", "limit": "10", "period": "Month"}]}));
        let tenant: Arc<str> = Arc::from("shop/acme");
        let subject = Subject {
            tenant: &tenant,
            plan: &plan,
        };
        let now = Timestamp::now();
        for _ in 0..2 {
            let admission = store.admit(subject, now, &Metered::default()).await;
            assert!(
                matches!(admission, Admission::Admitted { .. }),
                "{admission:?}"
            );
        }
        // Both requests are owed to the Requests quota (rate-limit windows are not reconciled).
        assert_eq!(owed(&store, "monthly"), 2);
        assert_eq!(metrics.unreconciled_units.get(), 2);

        // Tokens charged while down are owed too, and spend the token quota locally ...
        store
            .charge(
                subject,
                Metered {
                    output_tokens: 20,
                    ..Metered::default()
                },
                now,
            )
            .await;
        assert_eq!(owed(&store, "tokens"), 20);
        assert_eq!(metrics.unreconciled_units.get(), 22);
        let refused = store.admit(subject, now, &Metered::default()).await;
        assert!(
            matches!(refused, Admission::QuotaExhausted { .. }),
            "{refused:?}"
        );
        // ... and the refused request left no debt behind.
        assert_eq!(owed(&store, "monthly"), 2);
        assert_eq!(metrics.unreconciled_units.get(), 22);

        // A refund gives the request back: one unit less to add when Redis is back.
        store.refund(subject, &Metered::default(), now).await;
        assert_eq!(owed(&store, "monthly"), 1);
        assert_eq!(metrics.partitioned.get(), 1, "the outage is shown");
    }

    #[tokio::test]
    async fn fail_closed_refuses_while_redis_is_down_and_owes_nothing() {
        let (store, metrics) = unreachable_store();
        let plan = PlanEntry::from_spec(json!({
            "failurePolicy": "FailClosed",
            "quotas": [{"name": "monthly", "metric": "Requests", "limit": "100", "period": "Month"}]}));
        let tenant: Arc<str> = Arc::from("shop/acme");
        let subject = Subject {
            tenant: &tenant,
            plan: &plan,
        };
        let admission = store
            .admit(subject, Timestamp::now(), &Metered::default())
            .await;
        assert_eq!(admission, Admission::StoreUnavailable);
        assert_eq!(owed(&store, "monthly"), 0);
        assert_eq!(metrics.unreconciled_units.get(), 0);
    }
}

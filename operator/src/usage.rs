//! Where `Tenant.status.usage` comes from.
//!
//! - Proxies counting in Redis (`--store`): the fleet's counters themselves, read by the leader
//!   every 10 s. The truth survives proxy restarts, and it is what the proxies enforce. It
//!   includes units leased to proxies and not spent yet (at most one slice per proxy; idle slices
//!   go back within seconds).
//! - Otherwise: the sum of the proxies' usage reports (each proxy counts its own share).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tollgate_crds::counter_store::{
    StoreConnection, StoreError, StoreTarget, Timeouts, counter_key, from_units,
};
use tollgate_crds::period::window;
use tollgate_crds::resources::Metric;
use tollgate_crds::snapshot::{ObjectKey, Plan, Snapshot};
use tollgate_crds::stream::UsageRecord;

use crate::config_server::ProxyRegistry;
use crate::metrics::OperatorMetrics;
use crate::publisher::Published;

/// Tenants read at once (one MGET each: a tenant's keys share a Redis Cluster slot).
const CONCURRENT_READS: usize = 32;

/// The source of every tenant's current-period usage.
#[derive(Debug, Clone)]
pub enum UsageSource {
    /// Summed from the proxies' reports.
    Reports(Arc<ProxyRegistry>),
    /// Read from the fleet's Redis counters.
    Redis(Arc<RedisUsage>),
}

impl UsageSource {
    /// The tenant's usage per (plan, quota) in the periods current at `now`.
    pub fn usage_of(&self, tenant: &str, now: Timestamp) -> Vec<UsageRecord> {
        match self {
            Self::Reports(registry) => registry.usage_of(tenant, now),
            Self::Redis(redis) => redis.usage_of(tenant, now),
        }
    }

    /// Resolves when new usage has been read (reports wake the status writer through the
    /// registry already).
    pub async fn refreshed(&self) {
        match self {
            Self::Reports(_) => std::future::pending().await,
            Self::Redis(redis) => redis.refreshed.notified().await,
        }
    }
}

/// The current-period counters of every tenant, as last read from Redis.
pub struct RedisUsage {
    conn: StoreConnection,
    latest: Mutex<HashMap<String, Vec<UsageRecord>>>,
    refreshed: Notify,
    metrics: OperatorMetrics,
}

impl std::fmt::Debug for RedisUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUsage").finish_non_exhaustive()
    }
}

/// The counters of one (tenant, plan): the keys to read and, for each, what it stands for and
/// the metric its units are in.
struct Read {
    keys: Vec<String>,
    records: Vec<(UsageRecord, Metric)>,
}

/// Every counter that is current at `now`: for each tenant, each plan it uses (its own and
/// per-subscription ones), each quota.
fn current_counters(snapshot: &Snapshot, now: Timestamp) -> Vec<Read> {
    let plans: HashMap<&ObjectKey, (&Plan, TimeZone)> = snapshot
        .plans
        .iter()
        .map(|p| {
            let tz = TimeZone::get(&p.timezone).unwrap_or(TimeZone::UTC);
            (&p.key, (p, tz))
        })
        .collect();
    let mut reads = Vec::new();
    for tenant in &snapshot.tenants {
        let mut used_plans: Vec<&ObjectKey> = tenant
            .plan
            .iter()
            .chain(tenant.subscriptions.iter().filter_map(|s| s.plan.as_ref()))
            .collect();
        used_plans.sort();
        used_plans.dedup();
        let tenant_id = tenant.key.to_string();
        for plan_key in used_plans {
            let Some((plan, tz)) = plans.get(plan_key) else {
                continue;
            };
            let plan_id = plan_key.to_string();
            let mut read = Read {
                keys: Vec::new(),
                records: Vec::new(),
            };
            for quota in &plan.quotas {
                let w = window(quota.period, tz, now);
                read.keys
                    .push(counter_key(&tenant_id, &plan_id, &quota.name, w.start));
                let record = UsageRecord {
                    tenant: tenant_id.clone(),
                    plan: plan_id.clone(),
                    quota: quota.name.clone(),
                    period_start: w.start,
                    period_end: w.end,
                    used: rust_decimal::Decimal::ZERO,
                };
                read.records.push((record, quota.metric));
            }
            if !read.keys.is_empty() {
                reads.push(read);
            }
        }
    }
    reads
}

impl RedisUsage {
    /// A lazy connection to the counters: the operator runs while Redis is down (usage then
    /// stays as last read, and the failure is logged and counted).
    pub fn connect(target: &StoreTarget, metrics: OperatorMetrics) -> Result<Self, StoreError> {
        Ok(Self {
            conn: target.connect(Timeouts {
                connect: Duration::from_secs(2),
                response: Duration::from_secs(2),
            })?,
            latest: Mutex::new(HashMap::new()),
            refreshed: Notify::new(),
            metrics,
        })
    }

    fn usage_of(&self, tenant: &str, now: Timestamp) -> Vec<UsageRecord> {
        self.latest
            .lock()
            .get(tenant)
            .map(|records| {
                records
                    .iter()
                    .filter(|r| r.period_end > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reads every current counter of `snapshot`; keeps what was read even when some reads
    /// fail (those tenants keep their previous usage). Returns the number of failed reads.
    pub async fn refresh(&self, snapshot: &Snapshot, now: Timestamp) -> usize {
        let reads = current_counters(snapshot, now);
        let results: Vec<(Read, redis::RedisResult<Vec<Option<i64>>>)> =
            futures::stream::iter(reads)
                .map(|read| {
                    let mut conn = self.conn.clone();
                    async move {
                        let result = redis::cmd("MGET")
                            .arg(&read.keys)
                            .query_async(&mut conn)
                            .await;
                        (read, result)
                    }
                })
                .buffer_unordered(CONCURRENT_READS)
                .collect()
                .await;
        let mut failed = 0;
        let mut fresh: HashMap<String, Vec<UsageRecord>> = HashMap::new();
        let mut latest = self.latest.lock();
        for (read, result) in results {
            let Some(tenant) = read.records.first().map(|(r, _)| r.tenant.clone()) else {
                continue;
            };
            match result {
                Ok(values) => {
                    let records =
                        read.records
                            .into_iter()
                            .zip(values)
                            .map(|((mut r, metric), v)| {
                                r.used = from_units(metric, v.unwrap_or(0).max(0));
                                r
                            });
                    fresh.entry(tenant).or_default().extend(records);
                }
                Err(e) => {
                    failed += 1;
                    tracing::debug!(%tenant, error = %e, "cannot read usage from Redis");
                    let plan = read.records.first().map(|(r, _)| r.plan.as_str());
                    let kept = latest
                        .get(&tenant)
                        .into_iter()
                        .flatten()
                        .filter(|r| Some(r.plan.as_str()) == plan)
                        .cloned();
                    fresh.entry(tenant).or_default().extend(kept);
                }
            }
        }
        *latest = fresh;
        failed
    }

    /// Reads the counters every `every` while this replica leads, and wakes the status writer.
    pub async fn run(
        self: Arc<Self>,
        every: Duration,
        published: watch::Receiver<Arc<Published>>,
        mut leading: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = leading.changed() => if changed.is_err() { return },
            }
            let snapshot = published.borrow().clone();
            if !*leading.borrow() || snapshot.version == 0 {
                continue;
            }
            let started = Instant::now();
            let failed = self.refresh(&snapshot.snapshot, Timestamp::now()).await;
            let result = if failed == 0 { "ok" } else { "error" };
            self.metrics.usage_reads.with_label_values(&[result]).inc();
            self.metrics
                .usage_read_duration
                .observe(started.elapsed().as_secs_f64());
            if failed > 0 {
                tracing::warn!(
                    failed,
                    "cannot read some tenants' usage from Redis; their status keeps the last value read"
                );
            }
            self.refreshed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let plan = |name: &str, tz: &str, quotas: serde_json::Value| {
            serde_json::json!({
                "key": {"namespace": "shop", "name": name},
                "rateLimits": [], "quotas": quotas, "timezone": tz,
                "pricing": null, "paymentUrl": null, "failurePolicy": "FailClosed"
            })
        };
        serde_json::from_value(serde_json::json!({
            "routes": [],
            "plans": [
                plan("gold", "Asia/Kolkata", serde_json::json!([
                    {"name": "calls", "metric": "Requests", "limit": "100", "period": "Month"},
                    {"name": "spend", "metric": "Cost", "limit": "5", "period": "Day"}
                ])),
                plan("trial", "UTC", serde_json::json!([
                    {"name": "calls", "metric": "Requests", "limit": "10", "period": "Week"}
                ])),
                plan("unlimited", "UTC", serde_json::json!([])),
            ],
            "tenants": [{
                "key": {"namespace": "shop", "name": "acme"},
                "displayName": null, "keyDigests": [], "plan": {"namespace": "shop", "name": "gold"},
                "billingState": "Active", "paidThrough": null,
                "subscriptions": [
                    {"route": "search", "plan": {"namespace": "shop", "name": "trial"}},
                    {"route": "chat", "plan": {"namespace": "shop", "name": "gold"}},
                    {"route": "free", "plan": {"namespace": "shop", "name": "unlimited"}}
                ]
            }]
        }))
        .expect("a valid snapshot")
    }

    #[test]
    fn every_plan_a_tenant_uses_is_read_once_in_its_own_time_zone() {
        let now: Timestamp = "2026-11-25T20:00:00Z".parse().expect("timestamp");
        let reads = current_counters(&snapshot(), now);
        let keys: Vec<&str> = reads
            .iter()
            .flat_map(|r| r.keys.iter().map(String::as_str))
            .collect();
        // gold: the month and the day start at midnight in Kolkata (UTC+05:30); 20:00Z on the
        // 25th is already the 26th there. trial: weeks start on Monday in UTC. unlimited: nothing
        // to read. gold is read once although two of acme's routes use it.
        assert_eq!(
            keys,
            [
                "tollgate:{shop/acme|shop/gold}:calls:1793471400", // 2026-10-31T18:30Z
                "tollgate:{shop/acme|shop/gold}:spend:1795631400", // 2026-11-25T18:30Z
                "tollgate:{shop/acme|shop/trial}:calls:1795392000", // 2026-11-23T00:00Z (Monday)
            ]
        );
        let metrics: Vec<Metric> = reads
            .iter()
            .flat_map(|r| r.records.iter().map(|(_, m)| *m))
            .collect();
        assert_eq!(metrics, [Metric::Requests, Metric::Cost, Metric::Requests]);
    }
}

//! Usage export: what the fleet metered goes to billing (Stripe meter events or CloudEvents)
//! exactly once, across operator restarts and leader changes.
//!
//! - **What is exported**: quotas with `meterEventName`, per tenant and period, from the settled
//!   keys the proxies keep in Redis beside each counter (requests admitted and not refunded,
//!   calls' final tokens and cost; never a lease or a reservation). They only grow.
//! - **The cursor** is `Tenant.status.export[]`: per series, the units the sink acknowledged and
//!   the event in flight (`pending`). Each round, for a series with new usage, the leader first
//!   records the event as pending (a write conditional on the Tenant's resourceVersion), then
//!   sends it, then records it as acknowledged (conditional again). A leader that stops anywhere
//!   in between leaves a pending event that its successor sends again unchanged: same
//!   identifier, value and time, which the sink drops as a duplicate. A deposed leader's writes
//!   fail their precondition once its successor has written, so two replicas never record two
//!   different events over the same units.
//! - **Identifiers** are derived from the tenant's UID, the series and the range of units
//!   ([`series::identifier`]), so they are the same whoever computes them.
//! - **Retries** back off per series (1 s doubling to 5 min); an event unacknowledged for 20 h
//!   is no longer sent (Stripe remembers identifiers for at least 24 h) and is reported.

pub mod series;
pub mod sink;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::watch;
use tollgate_crds::compile::object_key;
use tollgate_crds::counter_store::{StoreConnection, settled_key, to_units};
use tollgate_crds::period::window;
use tollgate_crds::resources::{ExportStatus, PendingExport, Tenant};
use tollgate_crds::snapshot::{ObjectKey, Plan, Snapshot};

use crate::metrics::OperatorMetrics;
use crate::publisher::Published;
use crate::watch::{Caches, all};
use series::Next;
use sink::{Delivered, SendError, Sink, UsageEvent};

/// The field manager of `status.export`.
pub const FIELD_MANAGER: &str = "tollgate-operator-export";

/// Tenants exported at once.
const CONCURRENT_TENANTS: usize = 16;

/// Longest wait between two attempts at one series.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A series, as the backoff remembers it: tenant, plan, quota, period start, overage.
type SeriesKey = (ObjectKey, String, String, String, bool);

/// The leader's usage export.
pub struct Exporter {
    /// API client (writes `status.export`).
    pub client: kube::Client,
    /// Watched objects (the Tenants and their status).
    pub caches: Caches,
    /// Latest publication (plans and their time zones).
    pub published: watch::Receiver<Arc<Published>>,
    /// The fleet's Redis.
    pub conn: StoreConnection,
    /// Where events go.
    pub sink: Sink,
    /// Time between rounds.
    pub interval: Duration,
    /// Metrics.
    pub metrics: OperatorMetrics,
    /// Failures per series and when to try again.
    backoff: Mutex<HashMap<SeriesKey, (u32, Instant)>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("sink", &self.sink)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// What one tenant's round came to, for the metrics and the round's log line.
#[derive(Debug, Default)]
struct Outcome {
    /// Units metered and not acknowledged, per event name.
    unacknowledged: HashMap<String, u64>,
    /// When the oldest pending event was recorded.
    oldest_pending: Option<Timestamp>,
    /// Events that failed, and the first error.
    failed: usize,
    /// Series whose pending event is stuck (no longer sent).
    stuck: usize,
    first_error: Option<String>,
}

impl Exporter {
    /// An exporter; [`Exporter::run`] starts it.
    pub fn new(
        client: kube::Client,
        caches: Caches,
        published: watch::Receiver<Arc<Published>>,
        conn: StoreConnection,
        sink: Sink,
        interval: Duration,
        metrics: OperatorMetrics,
    ) -> Self {
        Self {
            client,
            caches,
            published,
            conn,
            sink,
            interval,
            metrics,
            backoff: Mutex::new(HashMap::new()),
        }
    }

    /// Exports every interval while this replica leads.
    pub async fn run(self: Arc<Self>, mut leading: watch::Receiver<bool>) {
        self.caches.wait_until_ready().await;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = leading.changed() => if changed.is_err() { return },
            }
            let published = self.published.borrow().clone();
            if !*leading.borrow() {
                // The leader's figures: a standby shows none (a deposed leader's would be stale).
                self.metrics.usage_export_unacknowledged.reset();
                self.metrics.usage_export_oldest_pending.set(0);
                self.metrics.usage_export_stuck.set(0);
                continue;
            }
            if published.version == 0 {
                continue;
            }
            self.round(&published.snapshot, &leading).await;
        }
    }

    /// One pass over every tenant.
    async fn round(&self, snapshot: &Snapshot, leading: &watch::Receiver<bool>) {
        let now = Timestamp::now();
        let plans: HashMap<&ObjectKey, &Plan> =
            snapshot.plans.iter().map(|p| (&p.key, p)).collect();
        let tenants: HashMap<&ObjectKey, &tollgate_crds::snapshot::Tenant> =
            snapshot.tenants.iter().map(|t| (&t.key, t)).collect();
        let outcomes: Vec<Outcome> = futures::stream::iter(all(&self.caches.tenants))
            .map(|tenant| {
                let key = object_key(tenant.as_ref());
                let wanted = tenants
                    .get(&key)
                    .map(|t| wanted_series(t, &plans, now))
                    .unwrap_or_default();
                async move { self.tenant(&tenant, key, wanted, now, leading).await }
            })
            .buffer_unordered(CONCURRENT_TENANTS)
            .collect()
            .await;
        let mut unacknowledged: HashMap<String, u64> = HashMap::new();
        let mut oldest: Option<Timestamp> = None;
        let mut failed = 0;
        let mut stuck = 0;
        let mut first_error = None;
        for o in outcomes {
            stuck += o.stuck;
            for (name, units) in o.unacknowledged {
                *unacknowledged.entry(name).or_default() += units;
            }
            oldest = match (oldest, o.oldest_pending) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            failed += o.failed;
            first_error = first_error.or(o.first_error);
        }
        self.metrics.usage_export_unacknowledged.reset();
        for (name, units) in &unacknowledged {
            self.metrics
                .usage_export_unacknowledged
                .with_label_values(&[name])
                .set(i64::try_from(*units).unwrap_or(i64::MAX));
        }
        self.metrics
            .usage_export_oldest_pending
            .set(oldest.map_or(0, |t| Timestamp::now().duration_since(t).as_secs().max(0)));
        self.metrics
            .usage_export_stuck
            .set(i64::try_from(stuck).unwrap_or(i64::MAX));
        if failed > 0 {
            tracing::warn!(
                sink = self.sink.name(),
                failed,
                first_error = first_error.as_deref().unwrap_or_default(),
                "usage events not delivered; each is sent again, unchanged, with backoff"
            );
        }
    }

    /// Exports one tenant's series.
    async fn tenant(
        &self,
        tenant: &Tenant,
        key: ObjectKey,
        wanted: Vec<ExportStatus>,
        now: Timestamp,
        leading: &watch::Receiver<bool>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let shown: Vec<ExportStatus> = tenant
            .status
            .as_ref()
            .map(|s| s.export.clone())
            .unwrap_or_default();
        if wanted.is_empty() && shown.is_empty() {
            return outcome;
        }
        let uid = tenant.uid().unwrap_or_default();
        let customer = match (
            &tenant.spec.billing.stripe,
            self.sink.needs_stripe_customer(),
        ) {
            (Some(stripe), _) => Some(stripe.customer.clone()),
            (None, false) => Some(key.to_string()),
            (None, true) => None,
        };
        let mut entries = shown.clone();
        for mut w in wanted {
            if entries.iter().any(|e| series::same(e, &w)) {
                continue;
            }
            // The other part of the same quota and period, if it began already: its split
            // point, not the limit now (a limit changed in between would bill units twice).
            if let Some(other) = entries.iter().find(|e| {
                e.quota_policy == w.quota_policy
                    && e.quota == w.quota
                    && e.period_start == w.period_start
                    && e.overage != w.overage
            }) {
                w.split_at = other.split_at;
            }
            entries.push(w);
        }
        let settled = self.read_settled(&key, &entries).await;
        // A quota that bills its overage apart splits its settled usage where its series say
        // (the limit when they began).
        let metered: Vec<Option<u64>> = entries
            .iter()
            .zip(settled)
            .map(|(e, settled)| settled.map(|s| series::share(s, e.split_at, e.overage)))
            .collect();
        // A series leaves the status once its period is long over, and only on a reading that
        // shows nothing left to send (a failed read keeps it for the next round).
        let (mut entries, metered): (Vec<ExportStatus>, Vec<Option<u64>>) = entries
            .into_iter()
            .zip(metered)
            .filter(|(e, read)| {
                !(series::is_done(e, now) && read.is_some_and(|r| r <= e.acknowledged))
            })
            .unzip();

        // First the events to send are recorded (nothing is sent that the status does not hold).
        for (entry, metered) in entries.iter_mut().zip(&metered) {
            let Some(metered) = *metered else { continue };
            if entry.pending.is_none() {
                entry.metered = metered;
            }
            if let Next::Record(pending) = series::next(entry, metered, &uid, now) {
                match &customer {
                    Some(customer) => {
                        entry.pending = Some(PendingExport {
                            customer: customer.clone(),
                            ..pending
                        });
                        entry.last_error = None;
                    }
                    None => {
                        entry.last_error = Some(
                            "the Tenant names no Stripe customer (spec.billing.stripe): its usage is not exported"
                                .into(),
                        );
                    }
                }
            }
        }
        // A series with nothing metered yet stays out of the status (no write per tenant for
        // usage that does not exist).
        entries.retain(|e| {
            e.pending.is_some()
                || e.last_error.is_some()
                || shown.iter().any(|s| series::same(s, e))
        });
        let mut version = tenant.resource_version();
        if entries != shown {
            if !*leading.borrow() {
                return outcome;
            }
            match self.write(&key, version.as_deref(), &entries).await {
                Ok(written) => version = written,
                Err(e) => {
                    tracing::debug!(tenant = %key, error = %e, "usage export: status not written; next round");
                    return outcome;
                }
            }
        }

        // Then sent, and what the sink took recorded as acknowledged.
        let before_sending = entries.clone();
        // (series, identifier, units) of each event the sink took.
        let mut taken: Vec<(ExportStatus, String, u64)> = Vec::new();
        for entry in entries.iter_mut() {
            let Some(pending) = entry.pending.clone() else {
                continue;
            };
            let series: SeriesKey = (
                key.clone(),
                entry.quota_policy.clone(),
                entry.quota.clone(),
                entry.period_start.clone(),
                entry.overage,
            );
            match series::next(entry, entry.metered, &uid, now) {
                Next::Stuck => {
                    outcome.stuck += 1;
                    let stuck = format!(
                        "event {} unacknowledged since {}: no longer sent (the sink may have forgotten its identifier). If the sink has it, set acknowledged to {} and remove pending; if not, add it there by hand first",
                        pending.id, pending.created, pending.to
                    );
                    if entry.last_error.as_deref() != Some(stuck.as_str()) {
                        self.metrics
                            .usage_export_events
                            .with_label_values(&["stuck"])
                            .inc();
                        tracing::error!(tenant = %key, quota_policy = %entry.quota_policy, quota = %entry.quota, id = %pending.id, "usage event stuck");
                        entry.last_error = Some(stuck);
                    }
                    continue;
                }
                Next::Resend => {}
                Next::Record(_) | Next::Nothing => continue,
            }
            if self
                .backoff
                .lock()
                .get(&series)
                .is_some_and(|(_, next)| Instant::now() < *next)
            {
                continue;
            }
            if !*leading.borrow() {
                break;
            }
            // Recorded with the event (a status from before it was: the Tenant's now).
            let recorded = Some(pending.customer.as_str()).filter(|c| !c.is_empty());
            let (Ok(timestamp), Some(customer)) = (
                pending.timestamp.parse::<Timestamp>(),
                recorded.or(customer.as_deref()),
            ) else {
                continue;
            };
            let event = UsageEvent {
                id: &pending.id,
                event_name: &entry.event_name,
                value: pending.to.saturating_sub(pending.from),
                timestamp,
                customer,
                tenant: &key,
                plan: &entry.quota_policy,
                quota: &entry.quota,
                period_start: &entry.period_start,
            };
            match self.sink.send(&event).await {
                Ok(delivered) => {
                    let result = match delivered {
                        Delivered::Accepted => "accepted",
                        Delivered::Duplicate => "duplicate",
                    };
                    self.metrics
                        .usage_export_events
                        .with_label_values(&[result])
                        .inc();
                    tracing::debug!(tenant = %key, id = %pending.id, value = event.value, result, "usage event delivered");
                    taken.push((entry.clone(), pending.id.clone(), pending.to));
                    entry.acknowledged = pending.to;
                    entry.pending = None;
                    entry.last_error = None;
                    self.backoff.lock().remove(&series);
                }
                Err(e) => {
                    self.metrics
                        .usage_export_events
                        .with_label_values(&["failed"])
                        .inc();
                    outcome.failed += 1;
                    let message = e.to_string();
                    tracing::debug!(tenant = %key, id = %pending.id, error = %message, "usage event not delivered");
                    outcome.first_error.get_or_insert_with(|| message.clone());
                    let mut backoff = self.backoff.lock();
                    let (failures, next) = backoff.entry(series).or_insert((0, Instant::now()));
                    *failures += 1;
                    let wait = Duration::from_secs(1u64 << (*failures - 1).min(9)).min(MAX_BACKOFF);
                    *next = Instant::now() + wait;
                    if matches!(e, SendError::Transport(_)) && *failures == 1 {
                        tracing::info!(tenant = %key, error = %message, "usage export: the sink did not answer");
                    }
                    entry.last_error = Some(message);
                }
            }
        }
        if entries != before_sending && *leading.borrow() {
            let written = match self.write(&key, version.as_deref(), &entries).await {
                // Another writer changed the Tenant meanwhile (the status writer's usage, a
                // spec edit): acknowledged on what it holds now, if the events are still the
                // ones pending there.
                Err(kube::Error::Api(e)) if e.code == 409 && !taken.is_empty() => {
                    self.acknowledge_again(&key, &taken).await
                }
                other => other.map(|_| ()),
            };
            if let Err(e) = written {
                // The next round finds the events pending and sends them again (the sink drops
                // the copies).
                tracing::debug!(tenant = %key, error = %e, "usage export: acknowledgement not recorded; next round");
            }
        }
        for entry in &entries {
            let behind = entry.metered.saturating_sub(entry.acknowledged);
            if behind > 0 {
                *outcome
                    .unacknowledged
                    .entry(entry.event_name.clone())
                    .or_default() += behind;
            }
            if let Some(created) = entry
                .pending
                .as_ref()
                .and_then(|p| p.created.parse::<Timestamp>().ok())
            {
                outcome.oldest_pending =
                    Some(outcome.oldest_pending.map_or(created, |o| o.min(created)));
            }
        }
        outcome
    }

    /// The settled units of each entry (`None` where Redis could not be read): one MGET per
    /// plan (a tenant's keys under one plan share a Redis Cluster slot).
    async fn read_settled(&self, tenant: &ObjectKey, entries: &[ExportStatus]) -> Vec<Option<u64>> {
        let mut by_plan: HashMap<&str, Vec<(usize, String)>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let Ok(start) = e.period_start.parse::<Timestamp>() else {
                continue;
            };
            let plan = tenant.sibling(&e.quota_policy).to_string();
            by_plan
                .entry(e.quota_policy.as_str())
                .or_default()
                .push((i, settled_key(&tenant.to_string(), &plan, &e.quota, start)));
        }
        let mut metered = vec![None; entries.len()];
        for keys in by_plan.into_values() {
            let mut conn = self.conn.clone();
            let names: Vec<&String> = keys.iter().map(|(_, k)| k).collect();
            let values: redis::RedisResult<Vec<Option<i64>>> =
                redis::cmd("MGET").arg(&names).query_async(&mut conn).await;
            match values {
                Ok(values) => {
                    for ((i, _), v) in keys.iter().zip(values) {
                        metered[*i] = Some(u64::try_from(v.unwrap_or(0)).unwrap_or(0));
                    }
                }
                Err(e) => {
                    tracing::debug!(%tenant, error = %e, "usage export: cannot read settled usage");
                }
            }
        }
        metered
    }

    /// Records `delivered` (series, identifier, units) as acknowledged on the Tenant as the API
    /// server has it now, for each series whose pending event is still that identifier.
    async fn acknowledge_again(
        &self,
        key: &ObjectKey,
        delivered: &[(ExportStatus, String, u64)],
    ) -> Result<(), kube::Error> {
        let api: Api<Tenant> = Api::namespaced(self.client.clone(), &key.namespace);
        let current = api.get(&key.name).await?;
        let mut entries = current
            .status
            .as_ref()
            .map(|s| s.export.clone())
            .unwrap_or_default();
        let mut changed = false;
        for (series, id, to) in delivered {
            if let Some(e) = entries.iter_mut().find(|e| {
                series::same(e, series) && e.pending.as_ref().is_some_and(|p| &p.id == id)
            }) {
                e.acknowledged = *to;
                e.pending = None;
                e.last_error = None;
                changed = true;
            }
        }
        if changed {
            self.write(key, current.resource_version().as_deref(), &entries)
                .await?;
        }
        Ok(())
    }

    /// Writes `status.export` on condition that the Tenant is still at `version`; the
    /// resourceVersion written.
    async fn write(
        &self,
        key: &ObjectKey,
        version: Option<&str>,
        entries: &[ExportStatus],
    ) -> Result<Option<String>, kube::Error> {
        let api: Api<Tenant> = Api::namespaced(self.client.clone(), &key.namespace);
        let patch = json!({
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "Tenant",
            "metadata": {"name": key.name, "namespace": key.namespace, "resourceVersion": version},
            "status": {"export": entries},
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = api
            .patch_status(&key.name, &params, &Patch::Apply(&patch))
            .await?;
        Ok(written.resource_version())
    }
}

/// The series a tenant's plans export in the periods current at `now` (not yet read: zero
/// metered and acknowledged).
fn wanted_series(
    tenant: &tollgate_crds::snapshot::Tenant,
    plans: &HashMap<&ObjectKey, &Plan>,
    now: Timestamp,
) -> Vec<ExportStatus> {
    let mut used: Vec<&ObjectKey> = tenant
        .plan
        .iter()
        .chain(tenant.subscriptions.iter().filter_map(|s| s.plan.as_ref()))
        .collect();
    used.sort();
    used.dedup();
    let mut wanted = Vec::new();
    for plan_key in used {
        let Some(plan) = plans.get(plan_key) else {
            continue;
        };
        let tz = TimeZone::get(&plan.timezone).unwrap_or(TimeZone::UTC);
        for quota in &plan.quotas {
            let Some(event_name) = &quota.meter_event_name else {
                continue;
            };
            let mut windows = vec![window(quota.period, &tz, now)];
            // Periods that ended within KEPT_AFTER_PERIOD, for usage settled after their end:
            // read even if they had none when they ended (hourly quotas: the two hours before).
            while windows.len() < 4
                && let Some(last) = windows.last()
                && now.duration_since(last.start) <= series::KEPT_AFTER_PERIOD
                && let Ok(before) = last.start.checked_sub(jiff::SignedDuration::from_secs(1))
            {
                windows.push(window(quota.period, &tz, before));
            }
            for w in windows {
                let series = ExportStatus {
                    quota_policy: plan_key.name.clone(),
                    quota: quota.name.clone(),
                    period_start: w.start.to_string(),
                    period_end: w.end.to_string(),
                    event_name: event_name.clone(),
                    ..ExportStatus::default()
                };
                let split_at = quota.overage_meter_event_name.as_ref().map(|_| {
                    u64::try_from(to_units(quota.metric, quota.limit)).unwrap_or(u64::MAX)
                });
                let series = ExportStatus { split_at, ..series };
                let overage = quota
                    .overage_meter_event_name
                    .as_ref()
                    .map(|name| ExportStatus {
                        event_name: name.clone(),
                        overage: true,
                        ..series.clone()
                    });
                wanted.push(series);
                wanted.extend(overage);
            }
        }
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        serde_json::from_value(serde_json::json!({
            "routes": [],
            "plans": [{
                "key": {"namespace": "shop", "name": "gold"},
                "rateLimits": [], "timezone": "UTC", "pricing": null, "paymentUrl": null,
                "failurePolicy": "FailClosed",
                "quotas": [
                    {"name": "calls", "metric": "Requests", "limit": "100", "period": "Month",
                     "meterEventName": "api_requests"},
                    {"name": "hourly", "metric": "Requests", "limit": "10", "period": "Hour",
                     "meterEventName": "hourly_requests"},
                    {"name": "daily", "metric": "Requests", "limit": "10", "period": "Day"},
                    {"name": "spend", "metric": "Cost", "limit": "2.5", "period": "Month",
                     "whenExhausted": "Overage", "overage": true,
                     "meterEventName": "spend", "overageMeterEventName": "spend_overage"}
                ]
            }],
            "tenants": [{
                "key": {"namespace": "shop", "name": "acme"},
                "displayName": null, "keyDigests": [], "plan": {"namespace": "shop", "name": "gold"},
                "billingState": "Active", "paidThrough": null,
                "subscriptions": [{"route": "api", "plan": {"namespace": "shop", "name": "gold"}}]
            }]
        }))
        .expect("a valid snapshot")
    }

    fn periods(now: &str) -> Vec<(String, String)> {
        periods_of(now, "calls")
    }

    fn periods_of(now: &str, exported: &str) -> Vec<(String, String)> {
        let snapshot = snapshot();
        let plans: HashMap<&ObjectKey, &Plan> =
            snapshot.plans.iter().map(|p| (&p.key, p)).collect();
        let now: Timestamp = now.parse().expect("timestamp");
        wanted_series(&snapshot.tenants[0], &plans, now)
            .into_iter()
            .filter(|s| s.quota == exported)
            .map(|s| (s.period_start, s.period_end))
            .collect()
    }

    #[test]
    fn the_period_just_ended_is_read_for_two_hours_for_usage_settled_after_its_end() {
        // Only quotas with a meterEventName, once although two subscriptions use the plan.
        assert_eq!(
            periods("2026-12-15T10:00:00Z"),
            [(
                "2026-12-01T00:00:00Z".to_owned(),
                "2027-01-01T00:00:00Z".to_owned()
            )]
        );
        let both = [
            (
                "2027-01-01T00:00:00Z".to_owned(),
                "2027-02-01T00:00:00Z".to_owned(),
            ),
            (
                "2026-12-01T00:00:00Z".to_owned(),
                "2027-01-01T00:00:00Z".to_owned(),
            ),
        ];
        assert_eq!(periods("2027-01-01T00:00:01Z"), both);
        assert_eq!(periods("2027-01-01T02:00:00Z"), both);
        assert_eq!(periods("2027-01-01T02:00:01Z").len(), 1);
        // Hourly: the hour, and the two before it (a request of 09:59 may settle after 10:59).
        assert_eq!(
            periods_of("2027-01-01T11:30:00Z", "hourly"),
            [
                (
                    "2027-01-01T11:00:00Z".to_owned(),
                    "2027-01-01T12:00:00Z".to_owned()
                ),
                (
                    "2027-01-01T10:00:00Z".to_owned(),
                    "2027-01-01T11:00:00Z".to_owned()
                ),
                (
                    "2027-01-01T09:00:00Z".to_owned(),
                    "2027-01-01T10:00:00Z".to_owned()
                ),
            ]
        );
        // Quotas without a meterEventName are not exported.
        assert!(periods_of("2026-12-15T10:00:00Z", "daily").is_empty());
    }

    #[test]
    fn an_overage_quota_is_two_series_split_at_its_limit_in_whole_units() {
        let snapshot = snapshot();
        let plans: HashMap<&ObjectKey, &Plan> =
            snapshot.plans.iter().map(|p| (&p.key, p)).collect();
        let now: Timestamp = "2026-12-15T10:00:00Z".parse().expect("timestamp");
        let spend: Vec<(String, bool, Option<u64>)> =
            wanted_series(&snapshot.tenants[0], &plans, now)
                .into_iter()
                .filter(|s| s.quota == "spend")
                .map(|s| (s.event_name, s.overage, s.split_at))
                .collect();
        // Cost in millionths: 2.5 is 2,500,000 units. The split is recorded with the series,
        // so a limit changed later in the period does not move it.
        assert_eq!(
            spend,
            [
                ("spend".to_owned(), false, Some(2_500_000)),
                ("spend_overage".to_owned(), true, Some(2_500_000)),
            ]
        );
        // Quotas without overage names have no split.
        assert!(
            wanted_series(&snapshot.tenants[0], &plans, now)
                .iter()
                .filter(|s| s.quota == "calls")
                .all(|s| s.split_at.is_none())
        );
    }
}

//! Status of every object, written by the leader only, with server-side apply under one field
//! manager. Desired status is computed from the latest compile and the proxies' acknowledgements,
//! and written only when it differs from what the object shows (no write storms on resync).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tollgate_crds::compile::{Diagnostic, ObjectKind, Reason, object_key};
use tollgate_crds::period::window;
use tollgate_crds::resources::{
    CallUsageStatus, Condition, SubscriptionState, SubscriptionStatus, Tenant, TokenStatus,
    UsageStatus, conditions,
};
use tollgate_crds::snapshot::ObjectKey;

use crate::config_server::ProxyRegistry;
use crate::metrics::OperatorMetrics;
use crate::publisher::Published;
use crate::spend_alerts::{Announced, SpendAlert, reached};
use crate::usage::UsageSource;
use crate::watch::{API_KEY_LABEL, Caches, all};

/// The field manager of every status the operator writes.
pub const FIELD_MANAGER: &str = "tollgate-operator";
const RESYNC: Duration = Duration::from_secs(60);
/// How long one status write may take: an API server that stalls must not stall every status
/// round behind it (a write that times out is made again on the next round).
const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Status writes in flight at once. One at a time, 10,000 tenants' first statuses took 173 s on
/// the test API server; the API server serves writes to different objects in parallel.
const STATUS_WRITE_CONCURRENCY: usize = 16;

/// Runs `writes` with at most [`STATUS_WRITE_CONCURRENCY`] in flight.
async fn concurrently(writes: Vec<impl std::future::Future<Output = ()>>) {
    futures::stream::iter(writes)
        .buffer_unordered(STATUS_WRITE_CONCURRENCY)
        .for_each(|()| futures::future::ready(()))
        .await;
}

/// Inputs of the status writer.
pub struct StatusWriter {
    /// API client.
    pub client: kube::Client,
    /// Object caches (for current status and generation).
    pub caches: Caches,
    /// Latest publication.
    pub published: watch::Receiver<Arc<Published>>,
    /// Connected proxies.
    pub registry: Arc<ProxyRegistry>,
    /// Where tenants' usage comes from.
    pub usage: UsageSource,
    /// Leadership.
    pub leading: watch::Receiver<bool>,
    /// Metrics.
    pub metrics: OperatorMetrics,
    /// Event recorder.
    pub recorder: Recorder,
    /// Who reports Events (spend alerts get a recorder each: a shared one folds Events of the
    /// same reason and type into one series within minutes, keeping the first note).
    pub reporter: Reporter,
    /// Spend alerts to the tenants' owners' webhooks.
    pub webhooks: Arc<crate::alert_webhook::AlertWebhooks>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter").finish_non_exhaustive()
    }
}

/// A condition as it should be (lastTransitionTime is filled in from the current one).
#[derive(Debug, Clone, PartialEq)]
struct Desired {
    type_: &'static str,
    status: bool,
    reason: String,
    message: String,
}

fn condition(
    d: &Desired,
    generation: Option<i64>,
    current: &[Condition],
    now: Timestamp,
) -> Condition {
    let status = if d.status { "True" } else { "False" }.to_owned();
    let since = current
        .iter()
        .find(|c| c.type_ == d.type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: d.type_.to_owned(),
        status,
        reason: d.reason.clone(),
        message: d.message.clone(),
        last_transition_time: since,
        observed_generation: generation,
    }
}

fn same(current: &[Condition], wanted: &[Condition]) -> bool {
    wanted.iter().all(|w| {
        current.iter().any(|c| {
            c.type_ == w.type_
                && c.status == w.status
                && c.reason == w.reason
                && c.message == w.message
                && c.observed_generation == w.observed_generation
        })
    })
}

fn from_diagnostics(
    type_: &'static str,
    ok_reason: &str,
    ok_message: &str,
    diags: &[&Diagnostic],
) -> Desired {
    match diags.first() {
        None => Desired {
            type_,
            status: true,
            reason: ok_reason.to_owned(),
            message: ok_message.to_owned(),
        },
        Some(first) => Desired {
            type_,
            status: false,
            reason: first.reason.as_str().to_owned(),
            message: diags
                .iter()
                .map(|d| match d.reason {
                    // The usual cause in a cluster: the Secret exists, unlabelled, so the
                    // operator never saw it.
                    Reason::SecretNotFound => format!(
                        "{}: {} (the operator reads only Secrets labelled {API_KEY_LABEL}: kubectl label secret NAME {API_KEY_LABEL}=true)",
                        d.field, d.message
                    ),
                    _ => format!("{}: {}", d.field, d.message),
                })
                .collect::<Vec<_>>()
                .join("; "),
        },
    }
}

/// A route's Programmed condition: whether every proxy that serves it (`acked`: the versions
/// they acknowledged) runs a configuration version that has the route as it is now (`since`: the
/// first version that did), counted as "n/m proxies" (or sidecars).
fn programmed(
    accepted: bool,
    since: Option<u64>,
    acked: &[u64],
    noun: &str,
    version: u64,
) -> Desired {
    let Some(since) = since.filter(|_| accepted) else {
        return Desired {
            type_: conditions::PROGRAMMED,
            status: false,
            reason: "NotAccepted".to_owned(),
            message: "The route is not part of the configuration.".to_owned(),
        };
    };
    let total = acked.len();
    let at = acked.iter().filter(|acked| **acked >= since).count();
    Desired {
        type_: conditions::PROGRAMMED,
        status: total > 0 && at == total,
        reason: if total == 0 {
            "NoProxies"
        } else if at == total {
            "Programmed"
        } else {
            "Pending"
        }
        .to_owned(),
        message: format!("{at}/{total} {noun} at version {version}"),
    }
}

impl StatusWriter {
    /// Writes statuses while leading, forever.
    pub async fn run(mut self) {
        let mut emitted: HashSet<(ObjectKey, String)> = HashSet::new();
        let mut announced = Announced::default();
        loop {
            if !*self.leading.borrow() {
                if self.leading.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let published = self.published.borrow_and_update().clone();
            if published.version != 0 {
                self.write_all(&published, &mut emitted, &mut announced)
                    .await;
            }
            tokio::select! {
                _ = self.published.changed() => {}
                () = self.registry.changed.notified() => {}
                () = self.usage.refreshed() => {}
                _ = self.leading.changed() => {}
                () = tokio::time::sleep(RESYNC) => {}
            }
            // Batch acknowledgements from many proxies into one round of writes.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn write_all(
        &self,
        p: &Published,
        emitted: &mut HashSet<(ObjectKey, String)>,
        announced: &mut Announced,
    ) {
        let now = Timestamp::now();
        let mut by_object: HashMap<(ObjectKind, &ObjectKey), Vec<&Diagnostic>> = HashMap::new();
        for d in &p.diagnostics {
            by_object.entry((d.kind, &d.object)).or_default().push(d);
        }
        let diags = |kind: ObjectKind, key: &ObjectKey| -> Vec<&Diagnostic> {
            by_object.get(&(kind, key)).cloned().unwrap_or_default()
        };

        let plans = all(&self.caches.plans).into_iter().map(|plan| {
            let key = object_key(plan.as_ref());
            let desired = vec![from_diagnostics(
                conditions::ACCEPTED,
                "Accepted",
                "The plan is valid and part of the configuration.",
                &diags(ObjectKind::QuotaPolicy, &key),
            )];
            let current = plan
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            self.apply(plan, key, desired, current, now, None)
        });
        // Collected first: a lazy map over borrowed items makes the writer's future not Send.
        let plans: Vec<_> = plans.collect();
        concurrently(plans).await;

        // The central proxies serve the routes without a workload selector; a route with one is
        // served by the sidecars of the pods it selects, and only theirs count for it.
        let connected = self.registry.connected();
        let fleet: Vec<u64> = connected
            .iter()
            .filter(|(_, p)| p.workload.is_none())
            .map(|(_, p)| p.acked_version)
            .collect();
        let compiled: HashMap<&ObjectKey, &tollgate_crds::snapshot::Route> =
            p.snapshot.routes.iter().map(|r| (&r.key, r)).collect();
        let routes = all(&self.caches.routes).into_iter().map(|route| {
            let key = object_key(route.as_ref());
            let route_diags = diags(ObjectKind::ApiRoute, &key);
            let accepted = from_diagnostics(
                conditions::ACCEPTED,
                "Accepted",
                "The route is valid and part of the configuration.",
                &route_diags,
            );
            let sidecars: Vec<u64>;
            let (acked, noun) = match compiled.get(&key) {
                Some(r) if r.workload_selector.is_some() => {
                    sidecars = connected
                        .iter()
                        .filter(|(_, p)| p.workload.as_ref().is_some_and(|w| w.serves(r)))
                        .map(|(_, p)| p.acked_version)
                        .collect();
                    (sidecars.as_slice(), "sidecars")
                }
                _ => (fleet.as_slice(), "proxies"),
            };
            let programmed = programmed(
                accepted.status,
                p.route_versions.get(&key).copied(),
                acked,
                noun,
                p.version,
            );
            let current = route
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            self.apply(route, key, vec![accepted, programmed], current, now, None)
        });
        let routes: Vec<_> = routes.collect();
        concurrently(routes).await;

        let tenants = all(&self.caches.tenants);
        // Usage first, and the spend alerts it reached announced before the statuses that
        // record them are written (a leader stopping in between repeats an alert, never
        // loses one).
        let mut usage_by_tenant: HashMap<ObjectKey, Vec<UsageStatus>> = HashMap::new();
        let mut current_periods = HashSet::new();
        for tenant in &tenants {
            let key = object_key(tenant.as_ref());
            let previous = tenant
                .status
                .as_ref()
                .map(|s| s.usage.as_slice())
                .unwrap_or_default();
            let (mut usage, alerts) = self.usage_of(&key, p, now, previous, announced);
            for u in &usage {
                current_periods.insert((
                    key.to_string(),
                    u.quota_policy.clone(),
                    u.quota.clone(),
                    u.period_start.clone(),
                ));
            }
            // An alert whose Event could not be published is not recorded: the next round
            // tries again.
            let published =
                futures::stream::iter(alerts.into_iter().map(|(alert, used, limit)| {
                    let tenant = tenant.clone();
                    async move {
                        // A round outlives a lost lease by up to a write timeout: a leader
                        // deposed meanwhile leaves the alert to its successor.
                        let ok = *self.leading.borrow()
                            && self.announce_spend(&tenant, &alert, &used, &limit).await;
                        (alert, ok)
                    }
                }))
                .buffer_unordered(STATUS_WRITE_CONCURRENCY)
                .collect::<Vec<_>>()
                .await;
            for (alert, ok) in published {
                if ok {
                    announced.insert(alert);
                } else if let Some(u) = usage
                    .iter_mut()
                    .find(|u| u.quota_policy == alert.plan && u.quota == alert.quota)
                {
                    u.alerts_sent.retain(|&t| t != alert.threshold);
                }
            }
            usage_by_tenant.insert(key, usage);
        }
        announced.keep_only(&current_periods);
        let writes = tenants.iter().cloned().map(|tenant| {
            let key = object_key(tenant.as_ref());
            let ready = from_diagnostics(
                conditions::READY,
                "Ready",
                "Keys, plan and subscriptions resolved; the tenant can call its APIs.",
                &diags(ObjectKind::Tenant, &key),
            );
            let subscriptions = p.subscriptions.get(&key).cloned().unwrap_or_default();
            let usage = usage_by_tenant.remove(&key).unwrap_or_default();
            let call_usage = self.call_usage_of(&key, now);
            let billing = p.billing.get(&key).cloned();
            let status = tenant.status.clone().unwrap_or_default();
            let same_extra = status.subscriptions == subscriptions
                && status.usage == usage
                && status.call_usage == call_usage
                && status.billing == billing;
            let mut extra =
                json!({"subscriptions": subscriptions, "usage": usage, "callUsage": call_usage});
            if let Some(billing) = billing {
                extra["billing"] = json!(billing);
            }
            self.apply(
                tenant,
                key,
                vec![ready],
                status.conditions,
                now,
                Some((extra, same_extra)),
            )
        });
        let writes: Vec<_> = writes.collect();
        concurrently(writes).await;
        for tenant in &tenants {
            let key = object_key(tenant.as_ref());
            if let Some(subscriptions) = p.subscriptions.get(&key) {
                self.announce_pending(tenant, &key, subscriptions, emitted)
                    .await;
            }
        }
    }

    async fn apply<K>(
        &self,
        obj: Arc<K>,
        key: ObjectKey,
        desired: Vec<Desired>,
        current: Vec<Condition>,
        now: Timestamp,
        extra: Option<(serde_json::Value, bool)>,
    ) where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        K: Resource<Scope = kube::core::NamespaceResourceScope>,
    {
        let generation = obj.meta().generation;
        let wanted: Vec<Condition> = desired
            .iter()
            .map(|d| condition(d, generation, &current, now))
            .collect();
        let extra_same = extra.as_ref().is_none_or(|(_, same)| *same);
        if same(&current, &wanted) && extra_same {
            return;
        }
        let kind = K::kind(&()).to_string();
        let mut status = json!({"observedGeneration": generation, "conditions": wanted});
        if let Some((serde_json::Value::Object(fields), _)) = extra {
            for (k, v) in fields {
                status[k] = v;
            }
        }
        let patch = json!({"apiVersion": K::api_version(&()), "kind": kind, "status": status});
        let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
        let started = std::time::Instant::now();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = tokio::time::timeout(
            STATUS_WRITE_TIMEOUT,
            api.patch_status(&key.name, &params, &Patch::Apply(&patch)),
        )
        .await;
        self.metrics
            .status_write_duration
            .observe(started.elapsed().as_secs_f64());
        match written {
            Ok(Ok(_)) => self.metrics.status_writes.with_label_values(&[&kind]).inc(),
            Ok(Err(kube::Error::Api(e))) if e.code == 404 => {}
            Ok(Err(e)) => {
                self.metrics.status_write_errors.inc();
                tracing::warn!(%kind, object = %key, error = %e, "cannot write status");
            }
            Err(_) => {
                self.metrics.status_write_errors.inc();
                tracing::warn!(%kind, object = %key, timeout = ?STATUS_WRITE_TIMEOUT, "status write timed out; it is written again on the next round");
            }
        }
    }

    /// The tenant's usage in the current periods, with limits from the current plans (counters
    /// of quotas that no longer exist are left out), and the spend alerts it reached that
    /// neither `previous` (the status) nor this leader announced yet, with their used and limit.
    ///
    /// A quota the usage source has no figure for yet (a new leader before the proxies' first
    /// reports or its first Redis read; a read that failed) keeps what `previous` shows for its
    /// current period: the status neither goes blank on a leader change nor forgets the alerts
    /// it announced (which would announce them again once the figures come back).
    fn usage_of(
        &self,
        key: &ObjectKey,
        p: &Published,
        now: Timestamp,
        previous: &[UsageStatus],
        announced: &Announced,
    ) -> (Vec<UsageStatus>, Vec<(SpendAlert, String, String)>) {
        let mut alerts = Vec::new();
        let usage = self
            .usage
            .usage_of(&key.to_string(), now)
            .into_iter()
            .filter_map(|record| {
                let (namespace, name) = record.plan.split_once('/')?;
                let plan = p.snapshot.plan(&ObjectKey::new(namespace, name))?;
                let quota = plan.quotas.iter().find(|q| q.name == record.quota)?;
                let period_start = record.period_start.to_string();
                let (used, limit) = (
                    record.used.normalize().to_string(),
                    quota.limit.normalize().to_string(),
                );
                // Announced this period stays announced, even if usage went back down (a
                // credit): the status keeps what it said.
                let mut alerts_sent: Vec<u32> = previous
                    .iter()
                    .find(|u| {
                        u.quota_policy == name
                            && u.quota == record.quota
                            && u.period_start == period_start
                    })
                    .map(|u| u.alerts_sent.clone())
                    .unwrap_or_default();
                for threshold in reached(record.used, quota.limit, &quota.alert_at) {
                    if alerts_sent.contains(&threshold) {
                        continue;
                    }
                    alerts_sent.push(threshold);
                    let alert = SpendAlert {
                        tenant: key.to_string(),
                        plan: name.to_owned(),
                        quota: record.quota.clone(),
                        period_start: period_start.clone(),
                        threshold,
                    };
                    if !announced.contains(&alert) {
                        alerts.push((alert, used.clone(), limit.clone()));
                    }
                }
                alerts_sent.sort_unstable();
                Some(UsageStatus {
                    quota_policy: name.to_owned(),
                    quota: record.quota,
                    period_start,
                    used,
                    limit,
                    alerts_sent,
                })
            })
            .collect::<Vec<UsageStatus>>();
        let mut usage = usage;
        for kept in previous {
            let counted = usage.iter().any(|u| {
                u.quota_policy == kept.quota_policy
                    && u.quota == kept.quota
                    && u.period_start == kept.period_start
            });
            if !counted && self.is_current(key, p, kept, now) {
                usage.push(kept.clone());
            }
        }
        // One order, whatever order the figures came in: an unchanged status compares equal.
        usage.sort_by(|a, b| {
            (&a.quota_policy, &a.quota, &a.period_start).cmp(&(
                &b.quota_policy,
                &b.quota,
                &b.period_start,
            ))
        });
        (usage, alerts)
    }

    /// Whether `shown` is about a quota the tenant's plan (in its namespace) still has, in the
    /// period current at `now`.
    fn is_current(
        &self,
        tenant: &ObjectKey,
        p: &Published,
        shown: &UsageStatus,
        now: Timestamp,
    ) -> bool {
        let Some(plan) = p.snapshot.plan(&tenant.sibling(&shown.quota_policy)) else {
            return false;
        };
        let Some(quota) = plan.quotas.iter().find(|q| q.name == shown.quota) else {
            return false;
        };
        let tz = TimeZone::get(&plan.timezone).unwrap_or(TimeZone::UTC);
        window(quota.period, &tz, now).start.to_string() == shown.period_start
    }

    /// A spend alert: an Event on the Tenant (Warning once the quota is used up), then the
    /// metric; whether the Event was published.
    async fn announce_spend(
        &self,
        tenant: &Tenant,
        alert: &SpendAlert,
        used: &str,
        limit: &str,
    ) -> bool {
        let note = alert.note(used, limit);
        let event = Event {
            type_: if alert.threshold >= 100 {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: "SpendAlert".into(),
            note: Some(note),
            action: "Meter".into(),
            secondary: None,
        };
        // A recorder of its own: each alert is an Event of its own, with its own note.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if !publish(&recorder, &event, &tenant.object_ref(&())).await {
            return false;
        }
        tracing::info!(tenant = %alert.tenant, plan = %alert.plan, quota = %alert.quota,
            threshold = alert.threshold, used, limit, "spend alert");
        self.metrics
            .spend_alerts
            .with_label_values(&[&alert.threshold.to_string()])
            .inc();
        // The owner's webhook, after the Event and in the background: the Event is the record;
        // a slow owner's endpoint must not hold the status round.
        if tenant.spec.alert_webhook.is_some() {
            let (webhooks, metrics) = (self.webhooks.clone(), self.metrics.clone());
            let (tenant, alert) = (tenant.clone(), alert.clone());
            let (used, limit) = (used.to_owned(), limit.to_owned());
            tokio::spawn(async move {
                let result = webhooks.deliver(&tenant, &alert, &used, &limit).await;
                let outcome = if result.is_ok() {
                    "delivered"
                } else {
                    "failed"
                };
                metrics
                    .spend_alert_webhooks
                    .with_label_values(&[outcome])
                    .inc();
                if let Err(e) = result {
                    tracing::warn!(tenant = %alert.tenant, quota = %alert.quota,
                        threshold = alert.threshold, error = %e,
                        "spend alert not delivered to the tenant's alertWebhook (the Event on the Tenant has it)");
                }
            });
        }
        true
    }

    /// The tenant's requests under plans that meter usage this month, from the proxies' reports
    /// (with either counter store: Redis holds quotas, not tokens by type).
    fn call_usage_of(&self, key: &ObjectKey, now: Timestamp) -> Vec<CallUsageStatus> {
        self.registry
            .call_usage_of(&key.to_string(), now)
            .into_iter()
            .map(|r| CallUsageStatus {
                quota_policy: r
                    .plan
                    .split_once('/')
                    .map_or(r.plan.as_str(), |(_, n)| n)
                    .to_owned(),
                period_start: r.period_start.to_string(),
                requests: r.requests,
                tokens: TokenStatus {
                    input: r.tokens.input,
                    cached_input: r.tokens.cached_input,
                    cache_write_input: r.tokens.cache_write_input,
                    output: r.tokens.output,
                    reasoning: r.tokens.reasoning,
                },
                cost: r.cost.normalize().to_string(),
                currency: r.currency,
            })
            .collect()
    }

    /// An Event on the ApiRoute for each tenant waiting for approval: the route owner must act.
    async fn announce_pending(
        &self,
        tenant: &Tenant,
        key: &ObjectKey,
        subscriptions: &[SubscriptionStatus],
        emitted: &mut HashSet<(ObjectKey, String)>,
    ) {
        for sub in subscriptions
            .iter()
            .filter(|s| s.state == SubscriptionState::PendingApproval)
        {
            let route_key = key.sibling(&sub.api_route);
            let once = (route_key.clone(), tenant.name_any());
            if emitted.contains(&once) {
                continue;
            }
            let Some(route) = all(&self.caches.routes)
                .into_iter()
                .find(|r| object_key(r.as_ref()) == route_key)
            else {
                continue;
            };
            let event = Event {
                type_: EventType::Normal,
                reason: "SubscriptionPendingApproval".into(),
                note: Some(format!(
                    "Tenant {} subscribed and waits for approval: add it to spec.approvedTenants (or spec.rejectedTenants)",
                    tenant.name_any()
                )),
                action: "Subscribe".into(),
                secondary: Some(tenant.object_ref(&())),
            };
            publish_once(
                &self.recorder,
                &event,
                &route.object_ref(&()),
                emitted,
                once,
            )
            .await;
        }
    }
}

/// Publishes `event` unless `emitted` holds `once`, and records `once` only once it is
/// published: an Event remembered as sent and then lost would never reach the admin it is for.
async fn publish_once<K: Eq + std::hash::Hash>(
    recorder: &Recorder,
    event: &Event,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
    emitted: &mut HashSet<K>,
    once: K,
) {
    if !emitted.contains(&once) && publish(recorder, event, regarding).await {
        emitted.insert(once);
    }
}

/// Publishes `event` about `regarding`; whether it was published (a failure is logged; the
/// caller tries again next round).
async fn publish(
    recorder: &Recorder,
    event: &Event,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
) -> bool {
    match tokio::time::timeout(STATUS_WRITE_TIMEOUT, recorder.publish(event, regarding)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(reason = %event.reason, regarding = ?regarding.name, error = %e, "cannot publish an Event; trying again next round");
            false
        }
        Err(_) => {
            tracing::warn!(reason = %event.reason, regarding = ?regarding.name, timeout = ?STATUS_WRITE_TIMEOUT, "an Event was not published in time; trying again next round");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(type_: &'static str, status: bool, reason: &str) -> Desired {
        Desired {
            type_,
            status,
            reason: reason.to_owned(),
            message: format!("{type_} is {status}"),
        }
    }

    /// Regression: the pending-approval Event was remembered as sent before it was published,
    /// so one that failed (an API server briefly away) was never published again.
    #[tokio::test]
    async fn an_event_that_could_not_be_published_is_tried_again() {
        let down = crate::test_support::unreachable_api_server();
        let recorder = Recorder::new(down, "tollgate-test".into());
        let event = Event {
            type_: EventType::Normal,
            reason: "SubscriptionPendingApproval".into(),
            note: None,
            action: "Subscribe".into(),
            secondary: None,
        };
        let regarding = k8s_openapi::api::core::v1::ObjectReference {
            name: Some("route".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        };
        let mut emitted = HashSet::new();
        publish_once(&recorder, &event, &regarding, &mut emitted, "once").await;
        assert!(emitted.is_empty(), "not published, so not remembered");
    }

    #[test]
    fn programmed_counts_the_proxies_that_run_the_routes_version() {
        let p = programmed(true, Some(7), &[7, 9, 6], "proxies", 9);
        assert_eq!((p.status, p.reason.as_str()), (false, "Pending"));
        assert_eq!(p.message, "2/3 proxies at version 9");

        let p = programmed(true, Some(7), &[7, 9], "proxies", 9);
        assert_eq!((p.status, p.reason.as_str()), (true, "Programmed"));
        assert_eq!(p.message, "2/2 proxies at version 9");

        let p = programmed(true, Some(7), &[], "sidecars", 9);
        assert_eq!((p.status, p.reason.as_str()), (false, "NoProxies"));
        assert_eq!(p.message, "0/0 sidecars at version 9");

        for (accepted, since) in [(false, Some(7)), (true, None)] {
            let p = programmed(accepted, since, &[9], "proxies", 9);
            assert_eq!((p.status, p.reason.as_str()), (false, "NotAccepted"));
        }
    }

    #[test]
    fn last_transition_time_changes_only_when_the_status_does() {
        let first = Timestamp::now();
        let later = first
            .checked_add(jiff::SignedDuration::from_mins(5))
            .expect("instant");
        let pending = condition(
            &desired("Programmed", false, "Pending"),
            Some(1),
            &[],
            first,
        );
        assert_eq!(pending.last_transition_time, Time(first));
        assert_eq!(pending.observed_generation, Some(1));

        // Still False, another reason and generation: the transition time stays.
        let current = vec![pending.clone()];
        let no_proxies = condition(
            &desired("Programmed", false, "NoProxies"),
            Some(2),
            &current,
            later,
        );
        assert_eq!(no_proxies.last_transition_time, Time(first));
        assert_eq!(
            (no_proxies.reason.as_str(), no_proxies.observed_generation),
            ("NoProxies", Some(2))
        );
        assert!(
            !same(&current, std::slice::from_ref(&no_proxies)),
            "a new reason is written"
        );

        // False to True: a transition, now.
        let programmed = condition(
            &desired("Programmed", true, "Programmed"),
            Some(2),
            &current,
            later,
        );
        assert_eq!(programmed.last_transition_time, Time(later));

        // Another condition type's time is not borrowed.
        let ready = condition(
            &desired("Ready", false, "Pending"),
            Some(1),
            &current,
            later,
        );
        assert_eq!(ready.last_transition_time, Time(later));
    }

    #[test]
    fn an_unchanged_status_is_not_written_again() {
        let now = Timestamp::now();
        let current = vec![
            condition(&desired("Accepted", true, "Accepted"), Some(3), &[], now),
            condition(
                &desired("Programmed", true, "Programmed"),
                Some(3),
                &[],
                now,
            ),
        ];
        let later = now
            .checked_add(jiff::SignedDuration::from_hours(1))
            .expect("instant");
        let wanted: Vec<_> = [
            desired("Accepted", true, "Accepted"),
            desired("Programmed", true, "Programmed"),
        ]
        .iter()
        .map(|d| condition(d, Some(3), &current, later))
        .collect();
        assert!(same(&current, &wanted));
        let regenerated: Vec<_> = wanted
            .iter()
            .map(|c| Condition {
                observed_generation: Some(4),
                ..c.clone()
            })
            .collect();
        assert!(
            !same(&current, &regenerated),
            "a new generation is acknowledged"
        );
    }

    #[test]
    fn diagnostics_become_one_false_condition_naming_every_field() {
        let diag = |field: &str, reason, message: &str| Diagnostic {
            kind: ObjectKind::Tenant,
            object: ObjectKey::new("shop", "acme"),
            field: field.to_owned(),
            reason,
            message: message.to_owned(),
        };
        let ok = from_diagnostics(conditions::READY, "Ready", "All good.", &[]);
        assert_eq!(
            (ok.status, ok.reason.as_str(), ok.message.as_str()),
            (true, "Ready", "All good.")
        );

        let missing = diag(
            "spec.apiKeys[0].secretRef",
            Reason::SecretNotFound,
            "Secret acme-key not found",
        );
        let invalid = diag("spec.quotaPolicyRef", Reason::Invalid, "no such plan");
        let not_ready = from_diagnostics(
            conditions::READY,
            "Ready",
            "All good.",
            &[&missing, &invalid],
        );
        assert!(!not_ready.status);
        assert_eq!(
            not_ready.reason,
            Reason::SecretNotFound.as_str(),
            "the first diagnostic's reason"
        );
        assert!(
            not_ready
                .message
                .contains("spec.apiKeys[0].secretRef: Secret acme-key not found")
        );
        assert!(
            not_ready
                .message
                .contains("kubectl label secret NAME tollgate.dev/api-key=true"),
            "{}",
            not_ready.message
        );
        assert!(
            not_ready
                .message
                .ends_with("; spec.quotaPolicyRef: no such plan")
        );
    }
}

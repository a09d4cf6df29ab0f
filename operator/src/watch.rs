//! Reflectors: in-memory caches of the watched kinds, kept current by watches. A change to what
//! `compile` reads wakes the compiler through one `Notify` (changes coalesce; the compiler reads
//! the caches, not events).
//!
//! What compile reads is everything but an object's status and bookkeeping. The operator's own
//! status writes arrive here as watch events too, one per object; each used to wake a full
//! compile that changed nothing (284 compiles for one version while the first statuses of 10,000
//! tenants were written). So each event is compared with the object's last fingerprint (a hash
//! of the object without `status`, `resourceVersion` and `managedFields`), and only a different
//! one wakes the compiler.
//!
//! What is cached: ApiRoutes, Tenants and QuotaPolicies in scope, and only the Secrets labelled
//! [`API_KEY_LABEL`] (tenants' keys) or [`BACKEND_CREDENTIALS_LABEL`] (routes' backend
//! credentials) (RBAC still grants list/watch on Secrets, which cannot be narrowed by label; the
//! operator asks for the labelled ones only). `managedFields` are dropped before caching:
//! nothing reads them, and they are a large share of each object.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tollgate_crds::resources::{ApiRoute, QuotaPolicy, Tenant};

use crate::metrics::OperatorMetrics;

/// The label a Secret needs for the operator to see it as a tenant key: `kubectl label secret
/// NAME tollgate.dev/api-key=true`. Any value counts. Backend credentials carry
/// [`BACKEND_CREDENTIALS_LABEL`] instead.
pub use tollgate_crds::compile::{API_KEY_LABEL, BACKEND_CREDENTIALS_LABEL};

/// Caches of every watched kind (one store per namespace when a namespace list is given).
#[derive(Clone)]
pub struct Caches {
    /// ApiRoutes.
    pub routes: Vec<Store<ApiRoute>>,
    /// Tenants.
    pub tenants: Vec<Store<Tenant>>,
    /// QuotaPolicies.
    pub plans: Vec<Store<QuotaPolicy>>,
    /// Secrets (tenants' API keys, routes' backend credentials).
    pub secrets: Vec<Store<Secret>>,
    /// True once every store has completed its initial list.
    ready: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

/// Every object of one kind across stores.
pub fn all<K: Resource + Clone>(stores: &[Store<K>]) -> Vec<Arc<K>>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    stores.iter().flat_map(Store::state).collect()
}

impl Caches {
    /// Caches over these stores, and the one task that waits for their initial lists.
    ///
    /// Only that task waits on the stores themselves: a store's readiness
    /// (`Store::wait_until_ready`) wakes only the last task that polled it (it is a oneshot
    /// receiver, which keeps one waker), so two tasks waiting on it at once (the compiler and
    /// the Stripe repair loop) left the compiler asleep and the operator never ready.
    pub fn new(
        routes: Vec<Store<ApiRoute>>,
        tenants: Vec<Store<Tenant>>,
        plans: Vec<Store<QuotaPolicy>>,
        secrets: Vec<Store<Secret>>,
    ) -> Self {
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let caches = Self {
            routes,
            tenants,
            plans,
            secrets,
            ready,
        };
        let stores = caches.clone();
        tokio::spawn(async move {
            for s in &stores.routes {
                let _ = s.wait_until_ready().await;
            }
            for s in &stores.tenants {
                let _ = s.wait_until_ready().await;
            }
            for s in &stores.plans {
                let _ = s.wait_until_ready().await;
            }
            for s in &stores.secrets {
                let _ = s.wait_until_ready().await;
            }
            let _ = ready_tx.send(true);
        });
        caches
    }

    /// Whether every cache has completed its initial list (a Tenant not found before then may
    /// just not be listed yet).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until every cache has completed its initial list; any number of tasks may wait.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

/// Starts the watches; `changed` is notified after every event.
pub fn start(
    client: &kube::Client,
    namespaces: &[String],
    changed: Arc<Notify>,
    metrics: &OperatorMetrics,
) -> Caches {
    Caches::new(
        watch_kind::<ApiRoute>(client, namespaces, &changed, metrics, everything()),
        watch_kind::<Tenant>(client, namespaces, &changed, metrics, everything()),
        watch_kind::<QuotaPolicy>(client, namespaces, &changed, metrics, everything()),
        [API_KEY_LABEL, BACKEND_CREDENTIALS_LABEL]
            .into_iter()
            .flat_map(|label| {
                watch_kind::<Secret>(
                    client,
                    namespaces,
                    &changed,
                    metrics,
                    everything().labels(label),
                )
            })
            .collect(),
    )
}

fn everything() -> watcher::Config {
    watcher::Config::default()
}

fn watch_kind<K>(
    client: &kube::Client,
    namespaces: &[String],
    changed: &Arc<Notify>,
    metrics: &OperatorMetrics,
    config: watcher::Config,
) -> Vec<Store<K>>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&()).to_string();
    let apis: Vec<Api<K>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    apis.into_iter()
        .map(|api| {
            let (store, writer) = reflector::store::<K>();
            let changed = changed.clone();
            let metrics = metrics.clone();
            let kind = kind.clone();
            let stream = watcher(api, config.clone())
                .default_backoff()
                .modify(|obj: &mut K| obj.meta_mut().managed_fields = None)
                .reflect(writer);
            tokio::spawn(async move {
                let mut seen = Fingerprints::default();
                stream
                    .for_each(|event| {
                        match event {
                            Ok(event) => {
                                metrics.watch_events.with_label_values(&[&kind]).inc();
                                let woke = seen.observe(&event);
                                if woke > 0 {
                                    metrics
                                        .reconciles
                                        .with_label_values(&[&kind])
                                        .inc_by(woke);
                                    changed.notify_one();
                                }
                            }
                            Err(e) => {
                                metrics.watch_errors.with_label_values(&[&kind]).inc();
                                tracing::warn!(%kind, error = %e, "watch error; retrying with backoff");
                            }
                        }
                        futures::future::ready(())
                    })
                    .await;
            });
            store
        })
        .collect()
}

/// The last fingerprint of every object of one watch: what tells a change `compile` reads from
/// the operator's own status write.
struct Fingerprints<K: Resource<DynamicType = ()>> {
    current: HashMap<ObjectRef<K>, u64>,
    /// Filled during a relist, then swapped in.
    relisted: HashMap<ObjectRef<K>, u64>,
}

impl<K: Resource<DynamicType = ()>> Default for Fingerprints<K> {
    fn default() -> Self {
        Self {
            current: HashMap::new(),
            relisted: HashMap::new(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + Serialize> Fingerprints<K> {
    /// How many objects `event` changed as `compile` sees them (0: nothing to recompile).
    fn observe(&mut self, event: &watcher::Event<K>) -> u64 {
        match event {
            watcher::Event::Apply(obj) => {
                let fingerprint = fingerprint(obj);
                u64::from(
                    self.current.insert(ObjectRef::from_obj(obj), fingerprint) != Some(fingerprint),
                )
            }
            watcher::Event::Delete(obj) => {
                self.current.remove(&ObjectRef::from_obj(obj));
                1
            }
            watcher::Event::Init => {
                self.relisted.clear();
                0
            }
            watcher::Event::InitApply(obj) => {
                self.relisted
                    .insert(ObjectRef::from_obj(obj), fingerprint(obj));
                0
            }
            // A relist may have missed deletions and edits: count what differs from before.
            watcher::Event::InitDone => {
                let relisted = std::mem::take(&mut self.relisted);
                let gone = self
                    .current
                    .keys()
                    .filter(|k| !relisted.contains_key(k))
                    .count();
                let changed = relisted
                    .iter()
                    .filter(|(k, f)| self.current.get(k) != Some(f))
                    .count();
                self.current = relisted;
                // Even an unchanged relist completes the cache the compiler waits for.
                u64::try_from(gone + changed).unwrap_or(u64::MAX).max(1)
            }
        }
    }
}

/// A hash of what `compile` can read of `obj`: all of it but the API server's bookkeeping and its
/// status, except the one part of a status `compile` reads: what Stripe said about a Tenant
/// (`status.stripe`, written by the Stripe receiver). Equal fingerprints, same compile input.
fn fingerprint<K: Serialize>(obj: &K) -> u64 {
    let mut value = match serde_json::to_value(obj) {
        Ok(value) => value,
        Err(e) => {
            // Never seen; if it happens, a fingerprint no other object has makes sure the change
            // is compiled rather than missed.
            static UNSEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            tracing::warn!(error = %e, "cannot fingerprint an object; recompiling");
            return UNSEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) | (1 << 63);
        }
    };
    if let Some(fields) = value.as_object_mut() {
        let stripe = fields
            .remove("status")
            .and_then(|mut status| status.get_mut("stripe").map(serde_json::Value::take));
        if let Some(stripe) = stripe {
            fields.insert("stripeStatus".into(), stripe);
        }
        if let Some(meta) = fields.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;
    use tollgate_crds::resources::{Condition, TenantSpec, TenantStatus};

    use super::*;

    /// Every task waiting for the caches wakes when they are listed, not only the last to wait
    /// (the compiler used to sleep forever once the Stripe repair loop waited beside it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_wakes_when_the_caches_are_listed() {
        let (routes, mut routes_w) = reflector::store::<ApiRoute>();
        let (tenants, mut tenants_w) = reflector::store::<Tenant>();
        let (plans, mut plans_w) = reflector::store::<QuotaPolicy>();
        let (secrets, mut secrets_w) = reflector::store::<Secret>();
        let caches = Caches::new(vec![routes], vec![tenants], vec![plans], vec![secrets]);
        assert!(!caches.is_ready());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let caches = caches.clone();
                tokio::spawn(async move { caches.wait_until_ready().await })
            })
            .collect();
        // Let every waiter poll (and register) before the lists complete.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        routes_w.apply_watcher_event(&watcher::Event::InitDone);
        tenants_w.apply_watcher_event(&watcher::Event::InitDone);
        plans_w.apply_watcher_event(&watcher::Event::InitDone);
        secrets_w.apply_watcher_event(&watcher::Event::InitDone);
        for waiter in waiters {
            // A bound against a hang, not a timing assertion: the wake-up is immediate.
            tokio::time::timeout(std::time::Duration::from_secs(30), waiter)
                .await
                .expect("every waiter wakes")
                .expect("the waiter ran");
        }
        assert!(caches.is_ready());
    }

    fn tenant(name: &str, suspended: bool, status_message: &str, resource_version: &str) -> Tenant {
        let mut spec = TenantSpec::default();
        if suspended {
            spec.billing.state = tollgate_crds::resources::BillingState::Suspended;
        }
        let mut t = Tenant::new(name, spec);
        t.metadata.namespace = Some("shop".into());
        t.metadata.resource_version = Some(resource_version.into());
        t.status = Some(TenantStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: status_message.into(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            }],
            ..Default::default()
        });
        t
    }

    fn secret(name: &str, key: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            data: Some([("apiKey".to_owned(), ByteString(key.as_bytes().to_vec()))].into()),
            ..Default::default()
        }
    }

    #[test]
    fn status_and_bookkeeping_changes_wake_nothing_and_spec_changes_do() {
        let mut seen = Fingerprints::<Tenant>::default();
        assert_eq!(seen.observe(&watcher::Event::Init), 0);
        assert_eq!(
            seen.observe(&watcher::Event::InitApply(tenant("a", false, "x", "1"))),
            0
        );
        assert_eq!(
            seen.observe(&watcher::Event::InitDone),
            1,
            "the first list compiles"
        );
        // The operator's own status write: new status, new resourceVersion.
        let rewritten = tenant("a", false, "written by the operator", "2");
        assert_eq!(seen.observe(&watcher::Event::Apply(rewritten)), 0);
        // A spec edit, and a new object.
        assert_eq!(
            seen.observe(&watcher::Event::Apply(tenant("a", true, "x", "3"))),
            1
        );
        assert_eq!(
            seen.observe(&watcher::Event::Apply(tenant("b", false, "x", "4"))),
            1
        );
        assert_eq!(
            seen.observe(&watcher::Event::Delete(tenant("b", false, "x", "5"))),
            1
        );
        // What Stripe said is compile input: its write wakes the compiler.
        let mut paid = tenant("a", true, "x", "6");
        if let Some(status) = paid.status.as_mut() {
            status.stripe = Some(tollgate_crds::resources::StripeStatus {
                customer: "cus_1".into(),
                subscription: "sub_1".into(),
                subscription_status: Some("past_due".into()),
                state: tollgate_crds::resources::BillingState::PastDue,
                since: "2026-01-01T00:00:00Z".into(),
                last_event: "evt_1".into(),
                last_event_time: "2026-01-01T00:00:00Z".into(),
                recent_events: vec!["evt_1".into()],
                updated_at: "2026-01-01T00:00:00Z".into(),
            });
        }
        assert_eq!(seen.observe(&watcher::Event::Apply(paid)), 1);
    }

    #[test]
    fn a_relist_counts_what_changed_while_the_watch_was_away() {
        let mut seen = Fingerprints::<Secret>::default();
        for s in [secret("k1", "one"), secret("k2", "two")] {
            assert_eq!(seen.observe(&watcher::Event::Apply(s)), 1);
        }
        // The watch restarts: k1 was rotated and k2 deleted (or unlabelled) in between.
        seen.observe(&watcher::Event::Init);
        seen.observe(&watcher::Event::InitApply(secret("k1", "rotated")));
        assert_eq!(seen.observe(&watcher::Event::InitDone), 2);
        // The same list again changes nothing, but still completes a cache: one compile.
        seen.observe(&watcher::Event::Init);
        seen.observe(&watcher::Event::InitApply(secret("k1", "rotated")));
        assert_eq!(seen.observe(&watcher::Event::InitDone), 1);
        assert_eq!(
            seen.observe(&watcher::Event::Apply(secret("k1", "rotated"))),
            0
        );
    }
}

//! Reflectors: in-memory caches of the watched kinds, kept current by watches. Every change wakes
//! the compiler through one `Notify` (changes coalesce; the compiler reads the caches, not events).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tollgate_crds::resources::{ApiRoute, QuotaPolicy, Tenant};

use crate::metrics::OperatorMetrics;

/// Caches of every watched kind (one store per namespace when a namespace list is given).
#[derive(Clone)]
pub struct Caches {
    /// ApiRoutes.
    pub routes: Vec<Store<ApiRoute>>,
    /// Tenants.
    pub tenants: Vec<Store<Tenant>>,
    /// QuotaPolicies.
    pub plans: Vec<Store<QuotaPolicy>>,
    /// Secrets (API keys).
    pub secrets: Vec<Store<Secret>>,
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
    /// Waits until every cache has completed its initial list.
    pub async fn wait_until_ready(&self) {
        for s in &self.routes {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.tenants {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.plans {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.secrets {
            let _ = s.wait_until_ready().await;
        }
    }
}

/// Starts the watches; `changed` is notified after every event.
pub fn start(
    client: &kube::Client,
    namespaces: &[String],
    changed: Arc<Notify>,
    metrics: &OperatorMetrics,
) -> Caches {
    Caches {
        routes: watch_kind::<ApiRoute>(client, namespaces, &changed, metrics, "ApiRoute"),
        tenants: watch_kind::<Tenant>(client, namespaces, &changed, metrics, "Tenant"),
        plans: watch_kind::<QuotaPolicy>(client, namespaces, &changed, metrics, "QuotaPolicy"),
        secrets: watch_kind::<Secret>(client, namespaces, &changed, metrics, "Secret"),
    }
}

fn watch_kind<K>(
    client: &kube::Client,
    namespaces: &[String],
    changed: &Arc<Notify>,
    metrics: &OperatorMetrics,
    kind: &'static str,
) -> Vec<Store<K>>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
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
            let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
            tokio::spawn(async move {
                stream
                    .for_each(|event| {
                        match event {
                            Ok(_) => {
                                metrics.watch_events.with_label_values(&[kind]).inc();
                                changed.notify_one();
                            }
                            Err(e) => {
                                metrics.watch_errors.with_label_values(&[kind]).inc();
                                tracing::warn!(kind, error = %e, "watch error; retrying with backoff");
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

//! Compiles the cached objects into versioned snapshots, after a short quiet period so a burst of
//! edits (a `kubectl apply -f dir/`) becomes one version.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::{Notify, watch};
use tollgate_crds::compile::{Compiled, Diagnostic, Objects, compile};
use tollgate_crds::resources::{BillingStatus, SubscriptionStatus};
use tollgate_crds::snapshot::{ObjectKey, Snapshot};
use tollgate_crds::stream::{Delta, diff};

use crate::metrics::OperatorMetrics;
use crate::watch::{Caches, all};

/// One compiled configuration and what status writers need to know about it.
#[derive(Debug, Default)]
pub struct Published {
    /// Version (microseconds since the epoch at compile time, strictly increasing).
    pub version: u64,
    /// When it was published.
    pub published_at: Option<Instant>,
    /// The snapshot.
    pub snapshot: Arc<Snapshot>,
    /// The delta from the previous version, when the snapshot changed.
    pub delta: Option<Arc<Delta>>,
    /// Why objects were left out.
    pub diagnostics: Vec<Diagnostic>,
    /// Subscription states per compiled tenant.
    pub subscriptions: BTreeMap<ObjectKey, Vec<SubscriptionStatus>>,
    /// Effective billing state per compiled tenant.
    pub billing: BTreeMap<ObjectKey, BillingStatus>,
    /// The version in which each route last changed (for Programmed).
    pub route_versions: HashMap<ObjectKey, u64>,
}

/// Compiles on every change, forever.
pub async fn run(
    caches: Caches,
    changed: Arc<Notify>,
    debounce: Duration,
    out: watch::Sender<Arc<Published>>,
    metrics: OperatorMetrics,
) {
    caches.wait_until_ready().await;
    tracing::info!("caches synced; compiling");
    loop {
        let previous = out.borrow().clone();
        let next = compile_caches(&caches, &previous, &metrics);
        if let Some(next) = next {
            metrics
                .snapshot_version
                .set(i64::try_from(next.version).unwrap_or(i64::MAX));
            let _ = out.send(Arc::new(next));
        }
        changed.notified().await;
        tokio::time::sleep(debounce).await;
    }
}

/// Compiles and returns the next publication, or `None` when nothing at all changed.
fn compile_caches(
    caches: &Caches,
    previous: &Published,
    metrics: &OperatorMetrics,
) -> Option<Published> {
    let started = Instant::now();
    let (routes, tenants, plans, secrets) = (
        all(&caches.routes),
        all(&caches.tenants),
        all(&caches.plans),
        all(&caches.secrets),
    );
    let compiled = compile(&Objects {
        routes: routes.iter().map(AsRef::as_ref).collect(),
        tenants: tenants.iter().map(AsRef::as_ref).collect(),
        plans: plans.iter().map(AsRef::as_ref).collect(),
        secrets: secrets.iter().map(AsRef::as_ref).collect(),
    });
    metrics
        .compile_duration
        .observe(started.elapsed().as_secs_f64());
    // Count each object's exclusion once, when it starts (a compile that finds the same invalid
    // object again is not a new error), and keep the current count as a gauge.
    for d in &compiled.diagnostics {
        let known = previous
            .diagnostics
            .iter()
            .any(|p| p.kind == d.kind && p.object == d.object && p.reason == d.reason);
        if !known {
            metrics
                .reconcile_errors
                .with_label_values(&[&format!("{:?}", d.kind), d.reason.as_str()])
                .inc();
        }
    }
    let excluded: std::collections::HashSet<_> = compiled
        .diagnostics
        .iter()
        .map(|d| (d.kind, &d.object))
        .collect();
    metrics
        .excluded_objects
        .set(i64::try_from(excluded.len()).unwrap_or(i64::MAX));

    let next = next_publication(previous, compiled, Timestamp::now())?;
    if next.version != previous.version {
        tracing::info!(
            version = next.version,
            routes = next.snapshot.routes.len(),
            tenants = next.snapshot.tenants.len(),
            plans = next.snapshot.plans.len(),
            excluded = next.diagnostics.len(),
            compile_ms = started.elapsed().as_millis() as u64,
            "published a new configuration"
        );
    }
    Some(next)
}

/// What follows `previous` once `compiled` is in: `None` when nothing changed; the same version
/// with new diagnostics, subscription or billing states when only those changed; otherwise a new version
/// (microseconds since the epoch at `now`, and always above the previous one) with its delta and
/// the version in which each route last changed.
fn next_publication(previous: &Published, compiled: Compiled, now: Timestamp) -> Option<Published> {
    let snapshot_changed = previous.version == 0 || *previous.snapshot != compiled.snapshot;
    if !snapshot_changed
        && previous.diagnostics == compiled.diagnostics
        && previous.subscriptions == compiled.subscriptions
        && previous.billing == compiled.billing
    {
        return None;
    }
    if !snapshot_changed {
        return Some(Published {
            version: previous.version,
            published_at: previous.published_at,
            snapshot: previous.snapshot.clone(),
            delta: previous.delta.clone(),
            diagnostics: compiled.diagnostics,
            subscriptions: compiled.subscriptions,
            billing: compiled.billing,
            route_versions: previous.route_versions.clone(),
        });
    }
    let now = u64::try_from(now.as_microsecond()).unwrap_or(0);
    let version = now.max(previous.version + 1);
    let delta = (previous.version != 0).then(|| {
        Arc::new(diff(
            &previous.snapshot,
            &compiled.snapshot,
            previous.version,
            version,
        ))
    });
    let mut route_versions = previous.route_versions.clone();
    route_versions.retain(|k, _| compiled.snapshot.route(k).is_some());
    for route in &compiled.snapshot.routes {
        let unchanged = previous
            .snapshot
            .route(&route.key)
            .is_some_and(|old| old == route);
        if !unchanged || !route_versions.contains_key(&route.key) {
            route_versions.insert(route.key.clone(), version);
        }
    }
    Some(Published {
        version,
        published_at: Some(Instant::now()),
        snapshot: Arc::new(compiled.snapshot),
        delta,
        diagnostics: compiled.diagnostics,
        subscriptions: compiled.subscriptions,
        billing: compiled.billing,
        route_versions,
    })
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;
    use serde_json::json;
    use tollgate_crds::resources::{ApiRoute, Tenant};

    use super::*;

    fn route(name: &str, body: &str) -> ApiRoute {
        serde_json::from_value(
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiRoute",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"match": {"pathPrefix": format!("/{name}")},
                     "backend": {"directResponse": {"status": 200, "body": body}}}}),
        )
        .expect("a valid ApiRoute")
    }

    /// A tenant whose plan does not exist: left out, with a diagnostic.
    fn broken_tenant() -> Tenant {
        serde_json::from_value(
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": "shop"},
            "spec": {"quotaPolicyRef": {"name": "missing"}}}),
        )
        .expect("a valid Tenant")
    }

    fn compiled(routes: &[ApiRoute], tenants: &[Tenant]) -> Compiled {
        compile(&Objects {
            routes: routes.iter().collect(),
            tenants: tenants.iter().collect(),
            ..Objects::default()
        })
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("shop", name)
    }

    #[test]
    fn versions_increase_and_remember_when_each_route_last_changed() {
        let t0 = Timestamp::now();
        let first = next_publication(
            &Published::default(),
            compiled(&[route("a", "1"), route("b", "1")], &[]),
            t0,
        )
        .expect("a first version");
        assert_eq!(
            first.version,
            u64::try_from(t0.as_microsecond()).expect("after 1970")
        );
        assert!(first.delta.is_none(), "the first version is sent whole");
        assert_eq!(first.route_versions[&key("a")], first.version);

        // Route b edited, c added, a unchanged; the clock reads a second later.
        let t1 = t0
            .checked_add(SignedDuration::from_secs(1))
            .expect("instant");
        let second = next_publication(
            &first,
            compiled(&[route("a", "1"), route("b", "2"), route("c", "1")], &[]),
            t1,
        )
        .expect("a second version");
        assert!(second.version > first.version);
        assert!(second.delta.is_some());
        assert_eq!(
            second.route_versions[&key("a")],
            first.version,
            "a did not change"
        );
        assert_eq!(second.route_versions[&key("b")], second.version);
        assert_eq!(second.route_versions[&key("c")], second.version);

        // Route c deleted, and the clock stepped back an hour: still a higher version.
        let stepped_back = t0
            .checked_sub(SignedDuration::from_hours(1))
            .expect("instant");
        let third = next_publication(
            &second,
            compiled(&[route("a", "1"), route("b", "2")], &[]),
            stepped_back,
        )
        .expect("a third version");
        assert_eq!(third.version, second.version + 1);
        assert!(!third.route_versions.contains_key(&key("c")));
        assert_eq!(third.route_versions[&key("b")], second.version);
    }

    #[test]
    fn nothing_changed_publishes_nothing_and_a_new_diagnostic_keeps_the_version() {
        let now = Timestamp::now();
        let first = next_publication(
            &Published::default(),
            compiled(&[route("a", "1")], &[]),
            now,
        )
        .expect("a first version");
        assert!(next_publication(&first, compiled(&[route("a", "1")], &[]), now).is_none());

        // A tenant that cannot be compiled changes no snapshot, only what status says.
        let with_broken = next_publication(
            &first,
            compiled(&[route("a", "1")], &[broken_tenant()]),
            now,
        )
        .expect("new diagnostics");
        assert_eq!(with_broken.version, first.version);
        assert!(Arc::ptr_eq(&with_broken.snapshot, &first.snapshot));
        assert_eq!(with_broken.diagnostics.len(), 1);
        assert_eq!(with_broken.diagnostics[0].object, key("acme"));
    }
}

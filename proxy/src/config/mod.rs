//! The proxy's view of a snapshot: indexes and precomputed values for the hot path.
//!
//! Built once per configuration version (off the hot path) and swapped in atomically; a request
//! loads one `Arc<ProxyConfig>` and never sees a half-applied change.

pub mod route;
pub mod router;
pub mod tenant;

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_crds::snapshot::{KeyDigest, ObjectKey, Snapshot};

use crate::fast_map::FastMap;
pub use crate::quota::PlanEntry;
pub use route::{DirectResponse, RouteEntry};
use router::RouteTable;
pub use tenant::TenantEntry;

/// A compiled snapshot, indexed for the hot path.
#[derive(Debug)]
pub struct ProxyConfig {
    /// Configuration version (increases with every applied snapshot).
    pub version: u64,
    /// Routes by host and path.
    pub routes: RouteTable,
    /// Tenants by the SHA-256 of their keys.
    pub tenants_by_key: FastMap<[u8; 32], Arc<TenantEntry>>,
    /// Plans by key.
    pub plans: HashMap<ObjectKey, Arc<PlanEntry>>,
    /// An egress sidecar's tenant: every request is its, whatever key it carries (the app's
    /// SDK may insist on sending one).
    pub workload_tenant: Option<Arc<TenantEntry>>,
}

impl ProxyConfig {
    /// Indexes `snapshot`, taking its parts: the entries are the snapshot, not a copy of it
    /// (a standalone reload's peak holds one old world and one new). A fleet proxy keeps its
    /// decoded snapshot for the next delta and passes a copy.
    pub fn build(version: u64, snapshot: Snapshot) -> Self {
        let Snapshot {
            routes,
            tenants,
            plans,
            workload_tenant: workload_key,
        } = snapshot;
        let plans: HashMap<ObjectKey, Arc<PlanEntry>> = plans
            .into_iter()
            .map(|p| (p.key.clone(), Arc::new(PlanEntry::new(p))))
            .collect();
        let routes = RouteTable::new(
            routes
                .into_iter()
                .map(|r| Arc::new(RouteEntry::new(r)))
                .collect(),
        );
        let mut tenants_by_key = FastMap::default();
        tenants_by_key.reserve(tenants.iter().map(|t| t.key_digests.len()).sum());
        let mut workload_tenant = None;
        for tenant in tenants {
            let digests: Vec<[u8; 32]> =
                tenant.key_digests.iter().filter_map(digest_bytes).collect();
            let is_workload = workload_key.as_ref() == Some(&tenant.key);
            let entry = Arc::new(TenantEntry::new(tenant, &plans));
            if is_workload {
                workload_tenant = Some(entry.clone());
            }
            for raw in digests {
                tenants_by_key.insert(raw, entry.clone());
            }
        }
        Self {
            version,
            routes,
            tenants_by_key,
            plans,
            workload_tenant,
        }
    }

    /// This configuration as a proxy listening on loopback only (`loopback_only`) or beyond may
    /// enforce it: only on loopback does a workload tenant (an egress sidecar's identity) stand
    /// for every request; reachable from elsewhere, anyone could call as that tenant without a
    /// key, so the identity is dropped (requests need keys) and the mistake is logged.
    pub fn for_listener(mut self, loopback_only: bool) -> Self {
        if self.workload_tenant.is_some() && !loopback_only {
            tracing::error!(
                "the configuration makes every request the egress sidecar's tenant, but this proxy listens beyond localhost: ignoring that identity (requests need API keys); an egress sidecar listens on 127.0.0.1"
            );
            self.workload_tenant = None;
        }
        self
    }

    /// An empty configuration (before the first snapshot): every request is 404.
    pub fn empty() -> Self {
        Self::build(0, Snapshot::default())
    }
}

fn digest_bytes(digest: &KeyDigest) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(&digest.0, &mut out).ok()?;
    Some(out)
}

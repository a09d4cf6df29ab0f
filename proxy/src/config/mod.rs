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
    /// The snapshot this was built from (for persistence and `/usage`).
    pub snapshot: Arc<Snapshot>,
    /// Routes by host and path.
    pub routes: RouteTable,
    /// Tenants by the SHA-256 of their keys.
    pub tenants_by_key: FastMap<[u8; 32], Arc<TenantEntry>>,
    /// Plans by key.
    pub plans: HashMap<ObjectKey, Arc<PlanEntry>>,
}

impl ProxyConfig {
    /// Indexes `snapshot`.
    pub fn build(version: u64, snapshot: Arc<Snapshot>) -> Self {
        let plans: HashMap<ObjectKey, Arc<PlanEntry>> = snapshot
            .plans
            .iter()
            .map(|p| (p.key.clone(), Arc::new(PlanEntry::new(p.clone()))))
            .collect();
        let routes = RouteTable::new(
            snapshot
                .routes
                .iter()
                .map(|r| Arc::new(RouteEntry::new(r.clone())))
                .collect(),
        );
        let mut tenants_by_key = FastMap::default();
        for tenant in &snapshot.tenants {
            let entry = Arc::new(TenantEntry::new(tenant.clone(), &plans));
            for digest in &tenant.key_digests {
                if let Some(raw) = digest_bytes(digest) {
                    tenants_by_key.insert(raw, entry.clone());
                }
            }
        }
        Self {
            version,
            snapshot,
            routes,
            tenants_by_key,
            plans,
        }
    }

    /// An empty configuration (before the first snapshot): every request is 404.
    pub fn empty() -> Self {
        Self::build(0, Arc::new(Snapshot::default()))
    }
}

fn digest_bytes(digest: &KeyDigest) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(&digest.0, &mut out).ok()?;
    Some(out)
}

//! The hash map of the request path.

/// A hash map for the request path: foldhash (seeded per process) instead of SipHash, whose cost
/// showed in profiles. Keys are configuration (routes, backends) or SHA-256 digests.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

//! The proxy's view of a snapshot: indexes and precomputed values for the hot path.
//!
//! Built once per configuration version (off the hot path) and swapped in atomically; a request
//! loads one `Arc<ProxyConfig>` and never sees a half-applied change.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use jiff::tz::TimeZone;
use tollgate_crds::resources::{LifecycleState, Metric};
use tollgate_crds::snapshot::{KeyDigest, ObjectKey, Plan, Route, RouteBackend, Snapshot, Tenant};

use crate::FastMap;
use crate::ratelimit_headers;
use crate::router::RouteTable;

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

/// How often a route's failing backend may be warned about: the first failure at once, then a
/// line per interval with the count in between.
const BACKEND_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A route and what the hot path needs precomputed.
#[derive(Debug)]
pub struct RouteEntry {
    /// The compiled route.
    pub route: Route,
    /// `namespace/name`, for logs, metrics and problem bodies.
    pub id: Arc<str>,
    /// Where to forward, if not a direct response.
    pub upstream: Option<Upstream>,
    /// A fixed response, if the backend is directResponse.
    pub direct: Option<DirectResponse>,
    /// `Deprecation` header for deprecated routes (RFC 9745: `@<unix seconds>`).
    pub deprecation: Option<HeaderValue>,
    /// `Sunset` header (RFC 8594 HTTP-date).
    pub sunset: Option<HeaderValue>,
    /// Metric children of this route.
    pub telemetry: crate::metrics::RouteTelemetry,
    /// Warnings about this route's backend failing (at most one per 10 s).
    pub backend_warnings: crate::warn_throttle::WarnThrottle,
}

/// A parsed backend base URL.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and port.
    pub authority: http::uri::Authority,
    /// Path prefix to prepend (no trailing slash; empty for none).
    pub base_path: String,
    /// Host header value for the backend.
    pub host_header: HeaderValue,
}

/// A fixed response.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    /// Status.
    pub status: StatusCode,
    /// Content-Type.
    pub content_type: HeaderValue,
    /// Body.
    pub body: Bytes,
}

impl RouteEntry {
    fn new(route: Route) -> Self {
        let id: Arc<str> = Arc::from(route.key.to_string());
        let (upstream, direct) = match &route.backend {
            RouteBackend::Http { base_url } => (parse_upstream(base_url), None),
            RouteBackend::Direct {
                status,
                content_type,
                body,
            } => (
                None,
                Some(DirectResponse {
                    status: StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
                    content_type: HeaderValue::from_str(content_type)
                        .unwrap_or_else(|_| HeaderValue::from_static("text/plain")),
                    body: Bytes::from(body.clone()),
                }),
            ),
        };
        let deprecated = route.lifecycle == LifecycleState::Deprecated;
        let sunset = route
            .sunset
            .filter(|_| deprecated)
            .and_then(|t| HeaderValue::from_str(&http_date(t)).ok());
        // RFC 9745: a Structured Field Date, "@<seconds since the epoch>".
        let deprecation = deprecated.then(|| {
            let since = route.deprecated_at.unwrap_or_else(jiff::Timestamp::now);
            HeaderValue::from_str(&format!("@{}", since.as_second()))
                .unwrap_or_else(|_| HeaderValue::from_static("@0"))
        });
        Self {
            route,
            id,
            upstream,
            direct,
            deprecation,
            sunset,
            telemetry: Default::default(),
            backend_warnings: crate::warn_throttle::WarnThrottle::new(BACKEND_WARNING_INTERVAL),
        }
    }
}

fn parse_upstream(base_url: &str) -> Option<Upstream> {
    let uri: http::Uri = base_url.parse().ok()?;
    let scheme = uri.scheme()?.clone();
    let authority = uri.authority()?.clone();
    let base_path = uri.path().trim_end_matches('/').to_owned();
    let host_header = HeaderValue::from_str(authority.as_str()).ok()?;
    Some(Upstream {
        scheme,
        authority,
        base_path,
        host_header,
    })
}

/// RFC 9110 IMF-fixdate, as used by Sunset.
pub fn http_date(t: jiff::Timestamp) -> String {
    t.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// A plan and its parsed time zone.
#[derive(Debug)]
pub struct PlanEntry {
    /// The compiled plan.
    pub plan: Plan,
    /// `namespace/name`.
    pub id: Arc<str>,
    /// The plan's time zone (validated by compile; UTC if it somehow fails).
    pub tz: TimeZone,
    /// Indexes into `plan.quotas` of quotas that count requests (charged on admission and shown in
    /// RateLimit headers).
    pub request_quotas: Vec<usize>,
    /// Whether responses must be metered: a token or Cost quota is charged after the response.
    pub meters_usage: bool,
    /// The RateLimit headers' fixed parts.
    pub ratelimit_headers: ratelimit_headers::Template,
}

impl PlanEntry {
    fn new(plan: Plan) -> Self {
        let tz = TimeZone::get(&plan.timezone).unwrap_or(TimeZone::UTC);
        let request_quotas: Vec<usize> = plan
            .quotas
            .iter()
            .enumerate()
            .filter(|(_, q)| q.metric == Metric::Requests)
            .map(|(i, _)| i)
            .collect();
        let meters_usage = plan.quotas.iter().any(|q| q.metric != Metric::Requests);
        let ratelimit_headers = ratelimit_headers::Template::new(&plan, &request_quotas);
        Self {
            ratelimit_headers,
            id: Arc::from(plan.key.to_string()),
            plan,
            tz,
            request_quotas,
            meters_usage,
        }
    }
}

/// A tenant with its plans resolved.
#[derive(Debug)]
pub struct TenantEntry {
    /// The compiled tenant.
    pub tenant: Tenant,
    /// `namespace/name`, also the `X-Tollgate-Tenant` value.
    pub id: Arc<str>,
    /// `X-Tollgate-Tenant` header value.
    pub header: HeaderValue,
    /// The default plan.
    pub plan: Option<Arc<PlanEntry>>,
    /// Subscribed route name -> plan for that route (the subscription's own, or the default).
    pub subscriptions: FastMap<String, Option<Arc<PlanEntry>>>,
}

impl TenantEntry {
    fn new(tenant: Tenant, plans: &HashMap<ObjectKey, Arc<PlanEntry>>) -> Self {
        let id: Arc<str> = Arc::from(tenant.key.to_string());
        let header =
            HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let plan = tenant.plan.as_ref().and_then(|k| plans.get(k).cloned());
        let subscriptions = tenant
            .subscriptions
            .iter()
            .map(|s| {
                let sub_plan = match &s.plan {
                    Some(k) => plans.get(k).cloned(),
                    None => plan.clone(),
                };
                (s.route.clone(), sub_plan)
            })
            .collect();
        Self {
            tenant,
            id,
            header,
            plan,
            subscriptions,
        }
    }
}

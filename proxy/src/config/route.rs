//! A route as the request path sees it: its backend, direct response and lifecycle headers.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use tollgate_crds::resources::LifecycleState;
use tollgate_crds::snapshot::{Route, RouteBackend};

use crate::http1::date::http_date;
use crate::upstream::{Upstream, parse_upstream};

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
    pub telemetry: crate::telemetry::metrics::RouteTelemetry,
    /// Warnings about this route's backend failing (at most one per 10 s).
    pub backend_warnings: crate::telemetry::warn_throttle::WarnThrottle,
    /// The backends of a route whose calls are translated or fall back, in the order tried
    /// (boxed: most routes have none).
    pub calls: Option<Box<[CallBackend]>>,
    /// The prompt a prompt API publishes.
    pub prompt: Option<Box<crate::llm::prompt::PromptEntry>>,
}

/// A backend that takes a route's LLM calls: the route's own, or a fallback.
#[derive(Debug)]
pub struct CallBackend {
    /// Where it is.
    pub upstream: Upstream,
    /// The API it speaks (how its usage is read).
    pub api: tollgate_crds::resources::Metering,
    /// Callers' model names mapped to its own.
    pub models: std::collections::BTreeMap<String, String>,
    /// How long to wait for its response headers.
    pub timeout_ms: u64,
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
    /// Precomputes what the hot path needs from `route`.
    pub fn new(route: Route) -> Self {
        let id: Arc<str> = Arc::from(route.key.to_string());
        let (upstream, direct) = match &route.backend {
            RouteBackend::Http { base_url } => (
                parse_upstream(base_url).map(|mut upstream| {
                    upstream.request_headers = injected_headers(&route.request_headers);
                    upstream
                }),
                None,
            ),
            // Only the operator's view for an ingress sidecar resolves it (to the app on
            // localhost); a route that still names it has nowhere to go (502).
            RouteBackend::Workload => (None, None),
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
        let calls = route.calls_llm().then(|| {
            let own = upstream.clone().map(|upstream| CallBackend {
                upstream,
                api: route.metering,
                models: route.models.clone(),
                timeout_ms: route.timeout_ms,
            });
            let fallbacks = route.fallbacks.iter().filter_map(|f| {
                let mut upstream = parse_upstream(&f.base_url)?;
                upstream.request_headers = injected_headers(&f.request_headers);
                Some(CallBackend {
                    upstream,
                    api: f.api,
                    models: f.models.clone(),
                    timeout_ms: f.timeout_ms,
                })
            });
            own.into_iter().chain(fallbacks).collect()
        });
        let prompt = route.prompt.as_ref().and_then(|p| {
            let path = match &route.path {
                tollgate_crds::snapshot::PathMatch::Exact(path)
                | tollgate_crds::snapshot::PathMatch::Prefix(path) => path.as_str(),
            };
            crate::llm::prompt::PromptEntry::new(&id, path, p).map(Box::new)
        });
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
            backend_warnings: crate::telemetry::warn_throttle::WarnThrottle::new(
                BACKEND_WARNING_INTERVAL,
            ),
            calls,
            prompt,
        }
    }
}

/// The route's backend request headers, parsed once; marked sensitive (never shown by `Debug`,
/// never indexed by HTTP/2 header compression). Compile checked them; one that still does not
/// parse is left out rather than sent malformed.
fn injected_headers(
    headers: &[tollgate_crds::snapshot::InjectedHeader],
) -> Vec<(http::HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter_map(|h| {
            let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            let mut value = HeaderValue::from_str(&h.value).ok()?;
            value.set_sensitive(true);
            Some((name, value))
        })
        .collect()
}

//! The compiled configuration: what the operator streams to proxies and what a proxy enforces.
//!
//! A snapshot holds only validated, resolved objects: durations in milliseconds, decimals parsed,
//! Services turned into URLs, and API keys as SHA-256 digests (key material never leaves Secrets).
//! It is plain data (serde) so it can be pushed over the wire and persisted in a proxy's state dir.

use std::fmt;

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::resources::{
    Approval, BillingState, FailurePolicy, HttpMethod, LifecycleState, Metering, Metric, Period,
    ReservationEstimate, SubscriptionState,
};

/// Namespace and name of an object. Displayed as `namespace/name`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace (`default` for standalone objects without one).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Another object of the same namespace.
    pub fn sibling(&self, name: impl Into<String>) -> Self {
        Self::new(self.namespace.clone(), name)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// SHA-256 digest of an API key, hex-encoded. Proxies look tenants up by the digest of the presented key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct KeyDigest(pub String);

impl KeyDigest {
    /// Digest of the key as presented by a client.
    pub fn of(key: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(key)))
    }
}

/// A complete, consistent configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Accepted routes, most specific first (see [`Route::specificity`]).
    pub routes: Vec<Route>,
    /// Tenants whose keys, plan and subscriptions resolved.
    pub tenants: Vec<Tenant>,
    /// Accepted plans.
    pub plans: Vec<Plan>,
    /// An egress sidecar's own Tenant: every request it takes (on localhost only) is this
    /// tenant's, without an API key. Set by the operator for egress sidecars alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_tenant: Option<ObjectKey>,
}

impl Snapshot {
    /// The plan `key`, if accepted.
    pub fn plan(&self, key: &ObjectKey) -> Option<&Plan> {
        self.plans.iter().find(|p| &p.key == key)
    }

    /// The route `key`, if accepted.
    pub fn route(&self, key: &ObjectKey) -> Option<&Route> {
        self.routes.iter().find(|r| &r.key == key)
    }

    /// Puts routes in match order; call after changing `routes`.
    pub fn sort_routes(&mut self) {
        self.routes.sort_by(|a, b| {
            a.specificity()
                .cmp(&b.specificity())
                .then_with(|| a.key.cmp(&b.key))
        });
    }
}

/// An accepted ApiRoute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The ApiRoute.
    pub key: ObjectKey,
    /// metadata.generation of the compiled spec.
    pub generation: i64,
    /// Hosts; empty matches any host.
    pub hosts: Vec<HostMatch>,
    /// Path match.
    pub path: PathMatch,
    /// Methods; empty matches any method.
    pub methods: Vec<HttpMethod>,
    /// Where admitted requests go.
    pub backend: RouteBackend,
    /// Time to wait for backend response headers.
    pub timeout_ms: u64,
    /// Headers added to backend requests (provider credentials from Secrets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<InjectedHeader>,
    /// Request or token metering.
    pub metering: Metering,
    /// Approval mode.
    pub approval: Approval,
    /// Manual approval: approved tenant names.
    pub approved_tenants: Vec<String>,
    /// Manual approval: rejected tenant names (rejection wins over approval).
    pub rejected_tenants: Vec<String>,
    /// Lifecycle state.
    pub lifecycle: LifecycleState,
    /// Sunset time of a deprecated route.
    pub sunset: Option<Timestamp>,
    /// When the route was deprecated (RFC 9745 Deprecation header).
    #[serde(default)]
    pub deprecated_at: Option<Timestamp>,
    /// Labels of the pods whose sidecars serve this route (in its namespace); `None`: the
    /// central proxies serve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<std::collections::BTreeMap<String, String>>,
    /// The API callers speak when calls are translated for the backend (whose API is
    /// `metering`); `None`: callers speak the backend's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_api: Option<Metering>,
    /// Callers' model names mapped to the backend's.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub models: std::collections::BTreeMap<String, String>,
    /// Backends tried in order after this one fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<FallbackRoute>,
    /// The prompt this route publishes as an API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Box<Prompt>>,
    /// WebSocket upgrades are proxied (`spec.websocket` is set).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub websocket: bool,
    /// A WebSocket connection's idle limit.
    #[serde(default = "default_websocket_idle_ms")]
    pub websocket_idle_ms: u64,
    /// A WebSocket connection's lifetime limit.
    #[serde(default = "default_websocket_lifetime_ms")]
    pub websocket_lifetime_ms: u64,
    /// Every request goes to the backend over HTTP/2 (`spec.backend.protocol: HTTP2`); without
    /// it only gRPC calls do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
}

/// A WebSocket connection's idle limit when the route names none: 5 minutes.
pub const DEFAULT_WEBSOCKET_IDLE_MS: u64 = 5 * 60 * 1000;
/// A WebSocket connection's lifetime limit when the route names none: a day.
pub const DEFAULT_WEBSOCKET_LIFETIME_MS: u64 = 24 * 3600 * 1000;

fn default_websocket_idle_ms() -> u64 {
    DEFAULT_WEBSOCKET_IDLE_MS
}

fn default_websocket_lifetime_ms() -> u64 {
    DEFAULT_WEBSOCKET_LIFETIME_MS
}

/// A prompt published as an API (checked by compile: valid schemas, every placeholder declared).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Prompt {
    /// The backend's model.
    pub model: String,
    /// What the API does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// System message template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// User message template.
    pub user: String,
    /// JSON Schema of the caller's body.
    pub input_schema: serde_json::Value,
    /// JSON Schema of the answer, when it is JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<serde_json::Value>,
    /// Output bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

/// The placeholders (`{{name}}`, spaces inside allowed) of a prompt template, in order.
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    out
}

/// A fallback backend of a route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FallbackRoute {
    /// Its base URL.
    pub base_url: String,
    /// Time to wait for its response headers.
    pub timeout_ms: u64,
    /// Headers added to its requests (its provider's credential).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<InjectedHeader>,
    /// The API it speaks (how its usage is read).
    pub api: Metering,
    /// Callers' model names mapped to its own.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub models: std::collections::BTreeMap<String, String>,
}

impl Route {
    /// Whether calls on this route go through the LLM call path: translated, or with fallbacks.
    pub fn calls_llm(&self) -> bool {
        self.caller_api.is_some() || !self.fallbacks.is_empty() || self.prompt.is_some()
    }

    /// The API callers speak on this route (a prompt API's calls are made as OpenAI Chat
    /// Completions calls, then translated for the backend).
    pub fn caller_api(&self) -> Metering {
        match &self.prompt {
            Some(_) => Metering::OpenAI,
            None => self.caller_api.unwrap_or(self.metering),
        }
    }
}

/// How specific a route's match is; smaller sorts first and wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    host_rank: u8,
    host_len: std::cmp::Reverse<usize>,
    path_rank: u8,
    path_len: std::cmp::Reverse<usize>,
    any_method: bool,
}

impl Route {
    /// Host (exact, then wildcard, then any; longer first), then path (exact before prefix, longer
    /// prefixes first), then routes that name methods before routes that take any method.
    pub fn specificity(&self) -> Specificity {
        let (host_rank, host_len) = self
            .hosts
            .iter()
            .map(|h| match h {
                HostMatch::Exact(name) => (0, std::cmp::Reverse(name.len())),
                HostMatch::Wildcard(suffix) => (1, std::cmp::Reverse(suffix.len())),
            })
            .min()
            .unwrap_or((2, std::cmp::Reverse(0)));
        let (path_rank, path_len) = match &self.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Prefix(p) => (1, p.len()),
        };
        Specificity {
            host_rank,
            host_len,
            path_rank,
            path_len: std::cmp::Reverse(path_len),
            any_method: self.methods.is_empty(),
        }
    }

    /// Whether `tenant` (a name in the route's namespace) may call this route, given it subscribed.
    pub fn subscription_state(&self, tenant: &str) -> SubscriptionState {
        if self.approval == Approval::Automatic {
            return SubscriptionState::Active;
        }
        if self.rejected_tenants.iter().any(|t| t == tenant) {
            SubscriptionState::Rejected
        } else if self.approved_tenants.iter().any(|t| t == tenant) {
            SubscriptionState::Active
        } else {
            SubscriptionState::PendingApproval
        }
    }
}

/// A host match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum HostMatch {
    /// Exact host name, lower-case.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`; needs at least one more label.
    Wildcard(String),
}

impl HostMatch {
    /// Whether `host` (lower-case, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(name) => name == host,
            Self::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

/// A path match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    /// Exact path.
    Exact(String),
    /// Prefix on whole segments; stored without a trailing slash (except the root prefix `/`).
    Prefix(String),
}

impl PathMatch {
    /// Whether the request `path` (without query, in its [`routing_form`](crate::path::routing_form))
    /// matches: in any ASCII case, and an exact path with one trailing slash too (see
    /// [`crate::path`] for why).
    pub fn matches(&self, path: &str) -> bool {
        let starts_with = |p: &str| {
            path.len() >= p.len() && path.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
        };
        match self {
            Self::Exact(p) => {
                starts_with(p)
                    && match &path.as_bytes()[p.len()..] {
                        [] => true,
                        [b'/'] => !p.ends_with('/'),
                        _ => false,
                    }
            }
            Self::Prefix(p) if p == "/" => true,
            Self::Prefix(p) => {
                starts_with(p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
        }
    }
}

/// A resolved backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RouteBackend {
    /// Forward to this base URL (scheme, authority and optional path prefix, no trailing slash).
    Http {
        /// Base URL.
        base_url: String,
    },
    /// The app beside the sidecar that serves the route (a route with a workload selector and
    /// no other backend). The operator turns it into `Http` on localhost for each ingress
    /// sidecar; a proxy never receives it.
    Workload,
    /// Answer from the proxy.
    Direct {
        /// Status code.
        status: u16,
        /// Content-Type.
        content_type: String,
        /// Body.
        body: String,
    },
}

/// A tenant whose keys and plans resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    /// The Tenant.
    pub key: ObjectKey,
    /// Display name.
    pub display_name: Option<String>,
    /// Digests of the tenant's API keys.
    pub key_digests: Vec<KeyDigest>,
    /// The tenant's default plan.
    pub plan: Option<ObjectKey>,
    /// Billing state.
    pub billing_state: BillingState,
    /// PastDue: requests are served until then (the plan's grace period, for a state from
    /// Stripe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub past_due_grace_until: Option<Timestamp>,
    /// Paid-through time.
    pub paid_through: Option<Timestamp>,
    /// Subscriptions.
    pub subscriptions: Vec<TenantSubscription>,
}

impl Tenant {
    /// The subscription to `route`, if any.
    pub fn subscription(&self, route: &ObjectKey) -> Option<&TenantSubscription> {
        if route.namespace != self.key.namespace {
            return None;
        }
        self.subscriptions.iter().find(|s| s.route == route.name)
    }
}

/// One subscription of a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TenantSubscription {
    /// Route name (same namespace as the tenant).
    pub route: String,
    /// Plan for this route; `None` uses the tenant's plan.
    pub plan: Option<ObjectKey>,
}

/// A header added to backend requests (a provider credential).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InjectedHeader {
    /// Header name.
    pub name: String,
    /// Value (prefix and the Secret's value). Never shown by `Debug`.
    pub value: String,
}

impl fmt::Debug for InjectedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InjectedHeader")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// An accepted plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The QuotaPolicy.
    pub key: ObjectKey,
    /// Rate limits.
    pub rate_limits: Vec<RateLimit>,
    /// Quotas.
    pub quotas: Vec<Quota>,
    /// IANA zone of the calendar periods.
    pub timezone: String,
    /// Prices.
    pub pricing: Option<Pricing>,
    /// Payment URL for 402 bodies.
    pub payment_url: Option<String>,
    /// Behaviour when the counter store is unreachable.
    pub failure_policy: FailurePolicy,
    /// How token and Cost quotas reserve before a call (defaults when a snapshot predates it).
    #[serde(default)]
    pub reservation: ReservationPolicy,
    /// Models callable on metered routes (exact names, or prefixes ending in `*`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_models: Vec<String>,
    /// How long a tenant past due (from Stripe) is still served, in milliseconds; 0: not at all.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub past_due_grace_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Plan {
    /// Whether the plan lets a call name `model` (`None`: the call names none).
    pub fn allows_model(&self, model: Option<&str>) -> bool {
        if self.allowed_models.is_empty() {
            return true;
        }
        model.is_some_and(|m| matches_any(&self.allowed_models, m))
    }
}

/// How a call's usage is reserved at admission (QuotaPolicy `spec.reservation`, defaults filled).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReservationPolicy {
    /// Output tokens reserved when a call names no bound, and the most reserved for one.
    pub max_output_tokens: u64,
    /// Learned or Bound.
    pub estimate: ReservationEstimate,
}

impl ReservationPolicy {
    /// Output tokens reserved for a call naming no bound, unless the plan says otherwise.
    pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;
}

impl Default for ReservationPolicy {
    fn default() -> Self {
        Self {
            max_output_tokens: Self::DEFAULT_MAX_OUTPUT_TOKENS,
            estimate: ReservationEstimate::Learned,
        }
    }
}

/// A short-window rate limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Name.
    pub name: String,
    /// Requests per window.
    pub requests: u64,
    /// Window length in milliseconds.
    pub window_ms: u64,
}

/// A calendar quota.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// Name.
    pub name: String,
    /// What is counted.
    pub metric: Metric,
    /// Allowance per period.
    pub limit: Decimal,
    /// Period.
    pub period: Period,
    /// Models whose calls it counts (exact names, or prefixes ending in `*`); empty: every
    /// request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Spend-alert thresholds, percent of the limit, ascending, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_at: Vec<u32>,
    /// The billing event name its usage is exported under (read by the operator only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_event_name: Option<String>,
    /// Served past the limit (metered as overage) instead of refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overage: bool,
    /// The event name of the usage beyond the limit (operator only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overage_meter_event_name: Option<String>,
}

impl Quota {
    /// Whether a call naming `model` counts in this quota (`None`: a request that names no
    /// model, or is not a call).
    pub fn counts_model(&self, model: Option<&str>) -> bool {
        self.models.is_empty() || model.is_some_and(|m| matches_any(&self.models, m))
    }
}

/// Whether `model` is one of `patterns`: exact names, or prefixes ending in `*`.
pub fn matches_any(patterns: &[String], model: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix),
        None => p == model,
    })
}

/// Prices.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    /// ISO 4217 code.
    pub currency: String,
    /// Price per admitted request.
    pub per_request: Option<Decimal>,
    /// Token prices per model.
    pub models: Vec<ModelPrice>,
}

impl Pricing {
    /// The price of `model`: exact name first, then the longest matching prefix.
    pub fn model(&self, model: &str) -> Option<&ModelPrice> {
        self.models.iter().find(|m| m.model == model).or_else(|| {
            self.models
                .iter()
                .filter(|m| model.starts_with(m.model.as_str()))
                .max_by_key(|m| m.model.len())
        })
    }
}

/// Token prices of a model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModelPrice {
    /// Model name or prefix.
    pub model: String,
    /// Price per million prompt tokens.
    pub input_per_million_tokens: Decimal,
    /// Price per million completion tokens.
    pub output_per_million_tokens: Decimal,
    /// Price per million cached prompt tokens read (the input price when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million_tokens: Option<Decimal>,
    /// Price per million prompt tokens written to a cache (the input price when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_input_per_million_tokens: Option<Decimal>,
    /// Price per million reasoning tokens (the output price when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_per_million_tokens: Option<Decimal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_whole_segments() {
        let p = PathMatch::Prefix("/v1/chat".into());
        assert!(p.matches("/v1/chat"));
        assert!(p.matches("/v1/chat/completions"));
        assert!(!p.matches("/v1/chatter"));
        assert!(!p.matches("/v1"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
        // As lenient backends read paths: any case, a trailing slash on an exact path.
        assert!(p.matches("/V1/Chat/completions"));
        let exact = PathMatch::Exact("/v1/reports".into());
        for path in ["/v1/reports", "/v1/Reports", "/v1/reports/", "/V1/REPORTS/"] {
            assert!(exact.matches(path), "{path}");
        }
        for path in [
            "/v1/reports//",
            "/v1/reports/x",
            "/v1/report",
            "/v1/reportsx",
        ] {
            assert!(!exact.matches(path), "{path}");
        }
        assert!(PathMatch::Exact("/".into()).matches("/"));
        assert!(!PathMatch::Exact("/".into()).matches("//"));
    }

    #[test]
    fn wildcard_needs_one_more_label() {
        let w = HostMatch::Wildcard(".example.com".into());
        assert!(w.matches("api.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("badexample.com"));
    }

    #[test]
    fn model_price_prefers_exact_then_longest_prefix() {
        let price = |m: &str| ModelPrice {
            model: m.into(),
            input_per_million_tokens: Decimal::ONE,
            output_per_million_tokens: Decimal::ONE,
            cached_input_per_million_tokens: None,
            cache_write_input_per_million_tokens: None,
            reasoning_per_million_tokens: None,
        };
        let pricing = Pricing {
            currency: "USD".into(),
            per_request: None,
            models: vec![price("gpt-4o"), price("gpt-4o-mini")],
        };
        assert_eq!(
            pricing.model("gpt-4o").map(|m| m.model.as_str()),
            Some("gpt-4o")
        );
        assert_eq!(
            pricing
                .model("gpt-4o-mini-2024-07-18")
                .map(|m| m.model.as_str()),
            Some("gpt-4o-mini")
        );
        assert_eq!(pricing.model("claude"), None);
    }
}

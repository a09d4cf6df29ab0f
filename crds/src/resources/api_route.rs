use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, DURATION_PATTERN, OBJECT_NAME_PATTERN};

/// An API that tenants subscribe to and call through the Tollgate proxy.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "ApiRoute",
    shortname = "ar",
    category = "tollgate",
    namespaced,
    status = "ApiRouteStatus",
    printcolumn(name = "Hosts", type_ = "string", json_path = ".spec.hosts"),
    printcolumn(
        name = "Prefix",
        type_ = "string",
        json_path = ".spec.match.pathPrefix"
    ),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.match.path"),
    printcolumn(
        name = "Service",
        type_ = "string",
        json_path = ".spec.backend.service.name"
    ),
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.backend.url"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].message"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "(has(self.approval) && self.approval == 'Manual') || !has(self.approvedTenants) || size(self.approvedTenants) == 0"
).message("approvedTenants is only allowed with approval: Manual").field_path(".approvedTenants"))]
#[x_kube(validation = Rule::new(
    "(has(self.approval) && self.approval == 'Manual') || !has(self.rejectedTenants) || size(self.rejectedTenants) == 0"
).message("rejectedTenants is only allowed with approval: Manual").field_path(".rejectedTenants"))]
#[x_kube(validation = Rule::new(
    "has(self.workloadSelector) || (has(self.backend) && (has(self.backend.service) || has(self.backend.url) || has(self.backend.directResponse)))"
).message("exactly one of backend.service, backend.url or backend.directResponse must be set (only a route with a workloadSelector may name none: it forwards to the selected pods' app)").field_path(".backend"))]
#[x_kube(validation = Rule::new(
    "(!has(self.translate) && (!has(self.fallbacks) || size(self.fallbacks) == 0)) || (has(self.metering) && self.metering != 'Requests')"
).message("translate and fallbacks need metering to name the backend's API (OpenAI, Anthropic or Gemini)").field_path(".metering"))]
#[serde(rename_all = "camelCase")]
pub struct ApiRouteSpec {
    /// Host names this route serves: exact names (api.example.com) or one leading wildcard label
    /// (*.example.com, which does not match example.com itself). Empty means any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(regex(
            pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
        ))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub hosts: Vec<String>,

    /// Which requests this route takes: a path prefix or an exact path, optionally limited to methods.
    #[serde(rename = "match")]
    pub route_match: RouteMatch,

    /// Where admitted requests go: exactly one of service, url or directResponse. A route with a
    /// workloadSelector may name none of them: its sidecars forward to the app beside them.
    #[serde(default)]
    pub backend: Backend,

    /// Serve this route from the Tollgate sidecars of the pods in this namespace whose labels
    /// match, instead of from the central proxies. An ingress sidecar (`tollgate.dev/inject:
    /// ingress`) forwards to its app on localhost when the backend names no service, url or
    /// directResponse; an egress sidecar (`tollgate.dev/inject: egress`) sends its app's calls to
    /// the backend's url, charged to the Tenant the pod names. Each sidecar receives only the
    /// routes that select its pod, the tenants subscribed to them and their plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,

    /// How usage is metered: Requests (default) counts requests; OpenAI also reads token counts from
    /// the `usage` object of JSON and streamed (SSE) responses, for token and Cost quotas.
    #[serde(default)]
    pub metering: Metering,

    /// Callers speak another API than the backend (whose API is `metering`): their calls are
    /// translated for it, and its answers, streams and errors back (OpenAI Chat Completions to
    /// Anthropic Messages or Gemini, Anthropic Messages to an OpenAI-compatible backend). What
    /// the backend cannot do is refused with 400, never dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translate: Option<Translate>,

    /// Publishes a prompt as an API: callers POST a JSON object, checked against `inputSchema`;
    /// its members fill the template's `{{name}}` placeholders; the model's answer comes back
    /// as `{"output": ..., "model": ..., "usage": {...}}`, parsed as JSON when a
    /// `responseSchema` is set. A GET describes the API (its schemas). Metered and budgeted as
    /// any call; `metering` names the backend's API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptApi>,

    /// Carry WebSocket connections (set, even empty, to proxy upgrades; without it an upgrade
    /// request reaches the backend as a plain request): how long one may stay idle and open. Not
    /// on a route that meters tokens, translates, falls back or publishes a prompt: a
    /// connection's messages are not metered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocketLimits>,

    /// Backends tried in order when the one before answers 429 or 5xx, cannot be reached or
    /// times out, before anything reached the caller. Each may speak another provider's API
    /// (translated as for `translate`). The call is charged once, priced by the model that
    /// answered. Needs a `metering` that reads calls (OpenAI, Anthropic or Gemini).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub fallbacks: Vec<FallbackBackend>,

    /// Automatic (default): any tenant that subscribes is served. Manual: only tenants listed in
    /// approvedTenants; others get 403 approval-pending.
    #[serde(default)]
    pub approval: Approval,

    /// Manual approval: tenant names (same namespace) the route owner approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub approved_tenants: Vec<String>,

    /// Manual approval: tenant names turned down; they get 403 subscription-rejected. A tenant in
    /// both lists is rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub rejected_tenants: Vec<String>,

    /// Published (default), Deprecated (served with Deprecation and Sunset headers) or Retired (410).
    #[serde(default)]
    pub lifecycle: Lifecycle,
}

/// Request matching.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.pathPrefix) != has(self.path)")
    .message("exactly one of match.pathPrefix or match.path must be set"))]
pub struct RouteMatch {
    /// Path prefix, matched on whole segments: /v1/chat matches /v1/chat and /v1/chat/completions,
    /// not /v1/chatter. Requests are matched on their normalized path (`..` and `.` resolved,
    /// `//` merged, `%2e`-style escapes decoded), so the prefix is written in that form too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^?#\s]*$"))]
    pub path_prefix: Option<String>,
    /// Exact path, in normalized form like pathPrefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^?#\s]*$"))]
    pub path: Option<String>,
    /// HTTP methods this route takes. Empty means any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub methods: Vec<HttpMethod>,
}

/// An HTTP method.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
    CONNECT,
    TRACE,
}

impl HttpMethod {
    /// The method as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GET => "GET",
            Self::HEAD => "HEAD",
            Self::POST => "POST",
            Self::PUT => "PUT",
            Self::PATCH => "PATCH",
            Self::DELETE => "DELETE",
            Self::OPTIONS => "OPTIONS",
            Self::CONNECT => "CONNECT",
            Self::TRACE => "TRACE",
        }
    }
}

/// Where admitted requests go.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.service) ? 1 : 0) + (has(self.url) ? 1 : 0) + (has(self.directResponse) ? 1 : 0) <= 1"
).message("exactly one of backend.service, backend.url or backend.directResponse must be set"))]
pub struct Backend {
    /// A Service in this namespace; requests go to http://NAME.NAMESPACE.svc:PORT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceBackend>,
    /// An explicit base URL (http:// or https://), for standalone mode and external APIs. The
    /// request path is appended to the URL's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 2048),
        regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    )]
    pub url: Option<String>,
    /// Answer from the proxy itself, without a backend (mock endpoints, maintenance pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// The HTTP version spoken to the backend. Auto (default): HTTP/1.1, and HTTP/2 for gRPC
    /// calls (`content-type: application/grpc...`), which need it. HTTP2: every request over
    /// HTTP/2, for backends that speak nothing else. HTTP/2 is h2c (prior knowledge) to an
    /// http:// backend and TLS with ALPN h2 to an https:// one; one pooled connection carries
    /// many requests.
    #[serde(default, skip_serializing_if = "BackendProtocol::is_auto")]
    pub protocol: BackendProtocol,
    /// How long to wait for the backend's response headers, from 1ms to 1h. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(
        "!self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$') || (duration(self) > duration('0s') && duration(self) <= duration('1h'))"
    ).message("timeout must be more than 0s and at most 1h"))]
    pub timeout: Option<String>,
    /// Headers added to every request sent to the backend, each value read from a Secret: a
    /// provider's API key (`Authorization: Bearer sk-...`, Anthropic's `x-api-key`, Gemini's
    /// `x-goog-api-key`) that callers never hold. A caller's header of the same name is dropped.
    /// The Secret (same namespace) needs the label `tollgate.dev/backend-credentials`, and not
    /// `tollgate.dev/api-key` (a backend credential is never a tenant's key), for the operator to
    /// read it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub request_headers: Vec<RequestHeader>,
}

/// Limits on a route's WebSocket connections.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketLimits {
    /// Closed (1001, "idle timeout") after this long without a byte either way, from 1s to
    /// 24h. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub idle_timeout: Option<String>,
    /// Closed (1001, "connection lifetime limit") this long after it opened, from 1s to 7d
    /// (168h). Default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub max_lifetime: Option<String>,
}

/// A prompt published as an API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromptApi {
    /// The backend's model that answers.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// What the API does, for its description (GET).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    /// The system message; `{{name}}` is replaced by the body's member `name` (text as it is,
    /// anything else as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub system: Option<String>,
    /// The user message, with placeholders as in `system`.
    #[schemars(length(min = 1, max = 65536))]
    pub user: String,
    /// The JSON Schema a caller's body must satisfy: an object schema whose `properties` name
    /// every placeholder. A body that does not is answered 400 with the schema's complaint.
    #[schemars(schema_with = "json_schema_object")]
    pub input_schema: serde_json::Value,
    /// A JSON Schema the answer must satisfy: the model is asked to answer with JSON only, and
    /// its answer is parsed and checked (502 invalid-model-output when it does not match).
    /// Without it the answer is the model's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_json_schema_object")]
    pub response_schema: Option<serde_json::Value>,
    /// The most output tokens a call may produce (the plan's reservation bound still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature, a decimal from 0 to 2 (a backend with a smaller range refuses
    /// more, as Anthropic's above 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(0|1|2)(\.[0-9]{1,3})?$"))]
    pub temperature: Option<String>,
}

/// A JSON Schema document, kept as written.
fn json_schema_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn optional_json_schema_object(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema_object(g)
}

/// What callers speak when it is not the backend's API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Translate {
    /// The API callers speak: OpenAI (Chat Completions, `POST .../chat/completions`) or
    /// Anthropic (Messages, `POST .../messages`).
    pub from: CallerApi,
    /// Model names callers use, each with the backend's model it stands for
    /// (`gpt-4o: claude-sonnet-4-5`). A name not listed is sent as it came. Plans price the
    /// backend's names; `allowedModels` lists the callers'.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 256))]
    pub models: std::collections::BTreeMap<String, String>,
}

/// An API callers may speak on a translated route.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum CallerApi {
    /// OpenAI Chat Completions.
    OpenAI,
    /// Anthropic Messages.
    Anthropic,
}

impl From<CallerApi> for Metering {
    fn from(api: CallerApi) -> Self {
        match api {
            CallerApi::OpenAI => Metering::OpenAI,
            CallerApi::Anthropic => Metering::Anthropic,
        }
    }
}

/// A backend tried when the ones before it failed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.service) != has(self.url)")
    .message("exactly one of service or url must be set"))]
pub struct FallbackBackend {
    /// A Service in this namespace (exactly one of service or url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceBackend>,
    /// An explicit base URL (http:// or https://).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 2048),
        regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    )]
    pub url: Option<String>,
    /// The API this backend speaks, which is also how its usage is read: OpenAI, Anthropic or
    /// Gemini. The route's `metering` when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Metering>,
    /// Model names callers use, each with this backend's model it stands for.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 256))]
    pub models: std::collections::BTreeMap<String, String>,
    /// How long to wait for this backend's response headers, from 1ms to 1h. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Headers added to every request sent to this backend, each value read from a Secret
    /// labelled `tollgate.dev/backend-credentials` (its provider's credential).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub request_headers: Vec<RequestHeader>,
}

/// A header the proxy adds to backend requests, its value from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestHeader {
    /// Header name, for example `Authorization` or `x-api-key`. Not a hop-by-hop header, `Host`,
    /// or one Tollgate sets (`X-Tollgate-*`, `X-Forwarded-*`).
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    )]
    pub name: String,
    /// The Secret and key holding the value.
    pub secret_key_ref: super::tenant::SecretKeyRef,
    /// Text put before the Secret's value, for example `"Bearer "`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub value_prefix: Option<String>,
}

/// A Service backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackend {
    /// Service name, in the route's namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = super::common::DNS_LABEL_PATTERN))]
    pub name: String,
    /// Service port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// A fixed response served by the proxy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    /// HTTP status code, 200..599.
    #[schemars(range(min = 200, max = 599))]
    pub status: u16,
    /// Content-Type of the body. Defaults to text/plain; charset=utf-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub content_type: Option<String>,
    /// Response body (at most 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
}

/// How usage is metered.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Metering {
    /// Count requests only.
    #[default]
    Requests,
    /// Also count tokens from OpenAI's `usage` (Chat Completions, Responses, Embeddings), JSON and
    /// streamed (SSE). Streamed chat requests that did not ask for usage get
    /// `stream_options.include_usage`, and the extra usage chunk is kept from the client.
    OpenAI,
    /// Also count tokens from Anthropic Messages' `usage` (`message_start`/`message_delta` events
    /// when streamed), cache creation and cache read tokens included.
    Anthropic,
    /// Also count tokens from Google Gemini's `usageMetadata` (`generateContent`,
    /// `streamGenerateContent` as SSE or a JSON array), thoughts tokens as output.
    Gemini,
}

impl Metering {
    /// Whether responses carry token usage to read.
    pub fn reads_tokens(self) -> bool {
        self != Self::Requests
    }
}

/// The HTTP version spoken to a backend.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum BackendProtocol {
    /// HTTP/1.1, and HTTP/2 for gRPC calls.
    #[default]
    Auto,
    /// HTTP/2 for every request.
    HTTP2,
}

impl BackendProtocol {
    /// Whether it is the default (left out when serialized).
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }
}

/// Subscription approval mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Approval {
    /// Every subscribed tenant is served.
    #[default]
    Automatic,
    /// Only tenants in approvedTenants are served.
    Manual,
}

/// Lifecycle of the route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.sunset) || (has(self.state) && self.state != 'Published')")
    .message("sunset applies to Deprecated or Retired routes only").field_path(".sunset"))]
pub struct Lifecycle {
    /// Published (default) | Deprecated | Retired.
    #[serde(default)]
    pub state: LifecycleState,
    /// RFC 3339 time after which a Deprecated route goes away; sent in the Sunset header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub sunset: Option<String>,
    /// RFC 3339 time the route was (or will be) deprecated, sent in the Deprecation header
    /// (RFC 9745). Defaults to when a proxy loads the deprecated route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub deprecated_at: Option<String>,
}

/// Lifecycle states.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum LifecycleState {
    /// Served normally.
    #[default]
    Published,
    /// Served, with Deprecation (and Sunset) headers.
    Deprecated,
    /// Answered 410 route-retired.
    Retired,
}

/// The pods whose sidecars serve a route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a pod (in the route's namespace) must all carry. At least one: a route is never
    /// served by every sidecar of a namespace by accident.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("size(self) >= 1").message("workloadSelector.matchLabels needs at least one label"))]
    pub match_labels: std::collections::BTreeMap<String, String>,
}

/// Observed state of an ApiRoute.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiRouteStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (False with reason Conflict or Invalid naming the field) and `Programmed`
    /// ("3/3 proxies at version N").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, DECIMAL_PATTERN, DNS_LABEL_PATTERN, DURATION_PATTERN};

/// A plan: what a tenant may use in a billing period, its short-window rate limits, and what usage costs.
///
/// Exceeding a rate limit answers 429 Too Many Requests; exhausting a quota answers 402 Payment Required.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "QuotaPolicy",
    plural = "quotapolicies",
    shortname = "qp",
    category = "tollgate",
    namespaced,
    status = "QuotaPolicyStatus",
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!has(self.quotas) || !self.quotas.exists(q, q.metric == 'Cost') || has(self.pricing)"
).message("a quota with metric Cost needs spec.pricing (currency and prices)").field_path(".pricing"))]
#[serde(rename_all = "camelCase")]
pub struct QuotaPolicySpec {
    /// Short-window limits (for example 50 requests per second). Exceeding one answers 429 Too Many
    /// Requests with Retry-After. Names are unique in the list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub rate_limits: Vec<RateLimit>,

    /// Allowances per calendar billing period. Exhausting one answers 402 Payment Required until the
    /// period ends (Retry-After says when). Names are unique in the list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub quotas: Vec<Quota>,

    /// IANA time zone in which calendar periods start and end (for example Europe/Berlin). Weeks start
    /// on Monday. Defaults to UTC.
    #[serde(default = "default_timezone")]
    #[schemars(length(min = 1, max = 64))]
    pub timezone: String,

    /// Prices, required when a quota uses metric Cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,

    /// Where a tenant can pay or upgrade; copied into every 402 response body as `paymentUrl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://"))]
    pub payment_url: Option<String>,

    /// Models a tenant on this plan may call on routes with token metering: exact names, or
    /// prefixes ending in `*` (`claude-*`). A call naming another model, or none, is refused with
    /// 403 model-not-allowed. Empty (default): any model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 256), regex(pattern = r"^[^*]+\*?$"))
    )]
    pub allowed_models: Vec<String>,

    /// How token and Cost quotas reserve usage before a call goes upstream (routes with token
    /// metering). Defaults: at most 4096 output tokens, estimates learned per model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,

    /// What proxies do when the shared counter store cannot be reached: FailClosed (default) answers
    /// 503 quota-store-unavailable; FailOpen keeps serving, counts locally and reconciles later.
    #[serde(default)]
    pub failure_policy: FailurePolicy,

    /// How long a tenant whose payment state comes from Stripe (`Tenant.spec.billing.stripe`)
    /// keeps being served after its subscription falls past due (Stripe is still retrying the
    /// payment), for example `72h`. Then requests answer 402 account-past-due. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub past_due_grace_period: Option<String>,
}

fn default_timezone() -> String {
    "UTC".to_owned()
}

/// A short-window limit on requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Name shown in RateLimit headers and problem bodies: lower-case letters, digits and '-', at most 63.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// Requests allowed per window (at least 1).
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub requests: u64,
    /// Window length, from 1s to 1h, for example `1s` or `10m`.
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(
        "!self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('1h'))"
    ).message("window must be between 1s and 1h"))]
    pub window: String,
}

/// An allowance per calendar period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.metric == 'Cost' || self.limit.matches('^[0-9]+$')"
).message("limit must be a whole number unless metric is Cost").field_path(".limit"))]
#[x_kube(validation = Rule::new(
    "!has(self.overageMeterEventName) || (has(self.whenExhausted) && self.whenExhausted == 'Overage' && has(self.meterEventName))"
).message("overageMeterEventName needs whenExhausted: Overage and meterEventName").field_path(".overageMeterEventName"))]
pub struct Quota {
    /// Name shown in RateLimit headers and problem bodies: lower-case letters, digits and '-', at most 63.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// What is counted: Requests, InputTokens, OutputTokens, TotalTokens, or Cost (in pricing.currency).
    #[serde(default)]
    pub metric: Metric,
    /// Allowance per period, as a decimal string: a whole number for counts, up to 6 decimals for Cost.
    #[schemars(length(max = 22), regex(pattern = DECIMAL_PATTERN))]
    pub limit: String,
    /// Calendar period in spec.timezone: Hour, Day, Week (from Monday), Month or Year.
    pub period: Period,
    /// A budget for some models only: the quota counts calls naming one of these models (exact
    /// names, or prefixes ending in `*`) on routes with token metering, and nothing else. Calls
    /// to other models, and requests on other routes, neither count in it nor are refused by it.
    /// Empty (default): every request counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 256), regex(pattern = r"^[^*]+\*?$"))
    )]
    pub models: Vec<String>,
    /// Spend alerts: percentages of the limit (1 to 100, e.g. `[50, 80, 100]`) at which the
    /// operator tells the tenant's owners, once per period each: a Kubernetes Event on the
    /// Tenant (Warning from 100), `tollgate_operator_spend_alerts_total`, and
    /// `status.usage[].alertsSent`. Empty (default): no alerts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(range(min = 1, max = 100)))]
    pub alert_at: Vec<u32>,
    /// Export this quota's usage to billing under this event name: the `event_name` of a Stripe
    /// Billing meter, or the `type` of a CloudEvent (the operator's `--usage-export-*` flags
    /// choose the sink). Values are whole units: requests, tokens, or millionths of the currency
    /// for Cost. Absent (default): not exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[A-Za-z0-9_.:-]+$"))]
    pub meter_event_name: Option<String>,
    /// What happens once the quota is used up: Refuse (default: 402 quota-exhausted) or Overage
    /// (served, with a `Tollgate-Overage` header naming the quota; the usage beyond the limit is
    /// billed apart when `overageMeterEventName` is set).
    #[serde(default, skip_serializing_if = "is_refuse")]
    pub when_exhausted: WhenExhausted,
    /// With `whenExhausted: Overage`, export the usage beyond the limit under this event name
    /// (and only the usage up to the limit under `meterEventName`). Absent: all of it under
    /// `meterEventName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[A-Za-z0-9_.:-]+$"))]
    pub overage_meter_event_name: Option<String>,
}

/// What a used-up quota does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum WhenExhausted {
    /// 402 quota-exhausted.
    #[default]
    Refuse,
    /// Served and metered as overage.
    Overage,
}

fn is_refuse(w: &WhenExhausted) -> bool {
    *w == WhenExhausted::Refuse
}

/// What a quota counts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Metric {
    /// Admitted requests.
    #[default]
    Requests,
    /// Prompt tokens reported by the backend (routes with token metering), cached and
    /// cache-write tokens included.
    InputTokens,
    /// Completion tokens reported by the backend, reasoning tokens included.
    OutputTokens,
    /// Input plus output tokens.
    TotalTokens,
    /// Money, priced with spec.pricing.
    Cost,
}

/// A calendar billing period.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Period {
    /// From minute 0 of each wall-clock hour.
    Hour,
    /// From local midnight.
    Day,
    /// From Monday, local midnight.
    Week,
    /// From the first of the month, local midnight.
    Month,
    /// From January 1st, local midnight.
    Year,
}

/// Prices used by Cost quotas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    /// ISO 4217 currency code, for example USD.
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: String,
    /// Price of one admitted request, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 22), regex(pattern = DECIMAL_PATTERN))]
    pub per_request: Option<String>,
    /// Token prices for routes with token metering, matched against the model the request names
    /// and the response reports (exact name first, then the longest prefix). Under a Cost quota,
    /// a call naming a model priced here by nothing is refused (403 model-not-priced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["model".into()]))]
    pub models: Vec<ModelPrice>,
}

/// Token prices of one model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPrice {
    /// Model name or prefix, matched against the response's `model`.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// Price per million prompt tokens, as a decimal string.
    #[schemars(length(max = 22), regex(pattern = DECIMAL_PATTERN))]
    pub input_per_million_tokens: String,
    /// Price per million completion tokens, as a decimal string.
    #[schemars(length(max = 22), regex(pattern = DECIMAL_PATTERN))]
    pub output_per_million_tokens: String,
    /// Price per million cached prompt tokens read (OpenAI `cached_tokens`, Anthropic
    /// `cache_read_input_tokens`, Gemini `cachedContentTokenCount`). Defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 22), regex(pattern = DECIMAL_PATTERN))]
    pub cached_input_per_million_tokens: Option<String>,
    /// Price per million prompt tokens written to a cache (Anthropic
    /// `cache_creation_input_tokens`). Defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 22), regex(pattern = DECIMAL_PATTERN))]
    pub cache_write_input_per_million_tokens: Option<String>,
    /// Price per million reasoning tokens (OpenAI `reasoning_tokens`, Gemini
    /// `thoughtsTokenCount`). Defaults to the output price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 22), regex(pattern = DECIMAL_PATTERN))]
    pub reasoning_per_million_tokens: Option<String>,
}

/// How a call's usage is reserved at admission, before it goes upstream.
///
/// A call is admitted only if its reservation fits in every token and Cost quota; when the
/// response ends, the reported usage replaces the reservation (or the reservation is kept when
/// no usage was reported for a successful response).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// Output tokens reserved for a call that names no bound (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`, `generationConfig.maxOutputTokens`), and the
    /// most reserved for one that names a larger bound. Default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_output_tokens: Option<u64>,
    /// Learned (default): reserve what recent calls of the same model used (the most of the last
    /// 20), never more than the bound, so typical calls do not reserve the worst case. Bound:
    /// always reserve the bound.
    #[serde(default)]
    pub estimate: ReservationEstimate,
}

/// How much output a reservation assumes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ReservationEstimate {
    /// What recent calls of the model used, at most the bound.
    #[default]
    Learned,
    /// The call's bound.
    Bound,
}

/// Behaviour when the shared counter store is unreachable.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum FailurePolicy {
    /// Keep serving, count locally, reconcile into the store when it is back.
    FailOpen,
    /// Answer 503 quota-store-unavailable.
    #[default]
    FailClosed,
}

/// Observed state of a QuotaPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaPolicyStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: the plan is valid and in the compiled configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

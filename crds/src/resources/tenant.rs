use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, LocalObjectReference, OBJECT_NAME_PATTERN};

/// A customer or team that calls APIs through Tollgate with its own API keys, under a plan.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "Tenant",
    shortname = "tn",
    category = "tollgate",
    namespaced,
    status = "TenantStatus",
    printcolumn(
        name = "Plan",
        type_ = "string",
        json_path = ".spec.quotaPolicyRef.name"
    ),
    printcolumn(name = "Billing", type_ = "string", json_path = ".spec.billing.state"),
    printcolumn(
        name = "Effective",
        type_ = "string",
        json_path = ".status.billing.state",
        priority = "1"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Human-readable name, for dashboards and problem bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// The tenant's plan (a QuotaPolicy in this namespace). No plan means no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_policy_ref: Option<LocalObjectReference>,

    /// Secrets holding the tenant's API keys. Key material lives only in Secrets; proxies receive
    /// SHA-256 digests. Several keys allow rotation without downtime.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub api_keys: Vec<ApiKeyRef>,

    /// Billing standing (typed here, or from Stripe). Anything but Active answers 402.
    #[serde(default)]
    pub billing: Billing,

    /// The ApiRoutes this tenant may call, each optionally with its own plan (and own counters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new(
        "self.all(s, self.exists_one(t, t.apiRouteRef.name == s.apiRouteRef.name))"
    ).message("each ApiRoute may appear only once in subscriptions"))]
    pub subscriptions: Vec<Subscription>,

    /// Where the tenant's owner also receives its spend alerts (the plans' `alertAt`): a POST
    /// per alert, signed the Standard Webhooks way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_webhook: Option<AlertWebhook>,
}

/// A signed webhook for spend alerts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertWebhook {
    /// The owner's endpoint (https://; http:// for a receiver inside the cluster).
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,
    /// The signing secret, `whsec_` and base64 (as Standard Webhooks libraries take it), in a
    /// Secret of this namespace.
    pub secret_ref: WebhookSecretRef,
}

/// A webhook's signing secret: a key in a Secret of the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key within the Secret's data. Defaults to `secret`.
    #[serde(default = "default_webhook_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_webhook_secret_key() -> String {
    "secret".to_owned()
}

/// Where one API key is stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyRef {
    /// The Secret (same namespace) and the key in its data that holds the API key.
    pub secret_ref: SecretKeyRef,
}

/// A key in a Secret of the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key within the Secret's data. Defaults to `apiKey`.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_secret_key() -> String {
    "apiKey".to_owned()
}

/// The tenant's billing standing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Billing {
    /// Active (default) | PastDue | Suspended | Cancelled. Anything but Active answers 402.
    #[serde(default)]
    pub state: BillingState,
    /// RFC 3339 time until which the subscription is paid; after it requests answer 402
    /// subscription-expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub paid_through: Option<String>,
    /// The Stripe customer and subscription whose payment state decides this tenant's billing
    /// state (the operator's Stripe webhook receiver and periodic read keep `status.stripe`).
    /// `state` still overrides it when set to anything but Active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe: Option<StripeRef>,
}

/// A Stripe customer and one of its subscriptions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StripeRef {
    /// The customer (`cus_…`).
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9_]+$"))]
    pub customer: String,
    /// The subscription (`sub_…`). Events about the customer's other subscriptions are ignored.
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9_]+$"))]
    pub subscription: String,
}

/// Billing states.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum BillingState {
    /// In good standing.
    #[default]
    Active,
    /// Payment overdue: 402 account-past-due.
    PastDue,
    /// Suspended by the operator of the API: 402 account-suspended.
    Suspended,
    /// Subscription cancelled: 402 subscription-cancelled.
    Cancelled,
}

/// A subscription to one ApiRoute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// The ApiRoute (same namespace).
    pub api_route_ref: LocalObjectReference,
    /// A plan just for this route, with its own counters. Defaults to the tenant's plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_policy_ref: Option<LocalObjectReference>,
}

/// Observed state of a Tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: False names the missing Secret, key or plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// State of each subscription.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<SubscriptionStatus>,
    /// Usage in the current period, per plan and quota.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<UsageStatus>,
    /// This month's requests under plans that meter usage (token or Cost quotas), per plan:
    /// tokens by type and cost in the plan's currency, summed over the proxies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub call_usage: Vec<CallUsageStatus>,
    /// The billing state requests are judged by, where it came from, and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<BillingStatus>,
    /// What Stripe last said about `spec.billing.stripe` (written by the operator's Stripe
    /// receiver and periodic read, under their own field manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe: Option<StripeStatus>,
    /// The usage export to billing (quotas with `meterEventName`), per quota and period: what
    /// the fleet metered, what the sink acknowledged, and the event in flight. Written by the
    /// leader's usage export under its own field manager; it is the export's durable cursor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export: Vec<ExportStatus>,
}

/// The usage export of one quota in one period.
///
/// Every field reads as its default when absent, as in [`StripeStatus`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ExportStatus {
    /// The QuotaPolicy (plan).
    pub quota_policy: String,
    /// The quota.
    pub quota: String,
    /// Start of the period, RFC 3339.
    pub period_start: String,
    /// End of the period, RFC 3339.
    pub period_end: String,
    /// The event name the usage goes out under.
    pub event_name: String,
    /// The usage beyond the quota's limit (`overageMeterEventName`), not the usage up to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overage: bool,
    /// Where the quota's usage splits between its two series (the limit, in whole units, when
    /// the quota's first series of the period began; the other takes the same): fixed for the
    /// period, so a limit changed mid-period never bills the same units under both names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_at: Option<u64>,
    /// Settled usage in whole units (requests, tokens, millionths of the currency) as last
    /// read from the fleet's counters when this status was written.
    pub metered: u64,
    /// Units the sink has acknowledged: every event up to here was accepted.
    pub acknowledged: u64,
    /// The event sent and not yet acknowledged. Sent again, unchanged, until it is: the sink
    /// drops the copies by its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingExport>,
    /// Why the last attempt failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One usage event, recorded before it is sent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PendingExport {
    /// The idempotency identifier (`tg1-` and a SHA-256 of the tenant's UID, plan, quota,
    /// period and range): Stripe's `identifier`, the CloudEvent's `id`.
    pub id: String,
    /// The acknowledged units it starts from.
    pub from: u64,
    /// The metered units it brings the series to; the event's value is `to - from`.
    pub to: u64,
    /// The event's time (RFC 3339), within the period.
    pub timestamp: String,
    /// When it was first recorded (RFC 3339).
    pub created: String,
    /// Who pays, as recorded: the Stripe customer, or the CloudEvent's subject. A resend goes
    /// to the same one, whatever the Tenant names by then.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub customer: String,
}

impl StripeStatus {
    /// Whether this status is about `named` (a status about the customer or subscription a
    /// Tenant named before counts for nothing).
    pub fn describes(&self, named: &StripeRef) -> bool {
        self.customer == named.customer && self.subscription == named.subscription
    }
}

/// The effective billing state (absent fields read as defaults, as in [`StripeStatus`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct BillingStatus {
    /// Active | PastDue | Suspended | Cancelled.
    pub state: BillingState,
    /// Spec (`spec.billing.state`) or Stripe (`status.stripe`).
    pub source: BillingSource,
    /// When the state began (RFC 3339), when known (Stripe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// PastDue only: requests are admitted until this time (the plan's
    /// `pastDueGracePeriod` after `since`), then answer 402 account-past-due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_until: Option<String>,
}

/// Where the effective billing state came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BillingSource {
    /// `spec.billing.state`.
    #[default]
    Spec,
    /// Stripe (`status.stripe`).
    Stripe,
}

/// What Stripe last said about a tenant's subscription.
///
/// Every field reads as its default when absent: a status edited by hand (or written by another
/// version) must not make the Tenant unreadable, which would stop the operator's watch of every
/// Tenant. One without its customer and subscription describes nothing and is ignored.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct StripeStatus {
    /// The customer this status describes (a change of `spec.billing.stripe` starts afresh).
    pub customer: String,
    /// The subscription this status describes.
    pub subscription: String,
    /// The subscription's status as Stripe last reported it (active, trialing, past_due, unpaid,
    /// canceled, paused, incomplete, incomplete_expired); absent when only invoices spoke yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_status: Option<String>,
    /// The billing state that maps to.
    pub state: BillingState,
    /// When that state began: the creation time of the event (or the time of the read) that
    /// first reported it, RFC 3339.
    pub since: String,
    /// The newest observation applied: an event id (`evt_…`), or `subscription-read`.
    pub last_event: String,
    /// Its time (RFC 3339). Events created before it are not applied.
    pub last_event_time: String,
    /// The ids of the last events applied (newest last, at most 16): redeliveries are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_events: Vec<String>,
    /// When the operator wrote it (RFC 3339).
    pub updated_at: String,
}

/// A tenant's requests under one plan in the current month (the plan's time zone).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallUsageStatus {
    /// The QuotaPolicy (plan).
    pub quota_policy: String,
    /// Start of the month, RFC 3339.
    pub period_start: String,
    /// Requests answered.
    pub requests: u64,
    /// Tokens by type: input, cachedInput, cacheWriteInput, output, reasoning.
    pub tokens: TokenStatus,
    /// Cost, as a decimal string in `currency`.
    pub cost: String,
    /// The plan's currency (absent when it has no prices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// Tokens by how they are priced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenStatus {
    /// Prompt tokens neither read from nor written to a cache.
    pub input: u64,
    /// Prompt tokens read from a cache.
    pub cached_input: u64,
    /// Prompt tokens written to a cache.
    pub cache_write_input: u64,
    /// Output tokens other than reasoning.
    pub output: u64,
    /// Reasoning (thinking) tokens.
    pub reasoning: u64,
}

/// Observed state of one subscription.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// ApiRoute name.
    pub api_route: String,
    /// Active | PendingApproval | Rejected | RouteNotFound.
    pub state: SubscriptionState,
}

/// Whether a tenant can call a subscribed route.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SubscriptionState {
    /// Calls are served.
    Active,
    /// The route needs manual approval and the route owner has not approved this tenant yet (403).
    PendingApproval,
    /// The route owner rejected this tenant (403).
    Rejected,
    /// No ApiRoute of that name in the namespace (or it is invalid).
    RouteNotFound,
}

/// Usage of one quota in its current period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageStatus {
    /// The QuotaPolicy (plan) the counter belongs to.
    pub quota_policy: String,
    /// The quota name within the plan.
    pub quota: String,
    /// Start of the current period, RFC 3339.
    pub period_start: String,
    /// Amount used, as a decimal string.
    pub used: String,
    /// Allowance, as a decimal string.
    pub limit: String,
    /// The plan's spend-alert thresholds (`alertAt`, percent) this period has reached and the
    /// operator has announced: each is announced once per period, across restarts and leader
    /// changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts_sent: Vec<u32>,
}

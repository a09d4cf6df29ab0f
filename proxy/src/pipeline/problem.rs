//! RFC 9457 problem responses: every error a caller gets from Tollgate is `application/problem+json`
//! with a stable `type` URI, a `detail` sentence a person can act on, and members a program can use.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value};

/// Base of every problem type URI.
pub const TYPE_BASE: &str = "https://tollgate.dev/problems/";

/// The problems the proxy answers with (api.md's table, in check order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// 404: no route matches host, path and method.
    RouteNotFound,
    /// 410: the route is retired.
    RouteRetired,
    /// 401: no key or an unknown key.
    Unauthorized,
    /// 403: the tenant has no subscription to the route.
    NotSubscribed,
    /// 403: the route needs manual approval, not given yet.
    ApprovalPending,
    /// 403: the route owner rejected the tenant.
    SubscriptionRejected,
    /// 402: billing state PastDue.
    AccountPastDue,
    /// 402: billing state Suspended.
    AccountSuspended,
    /// 402: billing state Cancelled.
    SubscriptionCancelled,
    /// 402: past billing.paidThrough.
    SubscriptionExpired,
    /// 402: a quota of the plan is exhausted.
    QuotaExhausted,
    /// 429: a rate limit is exceeded.
    RateLimited,
    /// 503: the counter store is unreachable and the plan is FailClosed.
    QuotaStoreUnavailable,
    /// 502: the backend could not be reached.
    BackendUnavailable,
    /// 504: the backend did not answer in time.
    BackendTimeout,
    /// 400: the request cannot be routed (no usable Host, malformed target).
    BadRequest,
    /// 403: the call names a model the plan has no price for, under a Cost quota.
    ModelNotPriced,
    /// 403: the call names a model the plan does not allow (or none, when it lists models).
    ModelNotAllowed,
    /// 413: a metered call's body is larger than can be read to estimate it.
    RequestTooLarge,
    /// 400: a prompt API's body does not match its input schema.
    InvalidInput,
    /// 502: a prompt API's model answered with something its response schema does not allow.
    InvalidModelOutput,
}

impl ProblemKind {
    /// The slug after [`TYPE_BASE`], also used as the `reason` metric label and in access logs.
    pub fn slug(self) -> &'static str {
        match self {
            Self::RouteNotFound => "route-not-found",
            Self::RouteRetired => "route-retired",
            Self::Unauthorized => "unauthorized",
            Self::NotSubscribed => "not-subscribed",
            Self::ApprovalPending => "approval-pending",
            Self::SubscriptionRejected => "subscription-rejected",
            Self::AccountPastDue => "account-past-due",
            Self::AccountSuspended => "account-suspended",
            Self::SubscriptionCancelled => "subscription-cancelled",
            Self::SubscriptionExpired => "subscription-expired",
            Self::QuotaExhausted => "quota-exhausted",
            Self::RateLimited => "rate-limited",
            Self::QuotaStoreUnavailable => "quota-store-unavailable",
            Self::BackendUnavailable => "backend-unavailable",
            Self::BackendTimeout => "backend-timeout",
            Self::BadRequest => "bad-request",
            Self::ModelNotPriced => "model-not-priced",
            Self::ModelNotAllowed => "model-not-allowed",
            Self::RequestTooLarge => "request-too-large",
            Self::InvalidInput => "invalid-input",
            Self::InvalidModelOutput => "invalid-model-output",
        }
    }

    /// HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::RouteRetired => StatusCode::GONE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotSubscribed
            | Self::ApprovalPending
            | Self::SubscriptionRejected
            | Self::ModelNotPriced
            | Self::ModelNotAllowed => StatusCode::FORBIDDEN,
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::AccountPastDue
            | Self::AccountSuspended
            | Self::SubscriptionCancelled
            | Self::SubscriptionExpired
            | Self::QuotaExhausted => StatusCode::PAYMENT_REQUIRED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::QuotaStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::BackendUnavailable => StatusCode::BAD_GATEWAY,
            Self::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest | Self::InvalidInput => StatusCode::BAD_REQUEST,
            Self::InvalidModelOutput => StatusCode::BAD_GATEWAY,
        }
    }

    /// Short, human-readable summary (RFC 9457 `title`), the same for every occurrence.
    pub fn title(self) -> &'static str {
        match self {
            Self::RouteNotFound => "Route not found",
            Self::RouteRetired => "API retired",
            Self::Unauthorized => "Missing or unknown API key",
            Self::NotSubscribed => "Not subscribed to this API",
            Self::ApprovalPending => "Subscription awaiting approval",
            Self::SubscriptionRejected => "Subscription rejected",
            Self::AccountPastDue => "Account past due",
            Self::AccountSuspended => "Account suspended",
            Self::SubscriptionCancelled => "Subscription cancelled",
            Self::SubscriptionExpired => "Subscription expired",
            Self::QuotaExhausted => "Quota exhausted",
            Self::RateLimited => "Rate limit exceeded",
            Self::QuotaStoreUnavailable => "Quota store unavailable",
            Self::BackendUnavailable => "Backend unavailable",
            Self::BackendTimeout => "Backend timeout",
            Self::BadRequest => "Bad request",
            Self::ModelNotPriced => "Model not priced",
            Self::ModelNotAllowed => "Model not allowed",
            Self::RequestTooLarge => "Request too large to meter",
            Self::InvalidInput => "Body does not match the input schema",
            Self::InvalidModelOutput => "Model answer does not match the response schema",
        }
    }
}

/// A problem about to be sent.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Which problem.
    pub kind: ProblemKind,
    /// What happened and what to do, for a person.
    pub detail: String,
    /// Extension members (`tenant`, `apiRoute`, `quota`, `limit`, `paymentUrl`...).
    pub members: Map<String, Value>,
}

impl Problem {
    /// A problem with a detail sentence.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            members: Map::new(),
        }
    }

    /// Adds an extension member.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.members.insert(name.to_owned(), value.into());
        self
    }

    /// Adds an extension member when there is a value.
    pub fn with_opt(self, name: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(v) => self.with(name, v),
            None => self,
        }
    }

    /// The JSON body; `instance` is the request path.
    pub fn body(&self, instance: &str) -> Bytes {
        let mut doc = Map::with_capacity(5 + self.members.len());
        doc.insert(
            "type".into(),
            Value::String(format!("{TYPE_BASE}{}", self.kind.slug())),
        );
        doc.insert("title".into(), Value::String(self.kind.title().into()));
        doc.insert("status".into(), Value::from(self.kind.status().as_u16()));
        doc.insert("detail".into(), Value::String(self.detail.clone()));
        doc.insert("instance".into(), Value::String(instance.into()));
        for (k, v) in &self.members {
            doc.insert(k.clone(), v.clone());
        }
        Bytes::from(serde_json::to_vec(&Value::Object(doc)).unwrap_or_default())
    }
}

/// Content-Type of problem bodies.
pub fn content_type() -> HeaderValue {
    HeaderValue::from_static("application/problem+json")
}

/// Header name and value for 401 responses.
pub fn www_authenticate() -> (header::HeaderName, HeaderValue) {
    (
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tollgate\""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_rfc9457_members_and_extensions() {
        let p = Problem::new(ProblemKind::QuotaExhausted, "You used your allowance.")
            .with("quota", "monthly-requests");
        let body: Value = serde_json::from_slice(&p.body("/v1/chat")).expect("json");
        assert_eq!(
            body["type"],
            "https://tollgate.dev/problems/quota-exhausted"
        );
        assert_eq!(body["title"], "Quota exhausted");
        assert_eq!(body["status"], 402);
        assert_eq!(body["detail"], "You used your allowance.");
        assert_eq!(body["instance"], "/v1/chat");
        assert_eq!(body["quota"], "monthly-requests");
    }
}

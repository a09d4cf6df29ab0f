//! `compile`: from the objects users wrote to a [`Snapshot`] the proxy can enforce.
//!
//! Pure and deterministic: same objects in, same snapshot and diagnostics out. The schema and CEL
//! rules reject most mistakes at admission, but standalone mode has no API server, and some errors
//! are only visible across objects (a missing Secret, two routes claiming the same match, an unknown
//! time zone). Each such error excludes only the offending object and yields a [`Diagnostic`]
//! naming the object and the field; every other object compiles as if it were not there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use rust_decimal::Decimal;

pub mod billing;

use crate::duration::parse_duration;
use crate::resources::{
    self, ApiRoute, Approval, BackendProtocol, Metering, Metric, QuotaPolicy, SubscriptionState,
    SubscriptionStatus, WhenExhausted,
};
use crate::snapshot::{
    HostMatch, InjectedHeader, KeyDigest, ModelPrice, ObjectKey, PathMatch, Plan, Pricing, Quota,
    RateLimit, ReservationPolicy, Route, RouteBackend, Snapshot, Tenant, TenantSubscription,
};

/// Namespace of objects that do not name one (standalone manifests).
pub const DEFAULT_NAMESPACE: &str = "default";
/// Backend timeout when the route sets none.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_DIRECT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Everything `compile` reads. Secrets not referenced by a Tenant are ignored.
#[derive(Debug, Default, Clone)]
pub struct Objects<'a> {
    /// ApiRoutes.
    pub routes: Vec<&'a ApiRoute>,
    /// Tenants.
    pub tenants: Vec<&'a resources::Tenant>,
    /// QuotaPolicies.
    pub plans: Vec<&'a QuotaPolicy>,
    /// Secrets holding API keys.
    pub secrets: Vec<&'a Secret>,
}

/// The result of a compile.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// What proxies enforce.
    pub snapshot: Snapshot,
    /// One entry per excluded object (an object may have several).
    pub diagnostics: Vec<Diagnostic>,
    /// Subscription states per compiled tenant (for Tenant status).
    pub subscriptions: BTreeMap<ObjectKey, Vec<SubscriptionStatus>>,
    /// Effective billing state per compiled tenant (for Tenant status).
    pub billing: BTreeMap<ObjectKey, resources::BillingStatus>,
}

impl Compiled {
    /// Diagnostics about one object.
    pub fn diagnostics_for(
        &self,
        kind: ObjectKind,
        key: &ObjectKey,
    ) -> impl Iterator<Item = &Diagnostic> {
        let key = key.clone();
        self.diagnostics
            .iter()
            .filter(move |d| d.kind == kind && d.object == key)
    }
}

/// The kinds `compile` reports on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// ApiRoute.
    ApiRoute,
    /// Tenant.
    Tenant,
    /// QuotaPolicy.
    QuotaPolicy,
}

/// Why an object was excluded; becomes the condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A field has a value the schema should have rejected (standalone mode) or cannot be used.
    Invalid,
    /// The route's match is already claimed by an older route.
    Conflict,
    /// The referenced QuotaPolicy does not exist.
    PlanNotFound,
    /// The referenced QuotaPolicy exists but was not accepted.
    PlanNotAccepted,
    /// The referenced Secret does not exist.
    SecretNotFound,
    /// The Secret exists but lacks the key, or the key is empty.
    SecretKeyNotFound,
    /// Another tenant already uses the same API key.
    DuplicateApiKey,
    /// spec.timezone is not an IANA zone.
    UnknownTimeZone,
}

impl Reason {
    /// CamelCase, for condition reasons and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "Invalid",
            Self::Conflict => "Conflict",
            Self::PlanNotFound => "PlanNotFound",
            Self::PlanNotAccepted => "PlanNotAccepted",
            Self::SecretNotFound => "SecretNotFound",
            Self::SecretKeyNotFound => "SecretKeyNotFound",
            Self::DuplicateApiKey => "DuplicateApiKey",
            Self::UnknownTimeZone => "UnknownTimeZone",
        }
    }
}

/// Why one object is not in the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Kind of the object.
    pub kind: ObjectKind,
    /// The object.
    pub object: ObjectKey,
    /// JSON path of the field at fault, for example `spec.quotas[0].limit`.
    pub field: String,
    /// Machine-readable reason.
    pub reason: Reason,
    /// A sentence a person can act on.
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} {}: {}: {}",
            self.kind, self.object, self.field, self.message
        )
    }
}

type FieldError = (String, Reason, String);

fn invalid(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    (field.into(), Reason::Invalid, message.into())
}

/// The namespace/name of any object, with standalone's default namespace.
pub fn object_key<K: kube::Resource>(obj: &K) -> ObjectKey {
    ObjectKey::new(
        obj.namespace()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        obj.name_any(),
    )
}

fn creation<K: kube::Resource>(obj: &K) -> Option<Timestamp> {
    obj.meta().creation_timestamp.as_ref().map(|t| t.0)
}

/// Compiles `objects` into a snapshot and diagnostics.
pub fn compile(objects: &Objects<'_>) -> Compiled {
    let mut out = Compiled::default();

    let mut plans: Vec<&QuotaPolicy> = objects.plans.clone();
    plans.sort_by_key(|p| object_key(*p));
    let mut plan_state: HashMap<ObjectKey, bool> = HashMap::new();
    for plan in plans {
        let key = object_key(plan);
        match compile_plan(&key, plan) {
            Ok(compiled) => {
                plan_state.insert(key, true);
                out.snapshot.plans.push(compiled);
            }
            Err(errors) => {
                plan_state.insert(key.clone(), false);
                push_all(&mut out.diagnostics, ObjectKind::QuotaPolicy, &key, errors);
            }
        }
    }

    compile_routes(objects, &mut out);
    compile_tenants(objects, &plan_state, &mut out);
    out.snapshot.sort_routes();
    out
}

fn push_all(
    diags: &mut Vec<Diagnostic>,
    kind: ObjectKind,
    key: &ObjectKey,
    errors: Vec<FieldError>,
) {
    for (field, reason, message) in errors {
        diags.push(Diagnostic {
            kind,
            object: key.clone(),
            field,
            reason,
            message,
        });
    }
}

fn compile_plan(key: &ObjectKey, plan: &QuotaPolicy) -> Result<Plan, Vec<FieldError>> {
    let spec = &plan.spec;
    let mut errors = Vec::new();

    let mut names = BTreeSet::new();
    let mut rate_limits = Vec::new();
    for (i, rl) in spec.rate_limits.iter().enumerate() {
        let field = format!("spec.rateLimits[{i}]");
        if let Err(e) = check_label(&rl.name) {
            errors.push(invalid(format!("{field}.name"), e));
        }
        if !names.insert(rl.name.as_str()) {
            errors.push(invalid(
                format!("{field}.name"),
                format!("rate limit name {:?} is used twice", rl.name),
            ));
        }
        if rl.requests == 0 {
            errors.push(invalid(
                format!("{field}.requests"),
                "requests must be at least 1",
            ));
        }
        match parse_duration(&rl.window) {
            Ok(window)
                if window.as_secs() >= 1
                    && window.as_secs() <= 3600
                    && window.as_millis() <= 3_600_000 =>
            {
                rate_limits.push(RateLimit {
                    name: rl.name.clone(),
                    requests: rl.requests,
                    window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
                });
            }
            Ok(_) => errors.push(invalid(
                format!("{field}.window"),
                "window must be between 1s and 1h",
            )),
            Err(e) => errors.push(invalid(format!("{field}.window"), e.to_string())),
        }
    }

    // The schema's limit, checked here too for YAML that never met the API server: the proxy
    // keeps one bit per quota for a call (which quotas count it).
    if spec.quotas.len() > MAX_QUOTAS {
        errors.push(invalid(
            "spec.quotas",
            format!(
                "{} quotas: a plan has at most {MAX_QUOTAS}",
                spec.quotas.len()
            ),
        ));
    }
    let mut quota_names = BTreeSet::new();
    // A Stripe meter sums what it is sent: a quota that counts every request and another quota,
    // exported under one name, would bill some calls twice. (Quotas for different models count
    // different calls and may share a name.) Per name: whether a quota for every request has it.
    let mut event_names: BTreeMap<&str, bool> = BTreeMap::new();
    let mut quotas = Vec::new();
    for (i, q) in spec.quotas.iter().enumerate() {
        let field = format!("spec.quotas[{i}]");
        if let Err(e) = check_label(&q.name) {
            errors.push(invalid(format!("{field}.name"), e));
        }
        if !quota_names.insert(q.name.as_str()) {
            errors.push(invalid(
                format!("{field}.name"),
                format!("quota name {:?} is used twice", q.name),
            ));
        }
        match parse_decimal(&q.limit) {
            Ok(limit) if q.metric != Metric::Cost && !limit.fract().is_zero() => {
                errors.push(invalid(
                    format!("{field}.limit"),
                    format!(
                        "limit {:?} must be a whole number for metric {:?}",
                        q.limit, q.metric
                    ),
                ))
            }
            Ok(limit) => quotas.push(Quota {
                name: q.name.clone(),
                metric: q.metric,
                limit,
                period: q.period,
                models: q.models.clone(),
                alert_at: {
                    let mut at = q.alert_at.clone();
                    at.sort_unstable();
                    at.dedup();
                    at
                },
                meter_event_name: q.meter_event_name.clone(),
                overage: q.when_exhausted == WhenExhausted::Overage,
                overage_meter_event_name: q.overage_meter_event_name.clone(),
            }),
            Err(e) => errors.push(invalid(format!("{field}.limit"), e)),
        }
        for (name, value) in [
            ("meterEventName", &q.meter_event_name),
            ("overageMeterEventName", &q.overage_meter_event_name),
        ] {
            if let Some(v) = value
                && (v.is_empty()
                    || v.len() > 100
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c)))
            {
                errors.push(invalid(
                    format!("{field}.{name}"),
                    format!("{v:?}: 1 to 100 letters, digits, '_', '.', ':' or '-'"),
                ));
            }
        }
        for (name, value) in [
            ("meterEventName", &q.meter_event_name),
            ("overageMeterEventName", &q.overage_meter_event_name),
        ] {
            let every_request = q.models.is_empty();
            if let Some(v) = value
                && event_names
                    .insert(v.as_str(), every_request)
                    .is_some_and(|other_every| other_every || every_request)
            {
                errors.push(invalid(
                    format!("{field}.{name}"),
                    format!(
                        "event name {v:?} is exported twice in this plan: each request would be billed twice"
                    ),
                ));
            }
        }
        if q.overage_meter_event_name.is_some() && q.when_exhausted != WhenExhausted::Overage {
            errors.push(invalid(
                format!("{field}.overageMeterEventName"),
                "needs whenExhausted: Overage (a quota that refuses has no overage)",
            ));
        }
        if q.overage_meter_event_name.is_some() && q.meter_event_name.is_none() {
            errors.push(invalid(
                format!("{field}.overageMeterEventName"),
                "needs meterEventName (the usage up to the limit)",
            ));
        }
        // The schema says so to the API server; manifests run standalone are checked here.
        if let Some(bad) = q.alert_at.iter().find(|&&at| !(1..=100).contains(&at)) {
            errors.push(invalid(
                format!("{field}.alertAt"),
                format!("{bad} is not a percentage from 1 to 100"),
            ));
        }
        if q.metric == Metric::Cost && spec.pricing.is_none() {
            errors.push(invalid(
                "spec.pricing",
                format!(
                    "quota {:?} uses metric Cost, which needs spec.pricing",
                    q.name
                ),
            ));
        }
    }

    if TimeZone::get(&spec.timezone).is_err() {
        errors.push((
            "spec.timezone".to_owned(),
            Reason::UnknownTimeZone,
            format!(
                "{:?} is not an IANA time zone name (for example UTC or Europe/Berlin)",
                spec.timezone
            ),
        ));
    }

    let pricing = match &spec.pricing {
        None => None,
        Some(p) => match compile_pricing(p) {
            Ok(p) => Some(p),
            Err(mut e) => {
                errors.append(&mut e);
                None
            }
        },
    };

    check_model_patterns("spec.allowedModels", &spec.allowed_models, &mut errors);
    for (i, q) in spec.quotas.iter().enumerate() {
        check_model_patterns(&format!("spec.quotas[{i}].models"), &q.models, &mut errors);
    }

    if let Some(url) = &spec.payment_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        errors.push(invalid(
            "spec.paymentUrl",
            format!("{url:?} must be an http:// or https:// URL"),
        ));
    }

    let past_due_grace_ms = match spec.past_due_grace_period.as_deref().map(parse_duration) {
        None => 0,
        Some(Ok(d)) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        Some(Err(e)) => {
            errors.push(invalid("spec.pastDueGracePeriod", e.to_string()));
            0
        }
    };

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Plan {
        past_due_grace_ms,
        key: key.clone(),
        rate_limits,
        quotas,
        timezone: spec.timezone.clone(),
        pricing,
        payment_url: spec.payment_url.clone(),
        failure_policy: spec.failure_policy,
        allowed_models: spec.allowed_models.clone(),
        reservation: spec
            .reservation
            .as_ref()
            .map_or_else(ReservationPolicy::default, |r| ReservationPolicy {
                max_output_tokens: r
                    .max_output_tokens
                    .unwrap_or(ReservationPolicy::DEFAULT_MAX_OUTPUT_TOKENS)
                    .max(1),
                estimate: r.estimate,
            }),
    })
}

/// Quotas a plan may have (the QuotaPolicy schema's `maxItems`).
pub const MAX_QUOTAS: usize = 16;

/// Checks model names and prefixes (`allowedModels`, a quota's `models`): a name, or a prefix
/// ending in a single `*`.
fn check_model_patterns(field: &str, patterns: &[String], errors: &mut Vec<FieldError>) {
    for (i, model) in patterns.iter().enumerate() {
        let star = model.find('*');
        // A lone `*` is refused as by the schema: an allowlist of everything is an empty list.
        if model.is_empty()
            || model.len() > 256
            || star.is_some_and(|at| at == 0 || at + 1 != model.len())
        {
            errors.push(invalid(
                format!("{field}[{i}]"),
                format!(
                    "{model:?} must be a model name, or a non-empty prefix ending in a single *"
                ),
            ));
        }
    }
}

fn compile_pricing(p: &resources::Pricing) -> Result<Pricing, Vec<FieldError>> {
    let mut errors = Vec::new();
    if p.currency.len() != 3 || !p.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        errors.push(invalid(
            "spec.pricing.currency",
            format!("{:?} is not an ISO 4217 code like USD", p.currency),
        ));
    }
    let per_request = match p.per_request.as_deref().map(parse_decimal).transpose() {
        Ok(v) => v,
        Err(e) => {
            errors.push(invalid("spec.pricing.perRequest", e));
            None
        }
    };
    let mut models = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, m) in p.models.iter().enumerate() {
        let field = format!("spec.pricing.models[{i}]");
        if !seen.insert(m.model.as_str()) {
            errors.push(invalid(
                format!("{field}.model"),
                format!("model {:?} is priced twice", m.model),
            ));
        }
        let mut price = |name: &str, text: Option<&str>| match text.map(parse_decimal) {
            Some(Ok(d)) => Ok(Some(d)),
            None => Ok(None),
            Some(Err(e)) => {
                errors.push(invalid(format!("{field}.{name}"), e));
                Err(())
            }
        };
        let input = price("inputPerMillionTokens", Some(&m.input_per_million_tokens));
        let output = price("outputPerMillionTokens", Some(&m.output_per_million_tokens));
        let cached = price(
            "cachedInputPerMillionTokens",
            m.cached_input_per_million_tokens.as_deref(),
        );
        let cache_write = price(
            "cacheWriteInputPerMillionTokens",
            m.cache_write_input_per_million_tokens.as_deref(),
        );
        let reasoning = price(
            "reasoningPerMillionTokens",
            m.reasoning_per_million_tokens.as_deref(),
        );
        if let (Ok(Some(input)), Ok(Some(output)), Ok(cached), Ok(cache_write), Ok(reasoning)) =
            (input, output, cached, cache_write, reasoning)
        {
            models.push(ModelPrice {
                model: m.model.clone(),
                input_per_million_tokens: input,
                output_per_million_tokens: output,
                cached_input_per_million_tokens: cached,
                cache_write_input_per_million_tokens: cache_write,
                reasoning_per_million_tokens: reasoning,
            });
        }
    }
    if errors.is_empty() {
        Ok(Pricing {
            currency: p.currency.clone(),
            per_request,
            models,
        })
    } else {
        Err(errors)
    }
}

/// Parses a non-negative decimal string with at most 6 fractional digits.
pub fn parse_decimal(text: &str) -> Result<Decimal, String> {
    let well_formed = {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        !whole.is_empty()
            && whole.len() <= 15
            && whole.bytes().all(|b| b.is_ascii_digit())
            && fraction.len() <= 6
            && fraction.bytes().all(|b| b.is_ascii_digit())
            && !(text.contains('.') && fraction.is_empty())
    };
    if !well_formed {
        return Err(format!(
            "{text:?} is not a decimal amount: use digits with at most 6 decimals, as a string (\"50.00\")"
        ));
    }
    Decimal::from_str(text).map_err(|e| format!("{text:?} is not a decimal amount: {e}"))
}

fn check_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1-63 lower-case letters, digits or '-', starting and ending with a letter or digit"
        ))
    }
}

/// Keys under which a route claims traffic; two accepted routes never share one.
fn claims(route: &Route) -> Vec<(Option<HostMatch>, PathMatch, Option<resources::HttpMethod>)> {
    let hosts: Vec<Option<HostMatch>> = if route.hosts.is_empty() {
        vec![None]
    } else {
        route.hosts.iter().cloned().map(Some).collect()
    };
    let methods: Vec<Option<resources::HttpMethod>> = if route.methods.is_empty() {
        vec![None]
    } else {
        route.methods.iter().copied().map(Some).collect()
    };
    let mut out = Vec::new();
    for host in &hosts {
        for method in &methods {
            out.push((host.clone(), route.path.clone(), *method));
        }
    }
    out
}

fn compile_routes(objects: &Objects<'_>, out: &mut Compiled) {
    // Oldest first, so that on a conflict the older route keeps its traffic.
    let mut routes: Vec<&ApiRoute> = objects.routes.clone();
    routes.sort_by(|a, b| {
        creation(*a)
            .cmp(&creation(*b))
            .then_with(|| object_key(*a).cmp(&object_key(*b)))
    });
    type Claim = (Option<HostMatch>, PathMatch, Option<resources::HttpMethod>);
    let mut claimed: HashMap<Claim, ObjectKey> = HashMap::new();
    let secrets = secrets_by_key(objects);
    for route in routes {
        let key = object_key(route);
        let compiled = match compile_route(&key, route, &secrets) {
            Ok(r) => r,
            Err(errors) => {
                push_all(&mut out.diagnostics, ObjectKind::ApiRoute, &key, errors);
                continue;
            }
        };
        let route_claims = claims(&compiled);
        if let Some(owner) = route_claims.iter().find_map(|c| claimed.get(c)) {
            out.diagnostics.push(Diagnostic {
                kind: ObjectKind::ApiRoute,
                object: key,
                field: "spec.match".to_owned(),
                reason: Reason::Conflict,
                message: format!(
                    "ApiRoute {owner} already serves the same host, path and method; the older route wins. \
                     Change spec.hosts or spec.match, or delete one of them"
                ),
            });
            continue;
        }
        for c in route_claims {
            claimed.insert(c, key.clone());
        }
        out.snapshot.routes.push(compiled);
    }
}

/// The Secrets by namespace and name.
fn secrets_by_key<'a>(objects: &Objects<'a>) -> HashMap<ObjectKey, &'a Secret> {
    objects
        .secrets
        .iter()
        .map(|s| (object_key(*s), *s))
        .collect()
}

/// The label a Secret needs for the operator to see it as a tenant's API key source. Any value.
pub const API_KEY_LABEL: &str = "tollgate.dev/api-key";

/// The label a Secret needs to hold a backend credential (`backend.requestHeaders`). A Secret
/// with [`API_KEY_LABEL`] too is refused: whoever may write an ApiRoute could otherwise send a
/// tenant's key to a backend of their choosing.
pub const BACKEND_CREDENTIALS_LABEL: &str = "tollgate.dev/backend-credentials";

fn has_label(secret: &Secret, label: &str) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(label))
}

/// Headers a route may not set on backend requests: hop-by-hop ones, the host, the encoding
/// metering relies on, the ones Tollgate sets itself, and any with `_` (CGI-style backends read
/// it as `-`).
fn reserved_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains('_')
        || matches!(
            name.as_str(),
            "host"
                | "accept-encoding"
                | "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "content-length"
        )
        || name.starts_with("x-tollgate-")
        || name.starts_with("x-forwarded-")
}

/// The route's backend request headers, each value read from its Secret.
fn compile_request_headers(
    key: &ObjectKey,
    at: &str,
    headers: &[resources::RequestHeader],
    secrets: &HashMap<ObjectKey, &Secret>,
    errors: &mut Vec<FieldError>,
) -> Vec<InjectedHeader> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, h) in headers.iter().enumerate() {
        let field = format!("{at}.requestHeaders[{i}]");
        if reserved_header(&h.name) {
            errors.push(invalid(
                format!("{field}.name"),
                format!(
                    "{:?} is set by the proxy or the connection; it cannot be configured",
                    h.name
                ),
            ));
            continue;
        }
        if !seen.insert(h.name.to_ascii_lowercase()) {
            errors.push(invalid(
                format!("{field}.name"),
                format!("header {:?} is listed twice", h.name),
            ));
            continue;
        }
        let secret_ref = &h.secret_key_ref;
        let Some(secret) = secrets.get(&key.sibling(&secret_ref.name)) else {
            errors.push((
                format!("{field}.secretKeyRef.name"),
                Reason::SecretNotFound,
                format!(
                    "Secret {:?} not found in namespace {} (the operator reads only Secrets labelled {BACKEND_CREDENTIALS_LABEL} for backend credentials)",
                    secret_ref.name, key.namespace
                ),
            ));
            continue;
        };
        if !has_label(secret, BACKEND_CREDENTIALS_LABEL) || has_label(secret, API_KEY_LABEL) {
            errors.push(invalid(
                format!("{field}.secretKeyRef.name"),
                format!(
                    "Secret {:?} must carry the label {BACKEND_CREDENTIALS_LABEL} and not {API_KEY_LABEL}: a backend credential is never a tenant's key",
                    secret_ref.name
                ),
            ));
            continue;
        }
        let Some(value) = secret_value(secret, &secret_ref.key) else {
            errors.push((
                format!("{field}.secretKeyRef.key"),
                Reason::SecretKeyNotFound,
                format!(
                    "Secret {:?} has no non-empty key {:?}",
                    secret_ref.name, secret_ref.key
                ),
            ));
            continue;
        };
        let prefix = h.value_prefix.as_deref().unwrap_or("");
        let value = [prefix.as_bytes(), value].concat();
        // A header value: visible ASCII and spaces (no line breaks that would split the request).
        match String::from_utf8(value) {
            Ok(value) if value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) => {
                out.push(InjectedHeader {
                    name: h.name.clone(),
                    value,
                })
            }
            _ => errors.push(invalid(
                format!("{field}.secretKeyRef.key"),
                format!(
                    "the value in Secret {:?} key {:?} (with the prefix) is not a valid header value: printable ASCII only",
                    secret_ref.name, secret_ref.key
                ),
            )),
        }
    }
    out
}

/// A backend's timeout (`field`), in milliseconds: the default when not set.
fn compile_timeout(field: &str, timeout: Option<&str>, errors: &mut Vec<FieldError>) -> u64 {
    match timeout.map(parse_duration) {
        None => DEFAULT_TIMEOUT_MS,
        Some(Ok(d)) if !d.is_zero() && d.as_secs() <= 3600 => {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        }
        Some(Ok(_)) => {
            errors.push(invalid(
                field,
                "timeout must be more than 0s and at most 1h",
            ));
            DEFAULT_TIMEOUT_MS
        }
        Some(Err(e)) => {
            errors.push(invalid(field, e.to_string()));
            DEFAULT_TIMEOUT_MS
        }
    }
}

/// A duration limit (`field`) in milliseconds, from 1 s to `max_seconds`; `default` when not set.
fn compile_limit(
    field: &str,
    value: Option<&str>,
    default: u64,
    max_seconds: u64,
    errors: &mut Vec<FieldError>,
) -> u64 {
    match value.map(parse_duration) {
        None => default,
        Some(Ok(d)) if d.as_secs() >= 1 && d.as_secs() <= max_seconds => {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        }
        Some(Ok(_)) => {
            errors.push(invalid(
                field,
                format!("must be from 1s to {}h", max_seconds / 3600),
            ));
            default
        }
        Some(Err(e)) => {
            errors.push(invalid(field, e.to_string()));
            default
        }
    }
}

/// A model map's names: non-empty, at most 256 bytes, no spaces or control characters.
fn check_model_map(
    field: &str,
    models: &std::collections::BTreeMap<String, String>,
    errors: &mut Vec<FieldError>,
) {
    for (from, to) in models {
        for name in [from, to] {
            if name.is_empty()
                || name.len() > 256
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                errors.push(invalid(
                    field,
                    format!("{name:?} is not a model name (1 to 256 characters, no spaces)"),
                ));
            }
        }
    }
}

/// The most bytes a prompt API's schema may take (as JSON).
const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// A prompt API: its schemas valid JSON Schema, every placeholder a declared input member.
fn compile_prompt(
    spec: &resources::ApiRouteSpec,
    p: &resources::PromptApi,
    errors: &mut Vec<FieldError>,
) -> Option<Box<crate::snapshot::Prompt>> {
    let before = errors.len();
    if !spec.metering.reads_tokens() {
        errors.push(invalid(
            "spec.metering",
            "a prompt API needs metering to name its backend's API (OpenAI, Anthropic or Gemini)",
        ));
    }
    if spec.translate.is_some() {
        errors.push(invalid(
            "spec.translate",
            "a prompt API's callers send plain JSON: translate does not apply (the prompt is sent in the backend's API)",
        ));
    }
    if spec.backend.direct_response.is_some() {
        errors.push(invalid(
            "spec.prompt",
            "a route answered by directResponse has no model to ask",
        ));
    }
    let mut check_schema = |field: &str, schema: &serde_json::Value| {
        if serde_json::to_vec(schema).map_or(0, |v| v.len()) > MAX_SCHEMA_BYTES {
            errors.push(invalid(
                field,
                format!("the schema is larger than {} KiB", MAX_SCHEMA_BYTES / 1024),
            ));
        } else if let Err(e) = jsonschema::validator_for(schema) {
            errors.push(invalid(field, format!("not a valid JSON Schema: {e}")));
        }
    };
    check_schema("spec.prompt.inputSchema", &p.input_schema);
    if let Some(schema) = &p.response_schema {
        check_schema("spec.prompt.responseSchema", schema);
    }
    if p.input_schema.get("type").is_some_and(|t| t != "object") {
        errors.push(invalid(
            "spec.prompt.inputSchema",
            "the input schema describes the body, a JSON object: its type must be object",
        ));
    }
    let declared = p.input_schema.get("properties").and_then(|v| v.as_object());
    for (field, template) in [
        ("spec.prompt.system", p.system.as_deref()),
        ("spec.prompt.user", Some(p.user.as_str())),
    ] {
        for name in crate::snapshot::placeholders(template.unwrap_or("")) {
            if !declared.is_some_and(|d| d.contains_key(name)) {
                errors.push(invalid(
                    field,
                    format!(
                        "the placeholder {{{{{name}}}}} is not a property of inputSchema: declare it there (a caller must know to send it)"
                    ),
                ));
            }
        }
    }
    let temperature = match p.temperature.as_deref().map(str::parse::<f64>) {
        None => None,
        Some(Ok(t)) if (0.0..=2.0).contains(&t) => Some(t),
        Some(_) => {
            errors.push(invalid(
                "spec.prompt.temperature",
                "temperature is a decimal from 0 to 2",
            ));
            None
        }
    };
    (errors.len() == before).then(|| {
        Box::new(crate::snapshot::Prompt {
            model: p.model.clone(),
            description: p.description.clone(),
            system: p.system.clone(),
            user: p.user.clone(),
            input_schema: p.input_schema.clone(),
            response_schema: p.response_schema.clone(),
            max_output_tokens: p.max_output_tokens,
            temperature,
        })
    })
}

/// The route's fallback backends, in order.
fn compile_fallbacks(
    key: &ObjectKey,
    spec: &resources::ApiRouteSpec,
    secrets: &HashMap<ObjectKey, &Secret>,
    errors: &mut Vec<FieldError>,
) -> Vec<crate::snapshot::FallbackRoute> {
    if spec.fallbacks.is_empty() {
        return Vec::new();
    }
    if !spec.metering.reads_tokens() {
        errors.push(invalid(
            "spec.fallbacks",
            "fallbacks need metering to name the backend's API (OpenAI, Anthropic or Gemini): the call is read once and sent again",
        ));
    }
    let caller = spec
        .translate
        .as_ref()
        .map_or(spec.metering, |t| Metering::from(t.from));
    let mut out = Vec::new();
    for (i, f) in spec.fallbacks.iter().enumerate() {
        let at = format!("spec.fallbacks[{i}]");
        let api = f.api.unwrap_or(spec.metering);
        // A route that reads no calls was refused above; its fallbacks' API follows from it.
        if !api.reads_tokens() && spec.metering.reads_tokens() {
            errors.push(invalid(
                format!("{at}.api"),
                "a fallback backend speaks OpenAI, Anthropic or Gemini",
            ));
        } else if caller == Metering::Gemini && api != Metering::Gemini {
            errors.push(invalid(
                format!("{at}.api"),
                "callers speaking Gemini's API can fall back only to Gemini backends (translation starts from OpenAI or Anthropic calls)",
            ));
        }
        check_model_map(&format!("{at}.models"), &f.models, errors);
        let base_url = match (&f.service, &f.url) {
            (Some(svc), None) if svc.port != 0 => Some(format!(
                "http://{}.{}.svc:{}",
                svc.name, key.namespace, svc.port
            )),
            (None, Some(url)) => match normalize_base_url(url) {
                Ok(url) => Some(url),
                Err(e) => {
                    errors.push(invalid(format!("{at}.url"), e));
                    None
                }
            },
            _ => {
                errors.push(invalid(
                    at.clone(),
                    "exactly one of service (with a port from 1 to 65535) or url must be set",
                ));
                None
            }
        };
        let timeout_ms = compile_timeout(&format!("{at}.timeout"), f.timeout.as_deref(), errors);
        let request_headers =
            compile_request_headers(key, &at, &f.request_headers, secrets, errors);
        if let Some(base_url) = base_url {
            out.push(crate::snapshot::FallbackRoute {
                base_url,
                timeout_ms,
                request_headers,
                api,
                models: f.models.clone(),
            });
        }
    }
    out
}

fn compile_route(
    key: &ObjectKey,
    route: &ApiRoute,
    secrets: &HashMap<ObjectKey, &Secret>,
) -> Result<Route, Vec<FieldError>> {
    let spec = &route.spec;
    let mut errors = Vec::new();

    let mut hosts = Vec::new();
    for (i, host) in spec.hosts.iter().enumerate() {
        let lower = host.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                check_label(label).is_ok() || label.bytes().all(|b| b.is_ascii_digit())
            });
        if !valid {
            errors.push(invalid(
                format!("spec.hosts[{i}]"),
                format!("{host:?} is not a host name or a wildcard like *.example.com"),
            ));
        } else if wildcard {
            hosts.push(HostMatch::Wildcard(format!(".{name}")));
        } else {
            hosts.push(HostMatch::Exact(name.to_owned()));
        }
    }

    let m = &spec.route_match;
    // Requests are matched on their normal path: a route path in any other spelling never matches.
    for (field, path) in [
        ("spec.match.pathPrefix", &m.path_prefix),
        ("spec.match.path", &m.path),
    ] {
        let Some(path) = path.as_deref().filter(|p| p.starts_with('/')) else {
            continue;
        };
        match crate::path::normalize_path(path) {
            Ok(std::borrow::Cow::Borrowed(_)) => {}
            Ok(std::borrow::Cow::Owned(normal)) => errors.push(invalid(
                field,
                format!(
                    "{path:?} is not in normal form, and requests are matched on their normal \
                     path (no empty, `.` or `..` segments; unreserved characters not escaped): \
                     write {normal:?}"
                ),
            )),
            Err(e) => errors.push(invalid(field, format!("{path:?} cannot be matched: {e}"))),
        }
    }
    let path = match (&m.path_prefix, &m.path) {
        (Some(prefix), None) if prefix.starts_with('/') => {
            let trimmed = prefix.trim_end_matches('/');
            Some(PathMatch::Prefix(if trimmed.is_empty() {
                "/".to_owned()
            } else {
                trimmed.to_owned()
            }))
        }
        (None, Some(path)) if path.starts_with('/') => Some(PathMatch::Exact(path.clone())),
        (Some(_), None) => {
            errors.push(invalid(
                "spec.match.pathPrefix",
                "pathPrefix must start with '/'",
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(invalid("spec.match.path", "path must start with '/'"));
            None
        }
        _ => {
            errors.push(invalid(
                "spec.match",
                "exactly one of match.pathPrefix or match.path must be set",
            ));
            None
        }
    };

    let b = &spec.backend;
    let set = usize::from(b.service.is_some())
        + usize::from(b.url.is_some())
        + usize::from(b.direct_response.is_some());
    let backend = if set == 0 && spec.workload_selector.is_some() {
        Some(RouteBackend::Workload)
    } else if set != 1 {
        errors.push(invalid(
            "spec.backend",
            "exactly one of backend.service, backend.url or backend.directResponse must be set (only a route with a workloadSelector may name none: it forwards to the selected pods' app)",
        ));
        None
    } else if let Some(svc) = &b.service {
        if svc.port == 0 {
            errors.push(invalid(
                "spec.backend.service.port",
                "port must be between 1 and 65535",
            ));
        }
        Some(RouteBackend::Http {
            base_url: format!("http://{}.{}.svc:{}", svc.name, key.namespace, svc.port),
        })
    } else if let Some(url) = &b.url {
        match normalize_base_url(url) {
            Ok(base_url) => Some(RouteBackend::Http { base_url }),
            Err(e) => {
                errors.push(invalid("spec.backend.url", e));
                None
            }
        }
    } else if let Some(direct) = &b.direct_response {
        if !(200..=599).contains(&direct.status) {
            errors.push(invalid(
                "spec.backend.directResponse.status",
                "status must be between 200 and 599",
            ));
        }
        Some(RouteBackend::Direct {
            status: direct.status,
            content_type: direct
                .content_type
                .clone()
                .unwrap_or_else(|| DEFAULT_DIRECT_CONTENT_TYPE.to_owned()),
            body: direct.body.clone().unwrap_or_default(),
        })
    } else {
        None
    };

    if let Some(selector) = &spec.workload_selector
        && selector.match_labels.is_empty()
    {
        errors.push(invalid(
            "spec.workloadSelector.matchLabels",
            "workloadSelector.matchLabels needs at least one label",
        ));
    }

    let timeout_ms = compile_timeout("spec.backend.timeout", b.timeout.as_deref(), &mut errors);

    if spec.approval == Approval::Automatic {
        if !spec.approved_tenants.is_empty() {
            errors.push(invalid(
                "spec.approvedTenants",
                "approvedTenants is only allowed with approval: Manual",
            ));
        }
        if !spec.rejected_tenants.is_empty() {
            errors.push(invalid(
                "spec.rejectedTenants",
                "rejectedTenants is only allowed with approval: Manual",
            ));
        }
    }

    let sunset = match spec
        .lifecycle
        .sunset
        .as_deref()
        .map(Timestamp::from_str)
        .transpose()
    {
        Ok(t) => t,
        Err(e) => {
            errors.push(invalid(
                "spec.lifecycle.sunset",
                format!("not an RFC 3339 time: {e}"),
            ));
            None
        }
    };

    let deprecated_at = match spec
        .lifecycle
        .deprecated_at
        .as_deref()
        .map(Timestamp::from_str)
        .transpose()
    {
        Ok(t) => t,
        Err(e) => {
            errors.push(invalid(
                "spec.lifecycle.deprecatedAt",
                format!("not an RFC 3339 time: {e}"),
            ));
            None
        }
    };

    let mut methods = spec.route_match.methods.clone();
    methods.sort();
    methods.dedup();

    let request_headers = compile_request_headers(
        key,
        "spec.backend",
        &spec.backend.request_headers,
        secrets,
        &mut errors,
    );
    let fallbacks = compile_fallbacks(key, spec, secrets, &mut errors);
    let prompt = spec
        .prompt
        .as_ref()
        .and_then(|p| compile_prompt(spec, p, &mut errors));
    if spec.websocket.is_some()
        && (spec.metering.reads_tokens()
            || spec.prompt.is_some()
            || spec.translate.is_some()
            || !spec.fallbacks.is_empty())
    {
        errors.push(invalid(
            "spec.websocket",
            "a WebSocket's messages are not metered: a route that meters tokens, translates, falls back or publishes a prompt cannot carry WebSocket connections",
        ));
    }
    if spec.backend.protocol == BackendProtocol::HTTP2 {
        // Those paths write HTTP/1.1 to the backend: refused rather than quietly downgraded.
        let refused = [
            (spec.websocket.is_some(), "carries WebSocket connections"),
            (spec.translate.is_some(), "translates calls"),
            (!spec.fallbacks.is_empty(), "falls back"),
            (spec.prompt.is_some(), "publishes a prompt"),
            (b.direct_response.is_some(), "is answered by directResponse"),
        ];
        for (_, what) in refused.iter().filter(|(set, _)| *set) {
            errors.push(invalid(
                "spec.backend.protocol",
                format!("HTTP2 is for backends that speak only HTTP/2 (gRPC calls use it without this setting); this route {what}, which Tollgate sends over HTTP/1.1"),
            ));
        }
    }
    let limits = spec.websocket.clone().unwrap_or_default();
    let websocket_idle_ms = compile_limit(
        "spec.websocket.idleTimeout",
        limits.idle_timeout.as_deref(),
        crate::snapshot::DEFAULT_WEBSOCKET_IDLE_MS,
        24 * 3600,
        &mut errors,
    );
    let websocket_lifetime_ms = compile_limit(
        "spec.websocket.maxLifetime",
        limits.max_lifetime.as_deref(),
        crate::snapshot::DEFAULT_WEBSOCKET_LIFETIME_MS,
        7 * 24 * 3600,
        &mut errors,
    );
    let caller_api = spec.translate.as_ref().map(|t| Metering::from(t.from));
    if let Some(t) = &spec.translate {
        check_model_map("spec.translate.models", &t.models, &mut errors);
        if !spec.metering.reads_tokens() {
            errors.push(invalid(
                "spec.metering",
                "a translated route needs metering to name its backend's API (OpenAI, Anthropic or Gemini)",
            ));
        }
        if b.direct_response.is_some() {
            errors.push(invalid(
                "spec.translate",
                "a route answered by directResponse has no backend to translate for",
            ));
        }
    }

    match (path, backend, errors.is_empty()) {
        (Some(path), Some(backend), true) => Ok(Route {
            key: key.clone(),
            generation: route.metadata.generation.unwrap_or(0),
            hosts,
            path,
            methods,
            backend,
            timeout_ms,
            request_headers,
            metering: spec.metering,
            approval: spec.approval,
            approved_tenants: spec.approved_tenants.clone(),
            rejected_tenants: spec.rejected_tenants.clone(),
            lifecycle: spec.lifecycle.state,
            sunset,
            deprecated_at,
            workload_selector: spec
                .workload_selector
                .as_ref()
                .map(|w| w.match_labels.clone()),
            caller_api,
            models: spec
                .translate
                .as_ref()
                .map(|t| t.models.clone())
                .unwrap_or_default(),
            fallbacks,
            prompt,
            websocket: spec.websocket.is_some(),
            websocket_idle_ms,
            websocket_lifetime_ms,
            http2: spec.backend.protocol == BackendProtocol::HTTP2,
        }),
        _ => Err(errors),
    }
}

/// `http(s)://authority[/path]`, returned without a trailing slash.
fn normalize_base_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(format!(
            "{url:?} must be a base URL like http://127.0.0.1:9000 or https://api.example.com/v2"
        ));
    }
    if authority.parse::<http_authority::Authority>().is_err() {
        return Err(format!("{url:?} has an invalid host or port"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Minimal authority check (host[:port]) without pulling an HTTP stack into this crate.
mod http_authority {
    pub struct Authority;
    impl std::str::FromStr for Authority {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let (host, port) = match s.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') && !h.contains(':') => (h, Some(p)),
                Some((h, p)) if h.ends_with(']') => (h, Some(p)),
                _ => (s, None),
            };
            if host.is_empty() || host.contains('@') {
                return Err(());
            }
            match port {
                Some(p) if p.parse::<u16>().map(|p| p > 0).unwrap_or(false) => Ok(Self),
                Some(_) => Err(()),
                None => Ok(Self),
            }
        }
    }
}

fn compile_tenants(
    objects: &Objects<'_>,
    plan_state: &HashMap<ObjectKey, bool>,
    out: &mut Compiled,
) {
    let secrets = secrets_by_key(objects);
    let mut tenants: Vec<&resources::Tenant> = objects.tenants.clone();
    // Oldest first: when two tenants present the same key, the older one keeps it.
    tenants.sort_by(|a, b| {
        creation(*a)
            .cmp(&creation(*b))
            .then_with(|| object_key(*a).cmp(&object_key(*b)))
    });
    let mut key_owner: HashMap<KeyDigest, ObjectKey> = HashMap::new();

    for tenant in tenants {
        let key = object_key(tenant);
        let spec = &tenant.spec;
        let mut errors: Vec<FieldError> = Vec::new();

        let plan_ref = |field: String,
                        name: &str,
                        errors: &mut Vec<FieldError>|
         -> Option<ObjectKey> {
            let plan_key = key.sibling(name);
            match plan_state.get(&plan_key) {
                Some(true) => Some(plan_key),
                Some(false) => {
                    errors.push((
                        field,
                        Reason::PlanNotAccepted,
                        format!("QuotaPolicy {name:?} is not accepted; see its status conditions"),
                    ));
                    None
                }
                None => {
                    errors.push((
                        field,
                        Reason::PlanNotFound,
                        format!(
                            "QuotaPolicy {name:?} not found in namespace {}",
                            key.namespace
                        ),
                    ));
                    None
                }
            }
        };

        let plan = spec
            .quota_policy_ref
            .as_ref()
            .and_then(|r| plan_ref("spec.quotaPolicyRef.name".to_owned(), &r.name, &mut errors));

        let mut digests = Vec::new();
        for (i, api_key) in spec.api_keys.iter().enumerate() {
            let secret_ref = &api_key.secret_ref;
            let Some(secret) = secrets.get(&key.sibling(&secret_ref.name)) else {
                errors.push((
                    format!("spec.apiKeys[{i}].secretRef.name"),
                    Reason::SecretNotFound,
                    format!(
                        "Secret {:?} not found in namespace {}",
                        secret_ref.name, key.namespace
                    ),
                ));
                continue;
            };
            match secret_value(secret, &secret_ref.key) {
                Some(value) => {
                    let digest = KeyDigest::of(value);
                    match key_owner.get(&digest) {
                        Some(owner) if owner != &key => errors.push((
                            format!("spec.apiKeys[{i}]"),
                            Reason::DuplicateApiKey,
                            format!("the key in Secret {:?} is already used by Tenant {owner}; every tenant needs its own keys", secret_ref.name),
                        )),
                        _ => digests.push(digest),
                    }
                }
                None => errors.push((
                    format!("spec.apiKeys[{i}].secretRef.key"),
                    Reason::SecretKeyNotFound,
                    format!(
                        "Secret {:?} has no non-empty key {:?}",
                        secret_ref.name, secret_ref.key
                    ),
                )),
            }
        }

        let paid_through = match spec
            .billing
            .paid_through
            .as_deref()
            .map(Timestamp::from_str)
            .transpose()
        {
            Ok(t) => t,
            Err(e) => {
                errors.push(invalid(
                    "spec.billing.paidThrough",
                    format!("not an RFC 3339 time: {e}"),
                ));
                None
            }
        };

        let mut subscriptions = Vec::new();
        let mut seen_routes = BTreeSet::new();
        for (i, sub) in spec.subscriptions.iter().enumerate() {
            if !seen_routes.insert(sub.api_route_ref.name.as_str()) {
                errors.push(invalid(
                    format!("spec.subscriptions[{i}].apiRouteRef.name"),
                    format!(
                        "ApiRoute {:?} appears twice in subscriptions",
                        sub.api_route_ref.name
                    ),
                ));
                continue;
            }
            let sub_plan = match &sub.quota_policy_ref {
                Some(r) => match plan_ref(
                    format!("spec.subscriptions[{i}].quotaPolicyRef.name"),
                    &r.name,
                    &mut errors,
                ) {
                    Some(p) => Some(p),
                    None => continue,
                },
                None => None,
            };
            subscriptions.push(TenantSubscription {
                route: sub.api_route_ref.name.clone(),
                plan: sub_plan,
            });
        }

        if !errors.is_empty() {
            push_all(&mut out.diagnostics, ObjectKind::Tenant, &key, errors);
            continue;
        }
        digests.sort();
        digests.dedup();
        for d in &digests {
            key_owner.insert(d.clone(), key.clone());
        }
        let states = subscriptions
            .iter()
            .map(|s| SubscriptionStatus {
                api_route: s.route.clone(),
                state: out
                    .snapshot
                    .route(&key.sibling(&s.route))
                    .map_or(SubscriptionState::RouteNotFound, |r| {
                        r.subscription_state(&key.name)
                    }),
            })
            .collect();
        out.subscriptions.insert(key.clone(), states);
        let grace = plan
            .as_ref()
            .and_then(|p| out.snapshot.plan(p))
            .map(|p| std::time::Duration::from_millis(p.past_due_grace_ms))
            .filter(|g| !g.is_zero());
        let stripe = tenant.status.as_ref().and_then(|s| s.stripe.as_ref());
        let billing = billing::effective_billing(&spec.billing, stripe, grace);
        out.billing.insert(key.clone(), billing.status());
        out.snapshot.tenants.push(Tenant {
            key,
            display_name: spec.display_name.clone(),
            key_digests: digests,
            plan,
            billing_state: billing.state,
            past_due_grace_until: billing.grace_until,
            paid_through,
            subscriptions,
        });
    }
    out.snapshot.tenants.sort_by(|a, b| a.key.cmp(&b.key));
}

/// The bytes of `key` in a Secret (data, or stringData in standalone manifests), with surrounding
/// whitespace removed (a key written with `echo` carries a newline). `None` when absent or empty.
fn secret_value<'s>(secret: &'s Secret, key: &str) -> Option<&'s [u8]> {
    let raw: &[u8] = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.as_bytes())
        })?;
    let trimmed = raw.trim_ascii();
    (!trimmed.is_empty()).then_some(trimmed)
}

#[cfg(test)]
mod tests;

//! The periodic read: while this replica leads, every `--stripe-repair-interval` it reads each
//! named subscription through Stripe's API (`GET /v1/subscriptions/{id}`) and writes its status
//! where it differs from the Tenant's. A webhook Stripe never delivered (an endpoint down for
//! longer than Stripe retries, a secret rotated wrongly, an event type not enabled on the
//! endpoint) is so corrected within one interval. The receiver also reads one subscription at
//! once when two of its events of the same second disagree ([`SubscriptionReader::correct`]).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use jiff::Timestamp;
use serde_json::Value;
use tokio::sync::watch;
use tollgate_crds::compile::object_key;
use tollgate_crds::resources::StripeRef;
use tollgate_crds::snapshot::ObjectKey;

use super::decide::Observation;
use super::event::{Signal, SubscriptionStatus};
use super::tenants::{Applied, StripeTenants};
use crate::metrics::OperatorMetrics;

/// One read's time limit.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// How far before Stripe's clock at the read (its answer's `Date`, whole seconds) the read
/// counts as observed: an event created in that second may not be reflected in it yet.
const READ_CLOCK_MARGIN_SECS: i64 = 1;

type HttpsClient = crate::https_client::HttpsClient<Empty<Bytes>>;

/// Why a subscription could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No answer.
    #[error("{0}")]
    Transport(String),
    /// An answer other than 200.
    #[error("Stripe answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// Stripe's `error.message`, or the start of the body.
        message: String,
    },
    /// A 200 that is not a subscription Tollgate can read.
    #[error("not a subscription: {0}")]
    Body(String),
}

/// Reads subscriptions through Stripe's API and writes what they say into the Tenants.
pub struct SubscriptionReader {
    /// Stripe's API, without a trailing slash (`https://api.stripe.com`).
    pub api_base: String,
    /// The secret API key (`sk_…` or a restricted `rk_…` key that may read subscriptions),
    /// re-read before every pass and every single read, so a rotated key applies at once.
    pub api_key_file: PathBuf,
    /// The Tenants.
    pub tenants: StripeTenants,
    /// Metrics.
    pub metrics: OperatorMetrics,
    client: HttpsClient,
}

impl std::fmt::Debug for SubscriptionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionReader")
            .field("api_base", &self.api_base)
            .field("api_key_file", &self.api_key_file)
            .finish_non_exhaustive()
    }
}

/// The loop's settings.
#[derive(Debug)]
pub struct Repair {
    /// The reader.
    pub reader: std::sync::Arc<SubscriptionReader>,
    /// Time between passes.
    pub interval: Duration,
}

/// A subscription as read: its customer and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// `cus_…`.
    pub customer: String,
    /// Its status.
    pub status: SubscriptionStatus,
}

/// Reads a `GET /v1/subscriptions/{id}` body.
pub fn read_subscription(body: &[u8]) -> Result<Subscription, ReadError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| ReadError::Body(e.to_string()))?;
    let customer = match &doc["customer"] {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    let status = doc["status"].as_str().unwrap_or_default();
    let status = SubscriptionStatus::parse(status)
        .ok_or_else(|| ReadError::Body(format!("unknown status {status:?}")))?;
    if customer.is_empty() {
        return Err(ReadError::Body("no customer".into()));
    }
    Ok(Subscription { customer, status })
}

/// When Stripe answered, from its `Date` header (RFC 9110: `Sat, 05 Dec 2026 14:33:45 GMT`).
fn answered_at(headers: &http::HeaderMap) -> Option<Timestamp> {
    let date = headers.get(http::header::DATE)?.to_str().ok()?;
    jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(date)
        .ok()
}

impl Repair {
    /// Runs passes while this replica leads: one on becoming leader, then every interval.
    pub async fn run(self, mut leading: watch::Receiver<bool>) {
        self.reader.tenants.caches.wait_until_ready().await;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = leading.changed() => if changed.is_err() { return },
            }
            if *leading.borrow() {
                self.reader.pass().await;
            }
        }
    }
}

impl SubscriptionReader {
    /// A reader of `api_base` with the key in `api_key_file`.
    pub fn new(
        api_base: String,
        api_key_file: PathBuf,
        tenants: StripeTenants,
        metrics: OperatorMetrics,
    ) -> Self {
        Self {
            api_base,
            api_key_file,
            tenants,
            metrics,
            client: crate::https_client::build(),
        }
    }

    /// The subscription, and the instant it was read at: Stripe's clock at the answer less a
    /// margin (its `created` times are in whole seconds on that clock, so comparing them with
    /// the operator's clock would misorder events whenever the two clocks differ), or the
    /// operator's clock when the answer has no `Date`.
    async fn read(
        &self,
        key: &str,
        subscription: &str,
    ) -> Result<(Subscription, Timestamp), ReadError> {
        let uri = format!("{}/v1/subscriptions/{subscription}", self.api_base);
        let req = http::Request::get(&uri)
            .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
            .header(http::header::USER_AGENT, "tollgate-operator")
            .body(Empty::new())
            .map_err(|e| ReadError::Transport(e.to_string()))?;
        let resp = tokio::time::timeout(READ_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| ReadError::Transport(format!("no answer within {READ_TIMEOUT:?}")))?
            .map_err(|e| ReadError::Transport(e.to_string()))?;
        let status = resp.status();
        let answered = answered_at(resp.headers()).unwrap_or_else(Timestamp::now);
        let at = Timestamp::from_second(answered.as_second() - READ_CLOCK_MARGIN_SECS)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let body = tokio::time::timeout(READ_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| ReadError::Transport("the body took too long".into()))?
            .map_err(|e| ReadError::Transport(e.to_string()))?
            .to_bytes();
        if status != http::StatusCode::OK {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|d| d["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into());
            return Err(ReadError::Status {
                status: status.as_u16(),
                message,
            });
        }
        Ok((read_subscription(&body)?, at))
    }

    /// The API key; `None` (logged) when it cannot be read.
    async fn key(&self) -> Option<String> {
        match tokio::fs::read_to_string(&self.api_key_file).await {
            Ok(k) if !k.trim().is_empty() => Some(k.trim().to_owned()),
            Ok(_) => {
                tracing::error!(file = %self.api_key_file.display(),
                    "the Stripe API key file is empty: subscriptions are not read");
                None
            }
            Err(e) => {
                tracing::error!(file = %self.api_key_file.display(), error = %e,
                    "cannot read the Stripe API key: subscriptions are not read");
                None
            }
        }
    }

    /// Reads the subscription `tenant` names and writes what it says; the outcome, counted.
    pub async fn correct(&self, tenant: &ObjectKey, named: &StripeRef) -> &'static str {
        let outcome = match self.key().await {
            Some(key) => self.correct_with(&key, tenant, named).await,
            None => "failed",
        };
        self.count(outcome);
        outcome
    }

    async fn correct_with(&self, key: &str, tenant: &ObjectKey, named: &StripeRef) -> &'static str {
        let (read, at) = match self.read(key, &named.subscription).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(%tenant, subscription = %named.subscription, error = %e,
                    "cannot read the subscription from Stripe; the Tenant keeps its last state");
                return "failed";
            }
        };
        if read.customer != named.customer {
            tracing::warn!(%tenant, subscription = %named.subscription,
                named = %named.customer, actual = %read.customer,
                "the subscription belongs to another customer than the Tenant names: not applied");
            return "customer_mismatch";
        }
        let seen = Observation {
            event: None,
            at,
            signal: Signal::Subscription(read.status),
        };
        match self.tenants.apply(tenant, named, seen).await {
            Ok(Applied::Written { status, .. }) => {
                tracing::info!(%tenant, subscription = %named.subscription,
                    state = ?status.state, subscription_status = read.status.as_str(),
                    "corrected from Stripe's API (a webhook was missed, not yet delivered, or tied with another)");
                "corrected"
            }
            Ok(_) => "unchanged",
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "cannot write the Tenant's status");
                "failed"
            }
        }
    }

    /// One pass over every Tenant that names a subscription.
    pub async fn pass(&self) {
        let Some(key) = self.key().await else {
            self.count("failed");
            return;
        };
        let (mut corrected, mut failed) = (0u32, 0u32);
        for tenant in self.tenants.with_stripe() {
            let Some(named) = tenant.spec.billing.stripe.as_ref() else {
                continue;
            };
            let outcome = self
                .correct_with(&key, &object_key(tenant.as_ref()), named)
                .await;
            self.count(outcome);
            match outcome {
                "corrected" => corrected += 1,
                "failed" => failed += 1,
                _ => {}
            }
        }
        tracing::debug!(corrected, failed, "Stripe subscriptions read");
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .stripe_reads
            .with_label_values(&[outcome])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_names_its_customer_and_status() {
        let body = br#"{"id": "sub_1", "object": "subscription", "customer": "cus_1",
                        "status": "unpaid", "items": {"data": []}}"#;
        assert_eq!(
            read_subscription(body).expect("read"),
            Subscription {
                customer: "cus_1".into(),
                status: SubscriptionStatus::Unpaid
            }
        );
        let expanded = br#"{"customer": {"id": "cus_2"}, "status": "active"}"#;
        assert_eq!(read_subscription(expanded).expect("read").customer, "cus_2");
        assert!(read_subscription(br#"{"customer": "cus_1", "status": "dormant"}"#).is_err());
        assert!(read_subscription(br#"{"status": "active"}"#).is_err());
    }

    #[test]
    fn a_read_is_timed_by_stripes_clock() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(answered_at(&headers), None);
        let t = Timestamp::now();
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&t)
            .expect("printable");
        headers.insert(http::header::DATE, date.parse().expect("header value"));
        assert_eq!(
            answered_at(&headers).map(|a| a.as_second()),
            Some(t.as_second())
        );
        headers.insert(
            http::header::DATE,
            "yesterday".parse().expect("header value"),
        );
        assert_eq!(answered_at(&headers), None);
    }
}

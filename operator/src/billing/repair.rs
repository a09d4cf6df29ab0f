//! The periodic read: while this replica leads, every `--stripe-repair-interval` it reads each
//! named subscription through Stripe's API (`GET /v1/subscriptions/{id}`) and writes its status
//! where it differs from the Tenant's. A webhook Stripe never delivered (an endpoint down for
//! longer than Stripe retries, a secret rotated wrongly, an event type not enabled on the
//! endpoint) is so corrected within one interval.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use serde_json::Value;
use tokio::sync::watch;
use tollgate_crds::compile::object_key;

use super::decide::Observation;
use super::event::{Signal, SubscriptionStatus};
use super::tenants::{Applied, StripeTenants};
use crate::metrics::OperatorMetrics;

/// One read's time limit.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// How far before the read (whole seconds) it counts as observed, against Stripe's
/// one-second timestamps and a small clock difference.
const READ_CLOCK_MARGIN_SECS: i64 = 2;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

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

/// The loop's settings and handles.
#[derive(Debug)]
pub struct Repair {
    /// Stripe's API, without a trailing slash (`https://api.stripe.com`).
    pub api_base: String,
    /// The secret API key (`sk_…` or a restricted `rk_…` key that may read subscriptions),
    /// re-read on every pass.
    pub api_key_file: PathBuf,
    /// Time between passes.
    pub interval: Duration,
    /// The Tenants.
    pub tenants: StripeTenants,
    /// Metrics.
    pub metrics: OperatorMetrics,
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

fn client() -> HttpsClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

impl Repair {
    /// Runs passes while this replica leads: one on becoming leader, then every interval.
    pub async fn run(self, mut leading: watch::Receiver<bool>) {
        let client = client();
        self.tenants.caches.wait_until_ready().await;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = leading.changed() => if changed.is_err() { return },
            }
            if *leading.borrow() {
                self.pass(&client).await;
            }
        }
    }

    async fn read(
        &self,
        client: &HttpsClient,
        key: &str,
        subscription: &str,
    ) -> Result<Subscription, ReadError> {
        let uri = format!("{}/v1/subscriptions/{subscription}", self.api_base);
        let req = http::Request::get(&uri)
            .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
            .header(http::header::USER_AGENT, "tollgate-operator")
            .body(Empty::new())
            .map_err(|e| ReadError::Transport(e.to_string()))?;
        let resp = tokio::time::timeout(READ_TIMEOUT, client.request(req))
            .await
            .map_err(|_| ReadError::Transport(format!("no answer within {READ_TIMEOUT:?}")))?
            .map_err(|e| ReadError::Transport(e.to_string()))?;
        let status = resp.status();
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
        read_subscription(&body)
    }

    /// One pass over every Tenant that names a subscription.
    pub async fn pass(&self, client: &HttpsClient) {
        let key = match tokio::fs::read_to_string(&self.api_key_file).await {
            Ok(k) => k.trim().to_owned(),
            Err(e) => {
                tracing::error!(file = %self.api_key_file.display(), error = %e,
                    "cannot read the Stripe API key: subscriptions are not read this pass");
                self.count("failed");
                return;
            }
        };
        let (mut corrected, mut failed) = (0u32, 0u32);
        for tenant in self.tenants.with_stripe() {
            let Some(stripe) = tenant.spec.billing.stripe.as_ref() else {
                continue;
            };
            let key_of = object_key(tenant.as_ref());
            // The read's time orders it against events: what Stripe created before the read is
            // reflected in it. Stripe's `created` is in whole seconds on Stripe's clock: the
            // read counts from a little before, so that an event created in the same second
            // (or on a clock slightly behind) after the read is still applied.
            let at = Timestamp::from_second(Timestamp::now().as_second() - READ_CLOCK_MARGIN_SECS)
                .unwrap_or(Timestamp::UNIX_EPOCH);
            let read = match self.read(client, &key, &stripe.subscription).await {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(tenant = %key_of, subscription = %stripe.subscription,
                        error = %e, "cannot read the subscription from Stripe; the Tenant keeps its last state");
                    self.count("failed");
                    failed += 1;
                    continue;
                }
            };
            if read.customer != stripe.customer {
                tracing::warn!(tenant = %key_of, subscription = %stripe.subscription,
                    named = %stripe.customer, actual = %read.customer,
                    "the subscription belongs to another customer than the Tenant names: not applied");
                self.count("customer_mismatch");
                continue;
            }
            let seen = Observation {
                event: None,
                at,
                signal: Signal::Subscription(read.status),
            };
            match self.tenants.apply(&key_of, stripe, seen).await {
                Ok(Applied::Written(status)) => {
                    tracing::info!(tenant = %key_of, subscription = %stripe.subscription,
                        state = ?status.state, subscription_status = read.status.as_str(),
                        "corrected from Stripe's API (a webhook was missed or not yet delivered)");
                    self.count("corrected");
                    corrected += 1;
                }
                Ok(_) => self.count("unchanged"),
                Err(e) => {
                    tracing::warn!(tenant = %key_of, error = %e, "cannot write the Tenant's status");
                    self.count("failed");
                    failed += 1;
                }
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
}

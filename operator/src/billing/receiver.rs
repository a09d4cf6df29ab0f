//! `POST /stripe/webhook`: Stripe's events, verified, read, and applied to the Tenants that name
//! their customer and subscription (`status.stripe`). Every replica serves it, leader or not:
//! each write is conditional on the Tenant's resourceVersion, so replicas can share deliveries.
//!
//! Answers, as Stripe reads them: 400 for a delivery that is not signed with a configured secret,
//! signed too far from now, or too large (Stripe retries, and its dashboard shows the failures);
//! 503 while the Tenants are not yet known, when the API server cannot be written or the secrets
//! cannot be read (Stripe retries); 200 for everything verified, applied or deliberately not
//! (duplicates, older events, other customers, other event types, and a signed event this
//! version cannot read: a retry would not change it; counted as `unreadable`, logged, and left
//! to the periodic read).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use jiff::Timestamp;
use serde_json::json;
use tokio::sync::Semaphore;
use tollgate_crds::compile::object_key;
use tollgate_crds::resources::StripeRef;
use tollgate_crds::snapshot::ObjectKey;

use super::decide::Observation;
use super::event::{self, Delivery, Event};
use super::repair::SubscriptionReader;
use super::signature;
use super::tenants::{Applied, StripeTenants};
use crate::metrics::OperatorMetrics;

/// Stripe's events are small; a body over this is not one.
const MAX_BODY: usize = 1024 * 1024;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to find and write the Tenants of one delivery; past it, 503 (Stripe retries) rather
/// than a permit held for as long as a hung API server takes.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Deliveries handled at once. The port is public: past this, 503 (Stripe retries) rather than
/// buffering bodies for whoever opens connections.
pub const MAX_IN_FLIGHT: usize = 32;

/// The receiver's settings and handles.
#[derive(Debug)]
pub struct Receiver {
    /// Signing secrets, one per line (re-read on every delivery, so a rotated Secret applies
    /// without a restart).
    pub secrets_file: PathBuf,
    /// How old a signature may be.
    pub tolerance: Duration,
    /// The Tenants, to find and write.
    pub tenants: StripeTenants,
    /// Reads a subscription when two events of the same second disagree (with an API key).
    pub reader: Option<Arc<SubscriptionReader>>,
    /// Metrics.
    pub metrics: OperatorMetrics,
    /// Permits for deliveries in flight ([`MAX_IN_FLIGHT`]).
    pub in_flight: Semaphore,
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, outcome: &str, detail: &str) -> Answer {
    let body = json!({"outcome": outcome, "detail": detail}).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The signing secrets in `text`: one per line, blank lines and `#` comments ignored.
pub fn read_secrets(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

impl Receiver {
    fn count(&self, outcome: &str) {
        self.metrics
            .stripe_events
            .with_label_values(&[outcome])
            .inc();
    }

    /// Counts `outcome` and answers it.
    fn refuse(&self, status: StatusCode, outcome: &str, detail: &str) -> Answer {
        self.count(outcome);
        answer(status, outcome, detail)
    }

    /// Handles one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Answer {
        if req.uri().path() != "/stripe/webhook" {
            return answer(
                StatusCode::NOT_FOUND,
                "not_found",
                "Stripe delivers to POST /stripe/webhook",
            );
        }
        if req.method() != Method::POST {
            return answer(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Stripe delivers with POST",
            );
        }
        // Refused before a byte of the body is read: no signature, or a body too large.
        let Some(header) = req
            .headers()
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        else {
            return self.refuse(
                StatusCode::BAD_REQUEST,
                "bad_signature",
                "no Stripe-Signature header",
            );
        };
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_BODY) {
            return self.refuse(StatusCode::BAD_REQUEST, "malformed", "body over 1 MiB");
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many deliveries at once; retry",
            );
        };
        let read = Limited::new(req.into_body(), MAX_BODY).collect();
        let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Ok(Ok(b)) => b.to_bytes(),
            _ => {
                return self.refuse(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    "body over 1 MiB, unreadable or too slow",
                );
            }
        };
        let read = tokio::fs::read_to_string(&self.secrets_file)
            .await
            .map(|text| read_secrets(&text));
        let secrets = match read {
            Ok(secrets) if !secrets.is_empty() => secrets,
            read => {
                let error = read.map_or_else(|e| e.to_string(), |_| "no secret in it".to_owned());
                tracing::error!(file = %self.secrets_file.display(), %error,
                    "cannot read the Stripe signing secrets: every delivery is refused until it can be read");
                return self.refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_secrets",
                    "the receiver's signing secrets cannot be read",
                );
            }
        };
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if let Err(e) =
            signature::verify(Some(&header), &body, &secrets, tolerance, Timestamp::now())
        {
            tracing::warn!(error = %e, secrets = secrets.len(),
                "Stripe webhook refused: not applied (a wrong secret in the Secret, a replay, or not Stripe)");
            return self.refuse(StatusCode::BAD_REQUEST, e.outcome(), &e.to_string());
        }
        match event::parse(&body) {
            Ok(Delivery::Event(event)) => {
                if !self.tenants.caches.is_ready() {
                    return self.refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not_ready",
                        "the operator is still reading the Tenants; retry",
                    );
                }
                match tokio::time::timeout(APPLY_TIMEOUT, self.apply(&event)).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        tracing::warn!(event = %event.id, timeout = ?APPLY_TIMEOUT,
                            "Stripe event not written: the API server did not answer in time; Stripe will redeliver it");
                        self.refuse(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "write_failed",
                            "the Tenant could not be updated in time; retry",
                        )
                    }
                }
            }
            Ok(Delivery::OtherType { id, kind }) => {
                tracing::debug!(event = %id, kind, "Stripe event of a type Tollgate does not act on");
                self.refuse(StatusCode::OK, "ignored_type", &kind)
            }
            Err(e @ event::EventError::UnknownStatus { .. }) => {
                // Acknowledged: a status this version does not know cannot be mapped, and a
                // retry would not change that. The periodic read still sees the subscription.
                tracing::warn!(error = %e, "Stripe event not applied");
                self.refuse(StatusCode::OK, "unknown_status", &e.to_string())
            }
            Err(e) => {
                // Signed by Stripe, so a retry would bring the same bytes: acknowledged, so that
                // Stripe does not retry for days and disable the endpoint.
                tracing::warn!(error = %e,
                    "signed Stripe event Tollgate cannot read: not applied (the periodic read still sees the subscription)");
                self.refuse(StatusCode::OK, "unreadable", &e.to_string())
            }
        }
    }

    /// Applies a verified event to every Tenant that names its customer and subscription.
    async fn apply(&self, event: &Event) -> Answer {
        let naming = self.tenants.naming_customer(&event.customer);
        let about = event.subscription.clone().map(|subscription| StripeRef {
            customer: event.customer.clone(),
            subscription,
        });
        let named: Vec<ObjectKey> = naming
            .iter()
            .filter(|t| about.is_some() && t.spec.billing.stripe.as_ref() == about.as_ref())
            .map(|t| object_key(t.as_ref()))
            .collect();
        let Some(about) = about.filter(|_| !named.is_empty()) else {
            let outcome = if naming.is_empty() {
                "unknown_customer"
            } else {
                "other_subscription"
            };
            tracing::info!(event = %event.id, kind = %event.kind, customer = %event.customer,
                subscription = ?event.subscription, outcome,
                "Stripe event names no Tenant's customer and subscription: not applied");
            return self.refuse(
                StatusCode::OK,
                outcome,
                "no Tenant names this customer and subscription",
            );
        };
        let seen = Observation {
            event: Some(&event.id),
            at: event.created,
            signal: event.signal,
        };
        let mut outcome = "duplicate";
        for tenant in &named {
            match self.tenants.apply(tenant, &about, seen).await {
                Ok(Applied::Written { status, tied }) => {
                    tracing::info!(tenant = %tenant, event = %event.id, kind = %event.kind,
                        state = ?status.state, subscription_status = ?status.subscription_status,
                        "Stripe event applied");
                    outcome = "applied";
                    if tied {
                        self.settle_tie(tenant, &about, &event.id);
                    }
                }
                Ok(Applied::OutOfOrder { newest }) => {
                    tracing::info!(tenant = %tenant, event = %event.id, kind = %event.kind,
                        created = %event.created, %newest,
                        "Stripe event older than the newest one applied: not applied");
                    if outcome == "duplicate" {
                        outcome = "out_of_order";
                    }
                }
                Ok(Applied::Duplicate | Applied::Unchanged | Applied::NotNamed) => {}
                Err(e) => {
                    tracing::warn!(tenant = %tenant, event = %event.id, error = %e,
                        "Stripe event not written to the Tenant; Stripe will redeliver it");
                    return self.refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "write_failed",
                        "the Tenant could not be updated; retry",
                    );
                }
            }
        }
        self.refuse(StatusCode::OK, outcome, &event.id)
    }
}

impl Receiver {
    /// Two events of the same second said different things and arrival order chose: reads the
    /// subscription now (in the background: the delivery is answered) to settle which is right.
    fn settle_tie(&self, tenant: &ObjectKey, named: &StripeRef, event: &str) {
        let Some(reader) = self.reader.clone() else {
            tracing::warn!(%tenant, event,
                "two Stripe events of the same second disagree and no API key is configured to read the subscription: the later arrival stands until the next event");
            return;
        };
        tracing::info!(%tenant, event,
            "two Stripe events of the same second disagree: reading the subscription to settle it");
        let (tenant, named) = (tenant.clone(), named.clone());
        tokio::spawn(async move {
            reader.correct(&tenant, &named).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_one_per_line() {
        assert_eq!(
            read_secrets("# rotated 2026-11\nwhsec_new\n\n  whsec_old  \n"),
            ["whsec_new", "whsec_old"]
        );
        assert!(read_secrets("# only a comment\n").is_empty());
    }
}

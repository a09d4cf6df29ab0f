//! A recording billing sink: Stripe's meter-event endpoint and a CloudEvents ingest endpoint, with
//! the receivers' de-duplication semantics, recording every delivery (copies included).
//!
//! - `POST /v1/billing/meter_events` (form, `Authorization: Bearer sk_test_tollgate`): validated
//!   like Stripe (event name, identifier of at most 100 characters, customer, a whole value);
//!   an identifier seen before is refused as Stripe refuses it (400, "An event already exists
//!   with identifier …").
//! - `POST /events` (`application/cloudevents+json`): required attributes checked; a repeated
//!   (source, id) is dropped silently with 204, as OpenMeter does.
//!
//! - `POST /alerts`: any body, recorded with its `webhook-*` headers (spend-alert webhooks), 204.
//!
//! Test knobs: [`BillingSink::hold_next`] records the next new event and then never answers
//! (the sender dies waiting, or times out), [`BillingSink::fail_next`] answers 500 to the next
//! deliveries without recording them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::stripe_mock::API_KEY;

/// One event as the sink took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Stripe's `identifier`, or the CloudEvent's `source` + ` ` + `id`.
    pub id: String,
    /// The customer (Stripe) or subject (CloudEvents).
    pub customer: String,
    /// Stripe's `event_name`, the CloudEvent's `type`.
    pub event_name: String,
    /// Units.
    pub value: u64,
    /// Unix seconds.
    pub timestamp: i64,
    /// The whole CloudEvent (Null for Stripe).
    pub cloud_event: Value,
}

/// A webhook as received: its `webhook-id`, `webhook-timestamp` and `webhook-signature`
/// headers, and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// The three headers, by name.
    pub headers: HashMap<String, String>,
    /// The body, as sent.
    pub body: String,
}

#[derive(Debug, Default)]
struct State {
    /// Spend-alert webhooks, in arrival order.
    webhooks: Vec<WebhookDelivery>,
    /// Every delivery, copies included, in arrival order.
    deliveries: Vec<Delivery>,
    /// The first delivery of each id.
    unique: HashMap<String, Delivery>,
    hold_next: bool,
    held: Option<String>,
    fail_next: usize,
}

/// The sink, on a loopback port; dropping it stops it.
#[derive(Debug)]
pub struct BillingSink {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BillingSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn stripe_error(status: u16, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        "application/json",
        json!({"error": {"type": "invalid_request_error", "message": message}}).to_string(),
    )
}

/// What a meter-event form says, or why Stripe would refuse it.
fn stripe_delivery(form: &[u8]) -> Result<Delivery, String> {
    let fields: HashMap<String, String> = form_urlencoded::parse(form).into_owned().collect();
    let field = |k: &str| {
        fields
            .get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| format!("Missing required param: {k}."))
    };
    let id = field("identifier")?;
    if id.len() > 100 {
        return Err("identifier: at most 100 characters".into());
    }
    let value = field("payload[value]")?;
    let value: u64 = value
        .parse()
        .map_err(|_| format!("payload[value] {value:?} is not a whole number"))?;
    let timestamp = field("timestamp")?
        .parse()
        .map_err(|_| "timestamp: not an integer".to_owned())?;
    Ok(Delivery {
        id,
        customer: field("payload[stripe_customer_id]")?,
        event_name: field("event_name")?,
        value,
        timestamp,
        cloud_event: Value::Null,
    })
}

/// What a structured-mode CloudEvent says, or why it is refused.
fn cloud_delivery(body: &[u8]) -> Result<Delivery, String> {
    let event: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    for required in ["specversion", "id", "source", "type", "subject"] {
        if event[required].as_str().is_none_or(str::is_empty) {
            return Err(format!("{required} is required"));
        }
    }
    if event["specversion"] != "1.0" {
        return Err("specversion must be 1.0".into());
    }
    let time: jiff::Timestamp = event["time"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("time: {e}"))?;
    Ok(Delivery {
        id: format!(
            "{} {}",
            event["source"].as_str().unwrap_or_default(),
            event["id"].as_str().unwrap_or_default()
        ),
        customer: event["subject"].as_str().unwrap_or_default().to_owned(),
        event_name: event["type"].as_str().unwrap_or_default().to_owned(),
        value: event["data"]["value"]
            .as_u64()
            .ok_or("data.value must be a whole number")?,
        timestamp: time.as_second(),
        cloud_event: event,
    })
}

impl BillingSink {
    /// Starts on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let serve = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), serve)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:PORT` (Stripe's base URL).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the next new event, then never answers its request.
    pub fn hold_next(&self) {
        self.state().hold_next = true;
    }

    /// The id of the event held, once one is.
    pub fn held(&self) -> Option<String> {
        self.state().held.clone()
    }

    /// Answers 500 to the next `n` deliveries, recording nothing.
    pub fn fail_next(&self, n: usize) {
        self.state().fail_next = n;
    }

    /// Every delivery, copies included.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state().deliveries.clone()
    }

    /// The sum of the values of distinct events for `customer`: what the receiver bills after
    /// de-duplicating by identifier.
    pub fn billed(&self, customer: &str) -> u64 {
        self.state()
            .unique
            .values()
            .filter(|d| d.customer == customer)
            .map(|d| d.value)
            .sum()
    }

    /// The spend-alert webhooks received.
    pub fn webhooks(&self) -> Vec<WebhookDelivery> {
        self.state().webhooks.clone()
    }

    /// Deliveries of an id delivered before.
    pub fn copies(&self) -> usize {
        let state = self.state();
        state.deliveries.len() - state.unique.len()
    }
}

async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let lock = || {
        state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let path = req.uri().path().to_owned();
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {API_KEY}"));
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let webhook_headers: HashMap<String, String> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .into_iter()
            .filter_map(|name| {
                let value = req.headers().get(name)?.to_str().ok()?;
                Some((name.to_owned(), value.to_owned()))
            })
            .collect();
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return reply(400, "text/plain", "unreadable body".into());
    };
    if path == "/alerts" {
        lock().webhooks.push(WebhookDelivery {
            headers: webhook_headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        return reply(204, "text/plain", String::new());
    }
    let stripe = match (path.as_str(), content_type.as_str()) {
        ("/v1/billing/meter_events", "application/x-www-form-urlencoded") => true,
        ("/events", "application/cloudevents+json") => false,
        _ => return reply(404, "text/plain", format!("no {path} for {content_type}")),
    };
    if stripe && !authorized {
        return stripe_error(401, "Invalid API Key provided");
    }
    {
        let mut s = lock();
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return reply(500, "application/json", "{}".into());
        }
    }
    let parsed = if stripe {
        stripe_delivery(&body)
    } else {
        cloud_delivery(&body)
    };
    let delivery = match parsed {
        Ok(d) => d,
        Err(message) if stripe => return stripe_error(400, &message),
        Err(message) => {
            return reply(
                400,
                "application/problem+json",
                json!({ "detail": message }).to_string(),
            );
        }
    };
    let hold = {
        let mut s = lock();
        s.deliveries.push(delivery.clone());
        if s.unique.contains_key(&delivery.id) {
            return if stripe {
                stripe_error(
                    400,
                    &format!("An event already exists with identifier {}.", delivery.id),
                )
            } else {
                reply(204, "text/plain", String::new())
            };
        }
        s.unique.insert(delivery.id.clone(), delivery.clone());
        let hold = std::mem::take(&mut s.hold_next);
        if hold {
            s.held = Some(delivery.id.clone());
        }
        hold
    };
    if hold {
        // Taken, never answered: the sender cannot know.
        std::future::pending::<()>().await;
    }
    if stripe {
        reply(
            200,
            "application/json",
            json!({"object": "billing.meter_event", "identifier": delivery.id,
                   "event_name": delivery.event_name, "timestamp": delivery.timestamp,
                   "payload": {"stripe_customer_id": delivery.customer,
                               "value": delivery.value.to_string()}})
            .to_string(),
        )
    } else {
        reply(204, "text/plain", String::new())
    }
}

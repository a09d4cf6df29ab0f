//! Where usage goes: Stripe Billing meter events, or any endpoint that takes CloudEvents over
//! HTTP (OpenMeter's ingest, a queue's HTTP bridge). Both drop an event whose identifier they
//! have seen: that is what makes a resend harmless.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use jiff::Timestamp;
use serde_json::{Value, json};
use tollgate_crds::snapshot::ObjectKey;

/// One send's time limit.
const SEND_TIMEOUT: Duration = Duration::from_secs(20);

type HttpsClient = crate::https_client::HttpsClient<Full<Bytes>>;

/// One usage event.
#[derive(Debug, Clone)]
pub struct UsageEvent<'a> {
    /// The idempotency identifier.
    pub id: &'a str,
    /// Stripe's `event_name`, the CloudEvent's `type`.
    pub event_name: &'a str,
    /// Units added.
    pub value: u64,
    /// When the usage happened.
    pub timestamp: Timestamp,
    /// Who pays: the tenant's Stripe customer, or (CloudEvents only) the tenant's
    /// `namespace/name` when it names none.
    pub customer: &'a str,
    /// The tenant.
    pub tenant: &'a ObjectKey,
    /// The plan's name.
    pub plan: &'a str,
    /// The quota's name.
    pub quota: &'a str,
    /// The period's start, RFC 3339.
    pub period_start: &'a str,
}

/// How a sink took an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Accepted now.
    Accepted,
    /// Already had it (a resend after a crash or a lost answer).
    Duplicate,
}

/// Why an event was not delivered (it is sent again later, unchanged).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No answer, or the credentials cannot be read.
    #[error("{0}")]
    Transport(String),
    /// Refused.
    #[error("{sink} answered {status}: {message}")]
    Refused {
        /// Which sink.
        sink: &'static str,
        /// The HTTP status.
        status: u16,
        /// The sink's message, or the start of its body.
        message: String,
    },
}

/// A configured sink.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// `POST {api_base}/v1/billing/meter_events`, with the secret key in `api_key_file`.
    Stripe {
        /// `https://api.stripe.com`, without a trailing slash.
        api_base: String,
        /// The key (re-read before each send, so a rotated key applies at once).
        api_key_file: PathBuf,
    },
    /// `POST {url}` with one structured-mode CloudEvent (`application/cloudevents+json`).
    CloudEvents {
        /// The endpoint.
        url: String,
        /// A bearer token sent as `Authorization`, if any (re-read before each send).
        token_file: Option<PathBuf>,
    },
}

/// A sink and its HTTP client.
pub struct Sink {
    kind: SinkKind,
    client: HttpsClient,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("kind", &self.kind).finish()
    }
}

/// The form Stripe's meter-event endpoint takes.
pub fn stripe_form(event: &UsageEvent<'_>) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("event_name", event.event_name)
        .append_pair("identifier", event.id)
        .append_pair("timestamp", &event.timestamp.as_second().to_string())
        .append_pair("payload[stripe_customer_id]", event.customer)
        .append_pair("payload[value]", &event.value.to_string())
        .finish()
}

/// The CloudEvent (structured mode, JSON). `source` names the tenant, so `source` and `id`
/// together are unique, as the CloudEvents spec asks; `subject` is who pays (OpenMeter's
/// customer).
pub fn cloud_event(event: &UsageEvent<'_>) -> Value {
    json!({
        "specversion": "1.0",
        "id": event.id,
        "source": format!("tollgate/{}/{}", event.tenant.namespace, event.tenant.name),
        "type": event.event_name,
        "subject": event.customer,
        "time": event.timestamp.to_string(),
        "datacontenttype": "application/json",
        "data": {
            "value": event.value,
            "tenant": event.tenant.to_string(),
            "quotaPolicy": event.plan,
            "quota": event.quota,
            "periodStart": event.period_start,
        },
    })
}

/// Whether a Stripe refusal says the identifier was used already (the event is in Stripe).
fn is_stripe_duplicate(status: u16, body: &Value) -> bool {
    let error = &body["error"];
    status == 400
        && (error["code"].as_str() == Some("resource_already_exists")
            || error["message"]
                .as_str()
                .is_some_and(|m| m.contains("already exists with identifier")))
}

fn read_secret(file: &PathBuf, what: &str) -> Result<String, SendError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| SendError::Transport(format!("{what} {}: {e}", file.display())))?;
    let secret = text.trim().to_owned();
    if secret.is_empty() {
        return Err(SendError::Transport(format!(
            "{what} {} is empty",
            file.display()
        )));
    }
    Ok(secret)
}

impl Sink {
    /// A sink of `kind`.
    pub fn new(kind: SinkKind) -> Self {
        Self {
            kind,
            client: crate::https_client::build(),
        }
    }

    /// The sink's name, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self.kind {
            SinkKind::Stripe { .. } => "stripe",
            SinkKind::CloudEvents { .. } => "cloudevents",
        }
    }

    /// Whether the sink bills Stripe customers (tenants that name none cannot be exported).
    pub fn needs_stripe_customer(&self) -> bool {
        matches!(self.kind, SinkKind::Stripe { .. })
    }

    /// Sends one event.
    pub async fn send(&self, event: &UsageEvent<'_>) -> Result<Delivered, SendError> {
        let mut req = match &self.kind {
            SinkKind::Stripe {
                api_base,
                api_key_file,
            } => {
                let key = read_secret(api_key_file, "--stripe-api-key-file")?;
                http::Request::post(format!("{api_base}/v1/billing/meter_events"))
                    .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
                    .header(
                        http::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(Full::new(Bytes::from(stripe_form(event))))
            }
            SinkKind::CloudEvents { url, token_file } => {
                let mut req = http::Request::post(url.as_str())
                    .header(http::header::CONTENT_TYPE, "application/cloudevents+json");
                if let Some(file) = token_file {
                    let token = read_secret(file, "--usage-export-token-file")?;
                    req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
                }
                req.body(Full::new(Bytes::from(cloud_event(event).to_string())))
            }
        }
        .map_err(|e| SendError::Transport(e.to_string()))?;
        req.headers_mut().insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("tollgate-operator"),
        );
        let resp = tokio::time::timeout(SEND_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| SendError::Transport(format!("no answer within {SEND_TIMEOUT:?}")))?
            .map_err(|e| SendError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(SEND_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| SendError::Transport("the answer's body took too long".into()))?
            .map_err(|e| SendError::Transport(e.to_string()))?
            .to_bytes();
        if (200..300).contains(&status) {
            return Ok(Delivered::Accepted);
        }
        let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if self.needs_stripe_customer() && is_stripe_duplicate(status, &doc) {
            return Ok(Delivered::Duplicate);
        }
        let message = doc["error"]["message"]
            .as_str()
            .or_else(|| doc["detail"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into());
        Err(SendError::Refused {
            sink: self.name(),
            status,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tenant: &ObjectKey) -> UsageEvent<'_> {
        UsageEvent {
            id: "tg1-abc",
            event_name: "api_requests",
            value: 42,
            timestamp: "2026-12-15T10:00:00Z".parse().expect("timestamp"),
            customer: "cus_123",
            tenant,
            plan: "gold",
            quota: "monthly",
            period_start: "2026-12-01T00:00:00Z",
        }
    }

    #[test]
    fn stripe_gets_its_form_with_the_identifier_and_a_whole_value() {
        let tenant = ObjectKey::new("shop", "acme");
        let form = stripe_form(&event(&tenant));
        let pairs: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("event_name"), Some("api_requests"));
        assert_eq!(get("identifier"), Some("tg1-abc"));
        assert_eq!(get("timestamp"), Some("1797328800"));
        assert_eq!(get("payload[stripe_customer_id]"), Some("cus_123"));
        assert_eq!(get("payload[value]"), Some("42"));
    }

    #[test]
    fn the_cloud_event_names_the_tenant_as_source_and_the_payer_as_subject() {
        let tenant = ObjectKey::new("shop", "acme");
        let e = cloud_event(&event(&tenant));
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["id"], "tg1-abc");
        assert_eq!(e["source"], "tollgate/shop/acme");
        assert_eq!(e["type"], "api_requests");
        assert_eq!(e["subject"], "cus_123");
        assert_eq!(e["time"], "2026-12-15T10:00:00Z");
        assert_eq!(e["data"]["value"], 42);
        assert_eq!(e["data"]["quota"], "monthly");
    }

    #[test]
    fn only_stripes_duplicate_identifier_refusal_counts_as_delivered() {
        let dup = json!({"error": {"type": "invalid_request_error",
            "message": "An event already exists with identifier tg1-abc."}});
        assert!(is_stripe_duplicate(400, &dup));
        let coded = json!({"error": {"code": "resource_already_exists", "message": "x"}});
        assert!(is_stripe_duplicate(400, &coded));
        let other = json!({"error": {"message": "No such customer: 'cus_9'"}});
        assert!(!is_stripe_duplicate(400, &other));
        assert!(!is_stripe_duplicate(500, &dup));
    }
}

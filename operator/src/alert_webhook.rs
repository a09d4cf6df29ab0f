//! Spend alerts for the tenant's owner: with `spec.alertWebhook`, each alert is also POSTed to
//! the owner's URL, signed the Standard Webhooks way (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`), so the owner verifies
//! it with any Standard Webhooks library and the secret from the Tenant's Secret.
//!
//! The `webhook-id` is derived from the alert (tenant UID, plan, quota, period, threshold): a
//! delivery repeated after a leader change carries the same id, for the receiver to drop.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::Full;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use ring::hmac;
use serde_json::json;
use sha2::{Digest, Sha256};
use tollgate_crds::resources::Tenant;

use crate::spend_alerts::SpendAlert;

/// One attempt's time limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per alert (1 s, then 2 s between them).
const ATTEMPTS: u32 = 3;

type HttpsClient = crate::https_client::HttpsClient<Full<Bytes>>;

/// Why an alert did not reach the owner.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The signing secret cannot be read or used.
    #[error("signing secret: {0}")]
    Secret(String),
    /// No answer, or not a 2xx.
    #[error("{0}")]
    Delivery(String),
}

/// The signature header's value for `body` sent as message `id` at `timestamp`, with a secret
/// in the Standard Webhooks form (`whsec_` and base64; the prefix is optional).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, WebhookError> {
    let encoded = secret.trim();
    let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
    let key = STANDARD.decode(encoded).map_err(|_| {
        WebhookError::Secret(
            "not a Standard Webhooks secret (whsec_ followed by base64, e.g. from `openssl rand -base64 32`)"
                .into(),
        )
    })?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    Ok(format!("v1,{}", STANDARD.encode(ctx.sign().as_ref())))
}

/// The alert's message id: the same for every delivery of one alert.
pub fn message_id(tenant_uid: &str, alert: &SpendAlert) -> String {
    let mut h = Sha256::new();
    for part in [
        tenant_uid,
        &alert.plan,
        &alert.quota,
        &alert.period_start,
        &alert.threshold.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("msg_tg{}", &hex::encode(h.finalize())[..32])
}

/// Delivers spend alerts to the owners' URLs.
pub struct AlertWebhooks {
    client: HttpsClient,
    kube: kube::Client,
}

impl std::fmt::Debug for AlertWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertWebhooks").finish_non_exhaustive()
    }
}

impl AlertWebhooks {
    /// Reads Secrets through `kube` (get on secrets in the Tenant's namespace).
    pub fn new(kube: kube::Client) -> Self {
        Self {
            client: crate::https_client::build(),
            kube,
        }
    }

    /// POSTs `alert` to the Tenant's `alertWebhook.url`, signed with its Secret; `Ok(false)` when
    /// the Tenant has no webhook. Tries three times within about 35 s.
    pub async fn deliver(
        &self,
        tenant: &Tenant,
        alert: &SpendAlert,
        used: &str,
        limit: &str,
    ) -> Result<bool, WebhookError> {
        let Some(webhook) = &tenant.spec.alert_webhook else {
            return Ok(false);
        };
        let namespace = tenant.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), &namespace);
        let name = &webhook.secret_ref.name;
        let secret = secrets
            .get(name)
            .await
            .map_err(|e| WebhookError::Secret(format!("Secret {namespace}/{name}: {e}")))?;
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&webhook.secret_ref.key))
            .ok_or_else(|| {
                WebhookError::Secret(format!(
                    "Secret {namespace}/{name} has no key {:?}",
                    webhook.secret_ref.key
                ))
            })?;
        let value = String::from_utf8(value.0.clone())
            .map_err(|_| WebhookError::Secret(format!("Secret {namespace}/{name}: not UTF-8")))?;
        let id = message_id(&tenant.uid().unwrap_or_default(), alert);
        let body = serde_json::to_vec(&json!({
            "type": "spend_alert.threshold_reached",
            "timestamp": Timestamp::now().to_string(),
            "data": {
                "tenant": alert.tenant,
                "quotaPolicy": alert.plan,
                "quota": alert.quota,
                "periodStart": alert.period_start,
                "threshold": alert.threshold,
                "used": used,
                "limit": limit,
            },
        }))
        .map_err(|e| WebhookError::Delivery(e.to_string()))?;
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
            let timestamp = Timestamp::now().as_second();
            let signature = sign(&value, &id, timestamp, &body)?;
            let req = http::Request::post(webhook.url.as_str())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::USER_AGENT, "tollgate-operator")
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(Full::new(Bytes::from(body.clone())))
                .map_err(|e| WebhookError::Delivery(e.to_string()))?;
            match tokio::time::timeout(ATTEMPT_TIMEOUT, self.client.request(req)).await {
                // The answer's body is not read: an endpoint that streams one forever must not
                // hold the task.
                Ok(Ok(resp)) if resp.status().is_success() => return Ok(true),
                Ok(Ok(resp)) => last = format!("{} answered {}", webhook.url, resp.status()),
                Ok(Err(e)) => last = format!("{}: {e}", webhook.url),
                Err(_) => last = format!("{}: no answer within {ATTEMPT_TIMEOUT:?}", webhook.url),
            }
        }
        Err(WebhookError::Delivery(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(threshold: u32) -> SpendAlert {
        SpendAlert {
            tenant: "shop/acme".into(),
            plan: "gold".into(),
            quota: "monthly".into(),
            period_start: "2026-12-01T00:00:00Z".into(),
            threshold,
        }
    }

    #[test]
    fn the_signature_covers_id_timestamp_and_body_with_the_decoded_secret() {
        let secret = format!(
            "whsec_{}",
            STANDARD.encode(b"0123456789abcdef0123456789abcdef")
        );
        let sig = sign(&secret, "msg_1", 1_700_000_000, b"{}").expect("sign");
        // The same HMAC, computed independently.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef");
        let expected = STANDARD.encode(hmac::sign(&key, b"msg_1.1700000000.{}").as_ref());
        assert_eq!(sig, format!("v1,{expected}"));
        // The prefix is optional; anything else about the inputs changes it.
        let bare = secret.trim_start_matches("whsec_");
        assert_eq!(
            sign(bare, "msg_1", 1_700_000_000, b"{}").expect("sign"),
            sig
        );
        assert_ne!(
            sign(&secret, "msg_2", 1_700_000_000, b"{}").expect("sign"),
            sig
        );
        assert_ne!(
            sign(&secret, "msg_1", 1_700_000_001, b"{}").expect("sign"),
            sig
        );
        assert_ne!(
            sign(&secret, "msg_1", 1_700_000_000, b"{ }").expect("sign"),
            sig
        );
        assert!(sign("whsec_not base64!", "m", 1, b"").is_err());
    }

    #[test]
    fn an_alert_keeps_its_message_id_and_each_threshold_has_its_own() {
        assert_eq!(message_id("uid", &alert(50)), message_id("uid", &alert(50)));
        assert_ne!(message_id("uid", &alert(50)), message_id("uid", &alert(80)));
        assert_ne!(
            message_id("uid", &alert(50)),
            message_id("uid2", &alert(50))
        );
        assert!(message_id("uid", &alert(50)).starts_with("msg_tg"));
    }
}

//! Who may subscribe to the configuration stream: proxies present their ServiceAccount token
//! (projected, audience-bound, rotated by the kubelet), which the operator verifies with a
//! TokenReview and checks against the allowed ServiceAccounts. No shared secret to distribute or
//! rotate, and a stolen token expires within the hour. Results are cached for a minute.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

const CACHE_FOR: Duration = Duration::from_secs(60);

/// A TokenReview outcome (identity or refusal) and when it was made.
type CachedReview = (Result<String, String>, Instant);

/// Verifies proxy tokens.
pub struct ProxyAuthenticator {
    client: kube::Client,
    audience: String,
    /// `system:serviceaccount:NS:NAME` usernames allowed to subscribe.
    allowed: Vec<String>,
    cache: Mutex<HashMap<[u8; 32], CachedReview>>,
}

impl std::fmt::Debug for ProxyAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyAuthenticator")
            .field("audience", &self.audience)
            .field("allowed", &self.allowed)
            .finish()
    }
}

impl ProxyAuthenticator {
    /// `allowed` holds `namespace:name` ServiceAccounts.
    pub fn new(client: kube::Client, audience: String, allowed: &[String]) -> Self {
        let allowed = allowed
            .iter()
            .map(|sa| format!("system:serviceaccount:{sa}"))
            .collect();
        Self {
            client,
            audience,
            allowed,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The proxy's identity (its ServiceAccount username), or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<String, String> {
        // The cache is keyed by the token's digest, so tokens are not kept in memory.
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((result, at)) = self.cache.lock().get(&key)
            && at.elapsed() < CACHE_FOR
        {
            return result.clone();
        }
        let result = self.review(token).await;
        let mut cache = self.cache.lock();
        cache.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
        cache.insert(key, (result.clone(), Instant::now()));
        result
    }

    async fn review(&self, token: &str) -> Result<String, String> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview failed: {e}"))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(status
                .error
                .unwrap_or_else(|| "token not authenticated".to_owned()));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        if !self.allowed.contains(&username) {
            return Err(format!("{username} is not an allowed proxy ServiceAccount"));
        }
        Ok(username)
    }
}

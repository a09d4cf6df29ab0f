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

/// A TokenReview's answer (identity or refusal) and when it was made.
type CachedReview = (Result<String, RefusedProxy>, Instant);

/// Why a caller of the configuration stream was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedProxy {
    /// No `Authorization: Bearer` token.
    #[error("send the proxy's ServiceAccount token as a Bearer token")]
    NoToken,
    /// The API server did not authenticate the token (expired, another audience, garbage).
    #[error("the token is not valid: {0}")]
    NotAuthenticated(String),
    /// A valid token of a ServiceAccount that is not an allowed proxy's.
    #[error("{0} is not an allowed proxy ServiceAccount")]
    NotAllowed(String),
    /// The TokenReview could not be made (the API server is unreachable or refused it): the
    /// token may be fine, so this is not remembered and the proxy is told to retry.
    #[error("cannot verify the token now (TokenReview failed: {0}); retry")]
    ReviewFailed(String),
}

impl RefusedProxy {
    /// The `reason` label of `tollgate_operator_proxy_refusals_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoToken => "no_token",
            Self::NotAuthenticated(_) => "not_authenticated",
            Self::NotAllowed(_) => "not_allowed",
            Self::ReviewFailed(_) => "review_failed",
        }
    }

    /// Whether the caller itself is at fault (401) rather than the operator (503).
    pub fn is_callers_fault(&self) -> bool {
        !matches!(self, Self::ReviewFailed(_))
    }
}

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
    pub async fn verify(&self, token: &str) -> Result<String, RefusedProxy> {
        if token.is_empty() {
            return Err(RefusedProxy::NoToken);
        }
        // The cache is keyed by the token's digest, so tokens are not kept in memory.
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((result, at)) = self.cache.lock().get(&key)
            && at.elapsed() < CACHE_FOR
        {
            return result.clone();
        }
        let result = self.review(token).await;
        // A failed review says nothing about the token: remembered, it locked a proxy out for a
        // minute after the API server had recovered.
        if !matches!(result, Err(RefusedProxy::ReviewFailed(_))) {
            let mut cache = self.cache.lock();
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
            cache.insert(key, (result.clone(), Instant::now()));
        }
        result
    }

    async fn review(&self, token: &str) -> Result<String, RefusedProxy> {
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
            .map_err(|e| RefusedProxy::ReviewFailed(e.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(RefusedProxy::NotAuthenticated(
                status
                    .error
                    .unwrap_or_else(|| "not authenticated".to_owned()),
            ));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        if !self.allowed.contains(&username) {
            return Err(RefusedProxy::NotAllowed(username));
        }
        Ok(username)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client of an API server that is down: a loopback port nothing listens on.
    fn unreachable_api_server() -> kube::Client {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("http://127.0.0.1:{port}").parse().expect("a URL");
        kube::Client::try_from(kube::Config::new(url)).expect("a client")
    }

    /// Regression: a TokenReview that could not be made was remembered like a refusal, and the
    /// proxy stayed locked out for a minute after the API server had recovered.
    #[tokio::test]
    async fn a_review_that_could_not_be_made_is_retried_not_remembered() {
        let auth = ProxyAuthenticator::new(
            unreachable_api_server(),
            "tollgate".to_owned(),
            &["tollgate-system:tollgate-proxy".to_owned()],
        );
        let refused = auth.verify("a-token").await.expect_err("no API server");
        assert!(
            matches!(refused, RefusedProxy::ReviewFailed(_)),
            "{refused:?}"
        );
        assert!(!refused.is_callers_fault(), "answered 503, not 401");
        assert_eq!(refused.label(), "review_failed");
        assert!(auth.cache.lock().is_empty(), "nothing remembered");
    }

    #[tokio::test]
    async fn no_token_is_refused_without_asking_the_api_server() {
        let auth = ProxyAuthenticator::new(unreachable_api_server(), "tollgate".to_owned(), &[]);
        assert_eq!(auth.verify("").await, Err(RefusedProxy::NoToken));
        assert!(RefusedProxy::NoToken.is_callers_fault());
    }
}

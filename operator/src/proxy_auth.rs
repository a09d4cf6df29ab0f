//! Who may subscribe to the configuration stream: proxies present their ServiceAccount token
//! (projected, audience-bound, rotated by the kubelet), which the operator verifies with a
//! TokenReview. No shared secret to distribute or rotate, and a stolen token expires within the
//! hour. Results are cached for a minute.
//!
//! - A central proxy's ServiceAccount is one of the allowed ones: it is the fleet.
//! - A sidecar's token is bound to its pod (the API server names the pod in the review): it is
//!   that pod, and receives that pod's share of the configuration, read from the pod's labels
//!   and annotations when its stream opens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tollgate_crds::scope::{Direction, Workload};

use crate::inject::annotations as a;
use crate::inject::sidecar::{CONTAINER, Mode, wanted};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

const CACHE_FOR: Duration = Duration::from_secs(60);

/// A TokenReview's answer (identity or refusal) and when it was made.
type CachedReview = (Result<Caller, RefusedProxy>, Instant);

/// The key of `user.extra` in which the API server names the pod a token is bound to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The same for the pod's uid (a pod deleted and created again under its name is another pod).
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// Who is calling the configuration stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A central proxy, by its ServiceAccount username.
    Fleet(String),
    /// A sidecar: the pod its token is bound to.
    Pod {
        /// The pod's namespace (its ServiceAccount's).
        namespace: String,
        /// The pod's name.
        name: String,
        /// The pod's uid.
        uid: String,
    },
}

impl Caller {
    /// For logs and the registry: the ServiceAccount, or `pod NAMESPACE/NAME`.
    pub fn identity(&self) -> String {
        match self {
            Self::Fleet(username) => username.clone(),
            Self::Pod {
                namespace, name, ..
            } => format!("pod {namespace}/{name}"),
        }
    }

    /// Whether the caller may use the proxy name `proxy` (in the stream, acks and usage
    /// reports): a sidecar only its own, `NAMESPACE/POD`, so it can neither take a central
    /// proxy's place in the registry nor overwrite another's usage.
    pub fn may_use_name(&self, proxy: &str) -> bool {
        match self {
            Self::Fleet(_) => true,
            Self::Pod {
                namespace, name, ..
            } => proxy.split_once('/') == Some((namespace.as_str(), name.as_str())),
        }
    }

    /// The namespace whose tenants a caller's usage reports may speak for (`None`: any).
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::Fleet(_) => None,
            Self::Pod { namespace, .. } => Some(namespace),
        }
    }
}

/// Why a caller of the configuration stream was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedProxy {
    /// No `Authorization: Bearer` token.
    #[error("send the proxy's ServiceAccount token as a Bearer token")]
    NoToken,
    /// The API server did not authenticate the token (expired, another audience, garbage).
    #[error("the token is not valid: {0}")]
    NotAuthenticated(String),
    /// A valid token of a ServiceAccount that is not an allowed proxy's, and not bound to a pod.
    #[error("{0} is not an allowed proxy ServiceAccount, and its token is not bound to a pod")]
    NotAllowed(String),
    /// A pod's token, but the pod has no injected sidecar, or its annotations no longer agree
    /// with the sidecar it runs.
    #[error("{0}")]
    NotASidecar(String),
    /// The pod the token is bound to could not be read: the operator's fault (503), not the
    /// sidecar's, and not remembered.
    #[error(
        "cannot read pod {0} now ({1}); retry (the operator needs `get` on pods: deploy/operator-rbac.yaml)"
    )]
    PodReadFailed(String, String),
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
            Self::NotASidecar(_) => "not_a_sidecar",
            Self::PodReadFailed(..) => "pod_read_failed",
            Self::ReviewFailed(_) => "review_failed",
        }
    }

    /// Whether the caller itself is at fault (401) rather than the operator (503).
    pub fn is_callers_fault(&self) -> bool {
        !matches!(self, Self::ReviewFailed(_) | Self::PodReadFailed(..))
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

    /// Who presents `token`, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Caller, RefusedProxy> {
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

    async fn review(&self, token: &str) -> Result<Caller, RefusedProxy> {
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
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if self.allowed.contains(&username) {
            return Ok(Caller::Fleet(username));
        }
        let extra = user.extra.unwrap_or_default();
        let one = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        let namespace = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|sa| sa.split_once(':'))
            .map(|(ns, _)| ns.to_owned());
        match (namespace, one(POD_NAME_EXTRA), one(POD_UID_EXTRA)) {
            (Some(namespace), Some(name), Some(uid)) => Ok(Caller::Pod {
                namespace,
                name,
                uid,
            }),
            _ => Err(RefusedProxy::NotAllowed(username)),
        }
    }

    /// The workload a sidecar serves, from its pod as it is now: the pod must be the one the
    /// token is bound to (same uid) and carry an injected sidecar.
    pub async fn workload_of(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Workload, RefusedProxy> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = pods
            .get_opt(name)
            .await
            .map_err(|e| RefusedProxy::PodReadFailed(format!("{namespace}/{name}"), e.to_string()))?
            .filter(|p| p.metadata.uid.as_deref() == Some(uid))
            .ok_or_else(|| {
                RefusedProxy::NotAuthenticated(format!(
                    "pod {namespace}/{name} (uid {uid}), which the token is bound to, no longer exists"
                ))
            })?;
        workload(namespace, &pod)
    }
}

/// A pod's workload, from its labels and its sidecar's annotations, which must agree with the
/// sidecar container it runs (a pod's containers cannot change; its annotations can).
pub fn workload(namespace: &str, pod: &Pod) -> Result<Workload, RefusedProxy> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let refuse = |why: String| {
        Err(RefusedProxy::NotASidecar(format!(
            "pod {namespace}/{name}: {why}"
        )))
    };
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER && c.restart_policy.as_deref() == Some("Always"));
    let (Some(sidecar), true) = (sidecar, annotations.contains_key(a::INJECTED)) else {
        return refuse(format!(
            "no injected Tollgate sidecar (a native sidecar named {CONTAINER} and the {} annotation)",
            a::INJECTED
        ));
    };
    // On the node's network, 127.0.0.1 is the node's: an egress identity would be anyone's there.
    if spec.host_network == Some(true) {
        return refuse("a sidecar on the host's network (hostNetwork) is not served".to_owned());
    }
    let arg = |flag: &str| {
        sidecar
            .args
            .iter()
            .flatten()
            .find_map(|a| a.strip_prefix(flag)?.strip_prefix('='))
            .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok())
    };
    let (listen, admin) = (arg("--listen"), arg("--admin-listen"));
    let mode = match wanted(&annotations) {
        Ok(Some(wanted)) => wanted.mode,
        Ok(None) => {
            return Err(RefusedProxy::NotASidecar(format!(
                "pod {namespace}/{name} no longer says {}: ingress or egress",
                a::INJECT
            )));
        }
        Err(e) => {
            return Err(RefusedProxy::NotASidecar(format!(
                "pod {namespace}/{name}: {e}"
            )));
        }
    };
    match &mode {
        Mode::Egress { .. } if !listen.is_some_and(|l| l.ip().is_loopback()) => {
            return refuse(format!(
                "its annotations say egress, but its sidecar listens on {listen:?}, not on localhost"
            ));
        }
        Mode::Ingress { app, .. } if [listen, admin].iter().flatten().any(|a| a.port() == *app) => {
            return refuse(format!(
                "{} {app} is one of the sidecar's own ports",
                a::APP_PORT
            ));
        }
        _ => {}
    }
    Ok(Workload {
        namespace: namespace.to_owned(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        direction: match mode {
            Mode::Ingress { app, .. } => Direction::Ingress { app_port: app },
            Mode::Egress { tenant, .. } => Direction::Egress { tenant },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::unreachable_api_server;

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

    /// A pod with `annotations` whose native sidecar listens on `listen` (admin on 15090).
    fn pod(annotations: &[(&str, &str)], listen: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "reports-7d9", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "reports"},
                "annotations": annotations.iter().copied().collect::<std::collections::BTreeMap<_, _>>(),
            },
            "spec": {
                "initContainers": [{"name": "tollgate-proxy", "restartPolicy": "Always",
                                    "args": [format!("--listen={listen}"), "--admin-listen=0.0.0.0:15090"]}],
                "containers": [{"name": "app"}],
            }
        }))
        .expect("a pod")
    }

    const INGRESS: [(&str, &str); 4] = [
        (a::INJECT, "ingress"),
        (a::LISTEN_PORT, "8080"),
        (a::APP_PORT, "8081"),
        (a::INJECTED, "ingress listen=8080 app=8081"),
    ];
    const EGRESS: [(&str, &str); 3] = [
        (a::INJECT, "egress"),
        (a::TENANT, "team-ml"),
        (a::INJECTED, "egress listen=15080 tenant=team-ml"),
    ];

    #[test]
    fn a_sidecars_workload_comes_from_its_pods_labels_and_annotations() {
        let reports = workload("shop", &pod(&INGRESS, "0.0.0.0:8080")).expect("a sidecar");
        assert_eq!(
            reports.labels.get("app").map(String::as_str),
            Some("reports")
        );
        assert_eq!(reports.direction, Direction::Ingress { app_port: 8081 });
        assert_eq!(
            workload("shop", &pod(&EGRESS, "127.0.0.1:15080"))
                .expect("a sidecar")
                .direction,
            Direction::Egress {
                tenant: "team-ml".into()
            }
        );
    }

    /// Annotations can be edited on a running pod, containers cannot: a pod is served only when
    /// they agree with the sidecar it runs.
    #[test]
    fn a_pod_whose_annotations_disagree_with_its_sidecar_is_refused() {
        let refused = |pod: Pod, says: &str| {
            let why = workload("shop", &pod).expect_err("refused");
            assert_eq!(why.label(), "not_a_sidecar");
            assert!(why.is_callers_fault());
            let message = why.to_string();
            assert!(
                message.contains("shop/reports-7d9") && message.contains(says),
                "{message}"
            );
        };
        // Never seen by the webhook: annotations alone, or a sidecar without the annotation.
        let mut no_sidecar = pod(&INGRESS, "0.0.0.0:8080");
        no_sidecar.spec.as_mut().expect("spec").init_containers = None;
        refused(no_sidecar, "no injected Tollgate sidecar");
        refused(
            pod(&INGRESS[..3], "0.0.0.0:8080"),
            "no injected Tollgate sidecar",
        );
        // Switched to egress after an ingress sidecar (listening on every address) was injected.
        refused(pod(&EGRESS, "0.0.0.0:8080"), "not on localhost");
        // The app port moved onto the sidecar's admin port (its /usage is for loopback callers).
        let mut onto_admin = INGRESS;
        onto_admin[2] = (a::APP_PORT, "15090");
        refused(
            pod(&onto_admin, "0.0.0.0:8080"),
            "one of the sidecar's own ports",
        );
        let mut on_host = pod(&EGRESS, "127.0.0.1:15080");
        on_host.spec.as_mut().expect("spec").host_network = Some(true);
        refused(on_host, "hostNetwork");
    }

    #[test]
    fn a_sidecar_may_use_only_its_own_name_and_namespace() {
        let sidecar = Caller::Pod {
            namespace: "shop".into(),
            name: "reports-7d9".into(),
            uid: "u-1".into(),
        };
        assert!(sidecar.may_use_name("shop/reports-7d9"));
        for other in [
            "reports-7d9",
            "tollgate-proxy-0",
            "other/reports-7d9",
            "shop/reports-7d9/x",
        ] {
            assert!(!sidecar.may_use_name(other), "{other}");
        }
        assert_eq!(sidecar.namespace(), Some("shop"));
        let fleet = Caller::Fleet("system:serviceaccount:tollgate-system:tollgate-proxy".into());
        assert!(fleet.may_use_name("tollgate-proxy-0"));
        assert_eq!(fleet.namespace(), None);
    }

    #[tokio::test]
    async fn no_token_is_refused_without_asking_the_api_server() {
        let auth = ProxyAuthenticator::new(unreachable_api_server(), "tollgate".to_owned(), &[]);
        assert_eq!(auth.verify("").await, Err(RefusedProxy::NoToken));
        assert!(RefusedProxy::NoToken.is_callers_fault());
    }
}

//! The webhook endpoint: `POST /inject` with an AdmissionReview of a Pod, answered with the JSON
//! patch that adds the sidecar, nothing, or a refusal naming the annotation at fault.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use super::sidecar::{self, Template};
use crate::cli::InjectionArgs;
use crate::metrics::OperatorMetrics;

/// The largest AdmissionReview read: the API server's own limit on a request body is 3 MiB.
const MAX_REVIEW: usize = 4 * 1024 * 1024;
/// How long the body may take to arrive (the API server sends it at once; a client that
/// trickles it is not the API server).
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers the API server's admission calls.
#[derive(Debug)]
pub struct Webhook {
    /// The sidecar every injection adds, before the pod's overrides.
    pub template: Template,
    /// Namespaces never injected, whatever the webhook configuration says (kube-system, the
    /// operator's own).
    pub excluded_namespaces: Vec<String>,
    /// Metrics.
    pub metrics: OperatorMetrics,
}

/// What happened to one pod, the `result` label of `tollgate_operator_injections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added.
    Injected,
    /// Nothing to do: not annotated, already injected, not a creation, an excluded namespace.
    Skipped,
    /// Refused: the annotations ask for something that cannot be given.
    Denied,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
        }
    }
}

impl Webhook {
    /// The webhook for `args`, its sidecars trusting `ca_pem` (the operator's serving CA).
    pub fn from_args(
        args: &InjectionArgs,
        token_audience: &str,
        operator_namespace: &str,
        ca_pem: &[u8],
        metrics: OperatorMetrics,
    ) -> anyhow::Result<Self> {
        let (Some(image), Some(control_plane)) = (&args.sidecar_image, &args.sidecar_control_plane)
        else {
            anyhow::bail!(
                "--webhook-listen needs --sidecar-image (the proxy image) and --sidecar-control-plane (the config stream's URL as sidecars reach it)"
            );
        };
        if args.sidecar_resources.len() > 4 {
            anyhow::bail!(
                "--sidecar-resources takes at most 4 values: requests.cpu, requests.memory, limits.cpu, limits.memory"
            );
        }
        let mut resources: [Option<String>; 4] = Default::default();
        for (slot, value) in resources.iter_mut().zip(&args.sidecar_resources) {
            let value = value.trim();
            *slot = (!value.is_empty()).then(|| value.to_owned());
        }
        Ok(Self {
            template: Template {
                image: image.clone(),
                image_pull_policy: args.sidecar_image_pull_policy.clone(),
                control_plane: control_plane.clone(),
                ca_pem: String::from_utf8_lossy(ca_pem).into_owned(),
                token_audience: token_audience.to_owned(),
                resources,
                admin_port: args.sidecar_admin_port,
                egress_port: args.sidecar_egress_port,
            },
            excluded_namespaces: [
                "kube-system",
                "kube-public",
                "kube-node-lease",
                operator_namespace,
            ]
            .map(str::to_owned)
            .to_vec(),
            metrics,
        })
    }

    /// Handles one HTTP request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if (req.method(), req.uri().path()) != (&Method::POST, "/inject") {
            return text(
                StatusCode::NOT_FOUND,
                "POST /inject with an AdmissionReview\n",
            );
        }
        let read = Limited::new(req.into_body(), MAX_REVIEW).collect();
        let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => return text(StatusCode::BAD_REQUEST, "body too large or unreadable\n"),
            Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "the body took too long\n"),
        };
        let review: AdmissionReview<Pod> = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("not an AdmissionReview of a Pod: {e}\n"),
                );
            }
        };
        let request: AdmissionRequest<Pod> = match review.try_into() {
            Ok(r) => r,
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "the AdmissionReview has no request\n",
                );
            }
        };
        let (response, outcome) = self.review(&request);
        self.metrics
            .injections
            .with_label_values(&[outcome.label()])
            .inc();
        let body = serde_json::to_vec(&response.into_review()).unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }

    /// The answer for one pod.
    pub fn review(&self, req: &AdmissionRequest<Pod>) -> (AdmissionResponse, Outcome) {
        let allowed = AdmissionResponse::from(req);
        let namespace = req.namespace.as_deref().unwrap_or_default();
        let Some(pod) = req.object.as_ref() else {
            return (allowed, Outcome::Skipped);
        };
        if req.operation != Operation::Create
            || self.excluded_namespaces.iter().any(|n| n == namespace)
        {
            return (allowed, Outcome::Skipped);
        }
        let name = pod
            .metadata
            .name
            .as_deref()
            .or(pod.metadata.generate_name.as_deref())
            .unwrap_or("-");
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let wanted = match sidecar::wanted(&annotations) {
            Ok(Some(wanted)) => wanted,
            Ok(None) => return (allowed, Outcome::Skipped),
            Err(e) => return self.denied(allowed, namespace, name, &e),
        };
        let ops = match sidecar::patch(&self.template, pod, &wanted) {
            Ok(ops) if ops.is_empty() => return (allowed, Outcome::Skipped),
            Ok(ops) => ops,
            Err(e) => return self.denied(allowed, namespace, name, &e),
        };
        let patch: json_patch::Patch = match serde_json::from_value(serde_json::Value::Array(ops)) {
            Ok(p) => p,
            Err(e) => {
                // The operations are built here: a failure is a bug, said as such.
                tracing::error!(%namespace, pod = name, error = %e, "cannot encode the sidecar patch");
                return (
                    allowed.deny(format!("tollgate: cannot build the sidecar patch: {e}")),
                    Outcome::Denied,
                );
            }
        };
        match allowed.clone().with_patch(patch) {
            Ok(resp) => {
                tracing::info!(%namespace, pod = name, mode = ?wanted.mode, "sidecar injected");
                (resp, Outcome::Injected)
            }
            Err(e) => (
                allowed.deny(format!("tollgate: cannot encode the sidecar patch: {e}")),
                Outcome::Denied,
            ),
        }
    }

    fn denied(
        &self,
        allowed: AdmissionResponse,
        namespace: &str,
        pod: &str,
        e: &sidecar::InjectError,
    ) -> (AdmissionResponse, Outcome) {
        tracing::info!(%namespace, pod, reason = %e, "pod refused: its sidecar annotations are wrong");
        (
            allowed.deny(format!("tollgate sidecar: {e}")),
            Outcome::Denied,
        )
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp
}

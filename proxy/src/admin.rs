//! The admin server: `/metrics` (Prometheus text format), `/healthz` (the process is up),
//! `/readyz` (a configuration is loaded), `/usage` (current counters as JSON).
//!
//! In a cluster this port is open to Prometheus and the kubelet, but `/usage` names every tenant,
//! plan and figure: it answers loopback clients only (`kubectl port-forward` arrives on loopback
//! inside the pod). The operator gets the same figures over the config stream, so nothing else
//! needs it. Connections are HTTP/1.1, one request each (a scrape every few seconds gains nothing
//! from keep-alive, and an idle connection cannot hold a slot), with a head timeout and a bounded
//! life, a bounded number at once (`tollgate_crds::process::serve_admin`).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use jiff::Timestamp;
use prometheus::Registry;
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::net::TcpListener;
use tollgate_crds::process::{AdminRequest, metrics_response, serve_admin, text_response};

use crate::pipeline::Proxy;
use crate::quota::CounterStore;

/// Shared state of the admin endpoints.
#[derive(Debug)]
pub struct Admin<S> {
    /// The proxy.
    pub proxy: Arc<Proxy<S>>,
    /// The metrics registry.
    pub registry: Registry,
    /// Set once a configuration is loaded.
    pub ready: Arc<AtomicBool>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageReport {
    config_version: u64,
    /// Quota counters.
    usage: Vec<UsageEntry>,
    /// Requests under plans that meter usage, this month: tokens by type and cost.
    calls: Vec<tollgate_crds::stream::CallUsageRecord>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageEntry {
    tenant: String,
    plan: String,
    quota: String,
    metric: String,
    used: Decimal,
    limit: Decimal,
    period: String,
    period_start: Timestamp,
    period_end: Timestamp,
}

/// Whether a connection from `peer` to `local` may read `/usage`: made on loopback at both
/// ends, from the proxy's own host (or pod). The local end matters too: a mesh sidecar (Istio's
/// inbound passthrough) connects from 127.0.0.6 to the pod's own address on behalf of any
/// client in the mesh.
fn may_read_usage(peer: IpAddr, local: IpAddr) -> bool {
    peer.to_canonical().is_loopback() && local.to_canonical().is_loopback()
}

impl<S: CounterStore> Admin<S> {
    fn respond(&self, req: AdminRequest<'_>) -> Response<Full<Bytes>> {
        match req.path {
            "/metrics" => metrics_response(&self.registry),
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" if self.ready.load(Ordering::Acquire) => {
                text(StatusCode::OK, "ready\n".into())
            }
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no configuration loaded yet\n".into(),
            ),
            "/usage" if !may_read_usage(req.peer, req.local) => text(
                StatusCode::FORBIDDEN,
                "/usage lists every tenant and answers loopback clients only: read it from the \
                 proxy's host, or through `kubectl port-forward`\n"
                    .into(),
            ),
            "/usage" => {
                let report = self.usage(Timestamp::now());
                let mut resp = Response::new(Full::new(Bytes::from(
                    serde_json::to_vec_pretty(&report).unwrap_or_default(),
                )));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                resp
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz or /usage\n".into(),
            ),
        }
    }

    fn usage(&self, now: Timestamp) -> UsageReport {
        let config = self.proxy.config();
        let mut usage = Vec::new();
        for row in self.proxy.store().usage() {
            let Some(plan) = config.plans.values().find(|p| *p.id == row.plan) else {
                continue;
            };
            let Some(quota) = plan.plan.quotas.iter().find(|q| q.name == row.quota) else {
                continue;
            };
            // A counter whose period ended reads as the new period, at zero.
            let (used, start, end) = if now >= row.period_end {
                let w = tollgate_crds::period::window(quota.period, &plan.tz, now);
                (Decimal::ZERO, w.start, w.end)
            } else {
                (row.used, row.period_start, row.period_end)
            };
            usage.push(UsageEntry {
                tenant: row.tenant,
                plan: row.plan,
                quota: row.quota,
                metric: format!("{:?}", quota.metric),
                used,
                limit: quota.limit,
                period: format!("{:?}", quota.period),
                period_start: start,
                period_end: end,
            });
        }
        UsageReport {
            config_version: config.version,
            usage,
            calls: self.proxy.call_usage(now),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    text_response(status, body)
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve<S: CounterStore>(listener: TcpListener, admin: Arc<Admin<S>>) {
    serve_admin(listener, move |req| {
        let resp = admin.respond(req);
        async move { resp }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_for_loopback_clients_only() {
        let ip = |text: &str| -> IpAddr { text.parse().expect("address") };
        for allowed in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(may_read_usage(ip(allowed), ip("127.0.0.1")), "{allowed}");
        }
        for refused in [
            "10.1.2.3",
            "192.168.0.7",
            "0.0.0.0",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!may_read_usage(ip(refused), ip("127.0.0.1")), "{refused}");
        }
        // A sidecar's passthrough: from loopback, to the pod's own address.
        assert!(!may_read_usage(ip("127.0.0.6"), ip("10.244.1.7")));
    }
}

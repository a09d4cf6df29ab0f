//! The admin server: `/metrics` (Prometheus text format), `/healthz` (the process is up),
//! `/readyz` (a configuration is loaded), `/usage` (current counters as JSON).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jiff::Timestamp;
use prometheus::{Encoder, Registry, TextEncoder};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::proxy::Proxy;
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
    usage: Vec<UsageEntry>,
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

impl<S: CounterStore> Admin<S> {
    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/metrics" => {
                let mut body = Vec::new();
                let encoder = TextEncoder::new();
                if let Err(e) = encoder.encode(&self.registry.gather(), &mut body) {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("encoding metrics: {e}"),
                    );
                }
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                if let Ok(v) = encoder.format_type().parse() {
                    resp.headers_mut().insert(header::CONTENT_TYPE, v);
                }
                resp
            }
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" if self.ready.load(Ordering::Acquire) => {
                text(StatusCode::OK, "ready\n".into())
            }
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no configuration loaded yet\n".into(),
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
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve<S: CounterStore>(listener: TcpListener, admin: Arc<Admin<S>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.respond(&req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The address actually bound (for logs when port 0 was asked).
pub fn bound(listener: &TcpListener, asked: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(asked)
}

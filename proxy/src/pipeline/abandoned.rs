//! Requests their clients give up on before the answer: an HTTP/2 stream reset, a gRPC deadline
//! the client enforced first, a connection closed while hyper waited for the backend (or one the
//! proxy dropped: a client that stopped reading, the end of the drain timeout). The request's
//! future is dropped mid-way, and without this it would leave no access-log line and no metric.
//! [`Watch`] writes them when dropped armed: status 499 and the reason `client-closed` (nginx's
//! name for it). The HTTP/1.1 engine waits for every answer it started, so its requests never
//! are. The request stays charged, as it was admitted (a
//! metered stream cut by its client is charged alike, see `llm::meter`).

use std::sync::Arc;
use std::time::Instant;

use crate::config::{RouteEntry, TenantEntry};
use crate::telemetry::access_log::{AccessLog, AccessRecord};
use crate::telemetry::metrics::ProxyMetrics;

/// The status logged for a request its client gave up on (nginx's).
pub const CLIENT_CLOSED: u16 = 499;
/// The reason label and problem slug logged with it.
pub const REASON: &str = "client-closed";

/// Armed while a request waits for its answer; [`Watch::answered`] disarms it.
#[derive(Debug)]
pub struct Watch<'a> {
    /// Where the line goes.
    access_log: &'a AccessLog,
    /// Where it is counted.
    metrics: &'a ProxyMetrics,
    /// The request's route, if one matched.
    route: Option<&'a Arc<RouteEntry>>,
    /// The request's tenant, if authenticated.
    tenant: Option<&'a Arc<TenantEntry>>,
    /// The client's address.
    client: &'a str,
    /// The request's method.
    method: &'a str,
    /// The request's path.
    path: &'a str,
    /// When it arrived.
    time: jiff::Timestamp,
    /// When it arrived, for its latency.
    started: Instant,
    armed: bool,
}

impl<'a> Watch<'a> {
    /// Starts watching a request (see the fields; its route and tenant come with
    /// [`Watch::found`]).
    pub fn new(
        access_log: &'a AccessLog,
        metrics: &'a ProxyMetrics,
        client: &'a str,
        method: &'a str,
        path: &'a str,
        (time, started): (jiff::Timestamp, Instant),
    ) -> Self {
        Self {
            access_log,
            metrics,
            route: None,
            tenant: None,
            client,
            method,
            path,
            time,
            started,
            armed: true,
        }
    }

    /// The request's route and tenant, once the checks found them.
    pub fn found(
        &mut self,
        route: Option<&'a Arc<RouteEntry>>,
        tenant: Option<&'a Arc<TenantEntry>>,
    ) {
        self.route = route;
        self.tenant = tenant;
    }

    /// The request got its answer: it is logged the usual way.
    pub fn answered(mut self) {
        self.armed = false;
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let latency = self.started.elapsed();
        let route = self.route.map(|r| &*r.id);
        match self.route {
            Some(entry) => entry.telemetry.observe(
                self.metrics,
                &entry.id,
                CLIENT_CLOSED,
                REASON,
                latency.as_secs_f64(),
            ),
            None => self
                .metrics
                .requests
                .with_label_values(&["none", "499", REASON])
                .inc(),
        }
        if let (Some(per_tenant), Some(tenant)) = (&self.metrics.tenant_requests, self.tenant) {
            per_tenant.with_label_values(&[&tenant.id, REASON]).inc();
        }
        self.access_log.record(&AccessRecord {
            time: self.time,
            client: self.client,
            method: self.method,
            path: self.path,
            route,
            tenant: self.tenant.map(|t| &*t.id),
            status: CLIENT_CLOSED,
            problem: Some(REASON),
            latency,
            bytes: None,
            call: None,
        });
    }
}

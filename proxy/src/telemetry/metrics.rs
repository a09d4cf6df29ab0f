//! Prometheus metrics of the proxy, registered into a registry passed down from `main`.
//!
//! Label sets are bounded: `route` is a configured ApiRoute (or `none`), `reason` a problem slug or
//! `ok`, `status` an HTTP status code, `type` a token type, `currency` a plan's currency. Tenants
//! are not a label (unbounded) unless per-tenant series are asked for; `/usage` serves them.

use std::sync::OnceLock;

use parking_lot::Mutex;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Every metric the proxy exports.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// Requests by route, status and reason.
    pub requests: IntCounterVec,
    /// Requests answered with a problem, by status and reason (402s, 429s, 403s...).
    pub rejections: IntCounterVec,
    /// Request latency by route, from the first byte read to the response head written.
    pub duration: HistogramVec,
    /// Backend response time.
    pub upstream_duration: Histogram,
    /// WebSocket connections open now.
    pub websockets_open: IntGauge,
    /// WebSocket connections by how they ended.
    pub websockets: IntCounterVec,
    /// How long WebSocket connections stayed open.
    pub websocket_duration: Histogram,
    /// Bytes relayed on WebSocket connections, by route and direction.
    pub websocket_bytes: IntCounterVec,
    /// LLM calls sent on to a route's next backend, by route and why (the status, `timeout`,
    /// `unreachable`).
    pub fallbacks: IntCounterVec,
    /// Version of the applied configuration.
    pub config_version: IntGauge,
    /// Configuration loads by result.
    pub config_reloads: IntCounterVec,
    /// Objects left out of the configuration (invalid or conflicting).
    pub config_rejected_objects: IntGauge,
    /// Open client connections.
    pub active_connections: IntGauge,
    /// Client connections by how they ended.
    pub connections: IntCounterVec,
    /// Client connections moved from the HTTP/1.1 engine to hyper.
    pub handoffs_to_hyper: IntCounter,
    /// Times the listener stopped accepting at `--max-connections`.
    pub connections_at_limit: IntCounter,
    /// Access-log lines dropped because the writer could not keep up, or stdout refused them.
    pub access_log_dropped: IntCounter,
    /// Counter or snapshot persistence failures.
    pub state_flush_errors: IntCounter,
    /// 1 while subscribed to the operator's configuration stream (fleet mode).
    pub control_plane_connected: IntGauge,
    /// Requests per tenant and status class (opt-in: one series per tenant).
    pub tenant_requests: Option<IntCounterVec>,
    /// Tokens of metered calls by route and type (input, cached_input, cache_write_input,
    /// output, reasoning).
    pub llm_tokens: IntCounterVec,
    /// Cost of metered calls by route and currency, in millionths of the currency unit (a
    /// counter of whole numbers: money is never a float here).
    pub llm_cost_micros: IntCounterVec,
    /// The same two per tenant (opt-in with the per-tenant requests).
    pub tenant_llm: Option<(IntCounterVec, IntCounterVec)>,
}

/// Token types, as the `type` label names them, in the order of [`token_values`].
pub const TOKEN_TYPES: [&str; 5] = [
    "input",
    "cached_input",
    "cache_write_input",
    "output",
    "reasoning",
];

/// The counts of `tokens` in the order of [`TOKEN_TYPES`].
pub fn token_values(tokens: &tollgate_crds::stream::TokenCounts) -> [u64; 5] {
    [
        tokens.input,
        tokens.cached_input,
        tokens.cache_write_input,
        tokens.output,
        tokens.reasoning,
    ]
}

/// `cost` in whole millionths, rounded to the nearest (half away from zero).
pub fn micros(cost: rust_decimal::Decimal) -> u64 {
    use rust_decimal::prelude::ToPrimitive;
    (cost * rust_decimal::Decimal::from(1_000_000))
        .round()
        .to_u64()
        .unwrap_or(0)
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl ProxyMetrics {
    /// Creates the metrics and registers them in `registry`; `per_tenant` adds the per-tenant
    /// series (as many as there are tenants: opt in only when your Prometheus can take it).
    pub fn new(registry: &Registry, per_tenant: bool) -> prometheus::Result<Self> {
        let tenant_requests = if per_tenant {
            let c = IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_tenant_requests_total",
                    "Requests per tenant and outcome (ok, or the problem type).",
                ),
                &["tenant", "reason"],
            )?;
            registry.register(Box::new(c.clone()))?;
            Some(c)
        } else {
            None
        };
        let tenant_llm = if per_tenant {
            let tokens = IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_tenant_llm_tokens_total",
                    "Tokens of metered calls per tenant and type.",
                ),
                &["tenant", "type"],
            )?;
            let cost = IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_tenant_llm_cost_micros_total",
                    "Cost of metered calls per tenant and currency, in millionths of the currency unit.",
                ),
                &["tenant", "currency"],
            )?;
            registry.register(Box::new(tokens.clone()))?;
            registry.register(Box::new(cost.clone()))?;
            Some((tokens, cost))
        } else {
            None
        };
        let m = Self {
            tenant_requests,
            tenant_llm,
            llm_tokens: IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_llm_tokens_total",
                    "Tokens of metered calls by route and type (input, cached_input, cache_write_input, output, reasoning), as charged.",
                ),
                &["route", "type"],
            )?,
            llm_cost_micros: IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_llm_cost_micros_total",
                    "Cost of metered calls by route and currency, in millionths of the currency unit.",
                ),
                &["route", "currency"],
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_requests_total",
                    "Requests handled, by route, HTTP status and reason (a problem type, or ok).",
                ),
                &["route", "status", "reason"],
            )?,
            rejections: IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_rejections_total",
                    "Requests answered with a problem (401, 402, 403, 404, 429, 5xx), by status and reason.",
                ),
                &["status", "reason"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "tollgate_proxy_request_duration_seconds",
                    "Time from request to response head, by route.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            )?,
            upstream_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_proxy_upstream_duration_seconds",
                    "Time until the backend's response head.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            websockets_open: IntGauge::new(
                "tollgate_proxy_websocket_connections_open",
                "WebSocket connections open now (upgraded and relayed).",
            )?,
            websockets: IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_websocket_connections_total",
                    "WebSocket connections by how they ended: client_closed, backend_closed, idle_timeout, lifetime_limit, shutdown or upgrade_failed.",
                ),
                &["end"],
            )?,
            websocket_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_proxy_websocket_duration_seconds",
                    "How long WebSocket connections stayed open.",
                )
                .buckets(vec![
                    1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0,
                ]),
            )?,
            websocket_bytes: IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_websocket_bytes_total",
                    "Bytes relayed on WebSocket connections, by route and direction (client_to_backend, backend_to_client).",
                ),
                &["route", "direction"],
            )?,
            fallbacks: IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_backend_fallbacks_total",
                    "LLM calls sent on to the route's next backend, by route and why: the status the backend answered (429, 5xx), timeout or unreachable.",
                ),
                &["route", "reason"],
            )?,
            config_version: IntGauge::new(
                "tollgate_proxy_config_version",
                "Version of the configuration being enforced.",
            )?,
            config_reloads: IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_config_reloads_total",
                    "Configuration loads, by result (success or error).",
                ),
                &["result"],
            )?,
            config_rejected_objects: IntGauge::new(
                "tollgate_proxy_config_rejected_objects",
                "Objects left out of the current configuration because they are invalid or conflict.",
            )?,
            active_connections: IntGauge::new(
                "tollgate_proxy_active_connections",
                "Open client connections.",
            )?,
            connections: IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_connections_total",
                    "Client connections by how they ended: client_closed, header_timeout, idle_timeout, send_timeout, shutdown, closed_after_response, error or tls_failed.",
                ),
                &["outcome"],
            )?,
            handoffs_to_hyper: IntCounter::new(
                "tollgate_proxy_connection_handoffs_total",
                "Client connections moved from the HTTP/1.1 engine to hyper (HTTP/2, a request body, HTTP/1.0 or an upgrade).",
            )?,
            connections_at_limit: IntCounter::new(
                "tollgate_proxy_connections_at_limit_total",
                "Times the listener stopped accepting because --max-connections connections were open.",
            )?,
            access_log_dropped: IntCounter::new(
                "tollgate_proxy_access_log_dropped_total",
                "Access-log lines dropped because stdout could not keep up, or refused them (a closed pipe).",
            )?,
            state_flush_errors: IntCounter::new(
                "tollgate_proxy_state_flush_errors_total",
                "Failures writing counters or the configuration snapshot to the state dir.",
            )?,
            control_plane_connected: IntGauge::new(
                "tollgate_proxy_control_plane_connected",
                "1 while subscribed to the operator's configuration stream (fleet mode).",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.llm_tokens.clone()))?;
        registry.register(Box::new(m.llm_cost_micros.clone()))?;
        registry.register(Box::new(m.rejections.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.upstream_duration.clone()))?;
        registry.register(Box::new(m.fallbacks.clone()))?;
        registry.register(Box::new(m.websockets_open.clone()))?;
        registry.register(Box::new(m.websockets.clone()))?;
        registry.register(Box::new(m.websocket_duration.clone()))?;
        registry.register(Box::new(m.websocket_bytes.clone()))?;
        registry.register(Box::new(m.config_version.clone()))?;
        registry.register(Box::new(m.config_reloads.clone()))?;
        registry.register(Box::new(m.config_rejected_objects.clone()))?;
        registry.register(Box::new(m.active_connections.clone()))?;
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.handoffs_to_hyper.clone()))?;
        registry.register(Box::new(m.connections_at_limit.clone()))?;
        registry.register(Box::new(m.access_log_dropped.clone()))?;
        registry.register(Box::new(m.state_flush_errors.clone()))?;
        registry.register(Box::new(m.control_plane_connected.clone()))?;
        // process_resident_memory_bytes, process_cpu_seconds_total, open fds (against
        // --max-connections): what sizing and the memory alerts read.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// Counts a client connection's end (once per connection, never per request).
    pub fn connection_ended(&self, outcome: &str) {
        self.connections.with_label_values(&[outcome]).inc();
    }

    /// Counts a WebSocket connection that ended (`end`: see `websocket::End::label`).
    pub fn websocket_ended(&self, end: &str) {
        self.websockets.with_label_values(&[end]).inc();
    }
}

/// One route's metric children, resolved on first use so that the hot path does not hash label
/// values on every request.
#[derive(Debug, Default)]
pub struct RouteTelemetry {
    duration: OnceLock<Histogram>,
    requests: Mutex<Vec<(u16, &'static str, IntCounter)>>,
}

impl RouteTelemetry {
    /// Counts one request of `route` with `status` and `reason`, and its latency.
    pub fn observe(
        &self,
        metrics: &ProxyMetrics,
        route: &str,
        status: u16,
        reason: &'static str,
        seconds: f64,
    ) {
        self.duration
            .get_or_init(|| metrics.duration.with_label_values(&[route]))
            .observe(seconds);
        let mut requests = self.requests.lock();
        if let Some((_, _, counter)) = requests
            .iter()
            .find(|(s, r, _)| *s == status && *r == reason)
        {
            counter.inc();
            return;
        }
        let counter = metrics
            .requests
            .with_label_values(&[route, &status.to_string(), reason]);
        counter.inc();
        requests.push((status, reason, counter));
    }
}

/// Metrics of the Redis counter store.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Redis calls, by operation and result.
    pub round_trips: IntCounterVec,
    /// Redis call latency.
    pub latency: Histogram,
    /// Units leased from Redis.
    pub leased_units: IntCounter,
    /// Units given back to Redis (idle or on shutdown).
    pub returned_units: IntCounter,
    /// Admissions served from a local slice, without a Redis call.
    pub local_admissions: IntCounter,
    /// Admissions counted locally because Redis was unreachable (FailOpen), not yet reconciled.
    pub unreconciled_units: IntGauge,
    /// 1 while the last Redis call failed.
    pub partitioned: IntGauge,
}

impl StoreMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            round_trips: IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_store_round_trips_total",
                    "Calls to the shared counter store, by operation and result.",
                ),
                &["op", "result"],
            )?,
            latency: Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_proxy_store_latency_seconds",
                    "Latency of calls to the shared counter store.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            leased_units: IntCounter::new(
                "tollgate_proxy_store_leased_units_total",
                "Quota units leased from the shared store.",
            )?,
            returned_units: IntCounter::new(
                "tollgate_proxy_store_returned_units_total",
                "Unused quota units given back to the shared store.",
            )?,
            local_admissions: IntCounter::new(
                "tollgate_proxy_store_local_admissions_total",
                "Admissions served from a locally leased slice, without a store round trip.",
            )?,
            unreconciled_units: IntGauge::new(
                "tollgate_proxy_store_unreconciled_units",
                "Units admitted or charged while the store was unreachable, not yet added to it.",
            )?,
            partitioned: IntGauge::new(
                "tollgate_proxy_store_partitioned",
                "1 while the shared counter store is unreachable.",
            )?,
        };
        registry.register(Box::new(m.round_trips.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.leased_units.clone()))?;
        registry.register(Box::new(m.returned_units.clone()))?;
        registry.register(Box::new(m.local_admissions.clone()))?;
        registry.register(Box::new(m.unreconciled_units.clone()))?;
        registry.register(Box::new(m.partitioned.clone()))?;
        Ok(m)
    }
}

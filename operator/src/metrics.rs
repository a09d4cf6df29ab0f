//! Prometheus metrics of the operator, registered into a registry passed down from `main`.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric the operator exports.
#[derive(Debug, Clone)]
pub struct OperatorMetrics {
    /// Object changes that woke the compiler, by kind.
    pub reconciles: IntCounterVec,
    /// Objects newly left out of the configuration, by kind and reason.
    pub reconcile_errors: IntCounterVec,
    /// Objects left out of the current configuration.
    pub excluded_objects: IntGauge,
    /// Compile time.
    pub compile_duration: Histogram,
    /// Version of the latest snapshot.
    pub snapshot_version: IntGauge,
    /// Proxies subscribed to the stream.
    pub connected_proxies: IntGauge,
    /// Bytes pushed to proxies, by message type (full, delta, ping).
    pub push_bytes: IntCounterVec,
    /// Time from publishing a version to a proxy acknowledging it.
    pub propagation: Histogram,
    /// 1 when this replica is the leader.
    pub leader: IntGauge,
    /// Status writes, by kind.
    pub status_writes: IntCounterVec,
    /// Failed status writes (timeouts included).
    pub status_write_errors: IntCounter,
    /// Time a status write took, failed ones included.
    pub status_write_duration: Histogram,
    /// Watch events, by kind.
    pub watch_events: IntCounterVec,
    /// Watch errors, by kind.
    pub watch_errors: IntCounterVec,
    /// Callers of the configuration stream refused, by reason.
    pub proxy_refusals: IntCounterVec,
    /// Rounds of reading usage from Redis, by result (ok, error: some tenants not read).
    pub usage_reads: IntCounterVec,
    /// Time to read every tenant's usage from Redis.
    pub usage_read_duration: Histogram,
    /// Pods seen by the sidecar-injection webhook, by result (injected, skipped, denied).
    pub injections: IntCounterVec,
    /// Stripe webhook deliveries, by outcome.
    pub stripe_events: IntCounterVec,
    /// Reads of Stripe subscriptions by the periodic repair, by outcome.
    pub stripe_reads: IntCounterVec,
    /// Spend alerts announced, by threshold.
    pub spend_alerts: IntCounterVec,
    /// Spend alerts POSTed to tenants' owners, by result (delivered, failed).
    pub spend_alert_webhooks: IntCounterVec,
    /// Usage events sent to the billing sink, by result (accepted, duplicate, failed, stuck).
    pub usage_export_events: IntCounterVec,
    /// Units metered and not yet acknowledged by the sink, by event name (the export's drift).
    pub usage_export_unacknowledged: IntGaugeVec,
    /// Age in seconds of the oldest usage event recorded and not yet acknowledged (0: none).
    pub usage_export_oldest_pending: IntGauge,
    /// Series whose pending event is stuck (unacknowledged for 20 h, no longer sent).
    pub usage_export_stuck: IntGauge,
}

impl OperatorMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let m = Self {
            reconciles: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_reconciles_total",
                    "Object changes that woke the compiler, by kind (status writes and unchanged objects do not).",
                ),
                &["kind"],
            )?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_reconcile_errors_total",
                    "Objects newly left out of the configuration, by kind and reason (counted once when it starts, not per compile).",
                ),
                &["kind", "reason"],
            )?,
            excluded_objects: IntGauge::new(
                "tollgate_operator_excluded_objects",
                "Objects left out of the current configuration (invalid, or referring to what does not exist); their status says why.",
            )?,
            compile_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_operator_compile_duration_seconds",
                    "Time to compile all objects into a snapshot.",
                )
                .buckets(buckets.clone()),
            )?,
            snapshot_version: IntGauge::new(
                "tollgate_operator_snapshot_version",
                "Version of the latest configuration snapshot.",
            )?,
            connected_proxies: IntGauge::new(
                "tollgate_operator_connected_proxies",
                "Proxies subscribed to the configuration stream.",
            )?,
            push_bytes: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_push_bytes_total",
                    "Bytes pushed to proxies, by message type (full, delta, ping).",
                ),
                &["type"],
            )?,
            propagation: Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_operator_config_propagation_seconds",
                    "Time from publishing a configuration version to a proxy acknowledging it.",
                )
                .buckets(buckets.clone()),
            )?,
            leader: IntGauge::new(
                "tollgate_operator_leader",
                "1 when this replica holds the leader Lease.",
            )?,
            status_writes: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_status_writes_total",
                    "Status updates written (server-side apply), by kind.",
                ),
                &["kind"],
            )?,
            status_write_errors: IntCounter::new(
                "tollgate_operator_status_write_errors_total",
                "Failed status updates.",
            )?,
            watch_events: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_watch_events_total",
                    "Watch events received, by kind.",
                ),
                &["kind"],
            )?,
            watch_errors: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_watch_errors_total",
                    "Watch errors (retried with backoff), by kind.",
                ),
                &["kind"],
            )?,
            proxy_refusals: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_proxy_refusals_total",
                    "Callers of the configuration stream refused, by reason: no_token, not_authenticated, not_allowed (401), review_failed (503: the TokenReview could not be made).",
                ),
                &["reason"],
            )?,
            usage_reads: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_usage_reads_total",
                    "Rounds of reading tenants' usage from Redis, by result (error: some tenants not read).",
                ),
                &["result"],
            )?,
            usage_read_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_operator_usage_read_duration_seconds",
                    "Time to read every tenant's current-period usage from Redis.",
                )
                .buckets(buckets.clone()),
            )?,
            injections: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_injections_total",
                    "Pod creations seen by the sidecar-injection webhook, by result: injected, skipped (not annotated, already injected, excluded namespace), denied (wrong annotations).",
                ),
                &["result"],
            )?,
            stripe_events: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_stripe_webhook_events_total",
                    "Stripe webhook deliveries, by outcome: applied; duplicate, out_of_order (older than the newest applied), ignored_type, unknown_customer, other_subscription, unknown_status (acknowledged, not applied); bad_signature, stale_timestamp, malformed (refused with 400); no_secrets, write_failed (503, Stripe retries).",
                ),
                &["outcome"],
            )?,
            stripe_reads: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_stripe_subscription_reads_total",
                    "Subscriptions read from Stripe's API by the leader's periodic repair, by outcome: unchanged, corrected (a webhook was missed), customer_mismatch, failed.",
                ),
                &["outcome"],
            )?,
            spend_alerts: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_spend_alerts_total",
                    "Spend alerts announced (a quota's usage reached one of its plan's alertAt percentages; once per tenant, quota, period and threshold), by threshold.",
                ),
                &["threshold"],
            )?,
            spend_alert_webhooks: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_spend_alert_webhooks_total",
                    "Spend alerts POSTed to a Tenant's alertWebhook, by result: delivered, failed (after 3 attempts; the Event on the Tenant remains).",
                ),
                &["result"],
            )?,
            usage_export_events: IntCounterVec::new(
                Opts::new(
                    "tollgate_operator_usage_export_events_total",
                    "Usage events sent to the billing sink by the leader, by result: accepted, duplicate (the sink had it: a resend after a crash or a lost answer), failed (sent again later, unchanged), stuck (unacknowledged for 20 h, no longer sent).",
                ),
                &["result"],
            )?,
            usage_export_unacknowledged: IntGaugeVec::new(
                Opts::new(
                    "tollgate_operator_usage_export_unacknowledged_units",
                    "Units the fleet metered (as last read) that the billing sink has not acknowledged, by event name: the export's drift.",
                ),
                &["event_name"],
            )?,
            usage_export_stuck: IntGauge::new(
                "tollgate_operator_usage_export_stuck_series",
                "Series whose pending usage event is stuck: unacknowledged for 20 hours and no longer sent, until a person reconciles it with the sink (Tenant.status.export[].lastError says how).",
            )?,
            usage_export_oldest_pending: IntGauge::new(
                "tollgate_operator_usage_export_oldest_pending_seconds",
                "Age of the oldest usage event recorded and not yet acknowledged by the billing sink (0: none).",
            )?,
            status_write_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_operator_status_write_duration_seconds",
                    "Time a status write to the API server took (server-side apply), failed ones included.",
                )
                .buckets(buckets),
            )?,
        };
        registry.register(Box::new(m.reconciles.clone()))?;
        registry.register(Box::new(m.reconcile_errors.clone()))?;
        registry.register(Box::new(m.excluded_objects.clone()))?;
        registry.register(Box::new(m.compile_duration.clone()))?;
        registry.register(Box::new(m.snapshot_version.clone()))?;
        registry.register(Box::new(m.connected_proxies.clone()))?;
        registry.register(Box::new(m.push_bytes.clone()))?;
        registry.register(Box::new(m.propagation.clone()))?;
        registry.register(Box::new(m.leader.clone()))?;
        registry.register(Box::new(m.status_writes.clone()))?;
        registry.register(Box::new(m.status_write_errors.clone()))?;
        registry.register(Box::new(m.watch_events.clone()))?;
        registry.register(Box::new(m.usage_reads.clone()))?;
        registry.register(Box::new(m.usage_read_duration.clone()))?;
        registry.register(Box::new(m.status_write_duration.clone()))?;
        registry.register(Box::new(m.watch_errors.clone()))?;
        registry.register(Box::new(m.proxy_refusals.clone()))?;
        registry.register(Box::new(m.injections.clone()))?;
        registry.register(Box::new(m.stripe_events.clone()))?;
        registry.register(Box::new(m.stripe_reads.clone()))?;
        registry.register(Box::new(m.spend_alerts.clone()))?;
        registry.register(Box::new(m.spend_alert_webhooks.clone()))?;
        registry.register(Box::new(m.usage_export_events.clone()))?;
        registry.register(Box::new(m.usage_export_unacknowledged.clone()))?;
        registry.register(Box::new(m.usage_export_oldest_pending.clone()))?;
        registry.register(Box::new(m.usage_export_stuck.clone()))?;
        // process_resident_memory_bytes, process_cpu_seconds_total, open fds: what sizing and
        // the memory alerts read.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }
}

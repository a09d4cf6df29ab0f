//! Command-line flags (each also settable by environment variable).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// Tollgate operator: watches ApiRoute, Tenant and QuotaPolicy (and the Secrets with API keys),
/// compiles them, streams the configuration to tollgate-proxy pods over HTTPS, and reports status.
#[derive(Debug, Clone, Parser)]
#[command(name = "tollgate-operator", version)]
pub struct Cli {
    /// Namespaces to watch (comma-separated). Empty: all namespaces.
    #[arg(
        long,
        env = "TOLLGATE_NAMESPACES",
        value_delimiter = ',',
        value_name = "NS,..."
    )]
    pub namespace: Vec<String>,

    /// The operator's own namespace (Lease, serving-certificate Secret). Defaults to the pod's.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "tollgate-system",
        value_name = "NS"
    )]
    pub operator_namespace: String,

    /// This replica's identity in leader election. Defaults to the pod name.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub identity: Option<String>,

    /// Address of the configuration stream for proxies (HTTPS).
    #[arg(
        long,
        env = "TOLLGATE_CONFIG_LISTEN",
        default_value = "0.0.0.0:8443",
        value_name = "ADDR"
    )]
    pub config_listen: SocketAddr,

    /// Address for /metrics, /healthz and /readyz (ready = caches synced and a configuration
    /// compiled; the leader and standbys alike).
    #[arg(
        long,
        env = "TOLLGATE_ADMIN_LISTEN",
        default_value = "0.0.0.0:9091",
        value_name = "ADDR"
    )]
    pub admin_listen: SocketAddr,

    /// Secret (in --operator-namespace) with the stream's serving certificate (tls.crt, tls.key,
    /// ca.crt). Created with a self-signed certificate when missing.
    #[arg(
        long,
        env = "TOLLGATE_TLS_SECRET",
        default_value = "tollgate-operator-tls",
        value_name = "NAME"
    )]
    pub tls_secret: String,

    /// Extra DNS names or IPs for a generated serving certificate (the Service names are always in).
    #[arg(
        long,
        env = "TOLLGATE_TLS_SANS",
        value_delimiter = ',',
        value_name = "NAME,..."
    )]
    pub tls_san: Vec<String>,

    /// ServiceAccounts (namespace:name) whose tokens may subscribe to the configuration stream.
    /// Tokens are verified with a TokenReview for --token-audience.
    #[arg(
        long,
        env = "TOLLGATE_PROXY_SERVICE_ACCOUNTS",
        value_delimiter = ',',
        default_value = "tollgate-system:tollgate-proxy",
        value_name = "NS:NAME,..."
    )]
    pub proxy_service_account: Vec<String>,

    /// Audience proxies request for their tokens.
    #[arg(
        long,
        env = "TOLLGATE_TOKEN_AUDIENCE",
        default_value = "tollgate",
        value_name = "AUD"
    )]
    pub token_audience: String,

    /// Lease name for leader election.
    #[arg(
        long,
        env = "TOLLGATE_LEASE_NAME",
        default_value = "tollgate-operator",
        value_name = "NAME"
    )]
    pub lease_name: String,

    /// Label this replica's pod (named by --identity, in --operator-namespace) with
    /// tollgate.dev/role=leader while it leads and =standby otherwise, so that a Service selecting
    /// the leader label sends proxies to the leader. Needs patch on pods (the chart grants patch).
    #[arg(long, env = "TOLLGATE_LABEL_POD_ROLE")]
    pub label_pod_role: bool,

    /// How long a leader's lease lasts without renewal (failover time).
    #[arg(long, env = "TOLLGATE_LEASE_DURATION", default_value = "15s", value_parser = positive_duration, value_name = "DURATION")]
    pub lease_duration: Duration,

    /// Quiet time after a change before compiling (batches bursts of edits).
    #[arg(long, env = "TOLLGATE_DEBOUNCE", default_value = "100ms", value_parser = duration, value_name = "DURATION")]
    pub debounce: Duration,

    /// The Redis the proxies count quotas in (their --store), to roll usage up into
    /// Tenant.status.usage from the counters themselves. Without it, usage is the sum of the
    /// proxies' reports. Same URL forms as the proxy: redis://, rediss://, redis+cluster://,
    /// redis+sentinel://.
    #[arg(long, env = "TOLLGATE_STORE", value_name = "URL")]
    pub store: Option<String>,

    #[command(flatten)]
    pub store_tls: tollgate_crds::counter_store::StoreTlsArgs,

    /// How often the leader reads usage from --store (Tenant.status.usage is promised at least
    /// every 30 s). One MGET per tenant and plan.
    #[arg(long, env = "TOLLGATE_USAGE_REFRESH", default_value = "10s", value_parser = positive_duration, value_name = "DURATION")]
    pub usage_refresh: Duration,

    /// Format of the operator's logs (stderr; RUST_LOG filters, default info).
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub injection: InjectionArgs,

    #[command(flatten)]
    pub stripe: StripeArgs,

    #[command(flatten)]
    pub export: ExportArgs,
}

/// Where metered usage goes for invoicing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportSink {
    /// Stripe Billing meter events (`POST /v1/billing/meter_events` at --stripe-api-base, with
    /// the key in --stripe-api-key-file).
    Stripe,
    /// One CloudEvent per event, `POST --usage-export-url` (OpenMeter's `/api/v1/events`
    /// takes them).
    Cloudevents,
}

/// Usage export to billing (off unless --usage-export is set).
#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// Send what the fleet metered for quotas with `meterEventName` to billing, exactly once
    /// (the cursor is Tenant.status.export). Needs --store: the proxies' settled usage in Redis
    /// is what is exported.
    #[arg(long, env = "TOLLGATE_USAGE_EXPORT", value_enum, value_name = "SINK")]
    pub usage_export: Option<ExportSink>,

    /// The CloudEvents endpoint (required with --usage-export cloudevents).
    #[arg(long, env = "TOLLGATE_USAGE_EXPORT_URL", value_name = "URL")]
    pub usage_export_url: Option<String>,

    /// A bearer token for the CloudEvents endpoint, in a file (re-read before each send).
    #[arg(long, env = "TOLLGATE_USAGE_EXPORT_TOKEN_FILE", value_name = "FILE")]
    pub usage_export_token_file: Option<std::path::PathBuf>,

    /// Time between two export rounds: how far billing may lag behind the fleet. One Redis
    /// read per tenant and plan with exported quotas, one event per series with new usage.
    #[arg(long, env = "TOLLGATE_USAGE_EXPORT_INTERVAL", default_value = "60s", value_parser = positive_duration, value_name = "DURATION")]
    pub usage_export_interval: Duration,
}

/// Payment state from Stripe (off unless --stripe-webhook-listen or --stripe-api-key-file is set).
#[derive(Debug, Clone, clap::Args)]
pub struct StripeArgs {
    /// Receive Stripe's webhooks on this address (HTTPS with the operator's serving certificate,
    /// `POST /stripe/webhook`). Every replica receives, leader or not. Stripe needs a public
    /// HTTPS URL: put an Ingress or load balancer in front (the chart can create the Ingress).
    #[arg(long, env = "TOLLGATE_STRIPE_WEBHOOK_LISTEN", value_name = "ADDR")]
    pub stripe_webhook_listen: Option<SocketAddr>,

    /// The endpoint's signing secrets (`whsec_…`), one per line (required with
    /// --stripe-webhook-listen). While rolling a secret, list both: a delivery signed with either
    /// passes. Re-read on every delivery, so an updated Secret applies without a restart.
    #[arg(long, env = "TOLLGATE_STRIPE_WEBHOOK_SECRETS", value_name = "FILE")]
    pub stripe_webhook_secrets: Option<std::path::PathBuf>,

    /// How old a delivery's signature may be before it is refused as a replay (Stripe's
    /// libraries use 5 minutes).
    #[arg(long, env = "TOLLGATE_STRIPE_SIGNATURE_TOLERANCE", default_value = "5m", value_parser = duration, value_name = "DURATION")]
    pub stripe_signature_tolerance: Duration,

    /// A Stripe API key that may read subscriptions (a restricted `rk_…` key with Subscriptions:
    /// read is enough). With it, the leader reads every Tenant's subscription every
    /// --stripe-repair-interval and corrects what a missed webhook left wrong.
    #[arg(long, env = "TOLLGATE_STRIPE_API_KEY_FILE", value_name = "FILE")]
    pub stripe_api_key_file: Option<std::path::PathBuf>,

    /// Stripe's API (another base URL for a test server such as stripe-mock).
    #[arg(
        long,
        env = "TOLLGATE_STRIPE_API_BASE",
        default_value = "https://api.stripe.com",
        value_name = "URL"
    )]
    pub stripe_api_base: String,

    /// Time between two reads of every named subscription: the longest a missed webhook stays
    /// wrong. One API request per Tenant with spec.billing.stripe per interval. 0s: no periodic
    /// read (the key then serves the usage export only).
    #[arg(long, env = "TOLLGATE_STRIPE_REPAIR_INTERVAL", default_value = "10m", value_parser = duration, value_name = "DURATION")]
    pub stripe_repair_interval: Duration,
}

/// Sidecar injection (off unless --webhook-listen is set).
#[derive(Debug, Clone, clap::Args)]
pub struct InjectionArgs {
    /// Serve the sidecar-injection webhook (HTTPS, `POST /inject`, the serving certificate of
    /// the config stream) on this address. Every replica serves it, leader or not.
    #[arg(long, env = "TOLLGATE_WEBHOOK_LISTEN", value_name = "ADDR")]
    pub webhook_listen: Option<SocketAddr>,

    /// The MutatingWebhookConfiguration whose caBundle the operator keeps equal to its serving
    /// CA (needs get and patch on it; the chart grants both for its own).
    #[arg(long, env = "TOLLGATE_WEBHOOK_CONFIGURATION", value_name = "NAME")]
    pub webhook_configuration: Option<String>,

    /// The proxy image injected as the sidecar (required with --webhook-listen).
    #[arg(long, env = "TOLLGATE_SIDECAR_IMAGE", value_name = "IMAGE")]
    pub sidecar_image: Option<String>,

    /// The sidecar image's pull policy.
    #[arg(
        long,
        env = "TOLLGATE_SIDECAR_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent",
        value_name = "POLICY"
    )]
    pub sidecar_image_pull_policy: String,

    /// The configuration stream's URL as sidecars reach it (required with --webhook-listen), for
    /// example https://tollgate-operator.tollgate-system.svc:8443.
    #[arg(long, env = "TOLLGATE_SIDECAR_CONTROL_PLANE", value_name = "URL")]
    pub sidecar_control_plane: Option<String>,

    /// Sidecar resources unless a pod's annotations say otherwise: requests.cpu, requests.memory,
    /// limits.cpu, limits.memory (empty: none).
    #[arg(
        long,
        env = "TOLLGATE_SIDECAR_RESOURCES",
        value_delimiter = ',',
        default_value = "20m,32Mi,,64Mi",
        value_name = "CPU,MEM,CPU_LIMIT,MEM_LIMIT"
    )]
    pub sidecar_resources: Vec<String>,

    /// The sidecar's admin port (metrics and the kubelet's probes), on the pod's addresses.
    #[arg(
        long,
        env = "TOLLGATE_SIDECAR_ADMIN_PORT",
        default_value_t = 15090,
        value_name = "PORT"
    )]
    pub sidecar_admin_port: u16,

    /// The egress sidecar's port on 127.0.0.1 when a pod names none.
    #[arg(
        long,
        env = "TOLLGATE_SIDECAR_EGRESS_PORT",
        default_value_t = 15080,
        value_name = "PORT"
    )]
    pub sidecar_egress_port: u16,
}

pub use tollgate_crds::process::LogFormat;

fn duration(text: &str) -> Result<Duration, tollgate_crds::duration::InvalidDuration> {
    tollgate_crds::duration::parse_duration(text)
}

/// A duration that must not be zero (a period between rounds, a lease): zero would stop the
/// operator after it had started, instead of at its flags.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_of_zero_are_refused_at_the_flags() {
        for flag in [
            "--lease-duration",
            "--usage-refresh",
            "--usage-export-interval",
        ] {
            let err = Cli::try_parse_from(["tollgate-operator", flag, "0s"])
                .expect_err("zero refused")
                .to_string();
            assert!(err.contains("must be more than 0"), "{flag}: {err}");
        }
        // The periodic Stripe read may be off.
        let cli = Cli::try_parse_from(["tollgate-operator", "--stripe-repair-interval", "0s"])
            .expect("0s turns the read off");
        assert!(cli.stripe.stripe_repair_interval.is_zero());
    }
}

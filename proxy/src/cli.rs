//! Command-line flags (each also settable by environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};

/// Tollgate proxy: authenticates API callers by key and enforces their plans (402 Payment
/// Required for quotas and billing, 429 for rate limits), with RFC 9457 problem bodies and
/// IETF RateLimit headers.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tollgate-proxy",
    version,
    after_help = "Standalone example:\n  tollgate-proxy --manifests examples/quickstart\n  curl -H 'Authorization: Bearer tg_demo_acme_0001' localhost:8080/v1/hello\n\n\
                  Logs go to stderr (RUST_LOG filters them, default info); access-log lines go to stdout."
)]
pub struct Cli {
    /// Standalone mode: serve the ApiRoute, Tenant, QuotaPolicy and Secret manifests in DIR (every
    /// *.yaml and *.yml file, multi-document; subdirectories are not read), reloading within a
    /// second of any change.
    #[arg(
        long,
        env = "TOLLGATE_MANIFESTS",
        value_name = "DIR",
        conflicts_with = "control_plane"
    )]
    pub manifests: Option<PathBuf>,

    /// Fleet mode: subscribe to the operator's configuration stream at these URLs (comma-separated,
    /// tried in turn), e.g. https://tollgate-operator.tollgate-system.svc:8443.
    #[arg(
        long,
        env = "TOLLGATE_CONTROL_PLANE",
        value_delimiter = ',',
        value_name = "URL,..."
    )]
    pub control_plane: Vec<String>,

    /// PEM CA that signed the operator's serving certificate (its Secret's ca.crt).
    #[arg(
        long,
        env = "TOLLGATE_CONTROL_PLANE_CA",
        value_name = "FILE",
        default_value = "/var/run/secrets/tollgate/ca.crt"
    )]
    pub control_plane_ca: PathBuf,

    /// The same CA as PEM text, instead of the file (an injected sidecar gets it so: its
    /// namespace cannot mount the operator's Secret).
    #[arg(
        long,
        env = "TOLLGATE_CONTROL_PLANE_CA_PEM",
        value_name = "PEM",
        hide_env_values = true
    )]
    pub control_plane_ca_pem: Option<String>,

    /// File with the ServiceAccount token presented to the operator (a projected token with
    /// audience `tollgate`; re-read on every connect).
    #[arg(
        long,
        env = "TOLLGATE_CONTROL_PLANE_TOKEN_FILE",
        value_name = "FILE",
        default_value = "/var/run/secrets/tollgate/token"
    )]
    pub control_plane_token_file: PathBuf,

    /// This proxy's name towards the operator [default: the host name].
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub proxy_name: Option<String>,

    /// Address for API traffic.
    #[arg(
        long,
        env = "TOLLGATE_LISTEN",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Address for /metrics, /healthz, /readyz and /usage. Keep it private.
    #[arg(
        long,
        env = "TOLLGATE_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090",
        value_name = "ADDR"
    )]
    pub admin_listen: SocketAddr,

    /// Where quota counters live: `memory` (this proxy only, persisted in --state-dir), or Redis
    /// to share them across a fleet of proxies: `redis://[USER:PASS@]HOST:PORT[/DB]`,
    /// `rediss://...` (TLS), `redis+cluster://HOST:PORT,HOST:PORT,...` (`rediss+cluster://`)
    /// naming seed nodes of a Redis Cluster, or `redis+sentinel://HOST:PORT,.../MASTER[/DB]`
    /// (`rediss+sentinel://`) naming the Sentinels that watch MASTER.
    #[arg(
        long,
        env = "TOLLGATE_STORE",
        default_value = "memory",
        value_name = "memory|URL"
    )]
    pub store: String,

    /// With a Redis store, lease quota units in slices (default). `false` makes every admission a
    /// Redis round trip, like a naive INCR-per-request limiter (for comparison in benchmarks).
    #[arg(long, env = "TOLLGATE_STORE_SLICES", default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub store_slices: bool,

    /// With a Redis store, how long after its admission a request counts as settled usage (what
    /// the operator's usage export bills): until then a 502 or 504 can still give it back. Cover
    /// your routes' longest backend timeout; a request given back later is billed unless more of
    /// the tenant's requests follow in its period. At most 1h.
    #[arg(long, env = "TOLLGATE_SETTLE_AFTER", default_value = "60s", value_parser = settle_after, value_name = "DURATION")]
    pub settle_after: Duration,

    #[command(flatten)]
    pub store_tls: tollgate_crds::counter_store::StoreTlsArgs,

    /// Directory for state that must survive restarts (quota counters with --store memory, the
    /// month's call usage, the last configuration from the operator). Created if missing.
    #[arg(
        long,
        env = "TOLLGATE_STATE_DIR",
        default_value = "tollgate-state",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,

    /// PEM certificate chain: terminate TLS on --listen (HTTP/1.1 and HTTP/2 by ALPN).
    #[arg(
        long,
        env = "TOLLGATE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "TOLLGATE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM file of CA certificates trusted for https:// backends, besides the Mozilla root store
    /// (a provider reached through a private CA or a TLS-inspecting egress proxy).
    #[arg(long, env = "TOLLGATE_BACKEND_CA", value_name = "FILE")]
    pub backend_ca: Option<PathBuf>,

    /// Worker threads for the async runtime [default: number of CPUs].
    #[arg(long, env = "TOLLGATE_WORKER_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Experimental: serve plain-TCP clients on io_uring, one thread per --worker-threads (no
    /// TLS). Built only with the `io-uring` feature, for bench/uring.sh; not faster here (see
    /// docs/performance.md).
    #[cfg(all(target_os = "linux", feature = "io-uring"))]
    #[arg(long, env = "TOLLGATE_IO_URING")]
    pub io_uring: bool,

    /// Format of the proxy's own logs (stderr).
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Write one JSON access-log line per request to stdout.
    #[arg(long, env = "TOLLGATE_ACCESS_LOG", default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub access_log: bool,

    /// Export tollgate_proxy_tenant_requests_total with a `tenant` label: one series per tenant,
    /// so only where Prometheus can take that many.
    #[arg(long, env = "TOLLGATE_TENANT_METRICS", default_value_t = false, action = ArgAction::Set, value_name = "BOOL")]
    pub tenant_metrics: bool,

    /// On SIGTERM, how long in-flight requests may take to finish before the proxy exits.
    #[arg(long, env = "TOLLGATE_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration, value_name = "DURATION")]
    pub drain_timeout: Duration,

    /// Largest request head (request line and headers) accepted; larger ones get 431.
    #[arg(long, env = "TOLLGATE_MAX_HEADER_BYTES", default_value_t = 32 * 1024, value_name = "BYTES")]
    pub max_header_bytes: usize,

    /// Time a client has to send a whole request head (HTTP/1.x), or to start its first stream
    /// (HTTP/2), counted from the connection's start or the head's first byte; also bounds the TLS
    /// handshake. A slower client is disconnected (slowloris protection).
    #[arg(long, env = "TOLLGATE_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration, value_name = "DURATION")]
    pub header_timeout: Duration,

    /// How long a connection with no request in flight stays open waiting for the next one
    /// (HTTP/1.x keep-alive, or an HTTP/2 connection with no open stream; pings do not count).
    #[arg(long, env = "TOLLGATE_IDLE_TIMEOUT", default_value = "75s", value_parser = positive_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// How long a client may take to accept more of a response (a full socket, or an HTTP/2 flow
    /// window it does not reopen) before its connection is closed; frees the backend connection a
    /// stalled reader holds.
    #[arg(long, env = "TOLLGATE_SEND_TIMEOUT", default_value = "60s", value_parser = positive_duration, value_name = "DURATION")]
    pub send_timeout: Duration,

    /// Most client connections open at once. At the limit the proxy stops accepting: new clients
    /// wait in the kernel's accept queue until a connection closes. Each connection may need a
    /// backend connection too, so keep the open-files limit above twice this.
    #[arg(long, env = "TOLLGATE_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_connections: u32,

    /// How often standalone mode checks the manifest directory for changes.
    #[arg(long, env = "TOLLGATE_RELOAD_INTERVAL", default_value = "500ms", value_parser = positive_duration, value_name = "DURATION")]
    pub reload_interval: Duration,
}

pub use tollgate_crds::process::LogFormat;

fn duration(text: &str) -> Result<Duration, tollgate_crds::duration::InvalidDuration> {
    tollgate_crds::duration::parse_duration(text)
}

/// A duration above zero: a zero connection timeout would close every connection at once, a
/// zero reload interval would spin a core checking the manifests.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text).map_err(|e| e.to_string())? {
        Duration::ZERO => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

/// `--settle-after`: more than 0, at most an hour (the longest backend timeout a route may have).
fn settle_after(text: &str) -> Result<Duration, String> {
    let d = positive_duration(text)?;
    if d > Duration::from_secs(3600) {
        return Err("must be at most 1h (the longest backend timeout a route may have)".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_timeouts_refuse_zero_with_a_reason() {
        assert_eq!(positive_duration("1500ms"), Ok(Duration::from_millis(1500)));
        let zero = positive_duration("0s").expect_err("zero refused");
        assert!(zero.contains("more than 0"), "{zero}");
        assert!(positive_duration("abc").is_err());
    }

    #[test]
    fn every_timeout_and_interval_flag_refuses_zero() {
        for flag in [
            "--header-timeout",
            "--idle-timeout",
            "--send-timeout",
            "--reload-interval",
            "--settle-after",
        ] {
            let err = Cli::try_parse_from(["tollgate-proxy", flag, "0s"])
                .expect_err("zero refused")
                .to_string();
            assert!(err.contains("must be more than 0"), "{flag}: {err}");
        }
        let err = Cli::try_parse_from(["tollgate-proxy", "--settle-after", "2h"])
            .expect_err("over an hour refused")
            .to_string();
        assert!(err.contains("at most 1h"), "{err}");
    }
}

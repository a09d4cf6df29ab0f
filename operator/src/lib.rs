//! Tollgate's operator: watches ApiRoute, Tenant, QuotaPolicy and API-key Secrets, compiles them
//! into versioned snapshots, streams them to proxies, and reports status.
//!
//! - [`watch`]: reflector caches; [`publisher`]: debounced compile into versions and deltas.
//! - [`config_server`]: the HTTPS stream to proxies; [`proxy_auth`]: who may subscribe.
//! - [`leader`]: Lease election; [`pod_role`]: the leader's pod label the stream's Service selects;
//!   [`status`]: conditions and events, written by the leader.
//! - [`inject`]: the sidecar-injection webhook; [`billing`]: payment state from Stripe;
//!   [`export`]: metered usage out to billing, exactly once.
#![forbid(unsafe_code)]

pub mod alert_webhook;
pub mod billing;
pub mod cli;
pub mod config_server;
pub mod export;
pub mod https_client;
pub mod inject;
pub mod leader;
pub mod metrics;
pub mod pod_role;
pub mod proxy_auth;
pub mod publisher;
pub mod serving_cert;
pub mod spend_alerts;
pub mod status;
#[cfg(test)]
mod test_support;
pub mod usage;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use http::StatusCode;
use kube::runtime::events::{Recorder, Reporter};
use prometheus::Registry;
use tokio::sync::{Notify, watch as channel};
use tollgate_crds::counter_store::StoreTarget;
use tollgate_crds::process::{ShutdownSignal, metrics_response, text_response};

use crate::cli::Cli;
use crate::config_server::{ConfigServer, ProxyRegistry};
use crate::metrics::OperatorMetrics;
use crate::proxy_auth::ProxyAuthenticator;
use crate::publisher::Published;
use crate::status::StatusWriter;
use crate::usage::{RedisUsage, UsageSource};

pub use tollgate_crds::process::init_logging;

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(cli: Cli) -> Result<()> {
    // Listened for before anything else: a SIGTERM during start-up (a rollout that changed its
    // mind) shuts down gracefully instead of killing the process mid-way.
    let shutdown = ShutdownSignal::listen().context("listening for SIGTERM and SIGINT")?;
    // Checked before anything starts: an operator that took the Lease and then stopped over a
    // flag would cost the fleet a lease's worth of failover.
    let export_sink = export_sink(&cli)?;
    let role_pod = match (cli.label_pod_role, &cli.identity) {
        (false, _) => None,
        (true, Some(pod)) => Some(pod.clone()),
        (true, None) => anyhow::bail!(
            "--label-pod-role needs the pod's name in --identity (POD_NAME from the downward API)"
        ),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (kubeconfig or in-cluster)")?;
    let identity = cli.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let registry = Registry::new();
    let metrics = OperatorMetrics::new(&registry).context("registering metrics")?;

    let changed = Arc::new(Notify::new());
    let caches = watch::start(&client, &cli.namespace, changed.clone(), &metrics);
    let (published_tx, published_rx) = channel::channel(Arc::new(Published::default()));
    tokio::spawn(publisher::run(
        caches.clone(),
        changed,
        cli.debounce,
        published_tx,
        metrics.clone(),
    ));

    let (leading_tx, leading_rx) = channel::channel(false);
    let leader_flag = Arc::new(AtomicBool::new(false));
    let election = leader::Election {
        namespace: cli.operator_namespace.clone(),
        name: cli.lease_name.clone(),
        identity: identity.clone(),
        duration: cli.lease_duration,
    };
    let election_task = tokio::spawn(leader::run(
        client.clone(),
        election.clone(),
        leading_tx,
        leader_flag.clone(),
    ));

    if let Some(pod) = role_pod {
        tokio::spawn(pod_role::run(
            client.clone(),
            cli.operator_namespace.clone(),
            pod,
            leading_rx.clone(),
        ));
    }

    let cert = serving_cert::load_or_create(
        client.clone(),
        &cli.operator_namespace,
        &cli.tls_secret,
        &cli.tls_san,
    )
    .await?;
    let tls = tokio_rustls::TlsAcceptor::from(serving_cert::server_config(&cert)?);
    let webhook_listener = match cli.injection.webhook_listen {
        Some(addr) => {
            let webhook = Arc::new(inject::webhook::Webhook::from_args(
                &cli.injection,
                &cli.token_audience,
                &cli.operator_namespace,
                &cert.ca_pem,
                metrics.clone(),
            )?);
            let bound = listen_https(addr, "--webhook-listen", &tls, move |req| {
                let webhook = webhook.clone();
                async move { webhook.handle(req).await }
            })
            .await?;
            if let Some(name) = &cli.injection.webhook_configuration {
                tokio::spawn(inject::ca_bundle::keep(
                    client.clone(),
                    name.clone(),
                    cert.ca_pem.clone(),
                ));
            }
            Some(bound)
        }
        None => None,
    };
    let stripe_listener = start_stripe(&cli, &client, &caches, &tls, &metrics, &leading_rx).await?;
    let proxies = Arc::new(ProxyRegistry::default());
    let server = Arc::new(ConfigServer {
        published: published_rx.clone(),
        leading: leading_rx.clone(),
        auth: ProxyAuthenticator::new(
            client.clone(),
            cli.token_audience.clone(),
            &cli.proxy_service_account,
        ),
        registry: proxies.clone(),
        metrics: metrics.clone(),
    });
    let listener = tokio::net::TcpListener::bind(cli.config_listen)
        .await
        .with_context(|| format!("binding --config-listen {}", cli.config_listen))?;
    let admin = tokio::net::TcpListener::bind(cli.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", cli.admin_listen))?;
    tracing::info!(
        config = %listener.local_addr().unwrap_or(cli.config_listen),
        admin = %admin.local_addr().unwrap_or(cli.admin_listen),
        webhook = %webhook_listener.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        stripe_webhook = %stripe_listener.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        %identity,
        namespaces = ?cli.namespace,
        "tollgate-operator starting"
    );
    tokio::spawn(config_server::serve(listener, tls, server));

    let usage = match &cli.store {
        Some(url) => {
            let target = StoreTarget {
                url: url.clone(),
                tls: cli.store_tls.clone(),
            };
            let redis = Arc::new(
                RedisUsage::connect(&target, metrics.clone())
                    .context("the counter store (--store)")?,
            );
            tracing::info!(store = %target.redacted_url(), "reading tenants' usage from Redis");
            if cli.usage_refresh > std::time::Duration::from_secs(30) {
                tracing::warn!(
                    usage_refresh = ?cli.usage_refresh,
                    "--usage-refresh is over 30 s: Tenant.status.usage will lag more than the API promises"
                );
            }
            tokio::spawn(redis.clone().run(
                cli.usage_refresh,
                published_rx.clone(),
                leading_rx.clone(),
            ));
            if let Some(sink) = export_sink {
                let conn = target
                    .connect(tollgate_crds::counter_store::Timeouts {
                        connect: std::time::Duration::from_secs(2),
                        response: std::time::Duration::from_secs(2),
                    })
                    .context("the counter store (--store), for the usage export")?;
                tracing::info!(sink = sink.name(), interval = ?cli.export.usage_export_interval,
                    "exporting settled usage to billing while leading");
                let exporter = Arc::new(export::Exporter::new(
                    client.clone(),
                    caches.clone(),
                    published_rx.clone(),
                    conn,
                    sink,
                    cli.export.usage_export_interval,
                    metrics.clone(),
                ));
                tokio::spawn(exporter.run(leading_rx.clone()));
            }
            UsageSource::Redis(redis)
        }
        None => UsageSource::Reports(proxies.clone()),
    };

    let reporter = Reporter {
        controller: "tollgate-operator".into(),
        instance: Some(identity),
    };
    let recorder = Recorder::new(client.clone(), reporter.clone());
    tokio::spawn(
        StatusWriter {
            client: client.clone(),
            caches,
            published: published_rx.clone(),
            registry: proxies,
            usage,
            leading: leading_rx,
            metrics: metrics.clone(),
            recorder,
            reporter,
            webhooks: Arc::new(alert_webhook::AlertWebhooks::new(client.clone())),
        }
        .run(),
    );
    tokio::spawn(serve_admin(
        admin,
        registry,
        metrics,
        leader_flag.clone(),
        published_rx,
    ));

    shutdown.received().await;
    tracing::info!("shutting down");
    election_task.abort();
    if leader_flag.load(Ordering::Acquire) {
        leader::release(client, &election).await;
    }
    Ok(())
}

/// The usage export's sink, from the flags (checked before anything starts).
fn export_sink(cli: &Cli) -> Result<Option<export::sink::Sink>> {
    let args = &cli.export;
    let Some(kind) = args.usage_export else {
        if args.usage_export_url.is_some() {
            anyhow::bail!(
                "--usage-export-url is set but --usage-export is not (stripe or cloudevents)"
            );
        }
        return Ok(None);
    };
    if cli.store.is_none() {
        anyhow::bail!(
            "--usage-export needs --store: what is exported is the settled usage the proxies keep in Redis \
             (without Redis each proxy counts alone, and a proxy's counts go with its pod)"
        );
    }
    let kind = match kind {
        cli::ExportSink::Stripe => {
            let Some(file) = cli.stripe.stripe_api_key_file.clone() else {
                anyhow::bail!(
                    "--usage-export stripe needs --stripe-api-key-file (a key that may write billing meter events)"
                );
            };
            let api_base = cli.stripe.stripe_api_base.trim_end_matches('/').to_owned();
            export::sink::SinkKind::Stripe {
                api_base,
                api_key_file: file,
            }
        }
        cli::ExportSink::Cloudevents => {
            let Some(url) = args.usage_export_url.clone() else {
                anyhow::bail!(
                    "--usage-export cloudevents needs --usage-export-url (the endpoint that takes the events)"
                );
            };
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                anyhow::bail!("--usage-export-url {url:?} is not an http:// or https:// URL");
            }
            export::sink::SinkKind::CloudEvents {
                url,
                token_file: args.usage_export_token_file.clone(),
            }
        }
    };
    Ok(Some(export::sink::Sink::new(kind)))
}

/// Binds `addr` (given by `flag`) and serves HTTPS there with `handle`, in the background; the
/// address bound.
async fn listen_https<F, Fut, B>(
    addr: std::net::SocketAddr,
    flag: &str,
    tls: &tokio_rustls::TlsAcceptor,
    handle: F,
) -> Result<std::net::SocketAddr>
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<B>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {flag} {addr}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    tokio::spawn(config_server::serve_https(listener, tls.clone(), handle));
    Ok(bound)
}

/// Starts the Stripe webhook receiver (every replica) and the periodic subscription read (while
/// leading), as configured; the receiver's address when it listens.
async fn start_stripe(
    cli: &Cli,
    client: &kube::Client,
    caches: &watch::Caches,
    tls: &tokio_rustls::TlsAcceptor,
    metrics: &OperatorMetrics,
    leading: &channel::Receiver<bool>,
) -> Result<Option<std::net::SocketAddr>> {
    let args = &cli.stripe;
    let tenants = billing::tenants::StripeTenants {
        client: client.clone(),
        caches: caches.clone(),
    };
    let base = args.stripe_api_base.trim_end_matches('/').to_owned();
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        anyhow::bail!("--stripe-api-base {base:?} is not an http:// or https:// URL");
    }
    let mut reader = None;
    if let Some(file) = &args.stripe_api_key_file {
        // Read on every pass: a key added to the Secret later starts the reads then, and a
        // missing one stops neither the webhooks nor the rest of the operator.
        if let Err(e) = std::fs::metadata(file) {
            tracing::warn!(file = %file.display(), error = %e,
                "--stripe-api-key-file cannot be read: subscriptions are not read until it can");
        }
        if base.starts_with("http://") {
            tracing::warn!(api = %base, "--stripe-api-base is plain HTTP: the API key crosses the network unencrypted (fine for a local test server only)");
        }
        let shared = Arc::new(billing::repair::SubscriptionReader::new(
            base,
            file.clone(),
            tenants.clone(),
            metrics.clone(),
        ));
        if args.stripe_repair_interval.is_zero() {
            tracing::info!(
                "--stripe-repair-interval is 0s: subscriptions are not read periodically"
            );
        } else {
            let repair = billing::repair::Repair {
                reader: shared.clone(),
                interval: args.stripe_repair_interval,
            };
            tokio::spawn(repair.run(leading.clone()));
        }
        reader = Some(shared);
    }
    let Some(addr) = args.stripe_webhook_listen else {
        return Ok(None);
    };
    let Some(secrets_file) = args.stripe_webhook_secrets.clone() else {
        anyhow::bail!(
            "--stripe-webhook-listen needs --stripe-webhook-secrets (the endpoint's signing secrets, one per line)"
        );
    };
    // Read on every delivery: a missing or empty file refuses deliveries (503, Stripe retries;
    // counted as `no_secrets`) until it is fixed, and stops nothing else.
    match std::fs::read_to_string(&secrets_file) {
        Ok(text) if !billing::receiver::read_secrets(&text).is_empty() => {}
        Ok(_) => tracing::warn!(file = %secrets_file.display(),
            "--stripe-webhook-secrets holds no signing secret (one whsec_… per line): Stripe's deliveries are refused until it does"),
        Err(e) => tracing::warn!(file = %secrets_file.display(), error = %e,
            "--stripe-webhook-secrets cannot be read: Stripe's deliveries are refused until it can"),
    }
    let receiver = Arc::new(billing::receiver::Receiver {
        secrets_file,
        tolerance: args.stripe_signature_tolerance,
        tenants,
        reader,
        metrics: metrics.clone(),
        in_flight: tokio::sync::Semaphore::new(billing::receiver::MAX_IN_FLIGHT),
    });
    let bound = listen_https(addr, "--stripe-webhook-listen", tls, move |req| {
        let receiver = receiver.clone();
        async move { receiver.handle(req).await }
    })
    .await?;
    Ok(Some(bound))
}

/// The admin port: `/metrics`, `/healthz`, and `/readyz` (ready once the caches are synced and a
/// first configuration is compiled, leader or not: routing to the leader is the pod label's job,
/// see [`pod_role`]).
async fn serve_admin(
    listener: tokio::net::TcpListener,
    registry: Registry,
    metrics: OperatorMetrics,
    leader: Arc<AtomicBool>,
    published: channel::Receiver<Arc<Published>>,
) {
    tollgate_crds::process::serve_admin(listener, move |req| {
        let leading = leader.load(Ordering::Acquire);
        metrics.leader.set(i64::from(leading));
        let synced = published.borrow().version != 0;
        let resp = match req.path {
            "/metrics" => metrics_response(&registry),
            "/healthz" => text_response(StatusCode::OK, "ok\n"),
            "/readyz" if synced => text_response(StatusCode::OK, "ready\n"),
            "/readyz" => text_response(StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n"),
            _ => text_response(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n"),
        };
        async move { resp }
    })
    .await;
}

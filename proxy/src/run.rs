//! Process wiring: the runtime, the counter store, the configuration source, the listeners, and
//! shutdown on SIGTERM/SIGINT.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use prometheus::Registry;

use tollgate_crds::counter_store::StoreTarget;
use tollgate_crds::error_chain::error_chain;

use crate::admin::Admin;
use crate::cli::Cli;
use crate::config::ProxyConfig;
use crate::llm::Ledger;
use crate::pipeline::Proxy;
use crate::quota::{CounterStore, MemoryStore, persist};
use crate::sources::control_plane;
use crate::sources::standalone::ManifestDir;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::ProxyMetrics;
use crate::telemetry::{access_log, metrics};
use crate::upstream::forward;
use crate::{admin, quota};
use tollgate_crds::process::{ShutdownSignal, host_name};

/// Runs the proxy until SIGTERM or SIGINT.
pub fn run(cli: Cli) -> Result<()> {
    let registry = Registry::new();
    let metrics =
        ProxyMetrics::new(&registry, cli.tenant_metrics).context("registering metrics")?;
    let access_log = AccessLog::start(cli.access_log, metrics.access_log_dropped.clone());

    // One worker: a current-thread runtime (no work-stealing bookkeeping, no cross-thread wakes).
    let mut runtime = match cli.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    // A worker about to idle hands its access-log lines to the writer (access_log.rs).
    runtime
        .enable_all()
        .on_thread_park(access_log::hand_off_pending)
        .on_thread_stop(access_log::hand_off_pending);
    let runtime = runtime.build().context("starting the async runtime")?;
    let served = runtime.block_on(serve(cli, registry, metrics, access_log.clone()));
    drop(runtime);
    access_log.close();
    served
}

async fn serve(
    cli: Cli,
    registry: Registry,
    metrics: ProxyMetrics,
    access_log: AccessLog,
) -> Result<()> {
    if cli.manifests.is_none() && cli.control_plane.is_empty() {
        bail!(
            "nothing to serve: pass --manifests DIR (standalone, from YAML manifests) or --control-plane URL (fleet, from the operator)"
        );
    }
    if cli.store == "memory" {
        let store = Arc::new(MemoryStore::new());
        let restored = persist::load(&cli.state_dir)?;
        tracing::info!(state_dir = %cli.state_dir.display(), counters = restored.len(), "restored quota counters");
        store.restore(restored);
        // Fail now, not at the first save: counters that cannot be saved are lost on restart.
        persist::save(&cli.state_dir, store.usage()).context(
            "--state-dir must be a writable directory: quota counters are saved there every second",
        )?;
        let (stop_flushing, flushing_stopped) = tokio::sync::oneshot::channel();
        let (saved, dir) = (store.clone(), cli.state_dir.clone());
        let flusher = tokio::spawn(save_periodically(
            "quota counters",
            metrics.clone(),
            flushing_stopped,
            move || {
                saved.take_dirty().then(|| {
                    let (rows, dir) = (saved.usage(), dir.clone());
                    Box::new(move || persist::save(&dir, rows)) as Save
                })
            },
        ));
        serve_with(&cli, store.clone(), registry, metrics, access_log).await?;
        // The flusher finishes a save it has begun: the final save below must be the last, or an
        // older table could land on top of it.
        let _ = stop_flushing.send(());
        let _ = flusher.await;
        persist::save(&cli.state_dir, store.usage())
            .context("saving quota counters on shutdown")?;
        tracing::info!(state_dir = %cli.state_dir.display(), "counters saved; bye");
    } else {
        let store_metrics =
            metrics::StoreMetrics::new(&registry).context("registering store metrics")?;
        let target = StoreTarget {
            url: cli.store.clone(),
            tls: cli.store_tls.clone(),
        };
        let store = quota::redis::RedisStore::connect(
            &target,
            cli.store_slices,
            cli.settle_after,
            store_metrics,
        )
        .context("the counter store (--store memory, or a Redis URL)")?;
        tracing::info!(store = %target.redacted_url(), "counting quotas in Redis");
        let settler = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    store.settle(false).await;
                }
            })
        };
        serve_with(&cli, store.clone(), registry, metrics, access_log).await?;
        settler.abort();
        store.settle(true).await;
        tracing::info!("unused quota slices returned to Redis; bye");
    }
    Ok(())
}

async fn serve_with<S: CounterStore>(
    cli: &Cli,
    store: Arc<S>,
    registry: Registry,
    metrics: ProxyMetrics,
    access_log: AccessLog,
) -> Result<()> {
    let ledger = Arc::new(Ledger::new());
    let restored = persist::load_calls(&cli.state_dir)?;
    tracing::info!(state_dir = %cli.state_dir.display(), rows = restored.len(), "restored this month's call usage");
    ledger.restore(restored);
    let proxy = Arc::new(
        Proxy::new(
            store.clone(),
            forward::client(backend_roots(cli.backend_ca.as_deref())?)
                .context("adding the --backend-ca certificates")?,
            metrics.clone(),
            access_log,
            ledger,
        )
        .listening_on(cli.listen),
    );
    let (stop_saving_calls, saving_calls_stopped) = tokio::sync::oneshot::channel();
    let (saved, dir) = (proxy.clone(), cli.state_dir.clone());
    let call_saver = tokio::spawn(save_periodically(
        "the month's call usage",
        metrics.clone(),
        saving_calls_stopped,
        move || {
            saved.ledger_changed().then(|| {
                let (rows, dir) = (saved.call_usage(jiff::Timestamp::now()), dir.clone());
                Box::new(move || persist::save_calls(&dir, rows)) as Save
            })
        },
    ));
    let ready = Arc::new(AtomicBool::new(false));

    let shutdown = ShutdownSignal::listen().context("listening for SIGTERM and SIGINT")?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut watcher = None;
    let mut subscription = None;
    let source = if let Some(manifest_dir) = &cli.manifests {
        let mut manifests = ManifestDir::new(manifest_dir)?;
        let version = Arc::new(AtomicU64::new(0));
        // Later, a file that stops parsing keeps its last good version; at start it has none,
        // and a proxy that served without its tenants and routes would answer them 401 and 404
        // while saying it is ready.
        if let Err(problem) = reload(&mut manifests, &proxy, &metrics, &version, &ready, true) {
            bail!(
                "{problem}: at start there is no earlier version to keep; fix the manifests and start again"
            );
        }
        watcher = Some(spawn_watcher(
            manifests,
            proxy.clone(),
            metrics.clone(),
            version,
            ready.clone(),
            stop.clone(),
            cli.reload_interval,
        )?);
        manifest_dir.display().to_string()
    } else {
        let _ = rustls::crypto::ring::default_provider().install_default();
        match control_plane::load_persisted(&cli.state_dir) {
            Ok(Some((version, snapshot))) => {
                tracing::info!(
                    version,
                    "serving the persisted configuration until the operator answers"
                );
                proxy.apply(ProxyConfig::build(version, snapshot));
                ready.store(true, Ordering::Release);
            }
            Ok(None) => {
                tracing::info!("no persisted configuration; not ready until the operator sends one")
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(e.as_ref()), "ignoring the persisted configuration")
            }
        }
        let plane = control_plane::ControlPlane {
            urls: cli.control_plane.clone(),
            ca: match &cli.control_plane_ca_pem {
                Some(pem) => control_plane::OperatorCa::Pem(pem.clone()),
                None => control_plane::OperatorCa::File(cli.control_plane_ca.clone()),
            },
            token_file: cli.control_plane_token_file.clone(),
            name: cli
                .proxy_name
                .clone()
                .unwrap_or_else(|| host_name("tollgate-proxy")),
            state_dir: cli.state_dir.clone(),
        };
        subscription = Some(tokio::spawn(plane.run(
            proxy.clone(),
            metrics.clone(),
            ready.clone(),
        )));
        cli.control_plane.join(",")
    };

    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(crate::listen::tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding --listen {}", cli.listen))?;
    let admin_listener = tokio::net::TcpListener::bind(cli.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", cli.admin_listen))?;
    tracing::info!(
        listen = %tollgate_crds::process::bound(&listener, cli.listen),
        admin = %tollgate_crds::process::bound(&admin_listener, cli.admin_listen),
        tls = tls.is_some(),
        config = %source,
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "tollgate-proxy serving"
    );
    let admin = Arc::new(Admin {
        proxy: proxy.clone(),
        registry,
        ready,
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin));

    let opts = crate::listen::ServerOptions {
        max_header_bytes: cli.max_header_bytes,
        drain_timeout: cli.drain_timeout,
        header_timeout: cli.header_timeout,
        idle_timeout: cli.idle_timeout,
        send_timeout: cli.send_timeout,
        max_connections: usize::try_from(cli.max_connections).unwrap_or(usize::MAX),
    };
    serve_clients(
        cli,
        listener,
        proxy.clone(),
        tls,
        metrics.clone(),
        opts,
        shutdown.received(),
    )
    .await?;

    stop.store(true, Ordering::Release);
    // As with the counters: the periodic save finishes first, the final one lands last.
    let _ = stop_saving_calls.send(());
    let _ = call_saver.await;
    // Not fatal: the store's own shutdown (its counters, Redis slices) must still run.
    if let Err(e) = persist::save_calls(&cli.state_dir, proxy.call_usage(jiff::Timestamp::now())) {
        metrics.state_flush_errors.inc();
        tracing::error!(error = %error_chain(e.as_ref()), "cannot save the month's call usage on shutdown");
    }
    admin_task.abort();
    if let Some(watcher) = watcher {
        let _ = watcher.join();
    }
    if let Some(subscription) = subscription {
        subscription.abort();
    }
    Ok(())
}

/// Serves API clients until `shutdown` resolves and the drain is over: on tokio's epoll
/// listener, or on io_uring with `--io-uring` (experimental).
async fn serve_clients<S: CounterStore>(
    cli: &Cli,
    listener: tokio::net::TcpListener,
    proxy: Arc<Proxy<S>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: ProxyMetrics,
    opts: crate::listen::ServerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    #[cfg(all(target_os = "linux", feature = "io-uring"))]
    if cli.io_uring {
        if tls.is_some() {
            bail!("--io-uring serves plain TCP only; leave out --tls-cert");
        }
        let threads = cli.worker_threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, usize::from),
            usize::from,
        );
        tracing::info!(threads, "serving clients on io_uring (experimental)");
        return crate::listen::uring::serve(listener, proxy, metrics, opts, threads, shutdown)
            .await
            .context("serving on io_uring");
    }
    #[cfg(not(all(target_os = "linux", feature = "io-uring")))]
    let _ = cli;
    crate::listen::serve(listener, proxy, tls, metrics, opts, shutdown).await;
    Ok(())
}

/// Reads the manifests and applies what they hold (each file that does not parse in its last
/// good version). `Err` says what could not be read: the directory, or which files.
fn reload<S: CounterStore>(
    manifests: &mut ManifestDir,
    proxy: &Proxy<S>,
    metrics: &ProxyMetrics,
    version: &AtomicU64,
    ready: &AtomicBool,
    at_start: bool,
) -> Result<(), String> {
    let keeping = if at_start {
        "nothing to keep at start"
    } else {
        "keeping this file's last good version"
    };
    let load = match manifests.load() {
        Ok(load) => load,
        Err(e) => {
            metrics.config_reloads.with_label_values(&["error"]).inc();
            let error = error_chain(e.as_ref());
            if !at_start {
                tracing::error!(error = %error, "cannot read manifests; keeping the current configuration");
            }
            return Err(error);
        }
    };
    for warning in &load.warnings {
        tracing::warn!("{warning}");
    }
    for error in &load.file_errors {
        tracing::error!(file = %error.file.display(), line = error.line, "{error}; {keeping}");
    }
    for d in &load.compiled.diagnostics {
        tracing::warn!(kind = ?d.kind, object = %d.object, field = %d.field, reason = d.reason.as_str(), "{}; object left out", d.message);
    }
    let problem = match load.file_errors.as_slice() {
        [] => None,
        [only] => Some(format!("{only}")),
        [first, rest @ ..] => Some(format!("{first} (and {} more, logged above)", rest.len())),
    };
    if let (true, Some(problem)) = (at_start, &problem) {
        // Nothing applied: the proxy stops.
        return Err(problem.clone());
    }
    let result = if load.file_errors.is_empty() {
        "success"
    } else {
        "error"
    };
    metrics.config_reloads.with_label_values(&[result]).inc();
    metrics
        .config_rejected_objects
        .set(i64::try_from(load.compiled.diagnostics.len()).unwrap_or(i64::MAX));
    let v = version.fetch_add(1, Ordering::AcqRel) + 1;
    let snapshot = load.compiled.snapshot;
    tracing::info!(
        version = v,
        routes = snapshot.routes.len(),
        tenants = snapshot.tenants.len(),
        plans = snapshot.plans.len(),
        "configuration applied"
    );
    proxy.apply(ProxyConfig::build(v, snapshot));
    ready.store(true, Ordering::Release);
    problem.map_or(Ok(()), Err)
}

fn spawn_watcher<S: CounterStore>(
    mut manifests: ManifestDir,
    proxy: Arc<Proxy<S>>,
    metrics: ProxyMetrics,
    version: Arc<AtomicU64>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    interval: Duration,
) -> Result<std::thread::JoinHandle<()>> {
    // Polling is deliberate: it sees edits, renames and Kubernetes' ConfigMap symlink swaps alike.
    std::thread::Builder::new()
        .name("manifest-watch".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(interval);
                if manifests.changed() {
                    // Logged there; what did not parse stays in its last good version.
                    let _ = reload(&mut manifests, &proxy, &metrics, &version, &ready, false);
                }
            }
        })
        .context("starting the manifest watcher")
}

/// A save of state to the state directory, run on a blocking thread.
type Save = Box<dyn FnOnce() -> Result<()> + Send>;

/// Every second until `stop` fires (between saves, never during one): the save `changed` returns
/// when something changed since the last one. `what` names the state in logs.
async fn save_periodically(
    what: &'static str,
    metrics: ProxyMetrics,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    changed: impl Fn() -> Option<Save>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let Some(save) = changed() else {
            continue;
        };
        match tokio::task::spawn_blocking(save).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                metrics.state_flush_errors.inc();
                tracing::error!(error = %error_chain(e.as_ref()), "cannot save {what}; will retry");
            }
            Err(e) => tracing::error!(error = %e, "saving {what} failed"),
        }
    }
}

/// Compile-time check that the memory store satisfies the store interface.
const _: fn() = || {
    fn assert_store<S: CounterStore>() {}
    assert_store::<MemoryStore>();
};

/// The certificates of `--backend-ca`: none without it; an error for a file that cannot be read
/// or holds none (a typo must not leave https backends failing one by one at request time).
fn backend_roots(file: Option<&Path>) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    let Some(file) = file else {
        return Ok(Vec::new());
    };
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(file)
        .with_context(|| format!("reading --backend-ca {}", file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing --backend-ca {}", file.display()))?;
    if certs.is_empty() {
        bail!("--backend-ca {} holds no PEM certificate", file.display());
    }
    Ok(certs)
}

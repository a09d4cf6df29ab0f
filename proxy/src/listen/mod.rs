//! The API listener: plain TCP or TLS (rustls, ALPN h2 and http/1.1), HTTP/1.1 and HTTP/2
//! (also h2c with prior knowledge), at most `max_connections` open connections, bounded request
//! heads, slow-client timeouts, and a graceful drain on shutdown. Bodiless HTTP/1.1 requests are
//! served by [`h1`]; a connection moves to hyper ([`by_hyper`]) at its first request
//! that engine does not serve (a body, HTTP/2, an upgrade...). Both hold every connection to the
//! same timeouts.

pub mod by_hyper;
pub mod h1;
#[cfg(all(target_os = "linux", feature = "io-uring"))]
pub mod uring;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::pipeline::{ClientConn, Proxy};
use crate::quota::CounterStore;
use crate::telemetry::metrics::ProxyMetrics;
use crate::telemetry::warn_throttle::WarnThrottle;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest request head.
    pub max_header_bytes: usize,
    /// How long in-flight requests may take after shutdown starts.
    pub drain_timeout: Duration,
    /// Time to receive a whole request head (also bounds the TLS handshake).
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    pub idle_timeout: Duration,
    /// How long a client may take to accept more of a response.
    pub send_timeout: Duration,
    /// Most client connections open at once; the listener stops accepting at the limit.
    pub max_connections: usize,
}

/// A TLS acceptor from PEM files, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn builder(opts: &ServerOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(opts.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        // WebSockets over HTTP/2 (RFC 8441), for routes that carry them.
        .enable_connect_protocol();
    builder
}

/// Serves API traffic until `shutdown` resolves, then drains in-flight requests.
pub async fn serve<S: CounterStore>(
    listener: TcpListener,
    proxy: Arc<Proxy<S>>,
    tls: Option<TlsAcceptor>,
    metrics: ProxyMetrics,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    // Every connection, whichever engine serves it, watches `stop` and holds a receiver:
    // `stop.closed()` resolves when the last one has closed.
    let (stop, stopped) = watch::channel(false);
    let sessions = Sessions::new(proxy, &opts, stopped, metrics.clone());
    let handshake_timeout = opts.header_timeout;
    let gate = Gate::new(opts.max_connections, metrics.clone());
    tokio::pin!(shutdown);
    loop {
        let Some(slot) = gate.admit(shutdown.as_mut()).await else {
            break;
        };
        let Some((stream, client)) = accept(&listener, shutdown.as_mut()).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let session = sessions.open(client, tls.is_some(), slot);
        let metrics = metrics.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => session.run(tls_stream).await,
                        Ok(Err(e)) => {
                            metrics.connection_ended("tls_failed");
                            Err(e.into())
                        }
                        Err(_) => {
                            metrics.connection_ended("tls_failed");
                            Err("TLS handshake timed out".into())
                        }
                    }
                }
                None => session.run(stream).await,
            };
            if let Err(e) = result {
                tracing::debug!(%client, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(sessions);
    drain(stop, opts.drain_timeout).await;
}

/// The next connection, or `None` once `shutdown` resolves. A failed accept (EMFILE and
/// friends) is logged and retried after a pause instead of spinning.
async fn accept(
    listener: &TcpListener,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = shutdown.as_mut() => return None,
        }
    }
}

/// Tells every connection to finish (`stop`) and waits until the last has closed, for at most
/// `timeout`.
async fn drain(stop: watch::Sender<bool>, timeout: Duration) {
    let _ = stop.send(true);
    tracing::info!(?timeout, "draining in-flight requests");
    tokio::select! {
        () = stop.closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(timeout) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}

/// Admission of connections: one permit per open connection. At the limit the listener stops
/// accepting: new clients wait in the kernel's accept queue (and see connect timeouts once it is
/// full) instead of the proxy running out of memory or file descriptors.
#[derive(Clone)]
struct Gate {
    slots: Arc<Semaphore>,
    at_limit: Arc<WarnThrottle>,
    max_connections: usize,
    metrics: ProxyMetrics,
}

impl Gate {
    fn new(max_connections: usize, metrics: ProxyMetrics) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_connections)),
            at_limit: Arc::new(WarnThrottle::new(Duration::from_secs(60))),
            max_connections,
            metrics,
        }
    }

    /// A permit for the next connection, waiting for one at the limit; `None` once `shutdown`
    /// resolves.
    async fn admit(
        &self,
        shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        self.metrics.connections_at_limit.inc();
        if let Some(left_out) = self.at_limit.due(std::time::Instant::now()) {
            tracing::warn!(
                max_connections = self.max_connections,
                times_since_last_warning = left_out,
                "connection limit reached; new connections wait in the accept queue until one closes (raise --max-connections if the machine has room)"
            );
        }
        tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot.ok(),
            () = shutdown => None,
        }
    }
}

type ConnError = Box<dyn std::error::Error + Send + Sync>;

/// A connection's place: its `--max-connections` permit and its count in
/// `tollgate_proxy_active_connections`, given back when the last holder lets go (the
/// connection, or a WebSocket relayed from it).
struct Place {
    _permit: tokio::sync::OwnedSemaphorePermit,
    open: prometheus::IntGauge,
}

impl Place {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, open: prometheus::IntGauge) -> Self {
        open.inc();
        Self {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// One client connection: the HTTP/1.1 engine first, hyper from the first request it hands off.
struct Session<S> {
    proxy: Arc<Proxy<S>>,
    conn: Arc<ClientConn>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stopped: watch::Receiver<bool>,
    limits: h1::Limits,
    metrics: ProxyMetrics,
}

/// What a listener's connections share; opens a [`Session`] for each one accepted. Holds a
/// receiver of the drain's `stop` channel: drop it when the listener stops accepting.
struct Sessions<S> {
    proxy: Arc<Proxy<S>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stopped: watch::Receiver<bool>,
    limits: h1::Limits,
    metrics: ProxyMetrics,
}

impl<S: CounterStore> Sessions<S> {
    fn new(
        proxy: Arc<Proxy<S>>,
        opts: &ServerOptions,
        stopped: watch::Receiver<bool>,
        metrics: ProxyMetrics,
    ) -> Self {
        Self {
            proxy,
            builder: Arc::new(builder(opts)),
            stopped,
            limits: h1::Limits {
                max_head: opts.max_header_bytes,
                header_timeout: opts.header_timeout,
                idle_timeout: opts.idle_timeout,
                send_timeout: opts.send_timeout,
            },
            metrics,
        }
    }

    /// The session of a connection just accepted from `client`, holding its place (`slot`).
    fn open(
        &self,
        client: std::net::SocketAddr,
        tls: bool,
        slot: OwnedSemaphorePermit,
    ) -> Session<S> {
        let place = Arc::new(Place::new(slot, self.metrics.active_connections.clone()));
        Session {
            proxy: self.proxy.clone(),
            conn: Arc::new(
                ClientConn::new(client, tls)
                    .watching(self.stopped.clone())
                    .holding(place),
            ),
            builder: self.builder.clone(),
            stopped: self.stopped.clone(),
            limits: self.limits,
            metrics: self.metrics.clone(),
        }
    }
}

impl<S: CounterStore> Session<S> {
    async fn run<T>(self, io: T) -> Result<(), ConnError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self.serve_h1(io).await? {
            Some(io) => self.serve_hyper(io).await,
            None => Ok(()),
        }
    }

    /// The HTTP/1.1 engine's part: `Some` with the connection when hyper must take over.
    async fn serve_h1<T>(&self, io: T) -> Result<Option<h1::Prefixed<T>>, ConnError>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let ended = h1::serve(
            io,
            &self.proxy,
            &self.conn,
            self.limits,
            self.stopped.clone(),
        )
        .await;
        match ended {
            Ok(h1::Ended::Closed(why)) => {
                self.metrics.connection_ended(why.label());
                Ok(None)
            }
            Ok(h1::Ended::Handoff(io)) => {
                self.metrics.handoffs_to_hyper.inc();
                Ok(Some(io))
            }
            Err(e) => {
                self.metrics.connection_ended("error");
                Err(e.into())
            }
        }
    }

    /// hyper's part, from the first request the HTTP/1.1 engine handed off.
    async fn serve_hyper<T>(self, io: h1::Prefixed<T>) -> Result<(), ConnError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            proxy,
            conn,
            builder,
            stopped,
            limits,
            metrics,
        } = self;
        match by_hyper::serve(io, proxy, conn, &builder, limits, stopped).await {
            by_hyper::Ended::Closed(why) => {
                metrics.connection_ended(why.label());
                Ok(())
            }
            by_hyper::Ended::Error(e) => {
                metrics.connection_ended("error");
                Err(e.into())
            }
        }
    }
}

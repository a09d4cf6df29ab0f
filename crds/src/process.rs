//! What both binaries do around their work, written once: logging, shutdown signals, the host
//! name, and the admin listener (`/metrics`, health) with its limits.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sets up logging on stderr (`RUST_LOG` filters; default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// This machine's host name (a Pod's name in a cluster), `fallback-PID` when there is none.
pub fn host_name(fallback: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    if host.is_empty() {
        format!("{fallback}-{}", std::process::id())
    } else {
        host.to_owned()
    }
}

/// SIGTERM or SIGINT, listened for from the moment this is made: a signal that arrives before
/// the process first waits for it still starts a graceful shutdown instead of killing the process
/// (the default action), however soon after start-up it comes.
#[derive(Debug)]
pub struct ShutdownSignal {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    /// Starts listening (inside a Tokio runtime).
    pub fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for either signal and logs which came.
    pub async fn received(mut self) {
        let name = tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown signal received");
    }
}

/// How long a client of an admin port may take to send its request head.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one admin connection (one request and its response).
pub const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Admin connections open at once; more wait in the listen backlog.
pub const ADMIN_MAX_CONNECTIONS: usize = 1024;

/// One admin request as the handler sees it: the path, and both ends' addresses (`/usage` is
/// answered only when both are loopback).
#[derive(Debug, Clone, Copy)]
pub struct AdminRequest<'a> {
    /// The request path.
    pub path: &'a str,
    /// The client's address.
    pub peer: IpAddr,
    /// The address the client connected to.
    pub local: IpAddr,
}

/// Serves an admin port until the task is dropped: one request per connection, a bounded head,
/// a bounded life and a bounded number of connections, so scrapes and probes are served and an
/// idle or hostile client cannot pile connections up. Accept errors (EMFILE) back off instead of
/// spinning.
pub async fn serve_admin<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(AdminRequest<'_>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed; retrying in 50 ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = handler(AdminRequest {
                    path: req.uri().path(),
                    peer: peer.ip(),
                    local: local.ip(),
                });
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(ADMIN_CONNECTION_LIFETIME, conn).await;
        });
    }
}

/// A plain-text admin response.
pub fn text_response(status: http::StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The address actually bound (for logs when port 0 was asked).
pub fn bound(listener: &TcpListener, asked: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(asked)
}

/// The registry's metrics in Prometheus' text format.
pub fn metrics_response(registry: &prometheus::Registry) -> Response<Full<Bytes>> {
    use prometheus::Encoder;
    let encoder = prometheus::TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
        return text_response(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        );
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    if let Ok(v) = encoder.format_type().parse() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

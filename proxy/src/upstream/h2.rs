//! HTTP/2 connections to backends (gRPC calls, `protocol: HTTP2` routes): h2c to http://
//! backends, TLS with ALPN h2 to https:// ones.
//!
//! Calls to a backend share its connections, each carrying many as streams. A connection takes
//! up to [`STREAMS_PER_CONNECTION`] calls at once; past that the next call opens another (up to
//! [`MAX_CONNECTIONS`] per backend, then the least busy one takes it): a backend's stream limit
//! (often 100) would otherwise hold calls in a queue behind long-lived streams. A connection
//! older than [`MAX_AGE`] takes no new calls and closes once its last call ends: calls to a
//! Service spread over its pods as new connections land on others (kube-proxy balances
//! connections, not requests). One connection is opened at a time per backend, so a burst of
//! calls to a backend with none does not open one each.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tokio::time::Instant;
use tower_service::Service as _;

use crate::fast_map::FastMap;

/// Calls one connection takes at once before the next opens another.
pub const STREAMS_PER_CONNECTION: usize = 100;
/// Connections per backend at most.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a connection takes new calls.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// The flow-control window per stream: enough for a stream's throughput on a data-center link,
/// and small enough that one stream cannot use up the connection's budget below.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The window per connection. h2 bounds the small DATA frames a connection holds unread (a
/// guard against floods) by half its window, counting 256 bytes less each frame's payload for
/// each, and closes the connection past it with ENHANCE_YOUR_CALM. Data waits unread when its
/// caller reads slowly. Hence fixed windows, not adaptive ones (hyper's start at 64 KiB: ~130
/// unary answers waiting to be relayed closed the connection, seen at 640 calls in flight), and
/// a connection window that holds one stream's window of even empty gRPC messages (5 bytes:
/// 52,000 frames, 13 MB of budget) with room to spare.
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
/// How long opening a connection (TCP, TLS, the HTTP/2 preface) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call got no response head.
#[derive(Debug, thiserror::Error)]
pub enum Http2Error {
    /// No connection could be opened.
    #[error("connecting: {0}")]
    Connect(String),
    /// The call failed on its connection.
    #[error("{0}")]
    Call(#[from] hyper::Error),
}

/// The HTTP/2 connections to every backend, sending request bodies of type `B`.
#[derive(Debug)]
pub struct Http2Pool<B> {
    connector: HttpsConnector<HttpConnector>,
    backends: Mutex<FastMap<Box<str>, Arc<Backend<B>>>>,
}

/// One backend's connections.
#[derive(Debug)]
struct Backend<B> {
    connections: Mutex<Vec<Arc<Connection<B>>>>,
    /// Held while a connection opens: the calls waiting for it take it (or the next).
    opening: tokio::sync::Mutex<()>,
}

/// One connection and the calls on it now.
#[derive(Debug)]
struct Connection<B> {
    sender: SendRequest<B>,
    calls: AtomicUsize,
    opened: Instant,
}

/// How many calls a connection carries now; what a call's [`Stream`] gives back.
trait Calls: Send + Sync + std::fmt::Debug {
    fn count(&self) -> &AtomicUsize;
}

impl<B: Send + std::fmt::Debug + 'static> Calls for Connection<B> {
    fn count(&self) -> &AtomicUsize {
        &self.calls
    }
}

/// A call's place on its connection, given back when the response ends (or fails).
#[derive(Debug)]
pub struct Stream(Arc<dyn Calls>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.count().fetch_sub(1, Ordering::Relaxed);
    }
}

impl<B> Http2Pool<B>
where
    B: http_body::Body + Send + Unpin + std::fmt::Debug + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A pool opening connections with `connector` (its TLS config offering ALPN h2).
    pub fn new(connector: HttpsConnector<HttpConnector>) -> Self {
        Self {
            connector,
            backends: Mutex::new(FastMap::default()),
        }
    }

    /// Sends `req` (an absolute URI: the scheme and authority name the backend) on a
    /// connection to its backend; the response, with the call's place on the connection.
    pub async fn send(&self, req: Request<B>) -> Result<(Response<Incoming>, Stream), Http2Error> {
        let uri = req.uri();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(Http2Error::Connect(format!("{uri} names no backend")));
        };
        let key = format!("{scheme}://{authority}");
        let backend = self.backend(&key);
        let (mut sender, stream) = self.place(&backend, &key).await?;
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, stream)),
            Err(mut failed) => match failed.take_message() {
                // Not sent: the connection closed meanwhile (a GOAWAY). Once more, on another.
                Some(req) => {
                    drop(stream);
                    let (mut sender, stream) = self.place(&backend, &key).await?;
                    Ok((sender.send_request(req).await?, stream))
                }
                None => Err(failed.into_error().into()),
            },
        }
    }

    /// A call's place on one of `backend`'s connections (opening one when none can take it),
    /// and that connection's sender.
    async fn place(
        &self,
        backend: &Backend<B>,
        key: &str,
    ) -> Result<(SendRequest<B>, Stream), Http2Error> {
        if let Some(place) = backend.take() {
            return Ok(place);
        }
        let _opening = backend.opening.lock().await;
        if let Some(place) = backend.take() {
            return Ok(place);
        }
        let connection = Arc::new(self.connect(key).await?);
        connection.calls.fetch_add(1, Ordering::Relaxed);
        backend.connections.lock().push(connection.clone());
        Ok((connection.sender.clone(), Stream(connection)))
    }

    fn backend(&self, key: &str) -> Arc<Backend<B>> {
        let mut backends = self.backends.lock();
        match backends.get(key) {
            Some(backend) => backend.clone(),
            None => {
                let backend = Arc::new(Backend {
                    connections: Mutex::new(Vec::new()),
                    opening: tokio::sync::Mutex::new(()),
                });
                backends.insert(key.into(), backend.clone());
                backend
            }
        }
    }

    async fn connect(&self, base: &str) -> Result<Connection<B>, Http2Error> {
        let uri: Uri = base
            .parse()
            .map_err(|e| Http2Error::Connect(format!("{base}: {e}")))?;
        let opening = async {
            let io = self
                .connector
                .clone()
                .call(uri)
                .await
                .map_err(|e| Http2Error::Connect(error_chain(e.as_ref())))?;
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                // A backend that went away without a word is noticed between calls too.
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                .handshake(io)
                .await
                .map_err(|e| Http2Error::Connect(error_chain(&e)))
        };
        let (sender, connection) = tokio::time::timeout(CONNECT_TIMEOUT, opening)
            .await
            .map_err(|_| Http2Error::Connect(format!("timed out after {CONNECT_TIMEOUT:?}")))??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP/2 backend connection ended");
            }
        });
        Ok(Connection {
            sender,
            calls: AtomicUsize::new(0),
            opened: Instant::now(),
        })
    }
}

impl<B: Send + std::fmt::Debug + 'static> Backend<B> {
    /// A place on the least busy open connection young enough for new calls (and its sender),
    /// unless all are full and another may open. Closed and aged connections leave the list (an
    /// aged one closes when its last call ends and drops it).
    fn take(&self) -> Option<(SendRequest<B>, Stream)> {
        let mut connections = self.connections.lock();
        connections.retain(|c| !c.sender.is_closed() && c.opened.elapsed() < MAX_AGE);
        let least = connections
            .iter()
            .min_by_key(|c| c.calls.load(Ordering::Relaxed))?;
        let busy = least.calls.load(Ordering::Relaxed) >= STREAMS_PER_CONNECTION;
        if busy && connections.len() < MAX_CONNECTIONS {
            return None;
        }
        least.calls.fetch_add(1, Ordering::Relaxed);
        Some((least.sender.clone(), Stream(least.clone())))
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    tollgate_crds::error_chain::error_chain(e)
}

//! HTTP/2 connections to backends (gRPC calls, `protocol: HTTP2` routes): h2c to http://
//! backends, TLS with ALPN h2 to https:// ones.
//!
//! Calls to a backend share its connections, each carrying many as streams. A connection takes
//! up to [`STREAMS_PER_CONNECTION`] calls at once; past that the next call opens another (up to
//! [`MAX_CONNECTIONS`] per backend, then the least busy one takes it): a backend's stream limit
//! (often 100) would otherwise hold calls in a queue behind long-lived streams. A connection
//! older than [`MAX_AGE`] takes no new calls and closes once its last call ends: calls to a
//! Service spread over its pods as new connections land on others (kube-proxy balances
//! connections, not requests). One connection is opened at a time per backend, in a task of its
//! own that the calls waiting for it share (a call that gives up does not cancel it), so a burst
//! of calls to a backend with none does not open one each; after a failed attempt, calls fail at
//! once for a second (or go on an open connection beyond its share) rather than each trying
//! again. Connections no call uses are let go of once aged or closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tokio::time::Instant;
use tollgate_crds::error_chain::error_chain;
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
/// How long opening a connection (TCP, TLS, writing the HTTP/2 preface) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a failed attempt calls needing a new connection fail at once.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How often a connection with calls waiting is pinged (gRPC servers allow one ping every 5
/// minutes by default).
const PING_EVERY: Duration = Duration::from_secs(300);
/// How often unused connections and backends are let go of.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

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
    /// When the backends were last swept of connections no one uses.
    swept: Mutex<Instant>,
}

/// One backend's connections.
#[derive(Debug)]
struct Backend<B> {
    connections: Mutex<Vec<Arc<Connection<B>>>>,
    opening: Mutex<Opening<B>>,
}

/// A connection on its way, shared by every call waiting for it.
type Opened<B> = Shared<BoxFuture<'static, Result<Arc<Connection<B>>, Arc<str>>>>;

/// Whether a backend's next connection is being opened.
enum Opening<B> {
    /// No.
    Idle,
    /// Yes, in a task of its own (a call that gives up does not cancel it).
    Open(Opened<B>),
    /// The last attempt failed, at that instant: for [`RETRY_AFTER_FAILURE`], calls that need a
    /// new connection fail at once (or use one that is open) instead of each trying again.
    Failed(Instant, Arc<str>),
}

impl<B> std::fmt::Debug for Opening<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Idle => f.write_str("Idle"),
            Self::Open(_) => f.write_str("Open"),
            Self::Failed(at, why) => f.debug_tuple("Failed").field(at).field(why).finish(),
        }
    }
}

/// One connection and the calls on it now.
#[derive(Debug)]
struct Connection<B> {
    sender: SendRequest<B>,
    calls: AtomicUsize,
    opened: Instant,
}

impl<B> Connection<B> {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// Too old for new calls (it closes once its last call ends).
    fn aged(&self) -> bool {
        self.opened.elapsed() >= MAX_AGE
    }

    /// To be let go of: closed, or aged with no call left on it.
    fn spent(&self) -> bool {
        self.sender.is_closed() || (self.aged() && self.calls() == 0)
    }
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
            swept: Mutex::new(Instant::now()),
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
    /// and that connection's sender. When a new connection cannot be opened, an open one takes
    /// the call beyond its share rather than failing it.
    async fn place(
        &self,
        backend: &Arc<Backend<B>>,
        key: &str,
    ) -> Result<(SendRequest<B>, Stream), Http2Error> {
        if let Some(place) = backend.take() {
            return Ok(place);
        }
        let opened = {
            let mut opening = backend.opening.lock();
            match &*opening {
                Opening::Open(opened) => opened.clone(),
                Opening::Failed(at, why) if at.elapsed() < RETRY_AFTER_FAILURE => {
                    return backend
                        .any()
                        .ok_or_else(|| Http2Error::Connect(why.to_string()));
                }
                _ => {
                    // Opened by a call that was waiting, meanwhile?
                    if let Some(place) = backend.take() {
                        return Ok(place);
                    }
                    let opened = self.open(backend.clone(), key.to_owned());
                    *opening = Opening::Open(opened.clone());
                    opened
                }
            }
        };
        match opened.await {
            Ok(connection) => {
                connection.calls.fetch_add(1, Ordering::Relaxed);
                Ok((connection.sender.clone(), Stream(connection)))
            }
            Err(why) => backend
                .any()
                .ok_or_else(|| Http2Error::Connect(why.to_string())),
        }
    }

    /// Opens a connection to `key` in a task of its own, which adds it to `backend` (or records
    /// the failure) whoever still waits for it.
    fn open(&self, backend: Arc<Backend<B>>, key: String) -> Opened<B> {
        let connector = self.connector.clone();
        let task = tokio::spawn(async move {
            let opened = connect::<B>(connector, &key)
                .await
                .map(Arc::new)
                .map_err(|e| Arc::<str>::from(e.to_string()));
            let mut opening = backend.opening.lock();
            match &opened {
                Ok(connection) => {
                    backend.connections.lock().push(connection.clone());
                    *opening = Opening::Idle;
                }
                Err(why) => *opening = Opening::Failed(Instant::now(), why.clone()),
            }
            opened
        });
        async move {
            task.await
                .unwrap_or_else(|e| Err(Arc::from(format!("opening a connection failed: {e}"))))
        }
        .boxed()
        .shared()
    }

    fn backend(&self, key: &str) -> Arc<Backend<B>> {
        self.sweep();
        let mut backends = self.backends.lock();
        match backends.get(key) {
            Some(backend) => backend.clone(),
            None => {
                let backend = Arc::new(Backend {
                    connections: Mutex::new(Vec::new()),
                    opening: Mutex::new(Opening::Idle),
                });
                backends.insert(key.into(), backend.clone());
                backend
            }
        }
    }

    /// At most once every [`SWEEP_EVERY`]: drops the connections no call uses that are closed
    /// or aged, and the backends left with none (a backend no route names any more, or one
    /// that gets no calls, keeps nothing open for long).
    fn sweep(&self) {
        {
            let mut swept = self.swept.lock();
            if swept.elapsed() < SWEEP_EVERY {
                return;
            }
            *swept = Instant::now();
        }
        self.backends.lock().retain(|_, backend| {
            // `opening` before `connections`, as everywhere else.
            let opening = matches!(*backend.opening.lock(), Opening::Open(_));
            let mut connections = backend.connections.lock();
            connections.retain(|c| !c.spent());
            !connections.is_empty() || opening || Arc::strong_count(backend) > 1
        });
    }
}

/// Opens a connection to `base` (`scheme://authority`).
async fn connect<B>(
    connector: HttpsConnector<HttpConnector>,
    base: &str,
) -> Result<Connection<B>, Http2Error>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let uri: Uri = base
        .parse()
        .map_err(|e| Http2Error::Connect(format!("{base}: {e}")))?;
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let opening = async {
        let io = connector
            .clone()
            .call(uri)
            .await
            .map_err(|e| Http2Error::Connect(error_chain(e.as_ref())))?;
        if https && !io.connected().is_negotiated_h2() {
            return Err(Http2Error::Connect(
                "the backend did not agree to HTTP/2 in the TLS handshake (ALPN h2)".to_owned(),
            ));
        }
        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            // A backend that went away without a word is noticed while calls wait on it. Not
            // sooner, nor on idle connections: gRPC servers answer pings more frequent than
            // every 5 minutes, or on a connection without calls, with GOAWAY (too_many_pings),
            // which would end a quiet streaming call.
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(Duration::from_secs(20))
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

impl<B: Send + std::fmt::Debug + 'static> Backend<B> {
    /// A place on the least busy open connection young enough for new calls (and its sender),
    /// unless all are full and another may open. Closed connections leave the list, and aged
    /// ones once no call uses them (they close then).
    fn take(&self) -> Option<(SendRequest<B>, Stream)> {
        let mut connections = self.connections.lock();
        connections.retain(|c| !c.spent());
        let young = || connections.iter().filter(|c| !c.aged());
        let least = young().min_by_key(|c| c.calls())?;
        if least.calls() >= STREAMS_PER_CONNECTION && young().count() < MAX_CONNECTIONS {
            return None;
        }
        least.calls.fetch_add(1, Ordering::Relaxed);
        Some((least.sender.clone(), Stream(least.clone())))
    }

    /// A place on the least busy open connection, full or aged as it may be: for a call whose
    /// new connection could not be opened.
    fn any(&self) -> Option<(SendRequest<B>, Stream)> {
        let connections = self.connections.lock();
        let least = connections
            .iter()
            .filter(|c| !c.sender.is_closed())
            .min_by_key(|c| c.calls())?;
        least.calls.fetch_add(1, Ordering::Relaxed);
        Some((least.sender.clone(), Stream(least.clone())))
    }
}

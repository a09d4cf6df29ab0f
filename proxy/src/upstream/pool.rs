//! Keep-alive HTTP/1.1 connections to plain-HTTP backends, without the generic client's machinery.
//!
//! A connection is checked out for one request and checked back in when the response body has been
//! read to the end ([`UpstreamBody`]); a response abandoned half-way closes its connection instead
//! (HTTP/1.1 cannot reuse it). A request that fails before any byte was written (the backend
//! closed an idle connection) is retried once on a fresh connection. HTTPS backends use the
//! pooled hyper-util client instead (`forward::client`).
//!
//! Requests without a body and with an idempotent method are exchanged inline by the request's
//! task ([`crate::upstream::h1`]); the others through a hyper client connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::time::{Instant, Sleep};

use crate::fast_map::FastMap;
use crate::http1::raw_headers::RawHeaders;
use crate::upstream::forward::{RequestBody, downstream_response};
use crate::upstream::h1::{self as upstream_h1, Conn, ExchangeError, InlineBody};

type Sender = SendRequest<RequestBody>;

/// What a response body yields on failure.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections per backend authority.
#[derive(Debug, Default)]
pub struct UpstreamPool {
    // Keyed by the authority's text: `Authority` hashes byte by byte (case-insensitively), and
    // backends come from configuration, spelled the same way by every route that uses them.
    idle: Mutex<FastMap<Box<str>, Vec<Sender>>>,
    idle_inline: Mutex<FastMap<Box<str>, Vec<Conn>>>,
}

/// Why a request did not get a response head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("connecting to {authority}: {reason}")]
    Connect {
        /// Backend.
        authority: Authority,
        /// What failed.
        reason: String,
    },
    /// The exchange failed.
    #[error("backend request failed: {0}")]
    Request(#[from] hyper::Error),
    /// The inline exchange failed.
    #[error("backend request failed: {0}")]
    Exchange(ExchangeError),
    /// No response head by the route's timeout.
    #[error("backend did not answer in time")]
    TimedOut,
}

impl From<ExchangeError> for UpstreamError {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::TimedOut => Self::TimedOut,
            e => Self::Exchange(e),
        }
    }
}

const MAX_IDLE_PER_BACKEND: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl UpstreamPool {
    /// An empty pool.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn checkout(&self, authority: &Authority) -> Option<Sender> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(authority.as_str())?;
        list.retain(|s| !s.is_closed());
        // Most recently used first. A connection checked in a moment ago may still be finishing its
        // previous exchange (its task has not run yet): skip it, do not drop it.
        let ready = list.iter().rposition(SendRequest::is_ready)?;
        Some(list.swap_remove(ready))
    }

    fn checkin(&self, authority: Authority, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        checkin_to(&mut self.idle.lock(), &authority, sender);
    }

    /// The most recently used idle connection that nothing arrived on while idle (a backend may
    /// send a 408 or close an idle connection; those are dropped).
    fn checkout_inline(&self, authority: &Authority) -> Option<Conn> {
        let mut idle = self.idle_inline.lock();
        let list = idle.get_mut(authority.as_str())?;
        while let Some(conn) = list.pop() {
            if conn.is_clean() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin_inline(&self, authority: Authority, conn: Conn) {
        checkin_to(&mut self.idle_inline.lock(), &authority, conn);
    }

    async fn connect(&self, authority: &Authority) -> Result<Sender, UpstreamError> {
        let stream = Self::connect_tcp(authority).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn connect_tcp(authority: &Authority) -> Result<tokio::net::TcpStream, UpstreamError> {
        let port = authority.port_u16().unwrap_or(80);
        let err = |reason: String| UpstreamError::Connect {
            authority: authority.clone(),
            reason,
        };
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((authority.host(), port)),
        )
        .await
        .map_err(|_| err(format!("timed out after {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| err(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Exchanges `head` (a bodiless request with a method safe to retry, see
    /// [`upstream_h1::eligible`]) inline, with its response head due by `due`; a pooled
    /// connection that turns out closed is replaced once.
    pub async fn send_inline(
        self: &Arc<Self>,
        authority: &Authority,
        head: &[u8],
        method: &Method,
        due: Instant,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (conn, pooled) = match self.checkout_inline(authority) {
            Some(conn) => (conn, true),
            None => (self.connect_inline(authority, due).await?, false),
        };
        let resp = match upstream_h1::exchange(conn, head, method, due).await {
            Ok(resp) => resp,
            Err(ExchangeError::ClosedBeforeAnswer | ExchangeError::Io(_)) if pooled => {
                let conn = self.connect_inline(authority, due).await?;
                Box::pin(upstream_h1::exchange(conn, head, method, due)).await?
            }
            Err(e) => return Err(e.into()),
        };
        let pool = self.clone();
        let authority = authority.clone();
        Ok(resp.map(|inner| UpstreamBody {
            kind: Kind::Inline {
                inner,
                pool,
                authority,
            },
            stall: None,
            _stream: None,
        }))
    }

    /// A new connection for the inline path, by `due`. Connecting is the rare case under
    /// keep-alive: its future is boxed.
    async fn connect_inline(
        &self,
        authority: &Authority,
        due: Instant,
    ) -> Result<Conn, UpstreamError> {
        match tokio::time::timeout_at(due, Box::pin(Self::connect_tcp(authority))).await {
            Ok(stream) => Ok(Conn::new(stream?)),
            Err(_) => Err(UpstreamError::TimedOut),
        }
    }

    /// Sends `req` (origin-form URI, Host set) to `authority` over a pooled hyper client
    /// connection: the path for requests with a body or a method not safe to retry.
    pub async fn send(
        self: &Arc<Self>,
        authority: &Authority,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (mut sender, pooled) = match self.checkout(authority) {
            Some(sender) => (sender, true),
            None => (self.connect(authority).await?, false),
        };
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut failed) => match failed.take_message() {
                // Nothing was sent: a pooled connection the backend had closed. Retry once, fresh.
                Some(req) if pooled => {
                    sender = self.connect(authority).await?;
                    sender.send_request(req).await?
                }
                _ => return Err(failed.into_error().into()),
            },
        };
        let checkin = Some(Checkin {
            pool: self.clone(),
            authority: authority.clone(),
            sender,
        });
        Ok(downstream_response(resp).map(|inner| UpstreamBody {
            kind: Kind::Hyper { inner, checkin },
            stall: None,
            _stream: None,
        }))
    }
}

/// Adds an idle connection to `authority`'s list (allocating the key only for a new backend).
fn checkin_to<C>(idle: &mut FastMap<Box<str>, Vec<C>>, authority: &Authority, conn: C) {
    match idle.get_mut(authority.as_str()) {
        Some(list) if list.len() >= MAX_IDLE_PER_BACKEND => {}
        Some(list) => list.push(conn),
        None => {
            idle.insert(authority.as_str().into(), vec![conn]);
        }
    }
}

#[derive(Debug)]
struct Checkin {
    pool: Arc<UpstreamPool>,
    authority: Authority,
    sender: Sender,
}

/// A backend response body; its connection returns to the pool when the body ends.
#[derive(Debug)]
pub struct UpstreamBody {
    kind: Kind,
    /// Fails the body when the backend goes silent in the middle of it.
    stall: Option<StallGuard>,
    /// The call's place on its HTTP/2 connection, given back when the body is done.
    _stream: Option<crate::upstream::h2::Stream>,
}

/// The longest silence allowed between two pieces of a body. Armed only while a read waits, so a
/// body that arrives with its head never touches a timer.
#[derive(Debug)]
struct StallGuard {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` runs for the current wait (each piece of body starts a new one).
    armed: bool,
}

impl StallGuard {
    /// Whether the current wait has lasted `limit`; registers `cx` to be woken when it has.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            let deadline = Instant::now() + self.limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        self.timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }
}

#[derive(Debug)]
enum Kind {
    /// From a hyper client connection (or the generic client: no checkin).
    Hyper {
        inner: Incoming,
        checkin: Option<Checkin>,
    },
    /// Read inline from the backend socket.
    Inline {
        inner: InlineBody,
        pool: Arc<UpstreamPool>,
        authority: Authority,
    },
}

impl UpstreamBody {
    /// A body with no connection to return (from the generic client).
    pub fn detached(inner: Incoming) -> Self {
        Self {
            kind: Kind::Hyper {
                inner,
                checkin: None,
            },
            stall: None,
            _stream: None,
        }
    }

    /// A body from an HTTP/2 connection, holding the call's `stream` there until it is done.
    pub fn on_stream(inner: Incoming, stream: crate::upstream::h2::Stream) -> Self {
        Self {
            kind: Kind::Hyper {
                inner,
                checkin: None,
            },
            stall: None,
            _stream: Some(stream),
        }
    }

    /// Fails the body (and never reuses its connection) once the backend has sent nothing for
    /// `limit` in the middle of it, as nginx's `proxy_read_timeout` does.
    pub fn with_read_timeout(mut self, limit: Duration) -> Self {
        self.stall = Some(StallGuard {
            limit,
            timer: None,
            armed: false,
        });
        self
    }

    /// The backend's headers still to relay as bytes (inline exchanges; empty otherwise).
    pub fn relayed_headers(&self) -> Option<&RawHeaders> {
        match &self.kind {
            Kind::Inline { inner, .. } => Some(inner.relayed_headers()),
            Kind::Hyper { .. } => None,
        }
    }

    /// Takes the headers [`Self::relayed_headers`] returns.
    pub fn take_relayed_headers(&mut self) -> RawHeaders {
        match &mut self.kind {
            Kind::Inline { inner, .. } => inner.take_relayed_headers(),
            Kind::Hyper { .. } => RawHeaders::default(),
        }
    }

    fn finish(&mut self) {
        match &mut self.kind {
            Kind::Hyper { checkin, .. } => {
                if let Some(c) = checkin.take() {
                    c.pool.checkin(c.authority, c.sender);
                }
            }
            Kind::Inline {
                inner,
                pool,
                authority,
            } => {
                if let Some(conn) = inner.take_reusable() {
                    pool.checkin_inline(authority.clone(), conn);
                }
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled: Poll<Option<Result<Frame<Bytes>, BodyError>>> = match &mut self.kind {
            Kind::Hyper { inner, checkin } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &polled {
                    *checkin = None;
                }
                polled.map(|o| o.map(|r| r.map_err(BodyError::from)))
            }
            Kind::Inline { inner, .. } => inner
                .poll_data(cx)
                .map(|o| o.map(|r| r.map(Frame::data).map_err(BodyError::from))),
        };
        let this = &mut *self;
        if let Some(guard) = this.stall.as_mut() {
            if polled.is_ready() {
                guard.armed = false;
            } else if guard.expired(cx) {
                if let Kind::Hyper { checkin, .. } = &mut this.kind {
                    *checkin = None;
                }
                let limit = guard.limit;
                return Poll::Ready(Some(Err(format!(
                    "the backend sent nothing for {limit:?} in the middle of the body"
                )
                .into())));
            }
        }
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.is_end_stream() => self.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Hyper { inner, .. } => inner.is_end_stream(),
            Kind::Inline { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Hyper { inner, .. } => inner.size_hint(),
            Kind::Inline { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body the server never polled because it was empty still frees its connection.
        if self.is_end_stream() {
            self.finish();
        }
    }
}

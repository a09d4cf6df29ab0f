//! Tollgate's own HTTP/1.1 server engine for the requests that dominate API traffic: no body.
//!
//! hyper's server is general (bodies both ways, upgrades, HTTP/1.0, its dispatcher state machine
//! and header encoding); profiling put it among the largest user-space costs per request. This
//! engine reads a request head with httparse, runs it through the proxy, and writes the response
//! head and body into one buffer sent with one write when the body is already there. It serves
//! only bodiless HTTP/1.1 requests. The first request it does not serve — a body
//! (`Content-Length` > 0 or `Transfer-Encoding`), `Expect`, an upgrade, `CONNECT`, HTTP/1.0, the
//! HTTP/2 preface, or a head httparse or `http` rejects — hands the connection, with every byte
//! read so far, to hyper ([`Ended::Handoff`]), which serves it to the end and writes its own 400
//! or 431 for bad heads. So this engine never has to answer malformed input itself.
//!
//! Timeouts: a request head must arrive whole within [`Limits::header_timeout`] of the connection
//! opening or of its first byte; a keep-alive connection may idle [`Limits::idle_timeout`] between
//! requests; a client that accepts no response bytes for [`Limits::send_timeout`] is dropped. One
//! timer per connection serves all three, moved only when it fires early or a wait is shorter,
//! so a busy connection touches the timer wheel about once per `header_timeout`, not per request
//! (and a write that completes at once never looks at it).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http1::raw_headers::{self, LineIndex, RawHeaders};
use crate::http1::timer::LazyTimer;
use crate::pipeline::{ClientConn, Proxy, ProxyBody, ResponseLines, take_lines};
use crate::quota::CounterStore;
use crate::upstream::forward::RequestBody;

/// Heads with more headers than this go to hyper (which allows 100, then answers 431).
const MAX_HEADERS: usize = 64;
const READ_SIZE: usize = 8 * 1024;
/// Body chunks at least this large are written as they are instead of copied into the buffer.
const COPY_LIMIT: usize = 16 * 1024;

/// Bounds on what a client may make the engine wait for or hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head; a larger one goes to hyper, which answers 431.
    pub max_head: usize,
    /// Time to receive a whole request head (slow-client protection).
    pub header_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time a client may take to accept more of a response (between two successful writes).
    pub send_timeout: Duration,
}

/// How the engine finished with a connection.
#[derive(Debug)]
pub enum Ended<T> {
    /// Closed, and why.
    Closed(Closed),
    /// A request this engine does not serve; hyper takes over the connection from `Prefixed`'s
    /// first byte (the unserved request).
    Handoff(Prefixed<T>),
}

/// Why a connection closed (the `outcome` label of `tollgate_proxy_connections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it between requests.
    ByClient,
    /// A request head did not arrive whole within the header timeout.
    HeaderTimeout,
    /// No next request within the idle timeout.
    IdleTimeout,
    /// The client accepted no response bytes within the send timeout.
    SendTimeout,
    /// The proxy is shutting down.
    Shutdown,
    /// After a response: the client asked (`Connection: close`) or its body failed half-way.
    AfterResponse,
}

impl Closed {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::ByClient => "client_closed",
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::SendTimeout => "send_timeout",
            Self::Shutdown => "shutdown",
            Self::AfterResponse => "closed_after_response",
        }
    }
}

/// Serves bodiless HTTP/1.1 requests on `io` until the connection ends or needs hyper.
pub async fn serve<T, S>(
    io: T,
    proxy: &Proxy<S>,
    client: &ClientConn,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) -> io::Result<Ended<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: CounterStore,
{
    let mut conn = Connection {
        io,
        buf: BytesMut::with_capacity(READ_SIZE),
        out: Vec::with_capacity(READ_SIZE),
        timer: LazyTimer::new(Instant::now() + limits.header_timeout),
        send_timeout: limits.send_timeout,
    };
    // When the head being read must be complete: fixed when it starts (the connection opening,
    // or its first bytes after an idle wait) and kept across reads, so a client dripping a byte
    // at a time cannot stretch it. `None` while idle between requests.
    let mut head_due = Some(Instant::now() + limits.header_timeout);
    // Resolves when shutdown begins (or its sender is gone). One wait for the connection, polled
    // by each read: a new wait per read joined and left the channel's waiter list every time.
    let stopping = {
        let mut shutdown = shutdown.clone();
        async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        }
    };
    tokio::pin!(stopping);
    loop {
        let head = loop {
            match parse(&mut conn.buf, limits.max_head) {
                Parsed::Request(head) => break head,
                Parsed::Handoff => return Ok(Ended::Handoff(conn.into_prefixed())),
                Parsed::Partial => {}
            }
            let (deadline, timed_out) = match head_due {
                Some(due) => (due, Closed::HeaderTimeout),
                None if conn.buf.is_empty() => {
                    (Instant::now() + limits.idle_timeout, Closed::IdleTimeout)
                }
                None => {
                    let due = Instant::now() + limits.header_timeout;
                    head_due = Some(due);
                    (due, Closed::HeaderTimeout)
                }
            };
            match conn
                .read_more(deadline, &shutdown, stopping.as_mut())
                .await?
            {
                Read::Data => {}
                Read::Eof => return Ok(Ended::Closed(Closed::ByClient)),
                Read::TimedOut => return Ok(Ended::Closed(timed_out)),
                Read::Shutdown => return Ok(Ended::Closed(Closed::Shutdown)),
            }
        };
        head_due = None;
        let head_only = head.request.method() == Method::HEAD;
        let response = proxy.handle(head.request, head.raw, client).await;
        let keep_alive = !head.close && !*shutdown.borrow();
        match conn.write_response(response, head_only, keep_alive).await {
            Ok(true) => {}
            Ok(false) => {
                // Best effort: the peer may already be gone, or accept nothing more (a TLS
                // close_notify, or a write still in flight, waits for it at most this long).
                let _ = tokio::time::timeout(limits.send_timeout, conn.io.shutdown()).await;
                return Ok(Ended::Closed(Closed::AfterResponse));
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Ok(Ended::Closed(Closed::SendTimeout));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A parsed request head this engine serves.
#[derive(Debug)]
struct Head {
    request: Request<RequestBody>,
    /// The request's header lines (its map is empty).
    raw: RawHeaders,
    /// The client asked to close after this response.
    close: bool,
}

// Returned once per request and taken apart at once; boxing would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Parsed {
    Request(Head),
    Partial,
    Handoff,
}

/// Parses the head at the start of `buf`, deciding whether this engine serves it. A served head
/// is taken out of `buf`.
fn parse(buf: &mut BytesMut, max_head: usize) -> Parsed {
    // Left uninitialized: filling 64 empty headers first cost as much as parsing a short head.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(&buf[..], &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Parsed::Partial,
        // Too large, too many headers or malformed: hyper answers 431 or 400.
        Ok(httparse::Status::Partial) | Err(_) => return Parsed::Handoff,
    };
    if len > max_head || req.version != Some(1) {
        return Parsed::Handoff;
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Handoff;
    };
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if h.value.trim_ascii() != b"0" {
                return Parsed::Handoff;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Parsed::Handoff;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Handoff;
                }
            }
        }
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Handoff;
    };
    if method == Method::CONNECT {
        return Parsed::Handoff;
    }
    // Offsets into the head: `req` borrows the buffer, which must be split next.
    let target_start = target.as_ptr() as usize - buf.as_ptr() as usize;
    let target = target_start..target_start + target.len();
    let lines = LineIndex::of(buf, req.headers.iter());
    // The head's bytes become the request's (the URI and the header lines are slices of them):
    // no copy. The buffer's memory is reused once the request is gone.
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target)) else {
        // `http` refuses this target: hyper answers it, from the whole input again.
        let mut whole = BytesMut::with_capacity(head.len() + buf.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Parsed::Handoff;
    };
    let mut request = Request::new(RequestBody::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    // The headers stay as received, indexed (no map: see `client_headers`); httparse has checked
    // every name and value.
    Parsed::Request(Head {
        request,
        raw: RawHeaders::received(head, lines),
        close,
    })
}

enum Read {
    Data,
    Eof,
    TimedOut,
    Shutdown,
}

struct Connection<T> {
    io: T,
    /// Bytes read and not yet served.
    buf: BytesMut,
    /// The response being written.
    out: Vec<u8>,
    timer: LazyTimer,
    send_timeout: Duration,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    /// Reads more of the next head, unless the client closes, `deadline` passes or shutdown begins
    /// (`stopping` resolves; it is not polled again after).
    async fn read_more(
        &mut self,
        deadline: Instant,
        shutdown: &watch::Receiver<bool>,
        stopping: Pin<&mut impl Future<Output = ()>>,
    ) -> io::Result<Read> {
        if *shutdown.borrow() {
            return Ok(Read::Shutdown);
        }
        self.buf.reserve(READ_SIZE);
        let timer = &mut self.timer;
        tokio::select! {
            biased;
            read = self.io.read_buf(&mut self.buf) => {
                Ok(if read? == 0 { Read::Eof } else { Read::Data })
            }
            () = std::future::poll_fn(|cx| timer.poll_due(deadline, cx)) => Ok(Read::TimedOut),
            () = stopping => Ok(Read::Shutdown),
        }
    }

    /// Writes `response`; `Ok(false)` when the connection must close after it.
    async fn write_response(
        &mut self,
        response: Response<ProxyBody>,
        head_only: bool,
        keep_alive: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let lines = take_lines(&mut body);
        let framing = Framing::new(&parts, &lines.relayed, head_only, body.size_hint().exact());
        self.out.clear();
        write_head(&mut self.out, &parts, &lines, framing, keep_alive);
        if !framing.has_body() {
            drop(body);
            self.flush().await?;
            return Ok(keep_alive);
        }
        let chunked = framing == Framing::Chunked;
        loop {
            // A frame already there joins the buffer; otherwise send what we have, then wait.
            let frame = match poll_now(&mut body) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.flush().await?;
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers are not relayed.
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    // The backend failed mid-body: the client must see a truncated response,
                    // never one that looks whole.
                    tracing::debug!(error = %e, "response body failed; closing the connection");
                    self.flush().await?;
                    return Ok(false);
                }
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                write_chunk_size(&mut self.out, data.len());
            }
            if data.len() >= COPY_LIMIT {
                self.flush().await?;
                send(&mut self.io, &mut self.timer, self.send_timeout, &data).await?;
            } else {
                self.out.extend_from_slice(&data);
            }
            if chunked {
                self.out.extend_from_slice(b"\r\n");
            }
        }
        if chunked {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        self.flush().await?;
        Ok(keep_alive)
    }

    /// Sends the buffered response bytes and flushes the stream (TLS buffers records). One
    /// future with none nested: it is made for every response, and nested ones are moved whole.
    async fn flush(&mut self) -> io::Result<()> {
        let Self {
            io,
            out,
            timer,
            send_timeout,
            ..
        } = self;
        let (mut sent, mut deadline) = (0, None);
        let flushed = std::future::poll_fn(|cx| {
            let ready = match poll_send(io, out, &mut sent, &mut deadline, cx) {
                Poll::Ready(Ok(())) => Pin::new(&mut *io).poll_flush(cx),
                other => other,
            };
            match ready {
                Poll::Ready(result) => Poll::Ready(result),
                Poll::Pending => waited(timer, &mut deadline, *send_timeout, cx),
            }
        })
        .await;
        out.clear();
        flushed
    }

    fn into_prefixed(self) -> Prefixed<T> {
        Prefixed {
            prefix: self.buf.freeze(),
            io: self.io,
        }
    }
}

type Polled<B> = Poll<Option<Result<http_body::Frame<<B as Body>::Data>, <B as Body>::Error>>>;

/// Writes all of `bytes`; fails when the client accepts nothing for `limit`.
async fn send<T: AsyncWrite + Unpin>(
    io: &mut T,
    timer: &mut LazyTimer,
    limit: Duration,
    bytes: &[u8],
) -> io::Result<()> {
    let (mut sent, mut deadline) = (0, None);
    std::future::poll_fn(
        |cx| match poll_send(io, bytes, &mut sent, &mut deadline, cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => waited(timer, &mut deadline, limit, cx),
        },
    )
    .await
}

/// Writes `bytes` from `sent` on; `Ready(Ok)` once all are written. Progress clears `deadline`:
/// the send timeout bounds each wait, not the whole response.
fn poll_send<T: AsyncWrite + Unpin>(
    io: &mut T,
    bytes: &[u8],
    sent: &mut usize,
    deadline: &mut Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while let Some(rest) = bytes.get(*sent..).filter(|rest| !rest.is_empty()) {
        match ready!(Pin::new(&mut *io).poll_write(cx, rest)) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                *sent += n;
                *deadline = None;
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

/// An operation is pending: `TimedOut` once it has waited `limit` (the deadline is taken at the
/// first wait, so an operation that completes at once reads no clock).
fn waited<R>(
    timer: &mut LazyTimer,
    deadline: &mut Option<Instant>,
    limit: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<R>> {
    let due = *deadline.get_or_insert_with(|| Instant::now() + limit);
    timer.poll_due(due, cx).map(|()| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client accepted no response bytes within the send timeout",
        ))
    })
}

/// Polls `body` once without waiting.
fn poll_now<B: Body + Unpin>(body: &mut B) -> Polled<B> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    Pin::new(body).poll_frame(&mut cx)
}

/// How the response is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body, headers as they are: 1xx, 204, 304, or a HEAD answer that states its length.
    Keep,
    /// `Content-Length: n` (replacing the response's own); a body follows unless `head_only`.
    Length { n: u64, head_only: bool },
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl Framing {
    fn new(
        parts: &http::response::Parts,
        relayed: &RawHeaders,
        head_only: bool,
        exact: Option<u64>,
    ) -> Self {
        let status = parts.status;
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Self::Keep;
        }
        if head_only {
            // The backend's Content-Length describes the representation and stays; a HEAD
            // answer made by the proxy (a problem) states its body's length, as hyper does.
            return match exact {
                Some(n)
                    if !parts.headers.contains_key(header::CONTENT_LENGTH)
                        && !relayed.contains(b"content-length") =>
                {
                    Self::Length { n, head_only }
                }
                _ => Self::Keep,
            };
        }
        exact.map_or(Self::Chunked, |n| Self::Length { n, head_only })
    }

    fn has_body(self) -> bool {
        matches!(
            self,
            Self::Chunked
                | Self::Length {
                    head_only: false,
                    ..
                }
        )
    }
}

/// The status line and headers: the map's, the proxy's own lines, then the relayed lines
/// neither overrides; framing headers from `framing`; `Date` added when missing.
fn write_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    lines: &ResponseLines,
    framing: Framing,
    keep_alive: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    let keep_length = framing == Framing::Keep;
    for (name, value) in &parts.headers {
        let framing_header = name == header::CONTENT_LENGTH && !keep_length;
        if framing_header || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(lines.own.as_bytes());
    let mut has_date = parts.headers.contains_key(header::DATE);
    for line in lines.relayed.lines() {
        if line.name.eq_ignore_ascii_case(b"content-length") && !keep_length
            || raw_headers::map_has(&parts.headers, line.name)
            || lines.own.contains(line.name)
        {
            continue;
        }
        has_date |= line.name.eq_ignore_ascii_case(b"date");
        out.extend_from_slice(line.name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(line.value);
        out.extend_from_slice(b"\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        crate::http1::date::write_http_date_now(out);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length { n, .. } => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Keep => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn write_chunk_size(out: &mut Vec<u8>, len: usize) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}

/// A connection handed to hyper: the bytes this engine read but did not serve come first.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Bytes,
    io: T,
}

impl<T> Prefixed<T> {
    /// `io`, whose first bytes are `prefix`.
    pub fn new(prefix: Bytes, io: T) -> Self {
        Self { prefix, io }
    }

    /// The bytes read but not served, and the connection.
    pub fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.io)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn classify(head: &str) -> &'static str {
        match parse(&mut BytesMut::from(head), 8192) {
            Parsed::Request(h) if h.close => "serve, then close",
            Parsed::Request(_) => "serve",
            Parsed::Partial => "partial",
            Parsed::Handoff => "hyper",
        }
    }

    #[test]
    fn bodiless_http_1_1_requests_are_served_here_and_the_rest_go_to_hyper() {
        let cases = [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "serve"),
            (
                "DELETE /x?y=1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                "serve",
            ),
            (
                "GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
                "serve, then close",
            ),
            ("GET / HTTP/1.1\r\nHost: a\r\n", "partial"),
            ("GE", "partial"),
            ("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", "hyper"),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "hyper",
            ),
            (
                "GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: x\r\n\r\n",
                "hyper",
            ),
            (
                "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                "hyper",
            ),
            ("PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", "hyper"),
            ("GET / HTTP/1.0\r\n\r\n", "hyper"),
            ("CONNECT a:443 HTTP/1.1\r\n\r\n", "hyper"),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "hyper"),
            ("GET / HTTP/1.1\r\nBad Header\r\n\r\n", "hyper"),
        ];
        for (head, expected) in cases {
            assert_eq!(classify(head), expected, "{head:?}");
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect();
        assert_eq!(classify(&format!("GET / HTTP/1.1\r\n{many}\r\n")), "hyper");
        let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(9000));
        assert_eq!(
            classify(&huge),
            "hyper",
            "an oversized partial head goes to hyper's 431"
        );
    }

    #[test]
    fn a_target_http_refuses_goes_to_hyper_with_the_whole_input() {
        let input = "GET http://[::1/x HTTP/1.1\r\nHost: a\r\n\r\nGET /next";
        let mut buf = BytesMut::from(input);
        assert!(matches!(parse(&mut buf, 8192), Parsed::Handoff));
        assert_eq!(&buf[..], input.as_bytes());
    }

    #[test]
    fn a_served_head_becomes_a_request_with_its_headers() {
        let mut input = BytesMut::from(
            &b"GET /v1/x?q=1 HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: k\r\nAccept: a\r\nAccept: b\r\n\r\nGET /next"[..],
        );
        let Parsed::Request(head) = parse(&mut input, 8192) else {
            panic!("served");
        };
        let req = head.request;
        assert_eq!(
            &input[..],
            b"GET /next",
            "the head is taken; the next request stays"
        );
        assert_eq!(
            (req.method(), req.uri().path(), req.uri().query()),
            (&Method::GET, "/v1/x", Some("q=1"))
        );
        assert!(req.headers().is_empty(), "no map: the lines are kept");
        let lines: Vec<_> = head.raw.lines().map(|l| (l.name, l.value)).collect();
        assert_eq!(
            lines,
            [
                (&b"Host"[..], &b"api.test"[..]),
                (b"X-Api-Key", b"k"),
                (b"Accept", b"a"),
                (b"Accept", b"b"),
            ]
        );
    }

    #[test]
    fn response_framing_follows_the_method_status_and_body() {
        let parts = |status: u16, length: Option<&str>| {
            let mut r = Response::new(());
            *r.status_mut() = StatusCode::from_u16(status).expect("status");
            if let Some(l) = length {
                r.headers_mut().insert(
                    header::CONTENT_LENGTH,
                    HeaderValue::from_str(l).expect("value"),
                );
            }
            r.into_parts().0
        };
        let head = |status, length, head_only, exact| {
            let mut out = Vec::new();
            let none = ResponseLines::default();
            let framing = Framing::new(&parts(status, length), &none.relayed, head_only, exact);
            write_head(&mut out, &parts(status, length), &none, framing, true);
            (String::from_utf8(out).expect("text"), framing.has_body())
        };
        let (text, body) = head(200, Some("99"), false, Some(2));
        assert!(
            text.contains("content-length: 2\r\n") && !text.contains("99") && body,
            "{text}"
        );
        let (text, body) = head(200, None, false, None);
        assert!(
            text.contains("transfer-encoding: chunked\r\n") && body,
            "{text}"
        );
        let (text, body) = head(200, Some("12"), true, Some(0));
        assert!(text.contains("content-length: 12\r\n") && !body, "{text}");
        let (text, body) = head(401, None, true, Some(300));
        assert!(text.contains("content-length: 300\r\n") && !body, "{text}");
        let (text, body) = head(204, None, false, Some(0));
        assert!(!text.contains("content-length") && !body, "{text}");
        let (text, body) = head(304, Some("5"), false, Some(0));
        assert!(text.contains("content-length: 5\r\n") && !body, "{text}");
        assert!(
            text.starts_with("HTTP/1.1 304 Not Modified\r\n") && text.contains("\r\ndate: "),
            "{text}"
        );
    }

    #[test]
    fn relayed_headers_follow_the_maps_and_yield_to_them() {
        let mut r = Response::new(());
        r.headers_mut()
            .insert("ratelimit", HeaderValue::from_static("\"ours\";r=1"));
        let parts = r.into_parts().0;
        let mut relayed = crate::http1::raw_headers::RawHeadersBuilder::with_capacity(128);
        for (name, value) in [
            ("Content-Type", "text/plain"),
            ("RateLimit", "\"backend\";r=9"),
            ("Content-Length", "12"),
            ("Date", "Tue, 24 Nov 2026 10:00:00 GMT"),
        ] {
            relayed.push(name.as_bytes(), value.as_bytes());
        }
        let lines = ResponseLines {
            own: Default::default(),
            relayed: relayed.finish(),
        };
        let head = |head_only, exact| {
            let framing = Framing::new(&parts, &lines.relayed, head_only, exact);
            let mut out = Vec::new();
            write_head(&mut out, &parts, &lines, framing, true);
            String::from_utf8(out).expect("text")
        };
        // A GET: the body's length replaces the relayed one; the backend's Date is kept.
        let text = head(false, Some(2));
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nratelimit: \"ours\";r=1\r\nContent-Type: text/plain\r\n\
             Date: Tue, 24 Nov 2026 10:00:00 GMT\r\ncontent-length: 2\r\n\r\n"
        );
        // A HEAD: the relayed length describes the representation and stays.
        let text = head(true, Some(0));
        assert!(text.contains("Content-Length: 12\r\n"), "{text}");
        assert!(!text.contains("content-length: 0"), "{text}");
    }
}

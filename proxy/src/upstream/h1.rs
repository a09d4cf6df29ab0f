//! HTTP/1.1 exchanges with plain-HTTP backends driven by the request's own task.
//!
//! hyper's client connection runs in a task of its own: every request crosses to it and back
//! through channels, and its response body through another (three task hand-offs per request).
//! Here the task serving the client writes the request head and reads the response itself; the
//! response body is read from the socket as the server polls it. Only requests without a body
//! and with an idempotent method take this path (a stale pooled connection is retried once,
//! which is safe only for those); the others go through hyper's client connection.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Version};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http1::raw_headers::{LineIndex, RawHeaders};
use crate::http1::timer::LazyTimer;
use crate::upstream::forward::{HopByHop, raw_connection_tokens};

/// A response head larger than this is refused (the same bound as hyper's default).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const READ_SIZE: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("backend I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("backend closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("malformed backend response: {0}")]
    Malformed(&'static str),
    /// The response head did not arrive by the route's deadline.
    #[error("backend did not answer in time")]
    TimedOut,
}

/// An open connection to a backend, with what was read ahead of the current message.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// Bounds each exchange's wait for the head (the route's timeout); set at the first wait and
    /// kept while the connection is pooled, so exchanges rarely touch the timer wheel.
    timer: Option<LazyTimer>,
}

impl Conn {
    /// A fresh connection.
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
            timer: None,
        }
    }

    /// `Poll::Ready` once `due` has passed.
    fn poll_due(&mut self, due: Instant, cx: &mut Context<'_>) -> Poll<()> {
        self.timer
            .get_or_insert_with(|| LazyTimer::new(due))
            .poll_due(due, cx)
    }

    /// Whether an idle connection can carry a new request: nothing arrived on it since its last
    /// response (no unsolicited 408, no close). Asks the reactor's cached readiness, no syscall.
    pub fn is_clean(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.io.poll_read_ready(&mut cx).is_pending()
    }
}

/// Whether `req` can take the inline path: no body, and a method that may be retried.
pub fn eligible<B: http_body::Body>(req: &Request<B>) -> bool {
    req.body().size_hint().exact() == Some(0)
        && matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
        )
}

/// How the response body is delimited.
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// Until the backend closes (HTTP/1.0 style); the connection cannot be reused.
    UntilClose,
}

/// Sends `head` on `conn` and reads the response head, by `due`. `Err(ClosedBeforeAnswer)`:
/// nothing came back (a pooled connection the backend had closed).
pub async fn exchange(
    mut conn: Conn,
    head: &[u8],
    method: &Method,
    due: Instant,
) -> Result<Response<InlineBody>, ExchangeError> {
    write_all(&mut conn, head, due).await?;
    loop {
        let parsed = parse_head(&mut conn.buf)?;
        let Some(head) = parsed else {
            if conn.buf.len() > MAX_HEAD {
                return Err(ExchangeError::Malformed("response head too large"));
            }
            conn.buf.reserve(READ_SIZE);
            let before = conn.buf.len();
            let n = read_more(&mut conn, due).await?;
            if n == 0 {
                return Err(if before == 0 {
                    ExchangeError::ClosedBeforeAnswer
                } else {
                    ExchangeError::Malformed("connection closed inside the response head")
                });
            }
            continue;
        };
        // 1xx interim responses (100 Continue, 103 Early Hints) precede the real one.
        if head.status.is_informational() {
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ExchangeError::Malformed(
                    "protocol upgrades are not proxied",
                ));
            }
            continue;
        }
        let Head {
            status,
            relayed,
            version,
            chunked,
            content_length,
            close,
        } = head;
        let framing = framing(method, status, chunked, content_length)?;
        let keep_alive =
            version == Version::HTTP_11 && !matches!(framing, Framing::UntilClose) && !close;
        let mut resp = Response::new(InlineBody {
            conn: Some(conn),
            framing,
            keep_alive,
            ended: None,
            relayed,
        });
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        if resp.body().framing_done() {
            resp.body_mut().end();
        }
        return Ok(resp);
    }
}

async fn read_more(conn: &mut Conn, due: Instant) -> Result<usize, ExchangeError> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(read) =
            tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
        {
            return Poll::Ready(read.map_err(ExchangeError::Io));
        }
        conn.poll_due(due, cx)
            .map(|()| Err(ExchangeError::TimedOut))
    })
    .await
}

/// Writes all of `bytes` (a request head: nearly always one `write` that completes at once).
async fn write_all(conn: &mut Conn, mut bytes: &[u8], due: Instant) -> Result<(), ExchangeError> {
    std::future::poll_fn(|cx| {
        while !bytes.is_empty() {
            match Pin::new(&mut conn.io).poll_write(cx, bytes) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(ExchangeError::Io(
                        std::io::ErrorKind::WriteZero.into(),
                    )));
                }
                Poll::Ready(Ok(n)) => bytes = &bytes[n..],
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Io(e))),
                Poll::Pending => {
                    return conn
                        .poll_due(due, cx)
                        .map(|()| Err(ExchangeError::TimedOut));
                }
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

/// A backend response head.
struct Head {
    status: StatusCode,
    /// End-to-end headers only: hop-by-hop ones are read here and never relayed.
    relayed: RawHeaders,
    version: Version,
    /// `Transfer-Encoding`: whether its last coding is chunked (`None`: no such header).
    chunked: Option<bool>,
    content_length: ContentLength,
    /// `Connection: close`.
    close: bool,
}

/// Parses a complete response head at the start of `buf` (and consumes it), or `None` when more
/// bytes are needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, ExchangeError> {
    // Left uninitialized: filling 128 empty headers first cost as much as parsing the head.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ExchangeError::Malformed("unparseable response head")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ExchangeError::Malformed("bad status code"))?;
    let version = if parsed.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Hop-by-hop headers first: they decide framing and reuse, and are not relayed.
    let (mut chunked, mut close, mut named) = (None, false, Vec::new());
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // RFC 9112 6.3: chunked must be the last coding; anything else is read to the close.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in raw_connection_tokens(h.value) {
                if &*token == b"close" {
                    close = true;
                } else if !HopByHop::fixed(&token) {
                    named.push(token);
                }
            }
        }
    }
    let relayed = |h: &&httparse::Header<'_>| {
        let name = h.name.as_bytes();
        !HopByHop::fixed_any_case(name) && !named.iter().any(|n| n.eq_ignore_ascii_case(name))
    };
    let mut content_length = ContentLength::Absent;
    for h in parsed.headers.iter().filter(relayed) {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = match content_length {
                ContentLength::Absent => std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .map_or(ContentLength::Bad, ContentLength::Value),
                _ => ContentLength::Several,
            };
        }
    }
    let lines = LineIndex::of(buf, parsed.headers.iter().filter(relayed));
    // The relayed lines stay in the bytes they came in (no copy); the read buffer's memory is
    // reused once the response has been written.
    let head = buf.split_to(len).freeze();
    Ok(Some(Head {
        status,
        relayed: RawHeaders::received(head, lines),
        version,
        chunked,
        content_length,
        close,
    }))
}

/// A response's `Content-Length` header(s).
#[derive(Debug, Clone, Copy)]
enum ContentLength {
    Absent,
    Value(u64),
    /// Not a number.
    Bad,
    /// More than one header.
    Several,
}

fn framing(
    method: &Method,
    status: StatusCode,
    chunked: Option<bool>,
    content_length: ContentLength,
) -> Result<Framing, ExchangeError> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Length(0));
    }
    if let Some(chunked) = chunked {
        return Ok(if chunked {
            Framing::Chunked(Chunked::Size)
        } else {
            Framing::UntilClose
        });
    }
    match content_length {
        ContentLength::Absent => Ok(Framing::UntilClose),
        ContentLength::Value(n) => Ok(Framing::Length(n)),
        ContentLength::Bad => Err(ExchangeError::Malformed("bad Content-Length")),
        ContentLength::Several => Err(ExchangeError::Malformed("several Content-Length headers")),
    }
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

const MAX_LINE: usize = 4096;

impl Chunked {
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ExchangeError> {
        loop {
            match *self {
                Self::Size | Self::Trailers => {
                    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() > MAX_LINE {
                            return Err(ExchangeError::Malformed("chunk line too long"));
                        }
                        return Ok(Step::NeedMore);
                    };
                    let line = buf.split_to(eol + 2);
                    let line = &line[..eol];
                    if *self == Self::Trailers {
                        if line.is_empty() {
                            *self = Self::Done;
                        }
                        continue;
                    }
                    let size = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(size)
                        .ok()
                        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                        .ok_or(ExchangeError::Malformed("bad chunk size"))?;
                    *self = if size == 0 {
                        Self::Trailers
                    } else {
                        Self::Data(size)
                    };
                }
                Self::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    *self = if left == 0 {
                        Self::DataEnd
                    } else {
                        Self::Data(left)
                    };
                    return Ok(Step::Data(data));
                }
                Self::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ExchangeError::Malformed("chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Self::Size;
                }
                Self::Done => return Ok(Step::End),
            }
        }
    }
}

/// A response body read from the backend socket as it is polled. When it ends cleanly on a
/// reusable connection, the connection is handed to `on_end` (the pool).
#[derive(Debug)]
pub struct InlineBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    /// The connection, back for reuse, once the body has ended (taken by the pool).
    ended: Option<Conn>,
    /// The response's headers, relayed as they came (the response's map is left empty).
    relayed: RawHeaders,
}

impl InlineBody {
    /// The backend's headers, relayed as bytes.
    pub fn relayed_headers(&self) -> &RawHeaders {
        &self.relayed
    }

    /// Takes the backend's headers, for writing or for the response's map.
    pub fn take_relayed_headers(&mut self) -> RawHeaders {
        std::mem::take(&mut self.relayed)
    }

    fn framing_done(&self) -> bool {
        matches!(self.framing, Framing::Length(0))
    }

    /// The body is complete: keep the connection for reuse if it can be.
    fn end(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            self.ended = Some(conn);
        }
    }

    /// The connection, if the body ended cleanly and the connection can serve another request.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        self.ended.take()
    }

    /// Whether the whole body has been read.
    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    /// Exact length when the backend gave one.
    pub fn size_hint(&self) -> http_body::SizeHint {
        match (&self.framing, &self.conn) {
            (_, None) => http_body::SizeHint::with_exact(0),
            (Framing::Length(n), Some(_)) => http_body::SizeHint::with_exact(*n),
            _ => http_body::SizeHint::default(),
        }
    }

    /// The next piece of the body; `None` at its end.
    pub fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, ExchangeError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match &mut self.framing {
                Framing::Length(0) => Step::End,
                Framing::Length(left) => {
                    if conn.buf.is_empty() {
                        Step::NeedMore
                    } else {
                        let take = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        *left -= take as u64;
                        Step::Data(conn.buf.split_to(take).freeze())
                    }
                }
                Framing::Chunked(state) => match state.step(&mut conn.buf) {
                    Ok(step) => step,
                    Err(e) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Framing::UntilClose => {
                    if conn.buf.is_empty() {
                        Step::NeedMore
                    } else {
                        Step::Data(conn.buf.split().freeze())
                    }
                }
            };
            match step {
                Step::Data(data) => {
                    if matches!(self.framing, Framing::Length(0)) {
                        self.end();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Step::End => {
                    self.end();
                    return Poll::Ready(None);
                }
                Step::NeedMore => {
                    conn.buf.reserve(READ_SIZE);
                    let read = ready!(tokio_util::io::poll_read_buf(
                        Pin::new(&mut conn.io),
                        cx,
                        &mut conn.buf
                    ));
                    match read {
                        Ok(0) if matches!(self.framing, Framing::UntilClose) => {
                            self.conn = None;
                            return Poll::Ready(None);
                        }
                        Ok(0) => {
                            self.conn = None;
                            return Poll::Ready(Some(Err(ExchangeError::Malformed(
                                "connection closed inside the response body",
                            ))));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            self.conn = None;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(wire: &[u8], split: usize) -> Result<Vec<u8>, ExchangeError> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                match state.step(&mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::NeedMore => break,
                    Step::End => return Ok(out),
                }
            }
        }
        Err(ExchangeError::Malformed("incomplete"))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for split in 1..wire.len() {
            assert_eq!(
                decode_all(wire, split).ok().as_deref(),
                Some(&b"hello, world"[..]),
                "split {split}"
            );
        }
        assert!(decode_all(b"zz\r\n", 4).is_err());
        assert!(decode_all(b"2\r\nabXY", 8).is_err());
    }

    /// The framing a raw response head gets, and the headers that reach the client.
    fn head_of(method: &Method, raw: &str) -> (Result<Framing, ExchangeError>, Vec<String>, bool) {
        let mut buf = BytesMut::from(raw);
        let head = parse_head(&mut buf)
            .expect("parses")
            .expect("complete head");
        let kept = head
            .relayed
            .lines()
            .map(|l| String::from_utf8_lossy(l.name).to_ascii_lowercase())
            .collect();
        (
            framing(method, head.status, head.chunked, head.content_length),
            kept,
            head.close,
        )
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = |raw: &str| head_of(&Method::GET, raw).0;
        assert!(matches!(
            get("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        ));
        assert!(matches!(
            head_of(
                &Method::HEAD,
                "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"
            )
            .0,
            Ok(Framing::Length(0))
        ));
        assert!(matches!(
            get("HTTP/1.1 204 No Content\r\n\r\n"),
            Ok(Framing::Length(0))
        ));
        assert!(matches!(
            get("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 3\r\n\r\n"),
            Ok(Framing::Chunked(_))
        ));
        assert!(matches!(
            get("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Ok(Framing::UntilClose)
        ));
        assert!(matches!(
            get("HTTP/1.1 200 OK\r\n\r\n"),
            Ok(Framing::UntilClose)
        ));
        assert!(get("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(get("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn hop_by_hop_headers_are_read_but_not_relayed() {
        let (_, kept, close) = head_of(
            &Method::GET,
            "HTTP/1.1 200 OK\r\nX-Secret: 1\r\nConnection: keep-alive, X-Secret, Close\r\n\
             Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nServer: s\r\nX-Kept: 2\r\n\r\n",
        );
        assert!(close);
        assert_eq!(kept, ["server", "x-kept"]);
        let (_, kept, close) = head_of(
            &Method::GET,
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
        );
        assert!(!close);
        assert_eq!(kept, ["content-length"]);
    }
}

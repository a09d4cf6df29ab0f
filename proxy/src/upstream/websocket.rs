//! A WebSocket connection relayed between a client and a backend once both sides upgraded.
//!
//! Bytes are copied both ways as they come. Each direction's frame boundaries are followed (the
//! headers read, payloads passed through untouched), so the proxy can end a connection the way
//! the protocol wants (RFC 6455 section 7): a close frame written between two frames, never
//! inside one, to the client (unmasked, as a server writes) and to the backend (masked, as a
//! client writes). It does so on shutdown, and when the route's idle or lifetime limit is
//! reached; then it waits a moment for both sides to close their ends.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long the proxy waits for each side to close after it sent its close frame, and for a
/// frame in progress to end before the close frame can follow it.
const CLOSING_GRACE: Duration = Duration::from_secs(5);

/// The close code for a connection the proxy ends: 1001, going away (RFC 6455 section 7.4.1).
pub const GOING_AWAY: u16 = 1001;

/// Whether `req` asks to become a WebSocket (RFC 6455 section 4.1: a GET whose `Upgrade` names
/// websocket and whose `Connection` names upgrade).
pub fn is_upgrade<B>(req: &http::Request<B>) -> bool {
    let names = |name: http::header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.method() == http::Method::GET
        && names(http::header::UPGRADE, "websocket")
        && names(http::header::CONNECTION, "upgrade")
}

/// What an HTTP/2 `CONNECT` with a `:protocol` (RFC 8441's extended CONNECT) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtendedConnect {
    /// Not an extended CONNECT.
    No,
    /// A WebSocket: now in the shape of the HTTP/1.1 upgrade it stands for.
    WebSocket,
    /// Another protocol (`connect-udp`, `webtransport`...): not carried.
    Other,
}

/// Turns an HTTP/2 WebSocket request (RFC 8441: `CONNECT` with the `:protocol` websocket) into
/// the HTTP/1.1 upgrade it stands for (a `GET` with `Upgrade: websocket` and `Connection:
/// upgrade`), so that it is routed, checked and forwarded as one.
pub fn from_extended_connect<B>(req: &mut http::Request<B>) -> ExtendedConnect {
    if req.method() != http::Method::CONNECT {
        return ExtendedConnect::No;
    }
    let Some(protocol) = req.extensions().get::<hyper::ext::Protocol>() else {
        return ExtendedConnect::No;
    };
    if !protocol.as_str().eq_ignore_ascii_case("websocket") {
        return ExtendedConnect::Other;
    }
    *req.method_mut() = http::Method::GET;
    let headers = req.headers_mut();
    headers.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    ExtendedConnect::WebSocket
}

/// A fresh `Sec-WebSocket-Key` (RFC 6455 section 4.1: 16 random bytes, base64), for the backend
/// hop of an HTTP/2 WebSocket, whose client sends none.
pub fn new_key() -> String {
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    for chunk in nonce.chunks_mut(4) {
        chunk.copy_from_slice(&mask());
    }
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

/// The `Sec-WebSocket-Accept` a server answers `key` with (RFC 6455 section 4.2.2).
pub fn accept_for(key: &str) -> String {
    use base64::Engine as _;
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Limits on one relayed connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Closed after this long without a byte either way.
    pub idle: Duration,
    /// Closed this long after it opened, busy or not.
    pub lifetime: Duration,
}

/// Why a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed (or its connection failed).
    Client,
    /// The backend closed (or its connection failed).
    Backend,
    /// Nothing either way for the idle limit.
    Idle,
    /// Open for the lifetime limit.
    Lifetime,
    /// The proxy is shutting down.
    Shutdown,
}

impl End {
    /// The label of the connections metric.
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client_closed",
            Self::Backend => "backend_closed",
            Self::Idle => "idle_timeout",
            Self::Lifetime => "lifetime_limit",
            Self::Shutdown => "shutdown",
        }
    }

    /// The reason sent in the proxy's close frame.
    fn reason(self) -> &'static str {
        match self {
            Self::Idle => "idle timeout",
            Self::Lifetime => "connection lifetime limit",
            _ => "server shutting down",
        }
    }
}

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the backend.
    FromClient,
    /// From the backend to the client.
    FromBackend,
}

/// Bytes relayed each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// From the client to the backend.
    pub from_client: u64,
    /// From the backend to the client.
    pub from_backend: u64,
}

/// Follows the frame boundaries of one direction's bytes.
#[derive(Debug, Default)]
pub struct Frames {
    /// The header read so far (at most 14 bytes: 2, an extended length of 8, a mask of 4).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// A close frame went by: that side is closing.
    pub close_seen: bool,
}

impl Frames {
    /// Follows `bytes`, the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have >= 2 && self.have == header_len(self.header[1]) {
                self.payload_left = payload_len(&self.header[..self.have]);
                if self.header[0] & 0x0F == 0x8 {
                    self.close_seen = true;
                }
                self.have = 0;
            }
        }
    }

    /// Whether the bytes so far end on a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }
}

/// A frame header's length from its second byte: 2, then 2 or 8 bytes of extended length, then
/// 4 of mask when masked.
fn header_len(second: u8) -> usize {
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// The payload length a complete header announces.
fn payload_len(header: &[u8]) -> u64 {
    match header[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    }
}

/// A close frame with `code` and `reason`, masked with `mask` when given (a client's frame).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    // A control frame's payload is at most 125 bytes: 2 of code, the reason cut to fit.
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    let mut frame = vec![0x88];
    let len = payload.len() as u8;
    match mask {
        None => {
            frame.push(len);
            frame.extend_from_slice(&payload);
        }
        Some(mask) => {
            frame.push(0x80 | len);
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
    }
    frame
}

/// A mask for the proxy's close frame to the backend (RFC 6455 section 5.3: from a strong
/// source; std's randomly keyed hasher, seeded from the operating system, is one).
fn mask() -> [u8; 4] {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u64(0);
    let bits = hasher.finish();
    [
        bits as u8,
        (bits >> 8) as u8,
        (bits >> 16) as u8,
        (bits >> 24) as u8,
    ]
}

/// `from + by`, or far in the future when that overflows.
fn after(from: Instant, by: Duration) -> Instant {
    from.checked_add(by)
        .unwrap_or_else(|| from + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Relays between `client` and `backend` until both sides closed, a limit is reached, or `stop`
/// turns true; then closes both ends. What ended it, and the bytes relayed each way (told to
/// `counted` as they go, for metrics of connections still open).
///
/// A side that closes its end (EOF) has the other side's writer shut after it, and the other
/// direction goes on until it closes too (a close handshake: one side's close frame, then
/// the other's). A write that cannot complete (a peer that stopped reading) is bounded by the
/// same limits as the reads.
pub async fn relay<C, B>(
    client: C,
    backend: B,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    mut counted: impl FnMut(Direction, u64),
) -> (End, Relayed)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut backend_read, mut backend_write) = tokio::io::split(backend);
    let mut to_backend = vec![0u8; 16 * 1024];
    let mut to_client = vec![0u8; 16 * 1024];
    let mut from_client = Frames::default();
    let mut from_backend = Frames::default();
    let mut relayed = Relayed::default();
    let opened = Instant::now();
    let lifetime_due = after(opened, limits.lifetime);
    let mut last_byte = opened;
    // Which side closed first, once one did.
    let mut first_closed: Option<End> = None;
    let (mut client_open, mut backend_open) = (true, true);
    // Bytes read from a side but not yet written to the other when a limit or shutdown cut a
    // write short (ranges of `to_backend` and `to_client`): the frame they belong to is
    // finished from them before anything more is read.
    let (mut client_unsent, mut backend_unsent) = (0..0, 0..0);
    let end = loop {
        if !client_open && !backend_open {
            break first_closed.unwrap_or(End::Client);
        }
        let idle_due = after(last_byte, limits.idle);
        let due = idle_due.min(lifetime_due);
        let limit = if idle_due <= lifetime_due {
            End::Idle
        } else {
            End::Lifetime
        };
        tokio::select! {
            read = client_read.read(&mut to_backend), if client_open => match read {
                Ok(n) if n > 0 => {
                    let mut sent = 0;
                    let write = send(&mut backend_write, &to_backend[..n], &mut from_client, &mut sent);
                    let written = bounded(write, due, &mut stop).await;
                    relayed.from_client += sent as u64;
                    counted(Direction::FromClient, sent as u64);
                    match written {
                        Ok(true) => last_byte = Instant::now(),
                        Ok(false) => break End::Backend,
                        Err(why) => {
                            client_unsent = sent..n;
                            break why.unwrap_or(limit);
                        }
                    }
                }
                _ => {
                    client_open = false;
                    first_closed.get_or_insert(End::Client);
                    let _ = tokio::time::timeout(CLOSING_GRACE, backend_write.shutdown()).await;
                }
            },
            read = backend_read.read(&mut to_client), if backend_open => match read {
                Ok(n) if n > 0 => {
                    let mut sent = 0;
                    let write = send(&mut client_write, &to_client[..n], &mut from_backend, &mut sent);
                    let written = bounded(write, due, &mut stop).await;
                    relayed.from_backend += sent as u64;
                    counted(Direction::FromBackend, sent as u64);
                    match written {
                        Ok(true) => last_byte = Instant::now(),
                        Ok(false) => break End::Client,
                        Err(why) => {
                            backend_unsent = sent..n;
                            break why.unwrap_or(limit);
                        }
                    }
                }
                _ => {
                    backend_open = false;
                    first_closed.get_or_insert(End::Backend);
                    let _ = tokio::time::timeout(CLOSING_GRACE, client_write.shutdown()).await;
                }
            },
            () = tokio::time::sleep_until(due) => break limit,
            () = stopping(&mut stop) => break End::Shutdown,
        }
    };
    if matches!(end, End::Idle | End::Lifetime | End::Shutdown) {
        let finish = async {
            // A side whose peer already sent its close frame gets none from the proxy (a frame
            // after a close breaks RFC 6455 section 5.5.1); a frame in progress is finished first,
            // and a close frame that cannot follow a whole frame is not written at all.
            if client_open && !from_backend.close_seen {
                let sent = finish_frame(
                    &mut backend_read,
                    &mut client_write,
                    &mut from_backend,
                    &mut to_client,
                    backend_unsent,
                )
                .await;
                relayed.from_backend += sent;
                counted(Direction::FromBackend, sent);
                if from_backend.at_boundary() {
                    let _ = client_write
                        .write_all(&close_frame(GOING_AWAY, end.reason(), None))
                        .await;
                }
            }
            if backend_open && !from_client.close_seen {
                let sent = finish_frame(
                    &mut client_read,
                    &mut backend_write,
                    &mut from_client,
                    &mut to_backend,
                    client_unsent,
                )
                .await;
                relayed.from_client += sent;
                counted(Direction::FromClient, sent);
                if from_client.at_boundary() {
                    let _ = backend_write
                        .write_all(&close_frame(GOING_AWAY, end.reason(), Some(mask())))
                        .await;
                }
            }
            // Each side answers with its own close frame and closes: read (and drop) until then.
            let drain_client = async {
                while client_open
                    && matches!(client_read.read(&mut to_backend).await, Ok(n) if n > 0)
                {
                }
            };
            let drain_backend = async {
                while backend_open
                    && matches!(backend_read.read(&mut to_client).await, Ok(n) if n > 0)
                {
                }
            };
            tokio::join!(drain_client, drain_backend);
        };
        let _ = tokio::time::timeout(CLOSING_GRACE * 2, finish).await;
    }
    // TLS ends write a goodbye of their own: bounded too.
    let _ = tokio::time::timeout(CLOSING_GRACE, async {
        let _ = client_write.shutdown().await;
        let _ = backend_write.shutdown().await;
    })
    .await;
    (end, relayed)
}

/// Awaits `write`, unless `due` comes first or the proxy stops: `Ok(true)` written, `Ok(false)`
/// failed (the peer went away), `Err(Some(Shutdown))` stopped, `Err(None)` the limit came.
/// A write that can complete always does, even when the limit or shutdown came at once.
async fn bounded<F>(
    write: F,
    due: Instant,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, Option<End>>
where
    F: std::future::Future<Output = std::io::Result<()>>,
{
    tokio::select! {
        biased;
        written = write => Ok(written.is_ok()),
        () = tokio::time::sleep_until(due) => Err(None),
        () = stopping(stop) => Err(Some(End::Shutdown)),
    }
}

/// Writes `bytes` to `to`, following their frames as each write takes some. `sent` counts what
/// was written, so a write cut short (its future dropped by [`bounded`]) leaves the frames and
/// the count true to what the peer received: `AsyncWrite::write` takes nothing when it is
/// dropped pending.
async fn send<W>(
    to: &mut W,
    bytes: &[u8],
    frames: &mut Frames,
    sent: &mut usize,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    while *sent < bytes.len() {
        let n = to.write(&bytes[*sent..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        frames.feed(&bytes[*sent..*sent + n]);
        *sent += n;
    }
    Ok(())
}

/// Resolves when `stop` turns true; never when no one can turn it (a connection made outside a
/// listener).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Relays from `from` to `to` until `frames` is at a boundary (or the grace ends): first what
/// `unsent` holds of `buf` (read before, not written yet), then what `from` sends. Nothing past
/// the frame's end is relayed. The bytes written.
async fn finish_frame<R, W>(
    from: &mut R,
    to: &mut W,
    frames: &mut Frames,
    buf: &mut [u8],
    mut unsent: std::ops::Range<usize>,
) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let until = Instant::now() + CLOSING_GRACE;
    let mut written = 0;
    while !frames.at_boundary() {
        // Only the rest of the frame: what follows it is not relayed any more.
        let want = if frames.payload_left > 0 {
            usize::try_from(frames.payload_left)
                .unwrap_or(usize::MAX)
                .min(buf.len())
        } else {
            1
        };
        let chunk = if unsent.is_empty() {
            match tokio::time::timeout_at(until, from.read(&mut buf[..want])).await {
                Ok(Ok(n)) if n > 0 => 0..n,
                _ => break,
            }
        } else {
            let chunk = unsent.start..unsent.start + want.min(unsent.len());
            unsent.start = chunk.end;
            chunk
        };
        let bytes = &buf[chunk];
        if to.write_all(bytes).await.is_err() {
            break;
        }
        frames.feed(bytes);
        written += bytes.len() as u64;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xFFFF => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(mask) = mask {
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    #[test]
    fn boundaries_are_followed_wherever_the_bytes_split() {
        let stream = [
            frame(1, b"hello", None),
            frame(2, &vec![7u8; 300], Some([1, 2, 3, 4])),
            frame(2, &vec![9u8; 70_000], None),
            frame(9, b"", Some([9, 9, 9, 9])),
        ]
        .concat();
        for piece in [1, 3, 64, 4096, stream.len()] {
            let mut frames = Frames::default();
            for chunk in stream.chunks(piece) {
                frames.feed(chunk);
            }
            assert!(frames.at_boundary(), "pieces of {piece}");
            assert!(!frames.close_seen);
        }
        let mut frames = Frames::default();
        frames.feed(&stream[..stream.len() - 1]);
        assert!(!frames.at_boundary());
        frames.feed(&close_frame(1000, "bye", None));
        assert!(!frames.close_seen, "inside the last frame still");
        let mut frames = Frames::default();
        frames.feed(&close_frame(1000, "bye", Some([1, 2, 3, 4])));
        assert!(frames.at_boundary() && frames.close_seen);
    }

    #[test]
    fn an_upgrade_is_a_get_naming_websocket_and_upgrade() {
        let req = |method: &str, headers: &[(&str, &str)]| {
            let mut b = http::Request::builder().method(method).uri("/ws");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).expect("a request")
        };
        assert!(is_upgrade(&req(
            "GET",
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "WebSocket")
            ]
        )));
        assert!(!is_upgrade(&req(
            "POST",
            &[("connection", "upgrade"), ("upgrade", "websocket")]
        )));
        assert!(!is_upgrade(&req("GET", &[("upgrade", "websocket")])));
        assert!(!is_upgrade(&req(
            "GET",
            &[("connection", "upgrade"), ("upgrade", "h2c")]
        )));
    }

    #[test]
    fn an_http2_websocket_becomes_the_upgrade_it_stands_for() {
        let mut req = http::Request::connect("https://api.example.com/chat")
            .extension(hyper::ext::Protocol::from_static("websocket"))
            .body(())
            .expect("request");
        assert_eq!(from_extended_connect(&mut req), ExtendedConnect::WebSocket);
        assert!(is_upgrade(&req));
        let mut tunnel = http::Request::connect("api.example.com:443")
            .body(())
            .expect("request");
        assert_eq!(
            from_extended_connect(&mut tunnel),
            ExtendedConnect::No,
            "a plain CONNECT is not one"
        );
        assert_eq!(tunnel.method(), http::Method::CONNECT);
        let mut udp = http::Request::connect("https://proxy.example.com/.well-known/masque/udp/")
            .extension(hyper::ext::Protocol::from_static("connect-udp"))
            .body(())
            .expect("request");
        assert_eq!(from_extended_connect(&mut udp), ExtendedConnect::Other);
        assert_eq!(udp.method(), http::Method::CONNECT, "left as it came");
    }

    #[test]
    fn keys_are_fresh_and_accepted_as_rfc_6455_says() {
        // RFC 6455 section 1.3's example.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let (a, b) = (new_key(), new_key());
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
    }

    #[test]
    fn a_close_frame_carries_its_code_and_a_reason_cut_to_fit() {
        assert_eq!(
            close_frame(GOING_AWAY, "bye", None),
            [0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']
        );
        let long = "x".repeat(300);
        assert_eq!(close_frame(GOING_AWAY, &long, None).len(), 2 + 125);
        let masked = close_frame(GOING_AWAY, "", Some([0xFF, 0, 0xFF, 0]));
        assert_eq!(masked, [0x88, 0x82, 0xFF, 0, 0xFF, 0, 0x03 ^ 0xFF, 0xE9]);
    }

    #[tokio::test]
    async fn a_side_that_closes_first_still_gets_the_other_sides_last_bytes() {
        let (client, mut client_peer) = tokio::io::duplex(1 << 16);
        let (backend, mut backend_peer) = tokio::io::duplex(1 << 16);
        let (_stop_tx, stop) = watch::channel(false);
        let limits = Limits {
            idle: Duration::from_secs(60),
            lifetime: Duration::from_secs(60),
        };
        let relay = tokio::spawn(relay(client, backend, limits, stop, |_, _| {}));
        // The client's close frame, then its end of the connection.
        let close = close_frame(1000, "bye", Some([1, 2, 3, 4]));
        client_peer.write_all(&close).await.expect("write");
        client_peer.shutdown().await.expect("half-close");
        let mut got = vec![0u8; close.len()];
        backend_peer.read_exact(&mut got).await.expect("relayed");
        // The backend answers with its own close frame after the client's end: it still arrives.
        let answer = close_frame(1000, "bye", None);
        backend_peer.write_all(&answer).await.expect("write");
        let mut got = vec![0u8; answer.len()];
        client_peer.read_exact(&mut got).await.expect("the answer");
        assert_eq!(got, answer);
        drop(backend_peer);
        let (end, relayed) = relay.await.expect("join");
        assert_eq!(end, End::Client, "the client closed first");
        assert_eq!(relayed.from_backend, answer.len() as u64);
    }

    #[tokio::test]
    async fn shutdown_sends_each_side_a_close_frame_after_the_frame_in_progress() {
        let (client, mut client_peer) = tokio::io::duplex(1 << 16);
        let (backend, mut backend_peer) = tokio::io::duplex(1 << 16);
        let (stop_tx, stop) = watch::channel(false);
        let limits = Limits {
            idle: Duration::from_secs(60),
            lifetime: Duration::from_secs(60),
        };
        let relay = tokio::spawn(relay(client, backend, limits, stop, |_, _| {}));
        // A whole frame from the client, and half of one from the backend.
        let whole = frame(1, b"hi", Some([1, 2, 3, 4]));
        client_peer.write_all(&whole).await.expect("write");
        let long = frame(1, &[b'a'; 10], None);
        backend_peer.write_all(&long[..5]).await.expect("write");
        let mut got = vec![0u8; whole.len()];
        backend_peer.read_exact(&mut got).await.expect("relayed");
        assert_eq!(got, whole);
        let mut got = vec![0u8; 5];
        client_peer.read_exact(&mut got).await.expect("relayed");
        stop_tx.send(true).expect("stop");
        // The backend's frame ends; only then the close frame follows it.
        backend_peer.write_all(&long[5..]).await.expect("write");
        let mut rest = vec![0u8; long.len() - 5];
        client_peer
            .read_exact(&mut rest)
            .await
            .expect("the frame's end");
        let close = close_frame(GOING_AWAY, "server shutting down", None);
        let mut got = vec![0u8; close.len()];
        client_peer
            .read_exact(&mut got)
            .await
            .expect("a close frame");
        assert_eq!(got, close);
        // The backend gets a masked close frame.
        let mut head = [0u8; 2];
        backend_peer
            .read_exact(&mut head)
            .await
            .expect("a close frame");
        assert_eq!(head[0], 0x88);
        assert_eq!(head[1] & 0x80, 0x80, "masked");
        drop(client_peer);
        drop(backend_peer);
        let (end, relayed) = relay.await.expect("join");
        assert_eq!(end, End::Shutdown);
        assert_eq!(relayed.from_client, whole.len() as u64);
    }

    /// A write the client's full buffer held up when shutdown came: the bytes read for it are
    /// not lost, the frame ends whole and the close frame follows it (before, the rest of the
    /// frame was dropped and a close frame landed inside it).
    #[tokio::test(start_paused = true)]
    async fn a_write_held_up_at_shutdown_still_ends_its_frame_before_the_close_frame() {
        // The client's connection takes 8 bytes before its reader must read.
        let (client, mut client_peer) = tokio::io::duplex(8);
        let (backend, mut backend_peer) = tokio::io::duplex(1 << 16);
        let (stop_tx, stop) = watch::channel(false);
        let limits = Limits {
            idle: Duration::from_secs(60),
            lifetime: Duration::from_secs(60),
        };
        let relay = tokio::spawn(relay(client, backend, limits, stop, |_, _| {}));
        let long = frame(2, &[7u8; 40], None);
        backend_peer.write_all(&long).await.expect("write");
        // The paused clock moves only once every task waits: the relay is held up on its write.
        tokio::time::sleep(Duration::from_millis(1)).await;
        stop_tx.send(true).expect("stop");
        tokio::time::sleep(Duration::from_millis(1)).await;
        let close = close_frame(GOING_AWAY, "server shutting down", None);
        let mut got = vec![0u8; long.len() + close.len()];
        client_peer
            .read_exact(&mut got)
            .await
            .expect("frame and close");
        assert_eq!(&got[..long.len()], &long[..], "the whole frame");
        assert_eq!(&got[long.len()..], &close[..], "then the close frame");
        drop(client_peer);
        drop(backend_peer);
        let (end, relayed) = relay.await.expect("join");
        assert_eq!(end, End::Shutdown);
        assert_eq!(
            relayed.from_backend,
            long.len() as u64,
            "every byte counted"
        );
    }
}

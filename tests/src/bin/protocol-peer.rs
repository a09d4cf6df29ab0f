//! The two ends of the protocol benchmarks (bench/protocols.sh), small enough that the proxy in
//! the middle is what a run measures:
//!
//! - `grpc-server`: an h2c server answering every POST as a gRPC unary echo would (the request's
//!   length-prefixed messages back, then `grpc-status: 0` in trailers). h2load is its client.
//! - `ws-echo`: an HTTP/1.1 server that accepts WebSocket upgrades (RFC 6455) and sends every
//!   frame back unmasked.
//! - `ws-load`: opens CONNECTIONS WebSockets to URL and, on each, sends MESSAGES masked binary
//!   messages of SIZE bytes one after the other, each awaited back; prints
//!   `messages N seconds S rate R` (messages a second, all connections together). Extra headers
//!   (an API key) with `--header 'Name: value'`.
//!
//! ```text
//! protocol-peer grpc-server --listen 127.0.0.1:PORT
//! protocol-peer ws-echo --listen 127.0.0.1:PORT
//! protocol-peer ws-load --url ws://127.0.0.1:PORT/path [--connections 64] [--messages 1000]
//!                       [--size 64] [--header 'Authorization: Bearer KEY']
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "usage: protocol-peer grpc-server|ws-echo --listen ADDRESS:PORT\n       protocol-peer ws-load --url ws://HOST:PORT/PATH [--connections N] [--messages N] [--size BYTES] [--header 'NAME: VALUE']";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let role = args.next().context(USAGE)?;
    let (mut listen, mut url, mut headers) = (None, None, Vec::new());
    let (mut connections, mut messages, mut size) = (64usize, 1000usize, 64usize);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value\n{USAGE}"))?;
        match arg.as_str() {
            "--listen" => listen = Some(value.parse::<SocketAddr>()?),
            "--url" => url = Some(value),
            "--connections" => connections = value.parse()?,
            "--messages" => messages = value.parse()?,
            "--size" => size = value.parse()?,
            "--header" => headers.push(value),
            _ => bail!("unknown argument {arg}\n{USAGE}"),
        }
    }
    match (role.as_str(), listen, url) {
        ("grpc-server", Some(listen), _) => serve(listen, true).await,
        ("ws-echo", Some(listen), _) => serve(listen, false).await,
        ("ws-load", _, Some(url)) => load(&url, connections, messages, size, &headers).await,
        _ => bail!("{USAGE}"),
    }
}

/// Serves `grpc` (h2c gRPC echo) or WebSocket echo on `listen` until killed.
async fn serve(listen: SocketAddr, grpc: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let _ = if grpc {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service_fn(grpc_echo))
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service_fn(ws_accept))
                    .with_upgrades()
                    .await
            };
        });
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The request's messages back, then `grpc-status: 0`.
async fn grpc_echo(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
        vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
    let mut resp = Response::new(StreamBody::new(futures::stream::iter(frames)).boxed());
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(resp)
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 section 4.2.2).
fn accept_key(key: &[u8]) -> String {
    let mut input = key.to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Accepts the upgrade and echoes frames on the upgraded connection.
async fn ws_accept(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"websocket only")).boxed());
        *resp.status_mut() = http::StatusCode::BAD_REQUEST;
        return Ok(resp);
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let _ = ws_echo(TokioIo::new(upgraded)).await;
        }
    });
    let mut resp = Response::new(Empty::new().boxed());
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("upgrade", http::HeaderValue::from_static("websocket"));
    h.insert("connection", http::HeaderValue::from_static("upgrade"));
    if let Ok(accept) = http::HeaderValue::from_str(&accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", accept);
    }
    Ok(resp)
}

/// Reads one frame: (opcode, payload unmasked).
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let len = match head[1] & 0x7F {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    if head[1] & 0x80 != 0 {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    r.read_exact(&mut payload).await?;
    if head[1] & 0x80 != 0 {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((head[0] & 0x0F, payload))
}

/// A final frame of `opcode` with `payload`, masked with `mask` when given.
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
    match mask {
        Some(mask) => {
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// Echoes every data frame; answers a close with a close.
async fn ws_echo<S: AsyncReadExt + AsyncWriteExt + Unpin>(mut s: S) -> std::io::Result<()> {
    loop {
        let (opcode, payload) = read_frame(&mut s).await?;
        s.write_all(&frame(opcode, &payload, None)).await?;
        if opcode == 0x8 {
            return Ok(());
        }
    }
}

/// The load: `connections` WebSockets at once, `messages` round trips each.
async fn load(
    url: &str,
    connections: usize,
    messages: usize,
    size: usize,
    headers: &[String],
) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("ws://")
        .context("the URL starts with ws://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut handshake = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for h in headers {
        handshake.push_str(h);
        handshake.push_str("\r\n");
    }
    handshake.push_str("\r\n");
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut s = tokio::net::TcpStream::connect(authority).await?;
        s.set_nodelay(true)?;
        s.write_all(handshake.as_bytes()).await?;
        // The 101's head, read to its blank line.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await?);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            bail!(
                "the upgrade was refused: {}",
                String::from_utf8_lossy(&head).lines().next().unwrap_or("")
            );
        }
        streams.push(s);
    }
    let payload = vec![b'x'; size];
    let message = frame(0x2, &payload, Some([1, 2, 3, 4]));
    let started = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let message = message.clone();
            tokio::spawn(async move {
                for _ in 0..messages {
                    s.write_all(&message).await?;
                    let (opcode, back) = read_frame(&mut s).await?;
                    if opcode != 0x2 || back.len() != size {
                        return Err(std::io::Error::other("a wrong echo"));
                    }
                }
                s.write_all(&frame(0x8, &1000u16.to_be_bytes(), Some([1, 2, 3, 4])))
                    .await?;
                Ok::<_, std::io::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let total = connections * messages;
    println!(
        "messages {total} seconds {seconds:.3} rate {:.0}",
        total as f64 / seconds
    );
    Ok(())
}

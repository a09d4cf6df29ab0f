//! What backends may answer over HTTP/1.1, and how the proxy relays it: a raw-socket backend
//! replays exact bytes (chunked, close-delimited, interim 1xx, `Connection: close`, malformed
//! heads, idle connections closed between requests).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::{Dice, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend that answers every request head with `answer`; after answering, it closes the
/// connection when `close_after` is set. Counts connections and requests.
struct RawBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(answer: &'static [u8], close_after: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            r.fetch_add(1, Ordering::SeqCst);
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                            if close_after {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            requests,
            task,
        }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn world(backend: SocketAddr) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: raw}}\n\
         spec: {{match: {{pathPrefix: /}}, backend: {{url: \"http://{backend}\", timeout: 2s}}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\nstringData: {{apiKey: key-raw}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t}}\n\
         spec: {{apiKeys: [{{secretRef: {{name: k}}}}], subscriptions: [{{apiRouteRef: {{name: raw}}}}]}}\n"
    )
}

const KEY: (&str, &str) = ("x-api-key", "key-raw");

async fn proxy_for(backend: &RawBackend) -> ProxyProcess {
    ProxyProcess::start(&[("world.yaml", world(backend.addr))]).await
}

/// Sends `GET /x` on a fresh connection and reads until the proxy closes it (asserted to happen
/// within `seconds`); everything the client received.
async fn get_until_closed(p: &ProxyProcess, seconds: u64) -> Vec<u8> {
    let mut client = tokio::net::TcpStream::connect(p.listen)
        .await
        .expect("connect");
    client
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Api-Key: key-raw\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(seconds),
        client.read_to_end(&mut got),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "the proxy closes the client connection"
    );
    got
}

#[tokio::test]
async fn a_chunked_body_is_relayed_and_the_connection_reused() {
    let backend = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n\
          5;x=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        false,
    )
    .await;
    let p = proxy_for(&backend).await;
    for _ in 0..3 {
        let r = p.get("/x", &[KEY]).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"hello, world"[..]));
        assert_eq!(r.header("content-type"), Some("text/plain"));
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 3);
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "keep-alive after a chunked body"
    );
}

#[tokio::test]
async fn a_close_delimited_body_is_relayed_whole() {
    let backend = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
        true,
    )
    .await;
    let p = proxy_for(&backend).await;
    for _ in 0..2 {
        let r = p.get("/x", &[KEY]).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"until the end"[..]));
    }
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        2,
        "never reused"
    );
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let backend = RawBackend::start(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
    .await;
    let p = proxy_for(&backend).await;
    let r = p.get("/x", &[KEY]).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
}

#[tokio::test]
async fn a_backend_that_closes_idle_connections_is_retried_on_a_fresh_one() {
    // Content-Length framing, then the backend closes: the pooled connection is stale the next
    // time. Each request must still succeed (GET is safe to retry).
    let backend = RawBackend::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
    let p = proxy_for(&backend).await;
    for i in 0..4 {
        let r = p.get("/x", &[KEY]).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "request {i}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn head_responses_have_no_body_and_keep_the_connection() {
    let backend = RawBackend::start(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", false).await;
    let p = proxy_for(&backend).await;
    for _ in 0..2 {
        let r = support::request(p.listen, "HEAD", "/x", &[KEY], bytes::Bytes::new()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("12"));
        assert!(r.body.is_empty());
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_malformed_or_truncated_response_is_a_502() {
    for answer in [
        &b"HTTP/1.1 abc nope\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok"[..],
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Le"[..],
    ] {
        let backend = RawBackend::start(answer, true).await;
        let p = proxy_for(&backend).await;
        let r = p.get("/x", &[KEY]).await;
        assert_eq!(
            r.status,
            502,
            "{:?} -> {:?}",
            String::from_utf8_lossy(answer),
            r.body
        );
    }
}

#[tokio::test]
async fn a_body_cut_short_never_reaches_the_client_as_whole_and_is_not_reused() {
    // Content-Length promises 10 bytes, 2 arrive, then the backend closes.
    let backend = RawBackend::start(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", true).await;
    let p = proxy_for(&backend).await;
    for _ in 0..2 {
        let got = get_until_closed(&p, 5).await;
        // Never a response that looks complete: either nothing (the head was not flushed yet)
        // or the head with fewer bytes than its Content-Length, then the close.
        let text = String::from_utf8_lossy(&got);
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(body.len() < 10, "a truncated body passed as whole: {text}");
        }
    }
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        2,
        "a broken connection is not reused"
    );
}

#[tokio::test]
async fn an_idle_connection_the_backend_timed_out_is_not_reused() {
    // Some servers answer an idle keep-alive connection with a 408 before closing it. That
    // unsolicited response sits in the socket; it must never be taken as the next answer.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                    .await;
                // Keep the connection open a while: the proxy must notice the 408 by itself.
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            });
        }
    });
    let p = ProxyProcess::start(&[("world.yaml", world(addr))]).await;
    for i in 0..3 {
        let r = p.get("/x", &[KEY]).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "request {i}");
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        3,
        "each timed-out connection was replaced"
    );
    task.abort();
}

#[tokio::test]
async fn a_backend_that_goes_silent_mid_body_is_cut_off_after_the_route_timeout() {
    // 10 bytes promised, 2 sent, then nothing, the connection held open. The route's 2 s timeout
    // bounds the silence: the client's connection closes with a body that cannot pass as whole.
    let backend =
        RawBackend::start(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", false).await;
    let p = proxy_for(&backend).await;
    for _ in 0..2 {
        let got = get_until_closed(&p, 15).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(body.len() < 10, "a truncated body passed as whole: {text}");
    }
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        2,
        "a stalled connection is not reused"
    );
}

#[tokio::test]
async fn hop_by_hop_response_headers_never_reach_the_client_on_either_path() {
    let backend = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
          X-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
    .await;
    let p = proxy_for(&backend).await;
    // GET: the inline exchange; POST with a body: the hyper client connection.
    let inline = p.get("/x", &[KEY]).await;
    let hyper = support::request(
        p.listen,
        "POST",
        "/x",
        &[KEY, ("content-type", "text/plain")],
        bytes::Bytes::from_static(b"body"),
    )
    .await;
    for (path, r) in [("inline", &inline), ("hyper", &hyper)] {
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "{path}");
        assert_eq!(r.header("x-kept"), Some("yes"), "{path}");
        for hop in ["x-hop", "keep-alive", "connection"] {
            assert_eq!(r.header(hop), None, "{path}: {hop} relayed");
        }
    }
}

/// A backend answer drawn from a seed: the bytes to send, in pieces, and what the client must
/// receive through the proxy.
struct RandomAnswer {
    pieces: Vec<Vec<u8>>,
    status: u16,
    /// End-to-end headers in order (duplicates included), names lower-cased.
    relayed: Vec<(String, String)>,
    /// Headers the backend's `Connection` names: never relayed.
    hop_by_hop: Vec<String>,
    body: Vec<u8>,
}

fn random_answer(seed: u64) -> RandomAnswer {
    let mut dice = Dice::new(seed);
    let status = [200, 201, 202, 404, 409][dice.below(5) as usize];
    let reason = match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        404 => "Not Found",
        _ => "Conflict",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    let mut relayed = Vec::new();
    let mut hop_by_hop = Vec::new();
    let value_chars = b"abcXYZ019 ,;=/-_.";
    let value = |dice: &mut Dice| -> String {
        let v: String = (0..1 + dice.below(60))
            .map(|_| value_chars[dice.below(value_chars.len() as u64) as usize] as char)
            .collect();
        v.trim().to_owned() + "v"
    };
    for k in 0..dice.below(12) {
        let name = match dice.below(3) {
            0 => format!("x-r-{k}"),
            1 => format!("X-R-{k}"),
            _ => format!("X-r-{k}"),
        };
        let v = value(&mut dice);
        head.push_str(&format!("{name}: {v}\r\n"));
        relayed.push((name.to_ascii_lowercase(), v));
        if dice.below(5) == 0 {
            // The same name again: both lines reach the client, in order.
            let again = value(&mut dice);
            head.push_str(&format!("{name}:{again}\r\n"));
            relayed.push((name.to_ascii_lowercase(), again));
        }
        if dice.below(6) == 0 {
            let hop = format!("x-hop-{k}");
            head.push_str(&format!("{hop}: secret\r\n"));
            hop_by_hop.push(hop);
        }
    }
    let connection: Vec<&str> = ["keep-alive"]
        .into_iter()
        .chain(hop_by_hop.iter().map(String::as_str))
        .collect();
    head.push_str(&format!("Connection: {}\r\n", connection.join(", ")));
    if dice.below(3) == 0 {
        head.push_str("Keep-Alive: timeout=30\r\n");
        hop_by_hop.push("keep-alive".into());
    }
    let body: Vec<u8> = (0..dice.below(3000))
        .map(|_| dice.below(256) as u8)
        .collect();
    let mut bytes = head.into_bytes();
    if dice.below(2) == 0 {
        bytes.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        bytes.extend_from_slice(&body);
    } else {
        bytes.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        let mut rest = &body[..];
        while !rest.is_empty() {
            let size = (1 + dice.below(700) as usize).min(rest.len());
            let extension = if dice.below(4) == 0 { ";ext=1" } else { "" };
            bytes.extend_from_slice(format!("{size:x}{extension}\r\n").as_bytes());
            bytes.extend_from_slice(&rest[..size]);
            bytes.extend_from_slice(b"\r\n");
            rest = &rest[size..];
        }
        bytes.extend_from_slice(b"0\r\n");
        if dice.below(3) == 0 {
            bytes.extend_from_slice(b"X-Trailer: t\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
    }
    let mut pieces = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let take = (1 + dice.below(600) as usize).min(rest.len());
        pieces.push(rest[..take].to_vec());
        rest = &rest[take..];
    }
    RandomAnswer {
        pieces,
        status,
        relayed,
        hop_by_hop,
        body,
    }
}

/// Answers `GET /random/SEED` (or any method; a request body is skipped) with [`random_answer`]`(SEED)`, sent in its pieces.
async fn random_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end + 4]).to_ascii_lowercase();
                        let body_len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if seen.len() < end + 4 + body_len {
                            break; // the body is still on its way
                        }
                        seen.drain(..end + 4 + body_len);
                        let seed = head
                            .split_whitespace()
                            .nth(1)
                            .and_then(|target| target.strip_prefix("/random/"))
                            .and_then(|seed| seed.parse().ok())
                            .unwrap_or(0);
                        for (i, piece) in random_answer(seed).pieces.iter().enumerate() {
                            if stream.write_all(piece).await.is_err() {
                                return;
                            }
                            if i % 3 == 1 {
                                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn random_backend_answers_sent_in_random_pieces_are_relayed_exactly() {
    let (addr, backend) = random_backend().await;
    let p = ProxyProcess::start(&[("world.yaml", world(addr))]).await;
    for seed in 1..=60u64 {
        let expected = random_answer(seed);
        let path = format!("/random/{seed}");
        // GETs take the inline exchange; a request with a body takes the hyper client.
        let via_hyper = seed % 4 == 0;
        let r = if via_hyper {
            let body = bytes::Bytes::from_static(b"a body");
            support::request(p.listen, "POST", &path, &[KEY], body).await
        } else {
            p.get(&path, &[KEY]).await
        };
        let at = format!(
            "seed {seed} ({})",
            if via_hyper { "hyper" } else { "inline" }
        );
        assert_eq!(r.status, expected.status, "{at}");
        assert_eq!(r.body.len(), expected.body.len(), "{at}: body length");
        assert!(r.body[..] == expected.body[..], "{at}: body bytes differ");
        let relayed: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-r-"))
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        // A HeaderMap groups a name's values; compare per name, in order.
        let mut want = expected.relayed.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let mut got = relayed;
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want, "{at}: relayed headers");
        for hop in &expected.hop_by_hop {
            assert_eq!(r.header(hop), None, "{at}: hop-by-hop {hop} relayed");
        }
        assert_eq!(r.header("connection"), None, "{at}");
    }
    backend.abort();
}

//! Every documented connection limit holds on every protocol path, including the connections
//! hyper serves (HTTP/2, requests with a body, HTTP/1.0): a client that never finishes its
//! preface, an HTTP/2 connection kept open with pings alone, a client that stops reading a
//! response, and more connections than `--max-connections`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Backend, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn world(backend_url: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: all}}\n\
         spec: {{match: {{pathPrefix: /}}, backend: {{url: \"{backend_url}\"}}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\nstringData: {{apiKey: key-l}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t}}\n\
         spec: {{apiKeys: [{{secretRef: {{name: k}}}}], subscriptions: [{{apiRouteRef: {{name: all}}}}]}}\n"
    )
}

fn outcome(outcome: &str) -> String {
    format!("tollgate_proxy_connections_total{{outcome=\"{outcome}\"}}")
}

/// Reads until the proxy closes the connection; fails the test if it is still open after 15 s
/// (every limit in these tests is 1 or 2 s).
async fn closed_by_proxy(mut c: TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        let mut chunk = [0u8; 4096];
        // A reset ends the read as surely as an EOF.
        while let Ok(n @ 1..) = c.read(&mut chunk).await {
            rest.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the proxy closed the connection within 15 s");
    rest
}

#[tokio::test]
async fn connections_stuck_in_the_http2_preface_are_closed_at_the_header_timeout() {
    let backend = Backend::start().await;
    let p = ProxyProcess::start_with(
        &[("world.yaml", world(&backend.url()))],
        &["--header-timeout", "1s", "--idle-timeout", "60s"],
    )
    .await;
    // 16 bytes of the 24-byte preface: enough for the HTTP/1.1 engine to hand the connection to
    // hyper's protocol detection, which then waits for the rest.
    let mut stuck = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(p.listen).await.expect("connect");
        c.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
        stuck.push(c);
    }
    for c in stuck {
        let rest = closed_by_proxy(c).await;
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
    p.wait_for_metric(&outcome("header_timeout"), 20.0).await;
}

#[tokio::test]
async fn an_http2_connection_without_streams_is_closed_at_the_idle_timeout_while_it_answers_pings()
{
    let backend = Backend::start().await;
    let p = ProxyProcess::start_with(
        &[("world.yaml", world(&backend.url()))],
        &["--header-timeout", "1s", "--idle-timeout", "2s"],
    )
    .await;
    let io = TokioIo::new(TcpStream::connect(p.listen).await.expect("connect"));
    // hyper's client answers the proxy's pings and sends its own every 200 ms: a connection as
    // alive as a connection can be without a request.
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(200))
        .keep_alive_while_idle(true)
        .handshake(io)
        .await
        .expect("h2c handshake");
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("http://api.test/once")
        .header("x-api-key", "key-l")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    drop(response);
    tokio::time::timeout(Duration::from_secs(15), connection)
        .await
        .expect("the proxy closed the idle HTTP/2 connection within 15 s")
        .expect("connection task")
        .expect("a graceful close (GOAWAY), not an error");
    p.wait_for_metric(&outcome("idle_timeout"), 1.0).await;
}

#[tokio::test]
async fn clients_that_stop_reading_a_response_hyper_serves_are_dropped_after_the_send_timeout() {
    let (url, mut on_release) = support::endless_backend().await;
    let p = ProxyProcess::start_with(
        &[("world.yaml", world(&url))],
        &["--send-timeout", "1s", "--idle-timeout", "60s"],
    )
    .await;
    // HTTP/1.0 and a request with a body: both served by hyper, both never read.
    let mut silent = Vec::new();
    for request in [
        "GET /big HTTP/1.0\r\nHost: api.test\r\nX-Api-Key: key-l\r\n\r\n",
        "POST /big HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: key-l\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let mut c = TcpStream::connect(p.listen).await.expect("connect");
        c.write_all(request.as_bytes()).await.expect("write");
        silent.push(c);
    }
    // HTTP/2: the client never reads the body, so it never reopens the stream's flow window.
    let io = TokioIo::new(TcpStream::connect(p.listen).await.expect("connect"));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2c handshake");
    tokio::spawn(connection);
    let request = hyper::Request::get("http://api.test/big")
        .header("x-api-key", "key-l")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let unread = sender.send_request(request).await.expect("response head");
    assert_eq!(unread.status(), 200);
    for n in 1..=3 {
        tokio::time::timeout(Duration::from_secs(30), on_release.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 3 backend connections let go", n - 1))
            .expect("backend");
    }
    p.wait_for_metric(&outcome("send_timeout"), 3.0).await;
    drop((silent, unread));
}

#[tokio::test]
async fn past_max_connections_new_clients_wait_until_a_connection_closes() {
    let backend = Backend::start().await;
    let p = ProxyProcess::start_with(
        &[("world.yaml", world(&backend.url()))],
        &["--max-connections", "2", "--header-timeout", "60s"],
    )
    .await;
    let first = TcpStream::connect(p.listen).await.expect("connect");
    let second = TcpStream::connect(p.listen).await.expect("connect");
    p.wait_for_metric("tollgate_proxy_connections_at_limit_total", 1.0)
        .await;
    // The kernel completes this handshake; the proxy does not take the connection yet.
    let mut third = TcpStream::connect(p.listen).await.expect("connect");
    third
        .write_all(b"GET /third HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: key-l\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(p.metric("tollgate_proxy_active_connections").await, 2.0);
    drop(first);
    let answer = closed_by_proxy(third).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(second);
}

#[tokio::test]
async fn below_max_connections_no_client_waits_and_the_limit_is_not_reported() {
    // One connection of two allowed: the listener takes the next at once, and says nothing of
    // a limit (an accept loop per io_uring worker once held a place for each worker waiting in
    // accept, and reported the limit reached after the first connection).
    let backend = Backend::start().await;
    let p = ProxyProcess::start_with(
        &[("world.yaml", world(&backend.url()))],
        &["--max-connections", "2", "--worker-threads", "2"],
    )
    .await;
    let mut first = TcpStream::connect(p.listen).await.expect("connect");
    first
        .write_all(b"GET /first HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: key-l\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 12];
    first.read_exact(&mut head).await.expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 200");
    assert_eq!(p.metric("tollgate_proxy_active_connections").await, 1.0);
    assert_eq!(
        p.metric("tollgate_proxy_connections_at_limit_total").await,
        0.0
    );
}

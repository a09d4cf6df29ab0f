//! The client side of HTTP/1.1 over raw sockets: Tollgate's own engine serves bodiless requests
//! (pipelined, split across reads, HEAD, `Connection: close`), and hands a connection to hyper at
//! the first request it does not serve (a body, `Expect`, HTTP/1.0, a malformed head) without
//! losing a byte of it.

mod support;

use std::time::Duration;

use support::{Backend, Dice, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn world(backend: &Backend) -> String {
    world_for(&backend.url())
}

fn world_for(backend_url: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: echo}}\n\
         spec: {{match: {{pathPrefix: /}}, backend: {{url: \"{}\"}}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\nstringData: {{apiKey: key-h1}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t}}\n\
         spec: {{apiKeys: [{{secretRef: {{name: k}}}}], subscriptions: [{{apiRouteRef: {{name: echo}}}}]}}\n",
        backend_url
    )
}

async fn proxy() -> (Backend, ProxyProcess) {
    let backend = Backend::start().await;
    let p = ProxyProcess::start(&[("world.yaml", world(&backend))]).await;
    (backend, p)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: key-h1\r\n\r\n")
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Reads `n` responses (Content-Length or chunked bodies; none for HEAD when `head`).
async fn read_answers(stream: &mut TcpStream, n: usize, head: bool) -> Vec<Answer> {
    read_answers_to(stream, &vec![head; n]).await
}

/// Reads one response per entry of `heads` (true: the answer to a HEAD, without a body).
async fn read_answers_to(stream: &mut TcpStream, heads: &[bool]) -> Vec<Answer> {
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    while answers.len() < heads.len() {
        if let Some((answer, used)) = parse_answer(&buf, heads[answers.len()]) {
            buf.drain(..used);
            answers.push(answer);
            continue;
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(
            read > 0,
            "connection closed after {} answers: {:?}",
            answers.len(),
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..read]);
    }
    assert!(
        buf.is_empty(),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&buf)
    );
    answers
}

fn parse_answer(buf: &[u8], head: bool) -> Option<(Answer, usize)> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut slots);
    let parsed = resp.parse(buf).unwrap_or_else(|e| {
        panic!(
            "not a response head ({e}): {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(600)])
        )
    });
    let httparse::Status::Complete(head_len) = parsed else {
        return None;
    };
    let status = resp.code.expect("status");
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let rest = &buf[head_len..];
    let (body, used) = if head || status == 204 || status == 304 || status < 200 {
        (Vec::new(), 0)
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().expect("length");
        if rest.len() < len {
            return None;
        }
        (rest[..len].to_vec(), len)
    } else if find("transfer-encoding").as_deref() == Some("chunked") {
        let (mut body, mut at) = (Vec::new(), 0);
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size = usize::from_str_radix(std::str::from_utf8(&rest[at..line_end]).ok()?, 16)
                .expect("chunk size");
            at = line_end + 2;
            if rest.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
            if size == 0 {
                break (body, at);
            }
        }
    } else {
        panic!("no framing in {headers:?}");
    };
    Some((
        Answer {
            status,
            headers,
            body,
        },
        head_len + used,
    ))
}

/// Waits until `tollgate_proxy_connections_total{outcome}` reaches `at_least`.
async fn wait_for_outcome(p: &ProxyProcess, outcome: &str, at_least: u64) {
    let series = format!("tollgate_proxy_connections_total{{outcome=\"{outcome}\"}}");
    p.wait_for_metric(&series, at_least as f64).await;
}

async fn connect(p: &ProxyProcess) -> TcpStream {
    TcpStream::connect(p.listen).await.expect("connect")
}

/// The answer to `request` sent alone on a new connection.
async fn answer_to(p: &ProxyProcess, request: &[u8]) -> Answer {
    let mut c = connect(p).await;
    c.write_all(request).await.expect("write");
    read_answers(&mut c, 1, false).await.remove(0)
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (backend, p) = proxy().await;
    let mut c = connect(&p).await;
    let batch: String = ["/one", "/two", "/three"]
        .iter()
        .map(|path| get(path))
        .collect();
    c.write_all(batch.as_bytes()).await.expect("write");
    let answers = read_answers(&mut c, 3, false).await;
    let uris: Vec<String> = answers
        .iter()
        .map(|a| a.json()["uri"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(uris, ["/one", "/two", "/three"]);
    for a in &answers {
        assert_eq!(a.status, 200);
        assert!(a.header("date").is_some(), "Date on every answer");
        assert_eq!(a.header("connection"), None, "keep-alive is the default");
    }
    // The connection stays usable.
    c.write_all(get("/four").as_bytes()).await.expect("write");
    assert_eq!(read_answers(&mut c, 1, false).await[0].status, 200);
    drop(backend);
}

#[tokio::test]
async fn a_head_arriving_a_few_bytes_at_a_time_is_served() {
    let (_backend, p) = proxy().await;
    let mut c = connect(&p).await;
    for piece in get("/slowly/sent").as_bytes().chunks(3) {
        c.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let a = &read_answers(&mut c, 1, false).await[0];
    assert_eq!(
        (a.status, a.json()["uri"].as_str()),
        (200, Some("/slowly/sent"))
    );
}

#[tokio::test]
async fn connection_close_is_answered_then_honoured() {
    let (_backend, p) = proxy().await;
    let mut c = connect(&p).await;
    c.write_all(
        b"GET /bye HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: key-h1\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut all))
        .await
        .expect("closed within 10 s")
        .expect("read");
    let (a, used) = parse_answer(&all, false).expect("one whole answer");
    assert_eq!(used, all.len(), "nothing after the answer");
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), Some("close"));
    wait_for_outcome(&p, "closed_after_response", 1).await;
}

#[tokio::test]
async fn head_answers_state_the_length_and_carry_no_body() {
    let (_backend, p) = proxy().await;
    let mut c = connect(&p).await;
    // Refused by the proxy (no key): a problem whose length is stated, no body sent.
    c.write_all(b"HEAD /x HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .expect("write");
    let refused = &read_answers(&mut c, 1, true).await[0];
    assert_eq!(refused.status, 401);
    let length: usize = refused
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("Content-Length on a HEAD problem");
    assert!(length > 0);
    // Forwarded: the backend's own length passes through; the connection carries on.
    c.write_all(b"HEAD /x HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: key-h1\r\n\r\n")
        .await
        .expect("write");
    let forwarded = &read_answers(&mut c, 1, true).await[0];
    assert_eq!(forwarded.status, 200);
    c.write_all(get("/after-head").as_bytes())
        .await
        .expect("write");
    let a = &read_answers(&mut c, 1, false).await[0];
    assert_eq!(a.json()["uri"], "/after-head");
}

#[tokio::test]
async fn a_request_with_a_body_moves_the_connection_to_hyper_without_losing_bytes() {
    let (_backend, p) = proxy().await;
    let mut c = connect(&p).await;
    // A GET, then a POST with a body and another GET written in one go behind it.
    c.write_all(get("/first").as_bytes()).await.expect("write");
    assert_eq!(read_answers(&mut c, 1, false).await[0].status, 200);
    let body = "{\"hello\":\"world\"}";
    let post = format!(
        "POST /second HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: key-h1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(format!("{post}{}", get("/third")).as_bytes())
        .await
        .expect("write");
    let answers = read_answers(&mut c, 2, false).await;
    assert_eq!(answers[0].json()["uri"], "/second");
    assert_eq!(answers[0].json()["body"], body);
    assert_eq!(answers[1].json()["uri"], "/third");
    p.wait_for_metric("tollgate_proxy_connection_handoffs_total", 1.0)
        .await;
}

#[tokio::test]
async fn expect_100_continue_is_handled() {
    let (_backend, p) = proxy().await;
    let mut c = connect(&p).await;
    c.write_all(
        b"POST /upload HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: key-h1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write");
    let mut interim = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut interim))
        .await
        .expect("100 Continue within 10 s")
        .expect("read");
    assert!(
        interim[..n].starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&interim[..n])
    );
    c.write_all(b"hello").await.expect("write");
    let a = &read_answers(&mut c, 1, false).await[0];
    assert_eq!((a.status, a.json()["body"].as_str()), (200, Some("hello")));
}

#[tokio::test]
async fn an_absolute_form_target_is_the_host_routed_on_and_forwarded() {
    // RFC 9112 section 3.2.2: the target's authority wins over the Host header. Before, the
    // request was routed on the target's host while X-Forwarded-Host carried the Host header.
    let (_backend, p) = proxy().await;
    let answer = answer_to(
        &p,
        b"GET http://api.test/x HTTP/1.1\r\nHost: elsewhere.example\r\nX-Api-Key: key-h1\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["headers"]["x-forwarded-host"], "api.test");
}

#[tokio::test]
async fn http_1_0_and_malformed_heads_are_answered() {
    let (_backend, p) = proxy().await;
    let mut c = connect(&p).await;
    c.write_all(b"GET /old HTTP/1.0\r\nHost: api.test\r\nX-Api-Key: key-h1\r\n\r\n")
        .await
        .expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut all))
        .await
        .expect("HTTP/1.0 without keep-alive is closed")
        .expect("read");
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    assert!(text.contains("\"uri\":\"/old\""), "{text}");

    // RFC 9112 section 3.2: no Host in HTTP/1.1 is a 400, on either engine (bodiless, and with a
    // body, which hyper reads). Before, the request was routed as if for any host.
    for request in [
        &b"GET /old HTTP/1.1\r\nX-Api-Key: key-h1\r\n\r\n"[..],
        b"POST /old HTTP/1.1\r\nX-Api-Key: key-h1\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let answer = answer_to(&p, request).await;
        assert_eq!(answer.status, 400, "{request:?}");
        assert_eq!(
            answer.json()["type"],
            "https://tollgate.dev/problems/bad-request"
        );
    }

    for garbage in [
        &b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let mut c = connect(&p).await;
        c.write_all(garbage).await.expect("write");
        let mut all = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut all))
            .await
            .expect("closed within 10 s");
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 400"), "{garbage:?} -> {text}");
    }
}

#[tokio::test]
async fn slow_heads_and_idle_connections_are_closed_after_their_timeouts() {
    let backend = Backend::start().await;
    let p = ProxyProcess::start_with(
        &[("world.yaml", world(&backend))],
        &["--header-timeout", "1s", "--idle-timeout", "2s"],
    )
    .await;
    // `started` is taken before connecting: the proxy's timer cannot have started earlier, so
    // a test task the scheduler delays only makes the measured wait longer, never shorter.
    let closed_within = |mut c: TcpStream, started: std::time::Instant, limit: Duration| async move {
        let mut rest = Vec::new();
        tokio::time::timeout(limit, c.read_to_end(&mut rest))
            .await
            .expect("the proxy closed the connection")
            .expect("read");
        (started.elapsed(), rest)
    };
    // A head that never finishes: cut off after the header timeout, nothing sent back.
    let started = std::time::Instant::now();
    let mut slow = connect(&p).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Slow")
        .await
        .expect("write");
    let (waited, rest) = closed_within(slow, started, Duration::from_secs(10)).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    wait_for_outcome(&p, "header_timeout", 1).await;

    // An idle keep-alive connection: served, then closed once idle for the idle timeout (not
    // the shorter header timeout).
    let started = std::time::Instant::now();
    let mut idle = connect(&p).await;
    idle.write_all(get("/then-idle").as_bytes())
        .await
        .expect("write");
    assert_eq!(read_answers(&mut idle, 1, false).await[0].status, 200);
    let (waited, rest) = closed_within(idle, started, Duration::from_secs(10)).await;
    assert!(rest.is_empty());
    assert!(
        waited >= Duration::from_millis(1900),
        "closed after {waited:?}"
    );
    wait_for_outcome(&p, "idle_timeout", 1).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
    // A backend with a body far larger than every socket buffer on the way; it reports when the
    // proxy stops taking it (its writes fail once the proxy has let go of the connection).
    let (backend, mut on_release) = support::endless_backend().await;
    let p = ProxyProcess::start_with(
        &[("world.yaml", world_for(&backend))],
        &["--send-timeout", "1s"],
    )
    .await;
    let mut c = connect(&p).await;
    c.write_all(get("/big").as_bytes()).await.expect("write");
    // Never read. The proxy must give up on this client and free the backend connection.
    tokio::time::timeout(Duration::from_secs(30), on_release.recv())
        .await
        .expect("the proxy let go of the backend within 30 s")
        .expect("backend task");
    wait_for_outcome(&p, "send_timeout", 1).await;
    drop(c);
}

#[tokio::test]
async fn a_head_dripped_byte_by_byte_is_cut_off_at_the_header_timeout() {
    // Slowloris: each byte arrives well within the timeout, the whole head never does. The
    // timeout runs from the head's start, not from the last byte.
    let (_backend, p) = {
        let backend = Backend::start().await;
        let p = ProxyProcess::start_with(
            &[("world.yaml", world(&backend))],
            &["--header-timeout", "1s"],
        )
        .await;
        (backend, p)
    };
    let mut c = connect(&p).await;
    let started = std::time::Instant::now();
    let drip =
        b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut_off = false;
    for byte in drip {
        if c.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        // Closed by the proxy: the read ends (EOF or reset) instead of timing out.
        let mut probe = [0u8; 1];
        if let Ok(read) = tokio::time::timeout(Duration::from_millis(300), c.read(&mut probe)).await
        {
            assert!(
                !matches!(read, Ok(n) if n > 0),
                "no answer to an unfinished head"
            );
            cut_off = true;
            break;
        }
    }
    assert!(
        cut_off,
        "still open after dripping {} bytes over {:?}",
        drip.len(),
        started.elapsed()
    );
    wait_for_outcome(&p, "header_timeout", 1).await;
}

/// What the proxy must answer to one request of a random pipeline.
#[derive(Debug)]
struct Expected {
    /// A HEAD: the answer states a length but carries no body.
    head_only: bool,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    /// Forwarded: the backend's answer (for a GET or POST, its echo of this target and tenant).
    Forwarded { uri: String, tenant: &'static str },
    /// Refused before the backend: 401 with a problem.
    Unauthorized,
}

/// One request of a random pipeline: its bytes and the answer it must get.
fn random_request(dice: &mut Dice, i: usize, with_body: bool) -> (String, Expected) {
    let uri = format!("/p/{i}?n={}", dice.below(1000));
    // Two tenants' keys, a key one byte off, a prefix of a key, no key: a connection's key memo
    // must never answer one request with another's tenant.
    let (key_line, tenant) = match dice.below(6) {
        0 | 1 => ("X-Api-Key: key-h1\r\n", Some("default/t")),
        2 => ("Authorization: Bearer key-h2\r\n", Some("default/u")),
        3 => ("X-Api-Key: key-h2\r\n", Some("default/u")),
        4 => (
            ["X-Api-Key: key-h0\r\n", "X-Api-Key: key-h\r\n", ""][dice.below(3) as usize],
            None,
        ),
        _ => ("X-Api-Key: key-h1\r\n", Some("default/t")),
    };
    let padding: String = (0..dice.below(4))
        .map(|k| format!("X-Pad-{k}: {}\r\n", "v".repeat(dice.below(300) as usize)))
        .collect();
    let head_only = !with_body && dice.below(8) == 0;
    let (method, body) = match (with_body, head_only) {
        (true, _) => ("POST", "{\"n\":1}"),
        (false, true) => ("HEAD", ""),
        (false, false) => ("GET", ""),
    };
    let length = if with_body {
        format!("Content-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    let request = format!(
        "{method} {uri} HTTP/1.1\r\nHost: api.test\r\n{key_line}{padding}{length}\r\n{body}"
    );
    let outcome = match tenant {
        None => Outcome::Unauthorized,
        Some(tenant) => Outcome::Forwarded { uri, tenant },
    };
    (request, Expected { head_only, outcome })
}

#[tokio::test]
async fn random_pipelines_split_at_random_are_answered_in_order_each_for_its_own_key() {
    let backend = Backend::start().await;
    let second_tenant = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: k2}\nstringData: {apiKey: key-h2}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: u}\n\
         spec: {apiKeys: [{secretRef: {name: k2}}], subscriptions: [{apiRouteRef: {name: echo}}]}\n";
    let p =
        ProxyProcess::start(&[("world.yaml", format!("{}{second_tenant}", world(&backend)))]).await;
    for seed in 1..=24u64 {
        let mut dice = Dice::new(seed);
        let count = 5 + dice.below(40) as usize;
        // Every third pipeline carries one request with a body, which moves the connection to
        // hyper with whatever follows it already read.
        let body_at = (seed % 3 == 0).then(|| dice.below(count as u64) as usize);
        let (mut bytes, mut expected) = (String::new(), Vec::new());
        for i in 0..count {
            let (request, expect) = random_request(&mut dice, i, body_at == Some(i));
            bytes.push_str(&request);
            expected.push(expect);
        }
        let mut c = connect(&p).await;
        let mut rest = bytes.as_bytes();
        while !rest.is_empty() {
            let take = (1 + dice.below(400) as usize).min(rest.len());
            c.write_all(&rest[..take]).await.expect("write");
            rest = &rest[take..];
            if dice.below(4) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let heads: Vec<bool> = expected.iter().map(|e| e.head_only).collect();
        let answers = read_answers_to(&mut c, &heads).await;
        for (i, (answer, expected)) in answers.iter().zip(&expected).enumerate() {
            let at = format!("seed {seed}, request {i} of {count}: {expected:?}");
            match &expected.outcome {
                Outcome::Forwarded { .. } if expected.head_only => {
                    assert_eq!(answer.status, 200, "{at}")
                }
                Outcome::Forwarded { uri, tenant } => {
                    assert_eq!(answer.status, 200, "{at}");
                    let echo = answer.json();
                    assert_eq!(echo["uri"], uri.as_str(), "{at}");
                    assert_eq!(echo["headers"]["x-tollgate-tenant"], *tenant, "{at}");
                    assert!(
                        echo["headers"].get("x-api-key").is_none()
                            && echo["headers"].get("authorization").is_none(),
                        "{at}: the key never reaches the backend"
                    );
                }
                Outcome::Unauthorized => {
                    assert_eq!(answer.status, 401, "{at}");
                    assert_eq!(
                        answer.header("content-type"),
                        Some("application/problem+json"),
                        "{at}"
                    );
                }
            }
        }
    }
}

/// A backend answering every request on a connection with `size` bytes in one write.
async fn large_answer_backend(size: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let mut answer =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n")
                                .into_bytes();
                        answer.resize(answer.len() + size, b'x');
                        if c.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn an_answer_larger_than_the_socket_buffers_read_late_arrives_whole() {
    // The client starts reading only once the buffers on the way are full, so the proxy's
    // writes to it come up short: the rest must still be sent, with no further request to
    // prompt it, and the connection then serve the next request. (On the io_uring listener the
    // rest of a short write waited for the next request, forever.)
    const SIZE: usize = 32 << 20;
    let backend = large_answer_backend(SIZE).await;
    let p = ProxyProcess::start(&[("world.yaml", world_for(&backend))]).await;
    let mut c = connect(&p).await;
    for path in ["/large/1", "/large/2"] {
        c.write_all(get(path).as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answer = read_answers(&mut c, 1, false).await.remove(0);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body.len(), SIZE);
    }
}

//! Real sockets, real processes: a test backend (hyper), the `tollgate-proxy` binary on free
//! ports with its own manifest and state directories, and a small HTTP client.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_tests::llm_backend as llm;

/// A backend that answers every request with a JSON echo of what it received. `/slow/<ms>`
/// waits that long first; `/status/<code>` answers with that status.
pub struct Backend {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
        for conn in self.open.lock().expect("lock").drain(..) {
            conn.abort();
        }
    }
}

impl Backend {
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A backend on `addr`; dropping it closes its listener and every open connection.
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::serve(addr, false).await
    }

    /// A backend that speaks only HTTP/2 (h2c, prior knowledge), as gRPC servers do.
    pub async fn start_h2c() -> Self {
        Self::serve(SocketAddr::from(([127, 0, 0, 1], 0)), true).await
    }

    async fn serve(addr: SocketAddr, h2c: bool) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counter, tracked) = (connections.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let conn = tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let _ = match h2c {
                        true => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service_fn(echo))
                                .await
                        }
                        false => {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service_fn(echo))
                                .await
                        }
                    };
                });
                tracked.lock().expect("lock").push(conn.abort_handle());
            }
        });
        Self {
            addr,
            connections,
            open,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<llm::AnyBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if req
        .headers()
        .get("content-type")
        .is_some_and(|ct| ct == "application/grpc")
    {
        return Ok(grpc_echo(req).await);
    }
    if llm::handles(&path) {
        return Ok(llm::answer(req).await);
    }
    let mut status = 200;
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path
        .strip_prefix("/echo/status/")
        .and_then(|s| s.parse().ok())
    {
        status = code;
    }
    let mut headers = BTreeMap::new();
    for (name, value) in req.headers() {
        headers.insert(
            name.as_str().to_owned(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        );
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let doc = json!({"method": method, "uri": uri, "version": version, "headers": headers, "body": String::from_utf8_lossy(&body)});
    let mut resp = Response::new(Full::new(Bytes::from(doc.to_string())).boxed());
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    resp.headers_mut().insert(
        "connection",
        "keep-alive, x-backend-hop".parse().expect("value"),
    );
    resp.headers_mut().insert(
        "x-backend-hop",
        "must-not-reach-client".parse().expect("value"),
    );
    Ok(resp)
}

/// A gRPC call answered as a unary echo would: the request's messages back in one DATA frame
/// (small: under h2's 256-byte framing threshold), then `grpc-status: 0` in trailers. A path
/// with `/slow/<ms>` in it waits that long first, whatever `grpc-timeout` says (a backend that
/// does not keep deadlines).
async fn grpc_echo(req: Request<Incoming>) -> Response<llm::AnyBody> {
    let wait = req
        .uri()
        .path()
        .split("/slow/")
        .nth(1)
        .and_then(|ms| ms.split('/').next()?.parse().ok());
    if let Some(ms) = wait {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().expect("value"));
    let frames: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> = vec![
        Ok(hyper::body::Frame::data(body)),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let mut resp =
        Response::new(http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed());
    resp.headers_mut()
        .insert("content-type", "application/grpc".parse().expect("value"));
    resp
}

/// A backend whose every response is 1 GiB, more than every buffer on the way. It reports each
/// connection the proxy lets go of (its writes fail then).
pub async fn endless_backend() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (released, on_release) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let released = released.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n";
                let _ = s.write_all(head).await;
                let chunk = vec![b'x'; 64 * 1024];
                while s.write_all(&chunk).await.is_ok() {}
                let _ = released.send(());
            });
        }
    });
    (url, on_release)
}

/// A running `tollgate-proxy`.
pub struct ProxyProcess {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub manifests: PathBuf,
    pub state: PathBuf,
    pub stderr_path: PathBuf,
    /// The access log (the proxy's stdout), appended across restarts.
    pub stdout_path: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
}

/// How long before a UTC hour boundary a test may start a proxy on the real clock.
const BOUNDARY_MARGIN_SECONDS: i64 = 120;

/// Waits, if the next UTC hour boundary is less than [`BOUNDARY_MARGIN_SECONDS`] away, until it
/// has passed. Tests count requests within one calendar period (an hour's rate-limit window, a
/// UTC day or month, a month in a whole-hour zone), and every such period ends on a UTC hour
/// boundary: a test that started near one would see its counts start over half-way (and fail on
/// the day it happened to run then). Tests that cross a boundary on purpose put the proxy's clock
/// just before it with [`clock_starting_at`].
pub async fn clear_of_period_boundaries() {
    let into_hour = jiff::Timestamp::now().as_second().rem_euclid(3600);
    let left = 3600 - into_hour;
    if left < BOUNDARY_MARGIN_SECONDS {
        tokio::time::sleep(Duration::from_secs(left.unsigned_abs() + 1)).await;
    }
}

/// libfaketime's preload library (Debian package faketime).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Environment for a child process whose wall clock reads `start` now and runs on in step with
/// this process's clock; its monotonic clock (timers) stays real. Every child given the same
/// `start` shares one clock (a libfaketime offset, not a start-at date that would restart at
/// each launch). When this test process runs on a moved clock itself (`tests/at-dates.sh`), the
/// offset is added to that one, since libfaketime offsets count from the system clock.
pub fn clock_starting_at(start: jiff::Timestamp) -> Vec<(&'static str, String)> {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "libfaketime (Debian package faketime) is needed"
    );
    let moved = match std::env::var("FAKETIME") {
        Ok(offset) => offset.parse::<i64>().unwrap_or_else(|_| {
            panic!("FAKETIME={offset:?}: tests run only on offsets in seconds, like +3600")
        }),
        Err(_) => 0,
    };
    let offset = start.as_second() - jiff::Timestamp::now().as_second() + moved;
    vec![
        ("LD_PRELOAD", LIBFAKETIME.to_owned()),
        ("FAKETIME", format!("{offset:+}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ("TZ", "UTC".to_owned()),
    ]
}

pub fn free_port() -> u16 {
    tollgate_tests::process::free_port().expect("a free port on 127.0.0.1")
}

impl ProxyProcess {
    /// Writes `manifests` (file name -> YAML) and starts the proxy on them.
    pub async fn start(manifests: &[(&str, String)]) -> Self {
        Self::start_with(manifests, &[]).await
    }

    pub async fn start_with(manifests: &[(&str, String)], args: &[&str]) -> Self {
        Self::start_with_env(manifests, args, &[]).await
    }

    /// Like `start_with`, with extra environment variables for the proxy process.
    pub async fn start_with_env(
        manifests: &[(&str, String)],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        // A proxy on a clock of the test's own choosing has its boundaries where the test put them.
        if !env.iter().any(|(k, _)| *k == "FAKETIME") {
            clear_of_period_boundaries().await;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let manifest_dir = dir.path().join("manifests");
        std::fs::create_dir_all(&manifest_dir).expect("mkdir");
        for (name, yaml) in manifests {
            std::fs::write(manifest_dir.join(name), yaml).expect("write manifest");
        }
        let mut p = Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            manifests: manifest_dir,
            state: dir.path().join("state"),
            stderr_path: dir.path().join("proxy.stderr"),
            stdout_path: dir.path().join("proxy.stdout"),
            child: None,
            _dir: dir,
            extra_args: args.iter().map(|s| (*s).to_owned()).collect(),
            extra_env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        p.spawn().await;
        p
    }

    async fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr file");
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stdout_path)
            .expect("stdout file");
        let log_start = stderr.metadata().map(|m| m.len() as usize).unwrap_or(0);
        // Port 0: the proxy picks free ports and logs them, so parallel tests never collide.
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate-proxy"))
            .arg("--manifests")
            .arg(&self.manifests)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(&self.state)
            .args(["--reload-interval", "100ms"])
            // Two worker threads unless the test asks for its own count.
            .args(
                (!self.extra_args.iter().any(|a| a == "--worker-threads"))
                    .then_some(["--worker-threads", "2"])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start tollgate-proxy");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.stderr();
            if let Some((listen, admin)) = log.get(log_start..).and_then(bound_addresses) {
                (self.listen, self.admin) = (listen, admin);
                if let Ok((200, _, _)) = get_raw(self.admin, "/readyz", &[]).await {
                    // tests/run.sh runs the client-side tests once more with the proxy's
                    // experimental io_uring listener: make sure it is the one serving.
                    if std::env::var("TOLLGATE_IO_URING").is_ok_and(|v| v == "true") {
                        assert!(
                            self.stderr().contains("serving clients on io_uring"),
                            "TOLLGATE_IO_URING=true, but the proxy does not serve on io_uring: {}",
                            self.stderr()
                        );
                    }
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("tollgate-proxy exited with {status}:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "tollgate-proxy not ready:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/usage`, parsed.
    pub async fn usage(&self) -> Value {
        let (_, _, body) = get_raw(self.admin, "/usage", &[]).await.expect("usage");
        serde_json::from_slice(&body).expect("json")
    }

    /// What `/usage` says tenant `default/TENANT` used of `quota` (of its first quota when
    /// `None`), as the decimal string it shows; "0" when there is no row yet.
    pub async fn used(&self, tenant: &str, quota: Option<&str>) -> String {
        self.usage().await["usage"]
            .as_array()
            .and_then(|rows| {
                rows.iter().find(|r| {
                    r["tenant"] == format!("default/{tenant}")
                        && quota.is_none_or(|q| r["quota"] == q)
                })
            })
            .and_then(|r| r["used"].as_str())
            .unwrap_or("0")
            .to_owned()
    }

    /// `/metrics`, as exposed.
    pub async fn metrics_text(&self) -> String {
        let (_, _, body) = get_raw(self.admin, "/metrics", &[]).await.expect("metrics");
        String::from_utf8_lossy(&body).into_owned()
    }

    /// The value of one metric series (`name{labels}` exactly as exposed), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let prefix = format!("{series} ");
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Waits (up to 10 s) until `series` reaches `at_least`. Counts a connection's end land just
    /// after it closes, so they are waited for rather than read once.
    pub async fn wait_for_metric(&self, series: &str, at_least: f64) {
        let mut seen = 0.0;
        for _ in 0..100 {
            seen = self.metric(series).await;
            if seen >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{series} is {seen}, expected at least {at_least}");
    }

    /// The access-log lines written so far, parsed.
    pub fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.stdout_path)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("access-log line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM and wait for the exit, without blocking the test's runtime (the test backend
    /// runs on it and may be serving the requests being drained).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn restart(&mut self) {
        let status = self.terminate().await;
        assert!(
            status.success(),
            "proxy exited with {status}:\n{}",
            self.stderr()
        );
        self.spawn().await;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    pub fn write_manifest(&self, name: &str, yaml: &str) {
        // Write then rename so the watcher never sees a half-written file.
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write");
        std::fs::rename(&tmp, self.manifests.join(name)).expect("rename");
    }

    pub async fn config_version(&self) -> u64 {
        let (_, _, body) = get_raw(self.admin, "/usage", &[]).await.expect("usage");
        serde_json::from_slice::<Value>(&body).expect("json")["configVersion"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits until the configuration version is above `previous`.
    pub async fn wait_for_version_above(&self, previous: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.config_version().await;
            if v > previous {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no reload within 5 s:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts `reply` is the RFC 9457 problem `slug` with `status`; returns its body.
    pub fn problem_check(&self, reply: &Reply, status: u16, slug: &str) -> Value {
        reply.problem(status, slug)
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        request(self.listen, "GET", path, headers, Bytes::new()).await
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        request(
            self.listen,
            "POST",
            path,
            headers,
            Bytes::from(body.to_owned()),
        )
        .await
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `t` (seconds to reset) of the last policy in the `RateLimit` header.
    pub fn ratelimit_reset(&self) -> Option<i64> {
        self.header("ratelimit")?
            .rsplit("t=")
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Asserts an RFC 9457 problem of `slug` with `status`; returns the body.
    pub fn problem(&self, status: u16, slug: &str) -> Value {
        assert_eq!(self.status, status, "status; body: {:?}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let body = self.json();
        assert_eq!(
            body["type"],
            format!("https://tollgate.dev/problems/{slug}"),
            "{body}"
        );
        assert_eq!(body["status"], status);
        assert!(
            body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        assert!(
            body["detail"].as_str().is_some_and(|t| t.len() > 10),
            "{body}"
        );
        assert!(
            body["instance"]
                .as_str()
                .is_some_and(|t| t.starts_with('/')),
            "{body}"
        );
        body
    }
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body)).expect("request"))
        .await
        .expect("send request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub async fn get_raw(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, http::HeaderMap, Bytes), String> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(
            req.body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?,
        )
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts.status.as_u16(), parts.headers, body))
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// The `listen=` and `admin=` addresses of the proxy's "serving" log line.
pub fn bound_addresses(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    let line = log.lines().find(|l| l.contains("tollgate-proxy serving"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<SocketAddr>().ok())
    };
    Some((field("listen=")?, field("admin=")?))
}

/// A small deterministic generator (xorshift64*) for randomized tests: the same seed gives the
/// same case, so a failure names the seed that reproduces it.
pub struct Dice(u64);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

//! The Pingora peer of `bench/run.sh` (PEERS=1): what Tollgate does on the benchmark's route,
//! written the way a Pingora user would: the API key looked up (401 with a problem body when
//! unknown), a per-second and a monthly counter per tenant (429 / 402 past them, never reached
//! here), the key header kept from the upstream, keep-alive upstream connections.
//!
//!   pingora-peer LISTEN UPSTREAM THREADS KEY    # e.g. 127.0.0.1:8083 127.0.0.1:8081 1 tg_bench_key_0001

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// One tenant's counters.
struct Counters {
    /// (second, requests in it).
    second: Mutex<(u64, u64)>,
    /// Requests this month (the month's start is not tracked: the limit is far out of reach,
    /// as in Tollgate's benchmark plan).
    month: AtomicU64,
}

struct Gate {
    upstream: SocketAddr,
    tenants: HashMap<String, Counters>,
}

const PER_SECOND: u64 = 100_000_000;
const PER_MONTH: u64 = 1_000_000_000_000;

fn key(req: &RequestHeader) -> Option<&str> {
    let auth = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    match auth.and_then(|a| a.strip_prefix("Bearer ")) {
        Some(key) => Some(key.trim()),
        None => req.headers.get("x-api-key").and_then(|v| v.to_str().ok()),
    }
}

#[async_trait]
impl ProxyHttp for Gate {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let Some(counters) = key(session.req_header()).and_then(|k| self.tenants.get(k)) else {
            let body = bytes::Bytes::from_static(
                br#"{"status":401,"title":"Missing or unknown API key"}"#,
            );
            session.respond_error_with_body(401, body).await?;
            return Ok(true);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let over_rate = {
            let mut second = counters.second.lock().unwrap_or_else(|e| e.into_inner());
            if second.0 != now {
                *second = (now, 0);
            }
            second.1 += 1;
            second.1 > PER_SECOND
        };
        if over_rate {
            session.respond_error(429).await?;
            return Ok(true);
        }
        if counters.month.fetch_add(1, Ordering::Relaxed) >= PER_MONTH {
            session.respond_error(402).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        upstream_request.remove_header("authorization");
        upstream_request.remove_header("x-api-key");
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, threads, key] = &args[..] else {
        eprintln!("usage: pingora-peer LISTEN UPSTREAM THREADS KEY");
        std::process::exit(2);
    };
    let (Ok(upstream), Ok(threads)) = (upstream.parse::<SocketAddr>(), threads.parse::<usize>())
    else {
        eprintln!("pingora-peer: UPSTREAM is host:port and THREADS a count");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads,
        upstream_keepalive_pool_size: 1024,
        // A benchmark has nothing to drain: SIGTERM ends it at once (Pingora's default grace
        // would keep the benchmark's cleanup waiting for minutes).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let gate = Gate {
        upstream,
        tenants: HashMap::from([(
            key.clone(),
            Counters {
                second: Mutex::new((0, 0)),
                month: AtomicU64::new(0),
            },
        )]),
    };
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, gate);
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}

//! One JSON line per request on stdout, written by a dedicated thread so a slow stdout never
//! blocks the hot path: lines are buffered and dropped (and counted) when stdout is stuck.
//! Key material never reaches this module; only route, tenant and outcome.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use prometheus::IntCounter;
use serde::Serialize;

/// One request's outcome.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessRecord<'a> {
    /// RFC 3339 time the request arrived.
    pub time: jiff::Timestamp,
    /// Client address.
    pub client: &'a str,
    /// Method.
    pub method: &'a str,
    /// Path (no query string: it may carry secrets).
    pub path: &'a str,
    /// `namespace/name` of the route, if one matched.
    pub route: Option<&'a str>,
    /// `namespace/name` of the tenant, if authenticated.
    pub tenant: Option<&'a str>,
    /// Status sent.
    pub status: u16,
    /// Problem type slug, if the proxy answered with a problem.
    pub problem: Option<&'a str>,
    /// Seconds from request to response head.
    pub latency_seconds: f64,
    /// Response body bytes, when known up front (Content-Length).
    pub bytes: Option<u64>,
}

/// Handle to the writer thread.
///
/// The hot path appends the line to a shared buffer (a short critical section, no syscall, no
/// wake-up); the writer thread swaps the buffer out every 50 ms (or sooner when it fills) and
/// writes it with one syscall. Waking a thread per request cost more than the rest of the access
/// log: on one core, the context switches halved throughput.
#[derive(Debug, Clone)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    dropped: IntCounter,
}

#[derive(Debug, Default)]
struct Shared {
    buffer: Mutex<Vec<u8>>,
    full: Condvar,
}

/// Flush at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Wake the writer early past this much buffered output.
const WAKE_AT: usize = 256 * 1024;
/// Drop lines (and count them) past this much unwritten output: stdout is stuck.
const MAX_BUFFERED: usize = 8 * 1024 * 1024;

impl AccessLog {
    /// Starts the writer thread (`enabled`), or a no-op log.
    pub fn start(enabled: bool, dropped: IntCounter) -> Self {
        if !enabled {
            return Self {
                shared: None,
                dropped,
            };
        }
        let shared = Arc::new(Shared::default());
        let writer = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&writer));
        Self {
            shared: spawned.ok().map(|_| shared),
            dropped,
        }
    }

    /// Queues one record.
    pub fn record(&self, record: &AccessRecord<'_>) {
        let Some(shared) = &self.shared else { return };
        let mut line = Vec::with_capacity(256);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        let mut buffer = shared.buffer.lock();
        if buffer.len() + line.len() > MAX_BUFFERED {
            drop(buffer);
            self.dropped.inc();
            return;
        }
        buffer.extend_from_slice(&line);
        if buffer.len() >= WAKE_AT {
            shared.full.notify_one();
        }
    }
}

fn write_lines(shared: &Shared) {
    let stdout = std::io::stdout();
    let mut spare = Vec::new();
    loop {
        {
            let mut buffer = shared.buffer.lock();
            if buffer.len() < WAKE_AT {
                shared.full.wait_for(&mut buffer, FLUSH_EVERY);
            }
            std::mem::swap(&mut *buffer, &mut spare);
        }
        if !spare.is_empty() {
            let mut out = stdout.lock();
            let _ = out.write_all(&spare);
            let _ = out.flush();
            spare.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(record: &AccessRecord<'_>) -> serde_json::Value {
        let mut out = serde_json::to_vec(record).expect("serializes");
        out.push(b'\n');
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn a_record_is_one_json_line_with_every_field() {
        let time: jiff::Timestamp = "2026-11-25T21:03:04.000120500Z".parse().expect("time");
        let v = line(&AccessRecord {
            time,
            client: "10.0.0.7",
            method: "POST",
            path: "/v1/chat/completions",
            route: Some("shop/chat"),
            tenant: Some("shop/acme"),
            status: 402,
            problem: Some("quota-exhausted"),
            latency_seconds: 1.234567,
            bytes: Some(311),
        });
        assert_eq!(
            v,
            serde_json::json!({
                "time": v["time"], "client": "10.0.0.7", "method": "POST",
                "path": "/v1/chat/completions", "route": "shop/chat", "tenant": "shop/acme",
                "status": 402, "problem": "quota-exhausted", "latencySeconds": 1.234567, "bytes": 311
            })
        );
        let parsed: jiff::Timestamp = v["time"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .expect("RFC 3339");
        assert_eq!(parsed, time);
    }

    #[test]
    fn strings_from_the_request_are_escaped_and_absent_fields_are_null() {
        let nasty = "/a\"b\\c\nd\u{1}e\u{7f}\u{e9}";
        let v = line(&AccessRecord {
            time: jiff::Timestamp::UNIX_EPOCH,
            client: "::1",
            method: "GET",
            path: nasty,
            route: None,
            tenant: None,
            status: 404,
            problem: None,
            latency_seconds: 0.0,
            bytes: None,
        });
        assert_eq!(v["path"], nasty);
        assert_eq!(v["time"], "1970-01-01T00:00:00Z");
        assert_eq!(v["latencySeconds"], 0.0);
        assert!(v["route"].is_null() && v["tenant"].is_null() && v["bytes"].is_null());
    }
}

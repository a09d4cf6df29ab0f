//! One JSON line per request on stdout, written by a dedicated thread so a slow stdout never
//! blocks the hot path: lines are buffered and dropped (and counted) when stdout is stuck.
//! Key material never reaches this module; only route, tenant and outcome.

use std::cell::RefCell;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use prometheus::IntCounter;

/// One request's outcome.
#[derive(Debug)]
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
    /// From request to response head (`latencySeconds`).
    pub latency: Duration,
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
        thread_local! {
            static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            record.write_json(line);
            let mut buffer = shared.buffer.lock();
            if buffer.len() + line.len() > MAX_BUFFERED {
                drop(buffer);
                self.dropped.inc();
                return;
            }
            buffer.extend_from_slice(line);
            if buffer.len() >= WAKE_AT {
                shared.full.notify_one();
            }
        });
    }
}

impl AccessRecord<'_> {
    /// The record as one JSON line. Written by hand: serde_json's generic path (escaping every
    /// string, formatting the float and the timestamp) was 8% of the proxy's user-space
    /// instructions per request.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b"{\"time\":\"");
        write_time(out, self.time);
        out.extend_from_slice(b"\",\"client\":");
        write_str(out, self.client);
        out.extend_from_slice(b",\"method\":");
        write_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        write_str(out, self.path);
        out.extend_from_slice(b",\"route\":");
        write_opt_str(out, self.route);
        out.extend_from_slice(b",\"tenant\":");
        write_opt_str(out, self.tenant);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(n.format(self.status).as_bytes());
        out.extend_from_slice(b",\"problem\":");
        write_opt_str(out, self.problem);
        // Exact decimal seconds from the Duration, no float formatting.
        out.extend_from_slice(b",\"latencySeconds\":");
        out.extend_from_slice(n.format(self.latency.as_secs()).as_bytes());
        out.push(b'.');
        write_padded(out, self.latency.subsec_nanos(), 9);
        out.extend_from_slice(b",\"bytes\":");
        match self.bytes {
            Some(b) => out.extend_from_slice(n.format(b).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}\n");
    }
}

/// RFC 3339 in UTC with nanoseconds; the date and time of day are formatted once per second.
fn write_time(out: &mut Vec<u8>, time: jiff::Timestamp) {
    thread_local! {
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let second = time.as_second();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            // Whole seconds print without a fraction: "2026-11-25T21:03:04Z".
            let whole = jiff::Timestamp::from_second(second)
                .unwrap_or(time)
                .to_string();
            *text = whole.trim_end_matches('Z').to_owned();
        }
        out.extend_from_slice(text.as_bytes());
    });
    out.push(b'.');
    write_padded(out, time.subsec_nanosecond().unsigned_abs(), 9);
    out.push(b'Z');
}

fn write_padded(out: &mut Vec<u8>, value: u32, width: usize) {
    let mut n = itoa::Buffer::new();
    let digits = n.format(value);
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits.as_bytes());
}

fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: quotes, backslashes and control characters escaped.
fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut clean = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[clean..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        clean = i + 1;
    }
    out.extend_from_slice(&bytes[clean..]);
    out.push(b'"');
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
        let mut out = Vec::new();
        record.write_json(&mut out);
        assert_eq!(out.last(), Some(&b'\n'));
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
            latency: Duration::from_nanos(1_234_567_000),
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
            latency: Duration::ZERO,
            bytes: None,
        });
        assert_eq!(v["path"], nasty);
        assert_eq!(v["time"], "1970-01-01T00:00:00.000000000Z");
        assert_eq!(v["latencySeconds"], 0.0);
        assert!(v["route"].is_null() && v["tenant"].is_null() && v["bytes"].is_null());
    }

    #[test]
    fn the_cached_second_follows_the_clock() {
        for time in [
            "2026-11-25T23:59:59.999999999Z",
            "2026-11-25T23:59:59.5Z",
            "2026-11-26T00:00:00Z",
            "2026-11-26T00:00:00.000000001Z",
        ] {
            let time: jiff::Timestamp = time.parse().expect("time");
            let v = line(&AccessRecord {
                time,
                client: "10.0.0.7",
                method: "GET",
                path: "/",
                route: None,
                tenant: None,
                status: 200,
                problem: None,
                latency: Duration::from_micros(5),
                bytes: Some(2),
            });
            let parsed: jiff::Timestamp = v["time"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .expect("RFC 3339");
            assert_eq!(parsed, time);
            assert_eq!(v["latencySeconds"], 0.000005);
        }
    }
}

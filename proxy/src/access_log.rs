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

//! One JSON line per request on stdout, written by a dedicated thread so a slow stdout never
//! blocks the hot path: lines go through a bounded channel and are dropped (and counted) when full.
//! Key material never reaches this module; only route, tenant and outcome.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

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
#[derive(Debug, Clone)]
pub struct AccessLog {
    sender: Option<SyncSender<Vec<u8>>>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread (`enabled`), or a no-op log.
    pub fn start(enabled: bool, dropped: IntCounter) -> Self {
        if !enabled {
            return Self {
                sender: None,
                dropped,
            };
        }
        let (sender, receiver) = sync_channel::<Vec<u8>>(16 * 1024);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(receiver));
        Self {
            sender: spawned.ok().map(|_| sender),
            dropped,
        }
    }

    /// Queues one record.
    pub fn record(&self, record: &AccessRecord<'_>) {
        let Some(sender) = &self.sender else { return };
        let mut line = Vec::with_capacity(256);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = sender.try_send(line) {
            self.dropped.inc();
        }
    }
}

fn write_lines(receiver: Receiver<Vec<u8>>) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    while let Ok(line) = receiver.recv() {
        let _ = out.write_all(&line);
        // Drain what is queued before paying for a flush (one write syscall per batch).
        while let Ok(more) = receiver.try_recv() {
            let _ = out.write_all(&more);
        }
        let _ = out.flush();
    }
}

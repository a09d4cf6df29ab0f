//! One JSON line per request on stdout, written by a dedicated thread so a slow stdout never
//! blocks the hot path: lines are buffered, and dropped (and counted) when stdout is stuck or
//! fails.
//! Key material never reaches this module; only route, tenant and outcome.
//!
//! Each worker thread appends lines to its own chunk, with no lock and no atomic, and hands its
//! lines to the writer thread (the whole chunk when full, a copy when few) when it fills, when it
//! is older than 50 ms (`FLUSH_EVERY`), and whenever the thread goes idle: the runtime calls
//! [`hand_off_pending`] before it parks a worker (and when a worker stops), so a line reaches
//! stdout within one writer tick of its request on a quiet proxy as on a busy one.
//! [`AccessLog::close`] writes everything before the process exits.

use std::cell::RefCell;
use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use rust_decimal::Decimal;
use tollgate_crds::stream::TokenCounts;

use prometheus::IntCounter;

use crate::http1::date::{SecondCache, empty_cache, write_per_second};

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
    /// What a metered call used (its line is written when the response ends).
    pub call: Option<&'a CallFields>,
}

/// What a metered call used, as its access-log line shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFields {
    /// The model the answer (else the request) named.
    pub model: Option<String>,
    /// Tokens by type.
    pub tokens: TokenCounts,
    /// What the call cost (fixed-point decimal, written as a string).
    pub cost: Decimal,
    /// The plan's currency.
    pub currency: Option<String>,
}

/// The line of a metered call: written when its response ends, with what the call used, rather
/// than when the head is sent. Whichever of the two comes second writes it.
#[derive(Debug, Default)]
pub struct DeferredLine {
    state: Mutex<Deferred>,
}

#[derive(Debug, Default)]
enum Deferred {
    #[default]
    Waiting,
    Head(OwnedRecord),
    Used(CallFields),
    Written,
}

/// An [`AccessRecord`] that outlives its request.
#[derive(Debug)]
struct OwnedRecord {
    time: jiff::Timestamp,
    client: Arc<str>,
    method: String,
    path: String,
    route: Option<Arc<str>>,
    tenant: Option<Arc<str>>,
    status: u16,
    problem: Option<&'static str>,
    latency: Duration,
    bytes: Option<u64>,
}

impl DeferredLine {
    /// The response head was sent: `record` (its `call` unset) waits for the call's usage.
    pub fn head(
        &self,
        log: &AccessLog,
        record: &AccessRecord<'_>,
        client: &Arc<str>,
        route: Option<&Arc<str>>,
        tenant: Option<&Arc<str>>,
        problem: Option<&'static str>,
    ) {
        let mut state = self.state.lock();
        match std::mem::take(&mut *state) {
            Deferred::Used(call) => {
                log.record(&AccessRecord {
                    call: Some(&call),
                    ..*record
                });
                *state = Deferred::Written;
            }
            Deferred::Waiting => {
                *state = Deferred::Head(OwnedRecord {
                    time: record.time,
                    client: Arc::clone(client),
                    method: record.method.to_owned(),
                    path: record.path.to_owned(),
                    route: route.cloned(),
                    tenant: tenant.cloned(),
                    status: record.status,
                    problem,
                    latency: record.latency,
                    bytes: record.bytes,
                });
            }
            other => *state = other,
        }
    }

    /// The call was settled: its line is written with `call` (now, or when the head is sent).
    pub fn used(&self, log: &AccessLog, call: CallFields) {
        let mut state = self.state.lock();
        match std::mem::take(&mut *state) {
            Deferred::Head(r) => {
                log.record(&AccessRecord {
                    time: r.time,
                    client: &r.client,
                    method: &r.method,
                    path: &r.path,
                    route: r.route.as_deref(),
                    tenant: r.tenant.as_deref(),
                    status: r.status,
                    problem: r.problem,
                    latency: r.latency,
                    bytes: r.bytes,
                    call: Some(&call),
                });
                *state = Deferred::Written;
            }
            Deferred::Waiting => *state = Deferred::Used(call),
            other => *state = other,
        }
    }
}

/// Handle to the writer thread.
///
/// Appending each line to one shared buffer under a mutex cost 1.3% of the proxy's CPU time at
/// 70k requests/s: the lock's atomic waited for the stores into a megabyte-sized buffer that had
/// left the cache. A per-thread chunk stays in L1 and takes the lock once per chunk.
#[derive(Debug, Clone)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    writer: Option<Arc<Mutex<Option<JoinHandle<()>>>>>,
    dropped: IntCounter,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer early (much queued output, or closing).
    wake: Condvar,
}

/// Chunks between the workers and the writer thread.
#[derive(Debug, Default)]
struct Queue {
    /// Filled chunks, oldest first.
    full: Vec<Vec<u8>>,
    /// Written chunks for reuse (their capacity is kept).
    free: Vec<Vec<u8>>,
    /// Bytes in `full`.
    queued: usize,
    /// No more lines: the writer drains `full` and exits.
    closed: bool,
}

/// The calling thread's chunk, not yet handed to its log's writer.
struct Pending {
    log: Arc<Shared>,
    chunk: Vec<u8>,
    lines: u64,
    /// The first line's time plus a tick (Unix ms): an older chunk is handed off.
    due_ms: i64,
    dropped: IntCounter,
}

thread_local! {
    static PENDING: RefCell<Option<Pending>> = const { RefCell::new(None) };
}

/// Flush at least this often.
const FLUSH_EVERY_MS: i64 = 50;
/// How old a chunk of lines may grow before it goes to the writer; how often the writer writes.
pub const FLUSH_EVERY: Duration = Duration::from_millis(FLUSH_EVERY_MS.unsigned_abs());
/// A worker's chunk: small enough to stay in the L1 cache, large enough for ~60 lines a lock.
const CHUNK: usize = 16 * 1024;
/// A hand-off of fewer bytes is copied into the queue; the worker keeps its chunk.
const COPY_BELOW: usize = CHUNK / 4;
/// Wake the writer past this much queued output: four chunks, so the chunks in circulation stay
/// in the L2 cache (waking it every 50 ms only would cycle a megabyte of them through memory).
const WAKE_AT: usize = 4 * CHUNK;
/// Drop lines (and count them) past this much unwritten output: stdout is stuck.
const MAX_BUFFERED: usize = 8 * 1024 * 1024;

impl AccessLog {
    /// Starts the writer thread (`enabled`), or a no-op log. `dropped` counts lines lost to a
    /// stuck or failing stdout.
    pub fn start(enabled: bool, dropped: IntCounter) -> Self {
        Self::start_writing_to(enabled, dropped, stdout_unbuffered())
    }

    fn start_writing_to(
        enabled: bool,
        dropped: IntCounter,
        out: impl Write + Send + 'static,
    ) -> Self {
        let disabled = Self {
            shared: None,
            writer: None,
            dropped: dropped.clone(),
        };
        if !enabled {
            return disabled;
        }
        let shared = Arc::new(Shared::default());
        let writer = shared.clone();
        let lost = dropped.clone();
        match std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_chunks(&writer, out, &lost))
        {
            Ok(handle) => Self {
                shared: Some(shared),
                writer: Some(Arc::new(Mutex::new(Some(handle)))),
                dropped,
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access-log thread; access log off");
                disabled
            }
        }
    }

    /// Appends one record to the calling thread's chunk.
    pub fn record(&self, record: &AccessRecord<'_>) {
        let Some(shared) = &self.shared else { return };
        PENDING.with_borrow_mut(|pending| {
            let current = match pending {
                Some(p) if Arc::ptr_eq(&p.log, shared) => p,
                _ => {
                    // First line on this thread, or a line for another log (tests run several).
                    if let Some(other) = pending.take() {
                        other.hand_off();
                    }
                    pending.insert(Pending {
                        log: shared.clone(),
                        chunk: shared.reuse_chunk(),
                        lines: 0,
                        due_ms: 0,
                        dropped: self.dropped.clone(),
                    })
                }
            };
            let now_ms = record.time.as_millisecond();
            if current.lines == 0 {
                current.due_ms = now_ms + FLUSH_EVERY_MS;
            }
            record.write_json(&mut current.chunk);
            current.lines += 1;
            if current.chunk.len() >= CHUNK - 1024 || now_ms >= current.due_ms {
                current.hand_off_chunk();
            }
        });
    }

    /// Writes every line recorded so far, then stops the writer thread. Called once, after the
    /// runtime (and so every worker's [`hand_off_pending`]) has finished.
    pub fn close(&self) {
        hand_off_pending();
        let (Some(shared), Some(writer)) = (&self.shared, &self.writer) else {
            return;
        };
        shared.queue.lock().closed = true;
        shared.wake.notify_one();
        if let Some(handle) = writer.lock().take() {
            let _ = handle.join();
        }
    }
}

/// Hands the calling thread's unwritten lines to the writer. The runtime calls it before parking
/// a worker and when a worker stops.
pub fn hand_off_pending() {
    // `try_with`: a thread being torn down has no thread-locals left, and nothing to hand off.
    let _ = PENDING.try_with(|pending| {
        if let Ok(mut pending) = pending.try_borrow_mut()
            && let Some(p) = pending.as_mut()
            && p.lines > 0
        {
            p.hand_off_chunk();
        }
    });
}

impl Pending {
    /// Queues the chunk's lines: a few are copied and the chunk kept; a full one is handed over
    /// whole for a fresh one.
    fn hand_off_chunk(&mut self) {
        let lines = std::mem::take(&mut self.lines);
        let queued = if self.chunk.len() < COPY_BELOW {
            // An idle worker's few lines (every park hands them off): a copy keeps this chunk in
            // the cache. Handing over a chunk per park cycled hundreds of them, each line written
            // into cold memory, and kept megabytes of them in circulation at low load.
            let queued = self.log.enqueue_copy(&self.chunk);
            self.chunk.clear();
            queued
        } else {
            let fresh = self.log.reuse_chunk();
            let chunk = std::mem::replace(&mut self.chunk, fresh);
            self.log.enqueue(chunk)
        };
        if !queued {
            self.dropped.inc_by(lines);
        }
    }

    fn hand_off(mut self) {
        if self.lines > 0 {
            self.hand_off_chunk();
        }
    }
}

impl Shared {
    /// An empty chunk, written before if one is free.
    fn reuse_chunk(&self) -> Vec<u8> {
        self.queue
            .lock()
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(CHUNK))
    }

    /// Queues a copy of `lines` for the writer, after everything queued before; false when too
    /// much output is waiting already, or the log is closed.
    fn enqueue_copy(&self, lines: &[u8]) -> bool {
        let mut queue = self.queue.lock();
        if !queue.make_room(lines.len()) {
            return false;
        }
        // Appended to the last queued chunk while it has room (never grown: chunks keep their
        // size for reuse), else to a chunk of its own.
        match queue.full.last_mut() {
            Some(last) if last.capacity() - last.len() >= lines.len() => {
                last.extend_from_slice(lines)
            }
            _ => {
                let mut chunk = queue
                    .free
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(CHUNK));
                chunk.extend_from_slice(lines);
                queue.full.push(chunk);
            }
        }
        self.wake_if_due(&queue);
        true
    }

    /// Queues a filled chunk for the writer; false (and the chunk recycled) when too much output
    /// is waiting already, or the log is closed.
    fn enqueue(&self, mut chunk: Vec<u8>) -> bool {
        let mut queue = self.queue.lock();
        if !queue.make_room(chunk.len()) {
            chunk.clear();
            queue.free.push(chunk);
            return false;
        }
        queue.full.push(chunk);
        self.wake_if_due(&queue);
        true
    }

    /// Wakes the writer early when much output is queued.
    fn wake_if_due(&self, queue: &Queue) {
        if queue.queued >= WAKE_AT {
            self.wake.notify_one();
        }
    }
}

impl Queue {
    /// Counts `len` more queued bytes; false (nothing counted) when that would pass
    /// `MAX_BUFFERED` (stdout is stuck) or the log is closed.
    fn make_room(&mut self, len: usize) -> bool {
        if self.closed || self.queued + len > MAX_BUFFERED {
            return false;
        }
        self.queued += len;
        true
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
        if let Some(call) = self.call {
            call.write_json(out);
        }
        out.extend_from_slice(b"}\n");
    }
}

impl CallFields {
    /// The members a metered call adds to its line (`model`, `tokens`, `cost`, `currency`).
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b",\"model\":");
        write_opt_str(out, self.model.as_deref());
        let t = &self.tokens;
        for (name, value) in [
            (&b",\"tokens\":{\"input\":"[..], t.input),
            (b",\"cachedInput\":", t.cached_input),
            (b",\"cacheWriteInput\":", t.cache_write_input),
            (b",\"output\":", t.output),
            (b",\"reasoning\":", t.reasoning),
        ] {
            out.extend_from_slice(name);
            out.extend_from_slice(n.format(value).as_bytes());
        }
        // A string: a decimal of any precision, never a float.
        out.extend_from_slice(b"},\"cost\":\"");
        out.extend_from_slice(self.cost.normalize().to_string().as_bytes());
        out.extend_from_slice(b"\",\"currency\":");
        write_opt_str(out, self.currency.as_deref());
    }
}

/// RFC 3339 in UTC with nanoseconds; the date and time of day are formatted once per second.
fn write_time(out: &mut Vec<u8>, time: jiff::Timestamp) {
    thread_local! {
        static SECOND: SecondCache = const { empty_cache() };
    }
    // Whole seconds print without a fraction: "2026-11-25T21:03:04Z".
    let whole = |second| {
        let text = jiff::Timestamp::from_second(second)
            .unwrap_or(time)
            .to_string();
        text.trim_end_matches('Z').to_owned()
    };
    write_per_second(&SECOND, time.as_second(), whole, out);
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
    if nothing_to_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
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

/// Whether `bytes` has no control character, quote or backslash: the common case, checked eight
/// bytes at a time. The fields are short (an address, a path, names) and a per-byte check, even
/// vectorized, cost ~120 instructions each; six per line.
fn nothing_to_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Exact tests on a word: a byte below `n` (n <= 128), a byte equal to `n`.
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS != 0;
    let equal = |w: u64, n: u8| below(w ^ (ONES * u64::from(n)), 1);
    let special = |w: u64| below(w, 0x20) | equal(w, b'"') | equal(w, b'\\');
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        if special(u64::from_le_bytes(w)) {
            return false;
        }
    }
    // The last bytes, padded with spaces.
    let rest = words.remainder();
    let mut w = [b' '; 8];
    w[..rest.len()].copy_from_slice(rest);
    !special(u64::from_le_bytes(w))
}

/// Standard output without std's line buffer: a batch goes to the file descriptor in one vectored
/// write, and a failed write keeps nothing back to send later, so every line is either written or
/// counted as dropped. Nothing else in the proxy writes to stdout. Falls back to std's handle if
/// the descriptor cannot be duplicated.
fn stdout_unbuffered() -> Box<dyn Write + Send> {
    use std::os::fd::AsFd;
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot duplicate stdout; the access log goes through std's buffer"
            );
            Box::new(std::io::stdout())
        }
    }
}

/// The writer thread: every tick (or sooner when woken), writes the queued chunks and returns
/// them for reuse; on close, drains the queue and exits. Lines `out` refuses are counted in
/// `dropped`, and each run of failures is logged once.
fn write_chunks(shared: &Shared, mut out: impl Write, dropped: &IntCounter) {
    let mut batch = Vec::new();
    let mut failing = false;
    loop {
        let closed = {
            let mut queue = shared.queue.lock();
            if queue.queued < WAKE_AT && !queue.closed {
                shared.wake.wait_for(&mut queue, FLUSH_EVERY);
            }
            std::mem::swap(&mut queue.full, &mut batch);
            queue.queued = 0;
            queue.closed
        };
        if !batch.is_empty() {
            match write_batch(&mut out, &batch) {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("the access log is written to stdout again");
                }
                Ok(()) => {}
                Err(failed) => {
                    dropped.inc_by(failed.lines_lost);
                    if !failing {
                        failing = true;
                        tracing::error!(
                            error = %failed.error,
                            lines_lost = failed.lines_lost,
                            "cannot write the access log to stdout; lines are dropped and counted in \
                             tollgate_proxy_access_log_dropped_total until it works again"
                        );
                    }
                }
            }
            let mut queue = shared.queue.lock();
            for mut chunk in batch.drain(..) {
                chunk.clear();
                queue.free.push(chunk);
            }
        }
        if closed {
            return;
        }
    }
}

/// Part of a batch the sink refused.
#[derive(Debug)]
struct WriteFailed {
    error: std::io::Error,
    /// Lines not written whole.
    lines_lost: u64,
}

/// Writes every chunk of `batch`, in order, with as few system calls as the sink allows, and
/// flushes the sink.
///
/// One vectored write for the whole batch, not one write per chunk: a worker hands its chunk off
/// whenever it goes idle, so at moderate load chunks hold a line or a few (one write per request
/// at 8k requests/s over one connection, one per ~14 at 80k over 64), and in a pod each write to
/// stdout's pipe also wakes the log collector.
fn write_batch(out: &mut impl Write, batch: &[Vec<u8>]) -> Result<(), WriteFailed> {
    let mut slices: Vec<std::io::IoSlice<'_>> = batch
        .iter()
        .filter(|chunk| !chunk.is_empty())
        .map(|chunk| std::io::IoSlice::new(chunk))
        .collect();
    let failed = |error, unwritten: &[std::io::IoSlice<'_>]| WriteFailed {
        error,
        lines_lost: unwritten
            .iter()
            .map(|slice| slice.iter().filter(|&&b| b == b'\n').count() as u64)
            .sum(),
    };
    // Written chunks leave the front of `rest`; a partly written one is shortened in place.
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(failed(std::io::ErrorKind::WriteZero.into(), rest)),
            Ok(written) => std::io::IoSlice::advance_slices(&mut rest, written),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(e, rest)),
        }
    }
    out.flush().map_err(|e| failed(e, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escape_check_agrees_with_a_byte_by_byte_one() {
        let simple = |s: &[u8]| s.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
        for b in 0..=255u8 {
            for at in 0..17 {
                let mut s = [b'a'; 17];
                s[at] = b;
                for len in [at + 1, 17] {
                    assert_eq!(
                        nothing_to_escape(&s[..len]),
                        simple(&s[..len]),
                        "{b} at {at}"
                    );
                }
            }
        }
        assert!(nothing_to_escape(b"") && nothing_to_escape("/caf\u{e9}/\u{1f600}".as_bytes()));
    }

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
            call: None,
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
            call: None,
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
                call: None,
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

    /// A sink that takes at most `max` bytes a call and counts its calls.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[std::io::IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
            self.calls += 1;
            let mut taken = 0;
            for buf in bufs {
                let n = buf.len().min(self.max - taken);
                self.out.extend_from_slice(&buf[..n]);
                taken += n;
                if taken == self.max {
                    break;
                }
            }
            Ok(taken)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_batch_is_written_whole_and_in_order_however_the_sink_splits_it() {
        let batch: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("{{\"line\":{i}}}\n").repeat(i % 4).into_bytes())
            .collect();
        let whole: Vec<u8> = batch.concat();
        for max in [1, 3, 7, 64, 1 << 20] {
            let mut sink = Trickle {
                out: Vec::new(),
                max,
                calls: 0,
            };
            write_batch(&mut sink, &batch).expect("written");
            assert_eq!(sink.out, whole, "at most {max} bytes a call");
            if max == 1 << 20 {
                assert_eq!(sink.calls, 1, "one call when the sink takes everything");
            }
        }
        let mut stuck = Trickle {
            out: Vec::new(),
            max: 0,
            calls: 0,
        };
        assert!(
            write_batch(&mut stuck, &batch).is_err(),
            "a sink that takes nothing"
        );
    }

    /// A 200 for `GET path`, now.
    fn served_get(path: &str) -> AccessRecord<'_> {
        AccessRecord {
            time: jiff::Timestamp::now(),
            client: "10.0.0.7",
            method: "GET",
            path,
            route: None,
            tenant: None,
            status: 200,
            problem: None,
            latency: Duration::from_micros(5),
            bytes: None,
            call: None,
        }
    }

    /// A log whose queue the test reads: no writer thread drains it.
    fn without_writer(shared: &Arc<Shared>, dropped: IntCounter) -> AccessLog {
        AccessLog {
            shared: Some(shared.clone()),
            writer: None,
            dropped,
        }
    }

    #[test]
    fn lines_a_failing_stdout_refuses_are_counted_as_dropped() {
        // Takes the first 100 bytes, then fails like a pipe whose reader is gone.
        struct Breaks(usize);
        impl Write for Breaks {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let dropped = IntCounter::new("dropped", "test").expect("counter");
        let log = AccessLog::start_writing_to(true, dropped.clone(), Breaks(100));
        let record = served_get("/v1/x");
        let mut line = Vec::new();
        record.write_json(&mut line);
        assert!(line.len() > 100, "the first line is cut short too");
        for _ in 0..50 {
            log.record(&record);
        }
        log.close();
        assert_eq!(dropped.get(), 50, "every line not written whole");
    }

    #[test]
    fn lines_reach_the_queue_in_order_whether_copied_or_handed_over_in_chunks() {
        let shared = Arc::new(Shared::default());
        let log = without_writer(
            &shared,
            IntCounter::new("dropped", "test").expect("counter"),
        );
        let paths: Vec<String> = (0..3000).map(|i| format!("/n/{i}")).collect();
        for (i, path) in paths.iter().enumerate() {
            log.record(&served_get(path));
            // Idle every few lines (a few lines copied), then busy for a thousand (whole chunks
            // handed over as they fill), then idle after every line.
            if (i < 1000 && i % 7 == 0) || i >= 2000 {
                hand_off_pending();
            }
        }
        hand_off_pending();
        let queue = shared.queue.lock();
        let written: Vec<u8> = queue.full.concat();
        let seen: Vec<String> = written
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_slice(l).expect("JSON line");
                v["path"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(seen, paths);
        assert_eq!(queue.queued, written.len());
        assert!(
            queue.full.iter().all(|c| c.capacity() <= CHUNK),
            "chunks keep their size"
        );
    }

    #[test]
    fn lines_past_the_buffer_limit_are_dropped_and_counted() {
        let dropped = IntCounter::new("dropped", "test").expect("counter");
        let shared = Arc::new(Shared::default());
        // A writer that never writes: stdout is stuck.
        shared.queue.lock().queued = MAX_BUFFERED;
        let log = without_writer(&shared, dropped.clone());
        let record = served_get("/v1/x");
        for _ in 0..3 {
            log.record(&record);
        }
        hand_off_pending();
        assert_eq!(dropped.get(), 3);
        assert!(shared.queue.lock().full.is_empty());

        // Room again: the next lines are queued, not dropped.
        shared.queue.lock().queued = 0;
        log.record(&record);
        hand_off_pending();
        assert_eq!(dropped.get(), 3);
        assert_eq!(shared.queue.lock().full.len(), 1);
    }
}

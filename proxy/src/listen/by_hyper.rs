//! Connections hyper serves — HTTP/2 (h2c and over TLS), requests with a body, HTTP/1.0,
//! upgrades — held to the same limits as the HTTP/1.1 engine's ([`super::h1`]).
//!
//! hyper has a header-read timeout for HTTP/1 and nothing else: a connection stuck in its
//! protocol detection (the first bytes of the HTTP/2 preface and no more), an HTTP/2 connection
//! with no streams that answers pings, and a response the client stops reading (a full socket,
//! or an HTTP/2 stream window never reopened) would each stay open, the last one holding a
//! backend connection too. So every such connection runs beside a watchdog that reads two
//! things the connection's requests record in [`Activity`]:
//! - how many requests are in flight (from the service call to the end of the response body):
//!   with none, the connection must start one within the header timeout of opening, and the
//!   next one within the idle timeout of the last one's end;
//! - which response bodies have handed hyper data that hyper has not come back for: hyper
//!   polls a body again only once the client has taken what it had. A body left waiting for the
//!   send timeout, on a connection that has written nothing to its socket for as long, means a
//!   client that stopped reading, and the connection is closed (hyper offers no way to reset
//!   one HTTP/2 stream from outside). While the socket still takes bytes for other streams, one
//!   stream whose window the client keeps shut is the client's choice and stays.
//!
//! Idle and header timeouts close gracefully (an HTTP/2 GOAWAY), and so does shutdown; the
//! watchdog keeps watching the goodbye (a request that slipped in finishes, a client that stops
//! reading is still dropped). A send timeout drops the connection at once, since its client is
//! not reading anyway.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http1::raw_headers::RawHeaders;
use crate::listen::h1::{Closed, Limits};
use crate::pipeline::{ClientConn, Proxy};
use crate::quota::CounterStore;
use crate::upstream::forward::RequestBody;

/// How a hyper-served connection ended.
#[derive(Debug)]
pub enum Ended {
    /// Closed, and why.
    Closed(Closed),
    /// hyper failed it (a protocol error, a reset, a failed write).
    Error(hyper::Error),
}

/// Serves `io` with hyper until the client closes it, a limit closes it, or shutdown (`stop`
/// turning true) has drained it.
pub async fn serve<T, S>(
    io: T,
    proxy: Arc<Proxy<S>>,
    client: Arc<ClientConn>,
    builder: &auto::Builder<TokioExecutor>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> Ended
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: CounterStore,
{
    let activity = Arc::new(Activity::new());
    // A WebSocket relayed from this connection is a request in flight until it closes: over
    // HTTP/2 the connection goes on beside it, and the watchdog must not close it as idle.
    let busy = activity.clone();
    let _ = client.busy.set(crate::pipeline::Busy(Box::new(move || {
        Box::new(InFlight::start(&busy))
    })));
    let service = {
        let activity = activity.clone();
        service_fn(move |req: hyper::Request<Incoming>| {
            let (proxy, client, activity) = (proxy.clone(), client.clone(), activity.clone());
            async move {
                let in_flight = InFlight::start(&activity);
                let resp = proxy
                    .handle(
                        req.map(RequestBody::Streaming),
                        RawHeaders::default(),
                        &client,
                    )
                    .await;
                let resp = crate::pipeline::with_lines_in_map(resp);
                Ok::<_, Infallible>(resp.map(|body| Watched::new(body, in_flight)))
            }
        })
    };
    let io = Progress {
        io,
        activity: activity.clone(),
    };
    // With upgrades: a WebSocket's connection leaves hyper once both sides switched protocols
    // (`pipeline::upgrade` relays it).
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let expired = expiry(&activity, limits);
    tokio::pin!(expired);
    let stopping = stop.wait_for(|stop| *stop);
    tokio::pin!(stopping);
    let why = tokio::select! {
        ended = conn.as_mut() => return outcome(ended, Closed::ByClient),
        _ = &mut stopping => Closed::Shutdown,
        why = &mut expired => why,
    };
    if why == Closed::SendTimeout {
        // Its client reads nothing: a goodbye would wait behind what it already does not read.
        return Ended::Closed(why);
    }
    // Graceful: hyper closes an idle HTTP/1 connection at once and sends HTTP/2 a GOAWAY, and
    // requests in flight (one may have slipped in just now) finish. The watchdog goes on
    // watching: a goodbye the client never completes ends at the next limit. What the goodbye
    // returns does not change why the connection closed.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = expiry(&activity, limits) => {}
    }
    Ended::Closed(why)
}

fn outcome(ended: Result<(), Box<dyn std::error::Error + Send + Sync>>, ok: Closed) -> Ended {
    match ended {
        Ok(()) => Ended::Closed(ok),
        Err(e) => match e.downcast::<hyper::Error>() {
            // hyper's HTTP/1 header-read timer, which also runs while a keep-alive connection
            // waits for its next request.
            Ok(e) if e.is_timeout() => Ended::Closed(Closed::HeaderTimeout),
            Ok(e) => Ended::Error(*e),
            // hyper-util's protocol detection fails with an io::Error (the client closed early).
            Err(_) => Ended::Closed(Closed::ByClient),
        },
    }
}

/// Resolves when a limit says the connection must close: no request started within the header
/// timeout of opening, none within the idle timeout of the last one's end, or a response body
/// left waiting for its client for the send timeout.
async fn expiry(activity: &Activity, limits: Limits) -> Closed {
    let mut load = activity.load.subscribe();
    let mut idle_since = Instant::now();
    loop {
        let now = Instant::now();
        let (due, why) = {
            let load = *load.borrow_and_update();
            if load.in_flight > 0 {
                match activity.oldest_wait() {
                    // Stalled since the later of: the body's wait began, the socket last took
                    // bytes.
                    Some(since) => (
                        since.max(activity.last_write()) + limits.send_timeout,
                        Some(Closed::SendTimeout),
                    ),
                    // No body waits now; look again before one could have waited too long.
                    None => (now + limits.send_timeout / 2, None),
                }
            } else if load.started == 0 {
                (
                    idle_since + limits.header_timeout,
                    Some(Closed::HeaderTimeout),
                )
            } else {
                (idle_since + limits.idle_timeout, Some(Closed::IdleTimeout))
            }
        };
        if let Some(why) = why.filter(|_| due <= now) {
            return why;
        }
        tokio::select! {
            biased;
            changed = load.changed() => {
                if changed.is_err() {
                    // The sender lives in `activity`, which outlives this future.
                    std::future::pending::<()>().await;
                }
                // A request started or ended: when idle from here on, idle from now.
                idle_since = Instant::now();
            }
            () = tokio::time::sleep_until(due) => {}
        }
    }
}

/// What a connection's requests record for its watchdog.
#[derive(Debug)]
struct Activity {
    load: watch::Sender<Load>,
    /// One slot per response body in flight: when it last handed hyper data that hyper has not
    /// come back for (see [`Watched`]). Bodies that ended leave their slot; it is dropped at the
    /// next look.
    waits: Mutex<Vec<Arc<AtomicU64>>>,
    /// When the socket last took bytes (a stamp, as the wait slots hold).
    last_write: AtomicU64,
    epoch: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
struct Load {
    in_flight: usize,
    started: u64,
}

/// A wait slot's value when its body is not waiting.
const NOT_WAITING: u64 = 0;

impl Activity {
    fn new() -> Self {
        Self {
            load: watch::Sender::new(Load::default()),
            waits: Mutex::new(Vec::new()),
            last_write: AtomicU64::new(NOT_WAITING),
            epoch: Instant::now(),
        }
    }

    /// A slot for a new response body.
    fn wait_slot(&self) -> Arc<AtomicU64> {
        let slot = Arc::new(AtomicU64::new(NOT_WAITING));
        let mut waits = self.waits.lock();
        // Slots of ended bodies go here too, not only when the watchdog looks: requests that
        // start and end between two of its looks would otherwise pile up for the connection's
        // life.
        waits.retain(|slot| Arc::strong_count(slot) > 1);
        waits.push(slot.clone());
        slot
    }

    fn instant(&self, stamp: u64) -> Instant {
        self.epoch + std::time::Duration::from_micros(stamp.saturating_sub(1))
    }

    /// When the socket last took bytes (the connection's start if never).
    fn last_write(&self) -> Instant {
        self.instant(self.last_write.load(Ordering::Relaxed))
    }

    /// A slot's value for "waiting since now": microseconds since the connection opened, plus
    /// one so that it is never [`NOT_WAITING`].
    fn now_stamp(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// Since when the longest-waiting response body has waited for its client, if one does.
    fn oldest_wait(&self) -> Option<Instant> {
        let mut waits = self.waits.lock();
        waits.retain(|slot| Arc::strong_count(slot) > 1);
        let oldest = waits
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|&stamp| stamp != NOT_WAITING)
            .min()?;
        Some(self.instant(oldest))
    }
}

/// The connection's socket, stamping [`Activity::last_write`] whenever it takes bytes.
#[derive(Debug)]
struct Progress<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T> Progress<T> {
    fn took(&self, written: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(1..)) = written {
            let stamp = self.activity.now_stamp();
            self.activity.last_write.store(stamp, Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Progress<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Progress<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.took(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.took(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request in flight, from the service call until its response body is dropped.
#[derive(Debug)]
struct InFlight {
    activity: Arc<Activity>,
}

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.load.send_modify(|load| {
            load.in_flight += 1;
            load.started += 1;
        });
        Self {
            activity: activity.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity
            .load
            .send_modify(|load| load.in_flight = load.in_flight.saturating_sub(1));
    }
}

/// A response body that records, for the watchdog, when it handed hyper data and whether hyper
/// has come back for more since.
#[derive(Debug)]
pub struct Watched<B> {
    body: B,
    waiting_since: Arc<AtomicU64>,
    in_flight: InFlight,
}

impl<B> Watched<B> {
    fn new(body: B, in_flight: InFlight) -> Self {
        Self {
            body,
            waiting_since: in_flight.activity.wait_slot(),
            in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        // hyper is back: whatever it was given has gone to the client (or to its buffers).
        self.waiting_since.store(NOT_WAITING, Ordering::Relaxed);
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.data_ref().is_some_and(|data| data.has_remaining())
        {
            let stamp = self.in_flight.activity.now_stamp();
            self.waiting_since.store(stamp, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::pipeline::ProxyBody;

    /// A backend's body as hyper sees it: the chunks that have arrived, then "not yet".
    #[derive(Debug, Default)]
    struct Arriving(std::collections::VecDeque<Bytes>);

    impl Body for Arriving {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.0.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Poll::Pending,
            }
        }
    }

    fn limits() -> Limits {
        Limits {
            max_head: 8192,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_starts_no_request_is_closed_at_the_header_timeout() {
        let activity = Activity::new();
        let started = Instant::now();
        assert_eq!(expiry(&activity, limits()).await, Closed::HeaderTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_runs_from_the_last_response_end() {
        let activity = Arc::new(Activity::new());
        let started = Instant::now();
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move { expiry(&activity, limits()).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        let request = InFlight::start(&activity);
        // In flight far longer than every limit: a slow backend is the route timeout's business.
        tokio::time::sleep(Duration::from_secs(300)).await;
        drop(request);
        let why = watchdog.await.expect("watchdog");
        assert_eq!(why, Closed::IdleTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(5 + 300 + 75));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_whose_data_the_client_does_not_take_closes_at_the_send_timeout() {
        let activity = Arc::new(Activity::new());
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move { expiry(&activity, limits()).await }
        });
        let mut body = Watched::new(
            ProxyBody::Left(http_body_util::Full::new(Bytes::from_static(b"data"))),
            InFlight::start(&activity),
        );
        tokio::time::sleep(Duration::from_secs(7)).await;
        let waker = std::task::Waker::noop();
        let frame = Pin::new(&mut body).poll_frame(&mut Context::from_waker(waker));
        assert!(matches!(frame, Poll::Ready(Some(Ok(_)))));
        let handed_out = Instant::now();
        // hyper never comes back for more: the client is not reading.
        let why = watchdog.await.expect("watchdog");
        assert_eq!(why, Closed::SendTimeout);
        assert_eq!(handed_out.elapsed(), Duration::from_secs(60));
        drop(body);
    }

    #[tokio::test(start_paused = true)]
    async fn one_stalled_stream_stays_while_the_socket_takes_bytes_for_others() {
        let activity = Arc::new(Activity::new());
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move { expiry(&activity, limits()).await }
        });
        let mut stalled = Watched::new(
            ProxyBody::Left(http_body_util::Full::new(Bytes::from_static(b"data"))),
            InFlight::start(&activity),
        );
        let waker = std::task::Waker::noop();
        let frame = Pin::new(&mut stalled).poll_frame(&mut Context::from_waker(waker));
        assert!(matches!(frame, Poll::Ready(Some(Ok(_)))));
        // Other streams keep the socket busy: a write every 30 s for 10 minutes.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(30)).await;
            activity
                .last_write
                .store(activity.now_stamp(), Ordering::Relaxed);
        }
        assert!(
            !watchdog.is_finished(),
            "closed while the socket took bytes"
        );
        // The socket falls silent too: the client reads nothing at all.
        let silent = Instant::now();
        assert_eq!(watchdog.await.expect("watchdog"), Closed::SendTimeout);
        assert_eq!(silent.elapsed(), Duration::from_secs(60));
        drop(stalled);
    }

    #[test]
    fn slots_of_ended_bodies_do_not_pile_up() {
        let activity = Arc::new(Activity::new());
        for _ in 0..10_000 {
            let body = Watched::new(Arriving::default(), InFlight::start(&activity));
            drop(body);
        }
        assert!(activity.waits.lock().len() <= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_hyper_keeps_coming_back_to_never_times_out() {
        let activity = Arc::new(Activity::new());
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move { expiry(&activity, limits()).await }
        });
        let mut body = Watched::new(Arriving::default(), InFlight::start(&activity));
        let waker = std::task::Waker::noop();
        for _ in 0..20 {
            body.body.0.push_back(Bytes::from_static(b"chunk"));
            let frame = Pin::new(&mut body).poll_frame(&mut Context::from_waker(waker));
            assert!(matches!(frame, Poll::Ready(Some(Ok(_)))));
            tokio::time::sleep(Duration::from_secs(30)).await;
            // hyper took it and asks for the next one; none yet (a slow backend).
            let frame = Pin::new(&mut body).poll_frame(&mut Context::from_waker(waker));
            assert!(frame.is_pending());
        }
        assert!(
            !watchdog.is_finished(),
            "closed after 600 s of a reading client"
        );
        drop(body);
        assert_eq!(watchdog.await.expect("watchdog"), Closed::IdleTimeout);
    }
}

//! Experimental: the plain-TCP listener on io_uring (`--io-uring`, built with the `io-uring`
//! feature), measured against the epoll listener in `bench/uring.sh` (docs/performance.md,
//! "io_uring, measured").
//!
//! Thread per core: each of `--worker-threads` threads runs a tokio-uring runtime (a
//! current-thread tokio runtime whose submissions go to the kernel in one batch each time it has
//! nothing left to run). The accept loop admits connections as the epoll listener does (the same
//! `--max-connections` gate) and hands them to the workers in turn. A client connection's reads
//! and writes are io_uring operations; its requests go through the same HTTP/1.1 engine and
//! pipeline as the epoll listener's. Backend connections stay on tokio's epoll driver of the
//! worker's thread. A connection the engine hands to hyper (a body, HTTP/2, an upgrade) goes
//! back to epoll, with every byte read so far, on a duplicate of its socket made at accept (the
//! io_uring socket type can give none later without unsafe code): two descriptors a
//! connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use tokio::sync::OwnedSemaphorePermit;

use super::{Gate, ServerOptions, Session, Sessions, accept, drain, h1};
use crate::pipeline::Proxy;
use crate::quota::CounterStore;
use crate::telemetry::access_log;
use crate::telemetry::metrics::ProxyMetrics;

const READ_SIZE: usize = 8 * 1024;

/// A connection accepted for a worker: the socket, the client's address, its place under
/// `--max-connections`.
type Accepted = (
    tokio::net::TcpStream,
    std::net::SocketAddr,
    OwnedSemaphorePermit,
);

/// Serves API traffic on `threads` io_uring threads until `shutdown` resolves, then drains.
/// Connections are admitted and accepted here, as by the epoll listener, and handed to the
/// workers in turn; a worker that stops is fatal (`Err`).
pub async fn serve<S: CounterStore>(
    listener: tokio::net::TcpListener,
    proxy: Arc<Proxy<S>>,
    metrics: ProxyMetrics,
    opts: ServerOptions,
    threads: usize,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let (drained, drained_rx) = watch::channel(false);
    let mut workers = Vec::with_capacity(threads);
    let mut hand_to = Vec::with_capacity(threads);
    for n in 0..threads {
        let (handing, accepted) = tokio::sync::mpsc::unbounded_channel();
        let worker = Worker {
            accepted,
            proxy: proxy.clone(),
            metrics: metrics.clone(),
            opts: opts.clone(),
            stopped: stopped.clone(),
            drained: drained_rx.clone(),
        };
        workers.push(start_worker(n, worker)?);
        hand_to.push(handing);
    }
    let gate = Gate::new(opts.max_connections, metrics.clone());
    tokio::pin!(shutdown);
    let mut served = Ok(());
    for next in (0..threads).cycle() {
        let Some(slot) = gate.admit(shutdown.as_mut()).await else {
            break;
        };
        let Some((stream, client)) = accept(&listener, shutdown.as_mut()).await else {
            break;
        };
        if hand_to[next].send((stream, client, slot)).is_err() {
            served = Err(io::Error::other(format!(
                "io_uring worker {next} stopped; shutting down"
            )));
            break;
        }
    }
    drop(listener);
    drop(hand_to);
    drop(stopped);
    drain(stop, opts.drain_timeout).await;
    // Connections still open past the drain timeout end with their worker's runtime.
    let _ = drained.send(true);
    let joined = tokio::task::spawn_blocking(move || {
        for worker in workers {
            if let Err(panic) = worker.join() {
                tracing::error!(?panic, "an io_uring worker thread panicked");
            }
        }
    });
    let _ = joined.await;
    served
}

/// Starts worker `n` on a thread of its own; fails when io_uring cannot be set up.
fn start_worker<S: CounterStore>(
    n: usize,
    worker: Worker<S>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let (started, start) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(format!("tollgate-uring-{n}"))
        .spawn(move || match ring() {
            Ok(runtime) => {
                let _ = started.send(Ok(()));
                runtime.block_on(worker.run());
            }
            Err(e) => {
                let _ = started.send(Err(e));
            }
        })?;
    // A kernel without io_uring (or with it disabled) fails here, before serving.
    start
        .recv()
        .map_err(|_| io::Error::other("an io_uring worker ended before starting"))?
        .map_err(|e| io::Error::new(e.kind(), format!("setting up io_uring: {e}")))?;
    Ok(thread)
}

/// The calling thread's runtime and ring. Completions' task work runs when the thread next
/// enters the kernel instead of interrupting it (COOP_TASKRUN), and only this thread submits
/// (SINGLE_ISSUER): measured 1.04x epoll's CPU a request with these, 1.10x without. Kernels
/// older than 6.0 refuse them (EINVAL): then a plain ring. DEFER_TASKRUN stalls: tokio-uring
/// waits for completions through epoll, which never runs deferred work.
fn ring() -> io::Result<tokio_uring::Runtime> {
    let mut ring = tokio_uring::uring_builder();
    ring.setup_coop_taskrun().setup_single_issuer();
    let mut builder = tokio_uring::builder();
    builder.uring_builder(&ring);
    match tokio_uring::Runtime::new(&builder) {
        Err(e) if e.raw_os_error() == Some(22) => {
            tracing::info!("this kernel refuses COOP_TASKRUN or SINGLE_ISSUER; a plain io_uring");
            tokio_uring::Runtime::new(&tokio_uring::builder())
        }
        other => other,
    }
}

struct Worker<S> {
    accepted: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
    proxy: Arc<Proxy<S>>,
    metrics: ProxyMetrics,
    opts: ServerOptions,
    stopped: watch::Receiver<bool>,
    /// True once the drain is over (every connection closed, or the drain timeout passed).
    drained: watch::Receiver<bool>,
}

impl<S: CounterStore> Worker<S> {
    async fn run(self) {
        let Self {
            mut accepted,
            proxy,
            metrics,
            opts,
            stopped,
            mut drained,
        } = self;
        let sessions = Sessions::new(proxy, &opts, stopped, metrics);
        // tokio-uring's runtime keeps its park hook for its own submissions, so this thread
        // hands its access-log lines to the writer on a timer instead of when it idles.
        let handing_off = tokio_uring::spawn(async {
            let mut tick = tokio::time::interval(access_log::FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                access_log::hand_off_pending();
            }
        });
        // Until the accept loop stops handing out connections (shutdown).
        while let Some((stream, client, slot)) = accepted.recv().await {
            let _ = stream.set_nodelay(true);
            let io = match UringStream::new(stream, opts.send_timeout) {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(%client, error = %e, "cannot move a connection to io_uring");
                    continue;
                }
            };
            let session = sessions.open(client, false, slot);
            tokio_uring::spawn(async move {
                if let Err(e) = serve_connection(session, io).await {
                    tracing::debug!(%client, error = %e, "connection ended with an error");
                }
            });
        }
        // Open connections run on this thread's runtime until the drain is over; the drain
        // waits for every holder of `stopped`, this worker's too.
        drop(sessions);
        let _ = drained.wait_for(|drained| *drained).await;
        handing_off.abort();
        access_log::hand_off_pending();
    }
}

async fn serve_connection<S: CounterStore>(
    session: Session<S>,
    io: UringStream,
) -> Result<(), super::ConnError> {
    let Some(handed_off) = session.serve_h1(io).await? else {
        return Ok(());
    };
    let (served_not, io) = handed_off.into_parts();
    let (read_not_served, tcp) = io.into_tokio().await?;
    let prefix = if read_not_served.is_empty() {
        served_not
    } else {
        let mut both = BytesMut::from(&served_not[..]);
        both.extend_from_slice(&read_not_served);
        both.freeze()
    };
    session.serve_hyper(h1::Prefixed::new(prefix, tcp)).await
}

type Op<T> = Pin<Box<dyn Future<Output = (io::Result<T>, Vec<u8>)>>>;

/// A client connection as tokio's `AsyncRead`/`AsyncWrite`, over io_uring operations that own
/// their buffers. Reads complete into a buffer of the stream's own and are copied out. A write
/// is copied, submitted and reported written at once; the next write, a shutdown or the
/// handoff waits for it to complete (and reports its error), and each read drives it (a short
/// write's rest is submitted from there). So a response's write and the read of the next
/// request go to the kernel in the same batch.
struct UringStream {
    socket: Rc<tokio_uring::net::TcpStream>,
    /// The same socket (a second descriptor), handed to tokio if hyper takes over.
    duplicate: Option<std::net::TcpStream>,
    reading: Reading,
    writing: Writing,
    /// How long a client may take to accept bytes (`--send-timeout`): bounds the wait for a
    /// write at the handoff and after the stream is dropped.
    send_timeout: std::time::Duration,
}

enum Reading {
    Idle(Vec<u8>),
    InFlight(Op<usize>),
    Filled { buf: Vec<u8>, at: usize },
    Taken,
}

enum Writing {
    Idle(Vec<u8>),
    InFlight(Op<()>),
    Failed(io::Error),
    Taken,
}

impl UringStream {
    /// The connection on io_uring, and a duplicate of its socket for a handoff.
    fn new(socket: tokio::net::TcpStream, send_timeout: std::time::Duration) -> io::Result<Self> {
        let socket = socket.into_std()?;
        let duplicate = socket.try_clone()?;
        // Blocking mode: io_uring then waits for data itself instead of failing with EAGAIN.
        socket.set_nonblocking(false)?;
        Ok(Self {
            socket: Rc::new(tokio_uring::net::TcpStream::from_std(socket)),
            duplicate: Some(duplicate),
            reading: Reading::Idle(Vec::with_capacity(READ_SIZE)),
            writing: Writing::Idle(Vec::with_capacity(READ_SIZE)),
            send_timeout,
        })
    }

    /// Waits for the write in flight, if any; its error, if it failed (or a failed write's
    /// error that a read found first).
    fn poll_written(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.writing {
            Writing::InFlight(op) => {
                let (result, buf) = ready!(op.as_mut().poll(cx));
                self.writing = Writing::Idle(buf);
                Poll::Ready(result)
            }
            Writing::Failed(_) => match std::mem::replace(&mut self.writing, Writing::Taken) {
                Writing::Failed(e) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            },
            Writing::Idle(_) => Poll::Ready(Ok(())),
            Writing::Taken => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    /// The connection back on tokio's epoll driver (for hyper), with the bytes read from the
    /// socket and not yet taken. The io_uring socket closes; its duplicate stays open.
    async fn into_tokio(mut self) -> io::Result<(Bytes, tokio::net::TcpStream)> {
        let limit = self.send_timeout;
        tokio::time::timeout(limit, std::future::poll_fn(|cx| self.poll_written(cx)))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client accepted no response bytes within the send timeout",
                )
            })??;
        let unread = match std::mem::replace(&mut self.reading, Reading::Taken) {
            Reading::Filled { buf, at } => Bytes::copy_from_slice(&buf[at..]),
            Reading::Idle(_) => Bytes::new(),
            // The engine hands off only a request it has read whole; it never leaves a read
            // in flight.
            Reading::InFlight(_) | Reading::Taken => {
                return Err(io::Error::other("a read was in flight at the handoff"));
            }
        };
        let duplicate = self.duplicate.take().ok_or(io::ErrorKind::NotConnected)?;
        duplicate.set_nonblocking(true)?;
        Ok((unread, tokio::net::TcpStream::from_std(duplicate)?))
    }
}

impl Drop for UringStream {
    /// An operation in flight holds the socket open until it completes, and a read on an idle
    /// connection never would: shutting the socket down ends it, so a connection the engine
    /// closes (a timeout, shutdown) is closed for the client too. A write in flight (the end of
    /// the last response) still goes out: only reading is shut down, the socket closes when
    /// the write completes, and the kernel gives up on a client that accepts nothing for the
    /// send timeout (TCP_USER_TIMEOUT). Not after a handoff: tokio serves the same socket.
    fn drop(&mut self) {
        let Some(duplicate) = &self.duplicate else {
            return;
        };
        if matches!(self.writing, Writing::InFlight(_)) {
            let ms = u32::try_from(self.send_timeout.as_millis()).unwrap_or(u32::MAX);
            let _ = nix::sys::socket::setsockopt(
                duplicate,
                nix::sys::socket::sockopt::TcpUserTimeout,
                &ms,
            );
            let _ = self.socket.shutdown(std::net::Shutdown::Read);
        } else {
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl AsyncRead for UringStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // A write in flight makes progress only when polled (the rest of a short write is
        // submitted from its future): drive it here too, the engine's next wait being a read.
        if let Writing::InFlight(op) = &mut this.writing
            && let Poll::Ready((result, buf)) = op.as_mut().poll(cx)
        {
            this.writing = match result {
                Ok(()) => Writing::Idle(buf),
                Err(e) => Writing::Failed(e),
            };
        }
        loop {
            match &mut this.reading {
                Reading::Filled { buf, at } => {
                    let n = out.remaining().min(buf.len() - *at);
                    out.put_slice(&buf[*at..*at + n]);
                    *at += n;
                    if *at == buf.len() {
                        let mut buf = std::mem::take(buf);
                        buf.clear();
                        this.reading = Reading::Idle(buf);
                    }
                    return Poll::Ready(Ok(()));
                }
                Reading::Idle(buf) => {
                    let (socket, buf) = (this.socket.clone(), std::mem::take(buf));
                    this.reading =
                        Reading::InFlight(Box::pin(async move { socket.read(buf).await }));
                }
                Reading::InFlight(op) => {
                    let (result, buf) = ready!(op.as_mut().poll(cx));
                    match result {
                        Ok(0) => {
                            this.reading = Reading::Idle(buf);
                            return Poll::Ready(Ok(()));
                        }
                        Ok(_) => this.reading = Reading::Filled { buf, at: 0 },
                        Err(e) => {
                            this.reading = Reading::Idle(buf);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Reading::Taken => return Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            }
        }
    }
}

impl AsyncWrite for UringStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_written(cx))?;
        let Writing::Idle(buf) = &mut this.writing else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        let mut buf = std::mem::take(buf);
        buf.clear();
        buf.extend_from_slice(bytes);
        let socket = this.socket.clone();
        let mut op: Op<()> = Box::pin(async move { socket.write_all(buf).await });
        // The first poll queues the operation; the runtime submits the queue when it idles.
        this.writing = match op.as_mut().poll(cx) {
            Poll::Pending => Writing::InFlight(op),
            Poll::Ready((Ok(()), buf)) => Writing::Idle(buf),
            Poll::Ready((Err(e), _)) => Writing::Failed(e),
        };
        Poll::Ready(Ok(bytes.len()))
    }

    /// TCP holds nothing back: written bytes are the kernel's (or in flight to it).
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_written(cx))?;
        Poll::Ready(self.socket.shutdown(std::net::Shutdown::Write))
    }
}

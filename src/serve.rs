//! Serving the API and ops routers with bounds a hostile or careless client cannot stretch: at most
//! `max_connections` connections at once per listener (TLS handshakes included; the rest wait in the
//! kernel's backlog, holding none of our descriptors), a request's headers within
//! `header_read_timeout` of the connection opening or of their first byte, and a keep-alive connection
//! with no request in progress closed after `idle_timeout`.
//!
//! hyper's own header timer counts from the moment a connection goes idle, which would fold the two
//! timeouts into one; [`Watched`] keeps both on the connection's reads instead, from the phase the
//! service reports (a request is being answered, or not), and hyper's timer is set past them.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::settings::ListenerLimits;

/// Serves `router` on `listener` (over TLS with `tls`) until `stop` turns true; then each connection
/// finishes the request it is answering and closes.
pub fn spawn(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: ListenerLimits,
    stop: watch::Receiver<bool>,
) -> JoinHandle<io::Result<()>> {
    tokio::spawn(accept_loop(listener, tls, router, limits, stop))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: ListenerLimits,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut stopping = stop.clone();
    loop {
        // A permit first: at the limit, connections wait in the kernel's backlog, not in our tables.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.map_err(io::Error::other)?,
            _ = stopped(&mut stopping) => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stopping) => break,
        };
        let _ = tcp.set_nodelay(true);
        let (router, acceptor, stop) = (router.clone(), acceptor.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => connection(tcp, peer, router, limits, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(stream)) => connection(stream, peer, router, limits, stop).await,
                        // A failed handshake (no client certificate, wrong CA, plain HTTP sent to the
                        // TLS port) is the client's problem: noted at debug, never fatal.
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    // Every connection holds a permit until it is closed: wait (bounded) for them to finish.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(15), permits.acquire_many(all)).await;
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Where a connection is, for its timeouts.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's headers since this moment (the connection opened, or the first byte of
    /// a request after an idle spell arrived).
    Headers(Instant),
    /// Answering a request: no timeout of ours applies.
    Busy,
    /// Answered everything it asked, since this moment.
    Idle(Instant),
}

type Shared = Arc<Mutex<Phase>>;

fn set(phase: &Shared, to: Phase) {
    *phase.lock().unwrap_or_else(|p| p.into_inner()) = to;
}

async fn connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    limits: ListenerLimits,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let phase: Shared = Arc::new(Mutex::new(Phase::Headers(Instant::now())));
    let io = Watched {
        io,
        phase: phase.clone(),
        limits,
        sleep: Box::pin(tokio::time::sleep(limits.header_read_timeout)),
    };
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        set(&phase, Phase::Busy);
        let (router, phase) = (router.clone(), phase.clone());
        async move {
            let response = router.oneshot(request.map(axum::body::Body::new)).await;
            set(&phase, Phase::Idle(Instant::now()));
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper's header timer runs from the moment a connection goes idle: set past both of ours, it only
    // makes hyper read an idle connection (where [`Watched`] keeps the real deadlines) and backs them up.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout + limits.idle_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let stopping = async move { stopped(&mut stop).await };
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended");
            }
            return;
        }
        () = stopping => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A connection's byte stream with the header-read and idle deadlines on its reads.
struct Watched<I> {
    io: I,
    phase: Shared,
    limits: ListenerLimits,
    sleep: Pin<Box<Sleep>>,
}

impl<I> Watched<I> {
    fn deadline(&self) -> Option<Instant> {
        match *self.phase.lock().unwrap_or_else(|p| p.into_inner()) {
            Phase::Headers(since) => Some(since + self.limits.header_read_timeout),
            Phase::Idle(since) => Some(since + self.limits.idle_timeout),
            Phase::Busy => None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let mut phase = this.phase.lock().unwrap_or_else(|p| p.into_inner());
                    if let Phase::Idle(_) = *phase {
                        // The next request has begun: its headers are now on the clock.
                        *phase = Phase::Headers(Instant::now());
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some(deadline) = this.deadline() else {
                    return Poll::Pending;
                };
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "header read or idle timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => ready,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn start(limits: ListenerLimits) -> (SocketAddr, watch::Sender<bool>) {
        let router = Router::new().route(
            "/",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                format!("hello {}", peer.ip())
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = watch::channel(false);
        spawn(listener, None, router, limits, rx);
        (addr, tx)
    }

    fn limits(header: u64, idle: u64, max: usize) -> ListenerLimits {
        ListenerLimits {
            header_read_timeout: Duration::from_millis(header),
            idle_timeout: Duration::from_millis(idle),
            max_connections: max,
        }
    }

    /// Reads until the peer closes; answers what came and whether it closed within `within`.
    async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> (String, bool) {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (String::from_utf8_lossy(&got).into(), false),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowloris_client_is_cut_off_at_the_header_read_timeout() {
        let (addr, _stop) = start(limits(2_000, 60_000, 16)).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let (_, closed) = closed_within(&mut slow, Duration::from_millis(1_900)).await;
        assert!(!closed, "still inside its header time");
        let (_, closed) = closed_within(&mut slow, Duration::from_millis(200)).await;
        assert!(closed, "cut off at the header read timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
        let (addr, _stop) = start(limits(60_000, 3_000, 16)).await;
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let (answer, closed) = closed_within(&mut client, Duration::from_millis(2_900)).await;
        assert!(answer.contains("hello 127.0.0.1"), "{answer}");
        assert!(!closed, "kept alive inside the idle time");
        let (_, closed) = closed_within(&mut client, Duration::from_millis(200)).await;
        assert!(closed, "closed once idle for idle_timeout");
    }

    #[tokio::test]
    async fn at_the_connection_limit_the_next_client_waits_until_one_leaves() {
        let (addr, _stop) = start(limits(60_000, 60_000, 2)).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buf = [0u8; 256];
            let n = c.read(&mut buf).await.expect("answer");
            assert!(n > 0);
            held.push(c);
        }
        let mut third = tokio::net::TcpStream::connect(addr).await.expect("backlog");
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf))
                .await
                .is_err(),
            "no answer while two connections hold both places"
        );
        drop(held.pop());
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("served once a place is free")
            .expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    }
}

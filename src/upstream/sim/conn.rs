//! The simulator's TCP listener, whose connections a handler can cut (the `Reset` fault).
//!
//! axum's handlers cannot close their connection; hyper only aborts one when its I/O fails. So
//! every accepted socket is wrapped in [`SimIo`], which shares a [`ConnKill`] switch with the
//! handlers (through axum's `ConnectInfo`). A handler flips the switch; the next read or write
//! hyper attempts (at the latest, writing the response) fails, hyper drops the connection, and
//! the socket closes with `SO_LINGER` 0: the peer sees a reset and not one byte of a response.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The switch that cuts one connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnKill(Arc<AtomicBool>);

impl ConnKill {
    /// Drop the connection at its next I/O, without a response.
    pub fn kill(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_killed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Connected<IncomingStream<'_, SimListener>> for ConnKill {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        stream.io().kill.clone()
    }
}

/// A TCP listener handing out [`SimIo`] connections.
pub(crate) struct SimListener {
    inner: TcpListener,
}

impl SimListener {
    pub fn new(inner: TcpListener) -> Self {
        SimListener { inner }
    }
}

impl Listener for SimListener {
    type Io = SimIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (SimIo, SocketAddr) {
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        // Small status answers should not wait for Nagle.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::trace!("simulator: TCP_NODELAY not set: {err}");
        }
        (
            SimIo {
                inner: stream,
                kill: ConnKill::default(),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that fails every operation once its [`ConnKill`] is flipped.
pub(crate) struct SimIo {
    inner: TcpStream,
    kill: ConnKill,
}

impl SimIo {
    /// Checked before every operation: once killed, arrange a reset on close and fail.
    fn killed(&self) -> Option<io::Error> {
        if !self.kill.is_killed() {
            return None;
        }
        // Linger 0 turns the close into a RST, so the client cannot mistake it for a clean end.
        if let Err(err) = self.inner.set_zero_linger() {
            tracing::trace!("simulator: SO_LINGER not set: {err}");
        }
        Some(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "simulated connection reset",
        ))
    }
}

impl AsyncRead for SimIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

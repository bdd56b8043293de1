//! A deadline for a new gRPC connection to start talking: hyper's HTTP/2 server waits for the
//! client's connection preface without limit, so a socket that connects and sends nothing holds
//! a descriptor and a task for ever (TCP keepalive does not help: the peer is alive, only
//! silent, and HTTP/2 PINGs start only after the preface). Wrapped in [`PrefaceDeadline`], a
//! connection that has not sent the 24 bytes of the preface within the deadline reads
//! `TimedOut`, and hyper closes it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

/// How long a new connection may take to send its first bytes (the HTTP/2 preface). Real
/// clients send it with the connection (or right after TLS); 10 s tolerates a slow network and
/// still frees silent sockets quickly.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;

/// Bytes of the HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE_BYTES: usize = 24;

/// An accepted connection that must deliver [`PREFACE_BYTES`] within its deadline.
#[derive(Debug)]
pub struct PrefaceDeadline<IO> {
    io: IO,
    deadline: Option<Pin<Box<Sleep>>>,
    seen: usize,
    timeout: Duration,
}

impl<IO> PrefaceDeadline<IO> {
    /// `io`, which must send its first bytes within `timeout` from now.
    pub fn new(io: IO, timeout: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            seen: 0,
            timeout,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.seen += buf.filled().len() - before;
                if this.seen >= PREFACE_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no HTTP/2 preface within {:?} (server.handshake_timeout_secs)",
                            this.timeout
                        ),
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<IO> {
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

impl<IO: Connected> Connected for PrefaceDeadline<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

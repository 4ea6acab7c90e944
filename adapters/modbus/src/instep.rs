//! Keeps a Modbus TCP connection in step after a unit's silence.
//!
//! Behind a TCP gateway, a unit that does not answer in time is that unit's problem, not
//! the connection's: the other units on it must keep being served on the same socket.
//! But a late answer, arriving after the next request went out, would be taken by
//! tokio-modbus for the answer to that request (it reads the next frame, finds another
//! transaction id and fails). [`InStep`] sits between the socket and tokio-modbus, learns
//! the transaction id of each request as it is written, and hands on only the frame that
//! answers the request written last: late answers are dropped (and counted) here.
//!
//! A frame that is not MBAP (wrong protocol id, impossible length) is handed on as it
//! came, so tokio-modbus reports it and the connection is dropped. A frame that stopped
//! half-way is kept until it completes; [`Shared::partial`] tells the connection task,
//! which drops the link after a timeout with half a frame pending, since the stream can
//! no longer be split into frames with confidence.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// MBAP header: transaction id, protocol id, length (all u16), unit id.
const HEADER: usize = 7;
/// The longest length field an MBAP frame can carry: unit id plus a 253-byte PDU.
const MAX_LENGTH: usize = 254;

/// What the connection task can see of the filter while tokio-modbus owns it.
#[derive(Debug, Default)]
pub struct Shared {
    stale: AtomicU64,
    partial: AtomicBool,
}

impl Shared {
    /// Answers dropped because they were for an earlier request.
    #[cfg(test)]
    pub fn stale(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }

    /// Whether part of a frame has been received and the rest has not.
    pub fn partial(&self) -> bool {
        self.partial.load(Ordering::Relaxed)
    }
}

/// A Modbus TCP byte stream that lets through only the answer to the last request.
#[derive(Debug)]
pub struct InStep<S> {
    inner: S,
    shared: Arc<Shared>,
    /// The transaction id of the request written last.
    expected: Option<u16>,
    /// The header of the request being written, and how many of its bytes remain.
    out_header: [u8; 6],
    out_header_len: usize,
    out_remaining: usize,
    /// Bytes received and not yet sorted into frames.
    pending: Vec<u8>,
    /// Bytes sorted and to be handed on.
    ready: Vec<u8>,
    ready_at: usize,
    /// The peer sent something that is not MBAP: hand everything on unchanged.
    raw: bool,
    eof: bool,
}

impl<S> InStep<S> {
    /// Wraps `inner`; the returned handle shows what the filter did.
    pub fn new(inner: S) -> (Self, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        let s = InStep {
            inner,
            shared: shared.clone(),
            expected: None,
            out_header: [0; 6],
            out_header_len: 0,
            out_remaining: 0,
            pending: Vec::new(),
            ready: Vec::new(),
            ready_at: 0,
            raw: false,
            eof: false,
        };
        (s, shared)
    }

    /// Follows the request frames written, to learn each one's transaction id.
    fn wrote(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.out_remaining > 0 {
                let n = self.out_remaining.min(data.len());
                self.out_remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (6 - self.out_header_len).min(data.len());
            self.out_header[self.out_header_len..self.out_header_len + n]
                .copy_from_slice(&data[..n]);
            self.out_header_len += n;
            data = &data[n..];
            if self.out_header_len == 6 {
                let h = self.out_header;
                // An answer sorted for the previous request but not read (it came just
                // as that request timed out) is stale now.
                if self.ready_at < self.ready.len() && !self.raw {
                    self.shared.stale.fetch_add(1, Ordering::Relaxed);
                }
                if !self.raw {
                    self.ready.clear();
                    self.ready_at = 0;
                }
                self.expected = Some(u16::from_be_bytes([h[0], h[1]]));
                self.out_remaining = usize::from(u16::from_be_bytes([h[4], h[5]]));
                self.out_header_len = 0;
            }
        }
    }

    /// Moves the complete frames of `pending` that answer the last request to `ready`,
    /// and drops the others.
    fn sort(&mut self) {
        loop {
            if self.raw {
                self.ready.append(&mut self.pending);
                break;
            }
            if self.pending.len() < HEADER {
                break;
            }
            let p = &self.pending;
            let protocol = u16::from_be_bytes([p[2], p[3]]);
            let length = usize::from(u16::from_be_bytes([p[4], p[5]]));
            if protocol != 0 || length == 0 || length > MAX_LENGTH {
                self.raw = true;
                continue;
            }
            if p.len() < 6 + length {
                break;
            }
            let tid = u16::from_be_bytes([p[0], p[1]]);
            let frame: Vec<u8> = self.pending.drain(..6 + length).collect();
            if Some(tid) == self.expected {
                self.ready.extend_from_slice(&frame);
            } else {
                self.shared.stale.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    transaction = tid,
                    expected = ?self.expected,
                    "late Modbus TCP answer dropped"
                );
            }
        }
        self.shared
            .partial
            .store(!self.pending.is_empty(), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for InStep<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_at < this.ready.len() {
                let n = (this.ready.len() - this.ready_at).min(buf.remaining());
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 512];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // The peer closed: hand on what is left, then the end of the stream.
                    this.eof = true;
                    this.ready.append(&mut this.pending);
                }
                Poll::Ready(Ok(())) => {
                    this.pending.extend_from_slice(rb.filled());
                    this.sort();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for InStep<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        this.wrote(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&tid.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        f.push(unit);
        f.extend_from_slice(pdu);
        f
    }

    #[tokio::test]
    async fn only_the_answer_to_the_last_request_gets_through() {
        let (client, mut server) = tokio::io::duplex(4096);
        let (mut s, shared) = InStep::new(client);
        // Two requests; the first one's answer comes late, after the second went out.
        s.write_all(&frame(7, 2, &[3, 0, 0, 0, 1])).await.unwrap();
        // written in two pieces, as a partial write would
        let second = frame(8, 1, &[3, 0, 0, 0, 1]);
        s.write_all(&second[..3]).await.unwrap();
        s.write_all(&second[3..]).await.unwrap();
        let mut sent = vec![0u8; 24];
        server.read_exact(&mut sent).await.unwrap();
        let late = frame(7, 2, &[3, 2, 0, 9]);
        let answer = frame(8, 1, &[3, 2, 0, 5]);
        // the late one, then the answer split across writes
        server.write_all(&late).await.unwrap();
        server.write_all(&answer[..4]).await.unwrap();
        server.flush().await.unwrap();
        tokio::task::yield_now().await;
        server.write_all(&answer[4..]).await.unwrap();
        let mut got = vec![0u8; answer.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, answer);
        assert_eq!(shared.stale(), 1);
        assert!(!shared.partial());
    }

    #[tokio::test]
    async fn an_answer_not_read_before_the_next_request_is_dropped() {
        let (client, mut server) = tokio::io::duplex(4096);
        let (mut s, shared) = InStep::new(client);
        s.write_all(&frame(1, 2, &[3, 0, 0, 0, 1])).await.unwrap();
        // the answer arrives complete, and one byte of it is read before the timeout
        server.write_all(&frame(1, 2, &[3, 2, 0, 9])).await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        s.write_all(&frame(2, 1, &[3, 0, 0, 0, 1])).await.unwrap();
        let answer = frame(2, 1, &[3, 2, 0, 5]);
        server.write_all(&answer).await.unwrap();
        let mut got = vec![0u8; answer.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, answer);
        assert_eq!(shared.stale(), 1);
    }

    #[tokio::test]
    async fn what_is_not_mbap_is_handed_on_and_half_frames_are_flagged() {
        let (client, mut server) = tokio::io::duplex(4096);
        let (mut s, shared) = InStep::new(client);
        s.write_all(&frame(1, 1, &[3, 0, 0, 0, 1])).await.unwrap();
        // a header announcing 5 bytes, and 2 of them
        server.write_all(&[0, 1, 0, 0, 0, 5, 1, 3]).await.unwrap();
        let mut one = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_millis(50), s.read(&mut one));
        assert!(read.await.is_err(), "half a frame must not be handed on");
        assert!(shared.partial());

        let (client, mut server) = tokio::io::duplex(4096);
        let (mut s, _) = InStep::new(client);
        s.write_all(&frame(1, 1, &[3, 0, 0, 0, 1])).await.unwrap();
        let garbage = [0, 1, 0x12, 0x34, 0, 5, 1, 3, 2, 0, 5];
        server.write_all(&garbage).await.unwrap();
        let mut got = vec![0u8; garbage.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, garbage);
    }
}

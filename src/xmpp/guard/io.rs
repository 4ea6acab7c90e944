//! The socket side of the guard: an I/O object that runs every byte read from the
//! server through a [`Scanner`] before tokio-xmpp's parser sees it. Writes pass through.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::scanner::{Refused, Scanner};
use super::Limits;

/// Bytes read from the socket in one go.
const READ_CHUNK: usize = 16 * 1024;

/// Counters of refused stanzas, shared with whoever reports on the link.
#[derive(Debug, Default)]
pub struct GuardStats {
    /// Stanzas that broke a bound and were handed on as a refusal.
    pub refused: AtomicU64,
    /// Stanzas that broke a bound and were dropped whole (not a stanza the gateway can
    /// answer: no `iq`, `message` or `presence`).
    pub dropped: AtomicU64,
}

/// Stanzas serialised by the gateway itself, written to the socket ahead of anything
/// the XML stream writes after them. tokio-xmpp's stream only writes element trees; an
/// event of thousands of values is cheaper written as text directly.
#[derive(Debug, Default, Clone)]
pub struct RawOut(Arc<Mutex<RawQueue>>);

#[derive(Debug, Default)]
struct RawQueue {
    buf: Vec<u8>,
    pos: usize,
}

impl RawOut {
    /// Queues `bytes`. The caller must have flushed what the XML stream holds first, or
    /// the bytes would overtake it.
    pub fn push(&self, bytes: &[u8]) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.buf.extend_from_slice(bytes);
    }
}

/// `inner` with every inbound stanza bounded, and [`RawOut`] bytes written before any
/// later write.
pub struct Guarded<T> {
    inner: T,
    scanner: Scanner,
    chunk: Box<[u8]>,
    /// Scanned bytes not yet handed to the reader, from `pos`.
    out: Vec<u8>,
    pos: usize,
    eof: bool,
    stats: Arc<GuardStats>,
    raw: RawOut,
    /// The socket to acknowledge at once after every read (see [`Guarded::quick_acks`]).
    quickack: Option<i32>,
}

impl<T> Guarded<T> {
    /// Wraps a freshly connected `inner` (the scanner starts at the stream's first byte).
    pub fn new(inner: T, limits: Limits, stats: Arc<GuardStats>) -> Guarded<T> {
        Guarded {
            inner,
            scanner: Scanner::new(limits),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
            pos: 0,
            eof: false,
            stats,
            raw: RawOut::default(),
            quickack: None,
        }
    }

    /// Acknowledge what arrives on socket `fd` at once rather than after the kernel's
    /// delayed-ACK timer. The server writes small stanzas (the answers to the link's
    /// flow-control pings, among others) with Nagle's algorithm on, so each waits for our
    /// acknowledgement of the one before: up to 40 ms, with writing held up meanwhile.
    /// Linux resets the setting after a while, hence after every read.
    pub fn quick_acks(&mut self, fd: i32) {
        self.quickack = Some(fd);
    }

    fn ack_now(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = self.quickack {
            let on: libc::c_int = 1;
            // SAFETY: `fd` is the socket this wrapper reads from, open while it lives; the
            // option value is a live c_int of the size passed.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    std::ptr::addr_of!(on).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    /// Where bytes to be written ahead of the stream's next write go.
    pub fn raw(&self) -> RawOut {
        self.raw.clone()
    }

    /// The wrapped I/O object.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn account(&self, refused: Vec<Refused>) {
        for r in refused {
            if r.replaced {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
            } else {
                let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // The sender is unknown here: the stanza is gone before it is parsed.
                if n.is_power_of_two() {
                    tracing::warn!(
                        bound = r.violation.as_str(),
                        bytes = r.size,
                        dropped_total = n,
                        "oversized or malformed non-stanza element from the server dropped"
                    );
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.pos);
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.out.len() {
                    this.out.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let read = rb.filled().len();
            this.ack_now();
            if read == 0 {
                this.eof = true;
                continue;
            }
            this.scanner.feed(&this.chunk[..read], &mut this.out);
            let refused = this.scanner.take_refused();
            if !refused.is_empty() {
                this.account(refused);
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> Guarded<T> {
    /// Writes the queued raw bytes out, before anything else.
    fn poll_raw(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut q = self.raw.0.lock().unwrap_or_else(|e| e.into_inner());
        while q.pos < q.buf.len() {
            let pos = q.pos;
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &q.buf[pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            q.pos += n;
        }
        q.buf.clear();
        q.pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_raw(cx))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_raw(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_raw(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_raw(cx))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_come_out_scanned_and_writes_pass() {
        let (client, mut server) = tokio::io::duplex(64);
        let stats = Arc::new(GuardStats::default());
        let mut g = Guarded::new(client, Limits::new(1024, 4), stats.clone());
        let deep = format!("<iq id='x'>{}{}</iq>", "<a>".repeat(5), "</a>".repeat(5));
        let feed = tokio::spawn(async move {
            server
                .write_all(format!("<s:stream xmlns:s='urn:s'>{deep}<iq/>").as_bytes())
                .await
                .unwrap();
            let mut got = [0u8; 5];
            server.read_exact(&mut got).await.unwrap();
            server.shutdown().await.unwrap();
            got
        });
        g.write_all(b"hello").await.unwrap();
        let mut text = String::new();
        g.read_to_string(&mut text).await.unwrap();
        assert_eq!(&feed.await.unwrap(), b"hello");
        assert_eq!(
            text,
            "<s:stream xmlns:s='urn:s'><iq id='x'><refused xmlns='urn:fieldgate:guard' \
             reason='depth' limit='4' size='51'/></iq><iq/>"
        );
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn raw_bytes_go_out_before_later_writes() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(client, Limits::new(1024, 4), Arc::default());
        g.write_all(b"<a/>").await.unwrap();
        g.raw().push(b"<raw/>");
        g.write_all(b"<b/>").await.unwrap();
        g.raw().push(b"<last/>");
        g.flush().await.unwrap();
        drop(g);
        let mut got = String::new();
        server.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "<a/><raw/><b/><last/>");
    }
}

//! The socket side of the guard: an I/O object that runs every byte read from the
//! server through a [`Scanner`] before tokio-xmpp's parser sees it. Writes pass through.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// `inner` with every inbound stanza bounded.
pub struct Guarded<T> {
    inner: T,
    scanner: Scanner,
    chunk: Box<[u8]>,
    /// Scanned bytes not yet handed to the reader, from `pos`.
    out: Vec<u8>,
    pos: usize,
    eof: bool,
    stats: Arc<GuardStats>,
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
        }
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

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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
}

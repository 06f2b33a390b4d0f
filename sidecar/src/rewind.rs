//! A stream that replays bytes already read from it.
//!
//! The sidecar reads the start of a connection to tell TLS from plain HTTP (and to read the
//! TLS ClientHello) before deciding what to do; whoever handles the connection next must see
//! those bytes again.

use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most read in one go by [`read_arrived`].
const CHUNK: usize = 8 * 1024;

pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }

    /// Put `bytes`, read from this stream but not used, back in front of what it has left,
    /// as a copy of their own: `bytes` may be a slice of a much larger buffer (hyper's, after
    /// a `CONNECT`) that should be freed with its reader.
    pub fn unread(mut self, bytes: &[u8]) -> Self {
        let mut prefix = BytesMut::with_capacity(bytes.len() + self.prefix.len());
        prefix.extend_from_slice(bytes);
        prefix.extend_from_slice(&self.prefix);
        self.prefix = prefix.freeze();
        self
    }
}

/// Read what the client has sent so far, at most `max` bytes, into `buf`, which grows by the
/// bytes that arrived and no more. A connection that sends a few bytes and waits then costs a
/// few bytes, not a reader's buffer (hyper allocates 8 KiB each way per connection up front):
/// the chunk read into lives on the stack for one poll, never in the waiting future.
/// Returns the bytes read; 0 at the end of the stream.
pub async fn read_arrived<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    max: usize,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk[..max.clamp(1, CHUNK)]);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    })
    .await
}

/// Why a request head could not be read ahead.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("the client sent no complete request head in {0}s")]
    Slow(u64),
    #[error("reading the request head: {0}")]
    Read(#[from] io::Error),
}

/// Read an HTTP/1 request head ahead of hyper, growing only with what arrives (see
/// [`read_arrived`]): everything up to its blank line, or `limit` bytes, or up to the end of
/// the stream, whichever comes first, within `timeout`. `head` holds what was read already.
/// The caller hands the result to hyper through [`Rewind`]; hyper parses it, reads on past
/// `limit`, and answers malformed, oversized or unfinished heads as it always does.
pub async fn request_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    mut head: BytesMut,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, HeadError> {
    let read = async {
        let mut searched = 0;
        loop {
            if ends_head(&head[searched..]) {
                return Ok(());
            }
            searched = head.len().saturating_sub(3);
            let room = limit.saturating_sub(head.len());
            if room == 0 || read_arrived(io, &mut head, room).await? == 0 {
                return Ok(());
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => Ok(head.freeze()),
        Ok(Err(e)) => Err(HeadError::Read(e)),
        Err(_) => Err(HeadError::Slow(timeout.as_secs())),
    }
}

/// Whether `bytes` hold the blank line that ends a head (CRLF or bare LF lines).
fn ends_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(4).any(|w| w == b"\r\n\r\n")
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
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
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_head_is_read_to_its_blank_line_and_no_further_than_the_limit() {
        let sent: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        let mut io = sent;
        let head = request_head(&mut io, BytesMut::new(), 1024, Duration::from_secs(5))
            .await
            .unwrap();
        // One read takes what is there; the head's end is found in it.
        assert_eq!(&head[..], sent);

        let mut io: &[u8] = b"GET / HTTP/1.1\nHost: a\n\n";
        let head = request_head(
            &mut io,
            BytesMut::from(&b"GE"[..]),
            1024,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(head.starts_with(b"GEGET"), "{head:?}");

        let long = [b'a'; 100];
        let mut io = &long[..];
        let head = request_head(&mut io, BytesMut::new(), 10, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(head.len(), 10);
    }

    #[tokio::test]
    async fn a_head_that_does_not_come_ends_with_the_timeout() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HT")
            .await
            .unwrap();
        let slow = request_head(
            &mut server,
            BytesMut::new(),
            1024,
            Duration::from_millis(50),
        )
        .await;
        assert!(matches!(slow, Err(HeadError::Slow(_))), "{slow:?}");
        drop(client);
    }

    #[tokio::test]
    async fn what_is_unread_is_a_copy_read_first() {
        let inner: &[u8] = b"!";
        let big = Bytes::from(vec![b'x'; 8192]);
        // "a" is what is left of the prefix; "xx" was read before it and not used.
        let mut s = Rewind::new(Bytes::from_static(b"a"), inner).unread(&big[..2]);
        drop(big);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "xxa!");
    }

    #[tokio::test]
    async fn the_prefix_is_read_before_the_stream() {
        let inner: &[u8] = b" world";
        let mut s = Rewind::new(Bytes::from_static(b"hello"), inner);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}

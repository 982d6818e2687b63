//! A per-connection budget for HTTP/2 frames that do no work for the client:
//! PING, SETTINGS, PRIORITY, RST_STREAM, frames of unknown types, and DATA,
//! HEADERS or CONTINUATION frames that carry nothing and end nothing. Each
//! costs the server a wake-up, often an answer, and the client nothing, so a
//! flood of them burns a core (CVE-2019-9512, -9514, -9518 and the CONTINUATION
//! floods of 2024). hyper's HTTP/2 (the `h2` crate) bounds rapid resets and
//! header blocks but answers every PING and SETTINGS.
//!
//! [`FrameBudget`] reads the client's byte stream as it passes (after TLS,
//! before hyper) and keeps only a frame header's worth of state: it finds
//! each frame's 9-byte header, judges the frame, and skips its payload. The
//! budget is a token bucket, [`BURST`] frames deep, refilled at [`PER_SECOND`]
//! a second: far more than a browser sends (a SETTINGS and its ACK at the
//! start, a few PRIORITY frames, an RST_STREAM per cancelled request), far
//! less than a flood. A connection that spends it is closed.
//!
//! WINDOW_UPDATE frames are not counted: a client downloading at speed sends
//! one for every few DATA frames, and h2 handles them without an answer.
//!
//! Sans-IO: time comes in as milliseconds, so the tests below run without
//! sockets or sleeps. [`Budgeted`] is the stream adapter.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};

/// Frames of no use that a connection may send at once.
pub const BURST: u64 = 1000;
/// Frames of no use a connection is granted each second after the burst.
pub const PER_SECOND: u64 = 100;

/// The client connection preface: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
const PREFACE_LEN: u64 = 24;
const HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

/// The connection spent its budget: the frame type that spent it last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flood(pub u8);

impl Flood {
    /// The frame type's name, for the log.
    pub fn frame(&self) -> &'static str {
        match self.0 {
            DATA => "empty DATA",
            HEADERS => "empty HEADERS",
            PRIORITY => "PRIORITY",
            RST_STREAM => "RST_STREAM",
            SETTINGS => "SETTINGS",
            PING => "PING",
            GOAWAY => "GOAWAY",
            CONTINUATION => "empty CONTINUATION",
            _ => "unknown-type",
        }
    }
}

impl std::fmt::Display for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP/2 frame budget spent ({} frames of no use at once, then {} a second); the last: {}",
            BURST,
            PER_SECOND,
            self.frame()
        )
    }
}

#[derive(Debug)]
enum Scan {
    /// Bytes of the client preface still to pass.
    Preface(u64),
    /// A frame header, `have` bytes of it so far.
    Header { buf: [u8; HEADER_LEN], have: usize },
    /// A padded DATA frame: its first payload byte (the pad length) decides
    /// whether it carries data.
    PadLength { len: u32, flags: u8 },
    /// Payload bytes still to skip.
    Payload(u64),
}

/// See the module documentation.
#[derive(Debug)]
pub struct FrameBudget {
    scan: Scan,
    /// Tokens, in thousandths of a frame.
    tokens: u64,
    /// When tokens were last added, in milliseconds.
    at_ms: u64,
}

impl FrameBudget {
    pub fn new(now_ms: u64) -> Self {
        Self {
            scan: Scan::Preface(PREFACE_LEN),
            tokens: BURST * 1000,
            at_ms: now_ms,
        }
    }

    /// Reads `bytes`, the next the client sent, at `now_ms`. A frame over
    /// budget is still read past, so that reading can go on.
    pub fn feed(&mut self, mut bytes: &[u8], now_ms: u64) -> Result<(), Flood> {
        let mut result = Ok(());
        while !bytes.is_empty() {
            match &mut self.scan {
                Scan::Preface(left) | Scan::Payload(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.scan = header();
                    }
                }
                Scan::Header { buf, have } => {
                    let n = (HEADER_LEN - *have).min(bytes.len());
                    buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == HEADER_LEN {
                        let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
                        let (kind, flags) = (buf[3], buf[4]);
                        if kind == DATA && flags & PADDED != 0 && len > 0 {
                            self.scan = Scan::PadLength { len, flags };
                        } else {
                            let judged = self.judge(kind, flags, len == 0, now_ms);
                            result = result.and(judged);
                            self.skip(len as u64);
                        }
                    }
                }
                Scan::PadLength { len, flags } => {
                    // The payload is the pad length, the data, the padding.
                    let (len, flags) = (*len, *flags);
                    let empty = u32::from(bytes[0]) + 1 >= len;
                    let judged = self.judge(DATA, flags, empty, now_ms);
                    result = result.and(judged);
                    self.skip(u64::from(len));
                }
            }
        }
        result
    }

    fn skip(&mut self, len: u64) {
        self.scan = if len == 0 {
            header()
        } else {
            Scan::Payload(len)
        };
    }

    /// Charges a frame of type `kind` if it is of no use.
    fn judge(&mut self, kind: u8, flags: u8, empty: bool, now_ms: u64) -> Result<(), Flood> {
        let useless = match kind {
            PING | SETTINGS => flags & ACK == 0,
            PRIORITY | RST_STREAM | GOAWAY => true,
            DATA => empty && flags & END_STREAM == 0,
            HEADERS | CONTINUATION => empty && flags & (END_HEADERS | END_STREAM) == 0,
            WINDOW_UPDATE | PUSH_PROMISE => false,
            // Unknown types are to be ignored (RFC 9113, 4.1), at a cost.
            _ => true,
        };
        if !useless {
            return Ok(());
        }
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * PER_SECOND).min(BURST * 1000);
        match self.tokens.checked_sub(1000) {
            Some(left) => {
                self.tokens = left;
                Ok(())
            }
            None => Err(Flood(kind)),
        }
    }
}

fn header() -> Scan {
    Scan::Header {
        buf: [0; HEADER_LEN],
        have: 0,
    }
}

/// A stream whose reads pass through a [`FrameBudget`]: a read that spends
/// the budget fails, and so ends the connection, and says so in `flood`.
/// Writes pass untouched.
#[derive(Debug)]
pub struct Budgeted<T> {
    inner: T,
    budget: FrameBudget,
    flood: Rc<Cell<Option<Flood>>>,
}

impl<T> Budgeted<T> {
    pub fn new(inner: T, flood: Rc<Cell<Option<Flood>>>) -> Self {
        Self {
            inner,
            budget: FrameBudget::new(crate::clock::now_ms()),
            flood,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Budgeted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(flood) = self.flood.get() {
            return Poll::Ready(Err(io::Error::other(flood.to_string())));
        }
        let n = ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        if let Err(flood) = this.budget.feed(&buf[..n], crate::clock::now_ms()) {
            this.flood.set(Some(flood));
            return Poll::Ready(Err(io::Error::other(flood.to_string())));
        }
        Poll::Ready(Ok(n))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Budgeted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ping() -> Vec<u8> {
        frame(PING, 0, 0, &[0; 8])
    }

    /// A budget past the preface.
    fn started() -> FrameBudget {
        let mut b = FrameBudget::new(0);
        b.feed(PREFACE, 0).unwrap();
        b
    }

    /// How many copies of `f`, all at `now_ms`, the budget takes (up to
    /// ten bursts' worth).
    fn taken(b: &mut FrameBudget, f: &[u8], now_ms: u64) -> u64 {
        (0..10 * BURST)
            .take_while(|_| b.feed(f, now_ms).is_ok())
            .count() as u64
    }

    #[test]
    fn a_ping_flood_spends_the_burst_and_is_refused_until_time_refills_it() {
        let mut b = started();
        assert_eq!(taken(&mut b, &ping(), 0), BURST);
        assert_eq!(b.feed(&ping(), 0), Err(Flood(PING)));
        // 50 ms later: five more frames' worth.
        assert_eq!(taken(&mut b, &ping(), 50), PER_SECOND / 20);
        // A long pause refills no more than the burst.
        assert_eq!(taken(&mut b, &ping(), 3_600_000), BURST);
    }

    #[test]
    fn useful_frames_cost_nothing() {
        let mut b = started();
        let request = frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x82\x87\x84");
        let body = frame(DATA, 0, 3, &[7; 100]);
        let last = frame(DATA, END_STREAM, 3, b"");
        let acks = [frame(PING, ACK, 0, &[0; 8]), frame(SETTINGS, ACK, 0, b"")];
        let window = frame(WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes());
        for _ in 0..10 * BURST {
            for f in [&request, &body, &last, &acks[0], &acks[1], &window] {
                b.feed(f, 0).unwrap();
            }
        }
    }

    #[test]
    fn each_kind_of_frame_of_no_use_is_charged() {
        let padded_empty = frame(DATA, PADDED, 1, &[3, 0, 0, 0]);
        for f in [
            ping(),
            frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]),
            frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16]),
            frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]),
            frame(DATA, 0, 1, b""),
            padded_empty,
            frame(HEADERS, 0, 1, b""),
            frame(CONTINUATION, 0, 1, b""),
            frame(0xfa, 0, 0, b"extension"),
        ] {
            let mut b = started();
            assert_eq!(taken(&mut b, &f, 0), BURST, "{f:?}");
        }
        // Padding around real data is data.
        let mut b = started();
        let padded = frame(DATA, PADDED, 1, &[2, b'x', 0, 0]);
        assert_eq!(taken(&mut b, &padded, 0), 10 * BURST);
    }

    #[test]
    fn frames_split_at_every_byte_are_read_alike() {
        // The preface, a request with a large body, then PINGs, one byte a feed.
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(HEADERS, END_HEADERS, 1, b"\x83\x87\x84"));
        stream.extend(frame(DATA, 0, 1, &[0; 70_000][..16_384]));
        stream.extend(frame(
            DATA,
            PADDED | END_STREAM,
            1,
            &[5, 1, 2, 0, 0, 0, 0, 0],
        ));
        for _ in 0..BURST {
            stream.extend(ping());
        }
        let mut b = FrameBudget::new(0);
        for byte in &stream {
            b.feed(std::slice::from_ref(byte), 0).unwrap();
        }
        assert_eq!(b.feed(&ping(), 0), Err(Flood(PING)));
    }

    #[test]
    fn a_large_payload_is_skipped_not_read_as_frames() {
        // A DATA payload of bytes that look like PING headers.
        let fake = ping().repeat(2 * BURST as usize);
        let mut b = started();
        b.feed(&frame(DATA, 0, 1, &fake), 0).unwrap();
        assert_eq!(taken(&mut b, &ping(), 0), BURST);
    }

    #[test]
    fn time_going_back_refills_nothing() {
        let mut b = FrameBudget::new(10_000);
        b.feed(PREFACE, 10_000).unwrap();
        assert_eq!(taken(&mut b, &ping(), 10_000), BURST);
        assert_eq!(taken(&mut b, &ping(), 5_000), 0);
        assert_eq!(taken(&mut b, &ping(), 10_010), 1);
    }
}

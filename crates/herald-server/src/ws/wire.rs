//! WebSocket framing (RFC 6455), server side, written for Herald's fan-out.
//!
//! Why not tungstenite, which Herald used before: a server-to-client frame
//! is the same bytes for every subscriber that receives the same message,
//! but a general-purpose library copies each one into a per-connection
//! write buffer, and keeps a read chunk and a write buffer per connection
//! for its whole life (about 8 KiB of an idle connection's 13). Here:
//!
//! - **Writing** ([`Encoder`]): everything a connection has queued goes
//!   out with one write: headers and payloads of up to [`COPY_MAX`] bytes
//!   copied into one buffer (which exists only while there is something to
//!   write), larger payloads written from their shared `Bytes` as they are
//!   (`writev`); batched messages (`hello.batch`) are one header and the
//!   payloads separated by `\n`.
//! - **Reading** ([`Reader`]): bytes are read through a buffer on the
//!   stack, and only what a partial frame needs is kept in the connection's
//!   own buffer, which is released whenever it runs empty. An idle
//!   connection holds no read or write buffer at all.
//!
//! What is supported is what browsers and WebSocket libraries send: masked
//! client frames, fragmented messages, interleaved control frames, close
//! codes. No extensions are negotiated (so RSV bits must be zero, as RFC
//! 6455 §5.2 requires), text must be valid UTF-8 (close 1007), a message
//! larger than the limit is refused before it is buffered (close 1009), and
//! every other rule broken closes with 1002.

use bytes::{Buf, Bytes, BytesMut};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes read from the socket per read call (on the stack, not kept).
const READ_CHUNK: usize = 16 * 1024;

/// Most slices handed to one vectored write (Linux's `IOV_MAX` is 1024).
const MAX_SLICES: usize = 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// A text message (checked to be valid UTF-8).
    Text(Bytes),
    /// A binary message (Herald's protocol has none).
    Binary(Bytes),
    /// A ping, to be answered with a pong carrying the same bytes.
    Ping(Bytes),
    /// A pong (answers our heartbeat pings).
    Pong,
    /// The client's close frame and its status code, if it sent one.
    Close(Option<u16>),
}

/// Why the client's bytes are not an acceptable WebSocket stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// A framing rule of RFC 6455 was broken.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A message is larger than the limit.
    #[error("message of at least {0} bytes is larger than the limit")]
    TooBig(u64),
    /// A text message is not valid UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

impl WireError {
    /// The WebSocket close code that tells the client which rule it broke.
    pub(crate) fn close_code(&self) -> herald_protocol::CloseCode {
        use herald_protocol::CloseCode;
        match self {
            WireError::Protocol(_) | WireError::Io(_) => CloseCode::WebSocketProtocol,
            WireError::TooBig(_) => CloseCode::TooBig,
            WireError::InvalidUtf8 => CloseCode::InvalidUtf8,
        }
    }
}

/// Turns the client's bytes into messages. Pure: it never touches a socket
/// (so it can be fuzzed and unit-tested), [`Reader`] feeds it.
#[derive(Debug)]
pub(crate) struct Decoder {
    max_message: usize,
    /// A fragmented message being assembled: its opcode and bytes so far.
    fragments: Option<(u8, BytesMut)>,
}

impl Decoder {
    /// A decoder refusing messages larger than `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> Decoder {
        Decoder { max_message, fragments: None }
    }

    /// Take the next complete message off the front of `buf`. `Ok(None)`:
    /// `buf` ends inside a frame (or holds only part of a fragmented
    /// message); nothing of an incomplete frame is consumed.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, WireError> {
        loop {
            let Some(frame) = self.frame(buf)? else { return Ok(None) };
            if let Some(msg) = self.assemble(frame)? {
                return Ok(Some(msg));
            }
        }
    }

    /// One whole frame off the front of `buf`: (fin, opcode, unmasked payload).
    fn frame(&self, buf: &mut BytesMut) -> Result<Option<(bool, u8, Bytes)>, WireError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            return Err(WireError::Protocol("reserved bits set without an extension"));
        }
        if b1 & 0x80 == 0 {
            return Err(WireError::Protocol("client frames must be masked"));
        }
        let control = opcode & 0x8 != 0;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(WireError::Protocol("unknown opcode")),
        }
        let (len, header) = match b1 & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(WireError::Protocol("frame length has its top bit set"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        if control && (!fin || len > 125) {
            return Err(WireError::Protocol("control frames must be whole and at most 125 bytes"));
        }
        // Refuse before buffering: a frame's length alone may exceed the limit.
        let so_far = self.fragments.as_ref().map_or(0, |(_, b)| b.len() as u64);
        if !control && so_far.saturating_add(len) > self.max_message as u64 {
            return Err(WireError::TooBig(so_far.saturating_add(len)));
        }
        let len = len as usize;
        if buf.len() < header + 4 + len {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[header..header + 4]);
        buf.advance(header + 4);
        let mut payload = buf.split_to(len);
        unmask(&mut payload, mask);
        Ok(Some((fin, opcode, payload.freeze())))
    }

    /// Fold a frame into the message it belongs to; the message once whole.
    fn assemble(&mut self, (fin, opcode, payload): (bool, u8, Bytes)) -> Result<Option<Inbound>, WireError> {
        match opcode {
            OP_PING => Ok(Some(Inbound::Ping(payload))),
            OP_PONG => Ok(Some(Inbound::Pong)),
            OP_CLOSE => close(&payload).map(Some),
            OP_CONTINUATION => {
                let Some((_, so_far)) = self.fragments.as_mut() else {
                    return Err(WireError::Protocol("continuation frame without a message to continue"));
                };
                so_far.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let Some((op, whole)) = self.fragments.take() else { return Ok(None) };
                message(op, whole.freeze()).map(Some)
            }
            _ => {
                if self.fragments.is_some() {
                    return Err(WireError::Protocol("new message before the fragmented one ended"));
                }
                if fin {
                    return message(opcode, payload).map(Some);
                }
                self.fragments = Some((opcode, BytesMut::from(&payload[..])));
                Ok(None)
            }
        }
    }
}

fn message(opcode: u8, payload: Bytes) -> Result<Inbound, WireError> {
    if opcode == OP_BINARY {
        return Ok(Inbound::Binary(payload));
    }
    if std::str::from_utf8(&payload).is_err() {
        return Err(WireError::InvalidUtf8);
    }
    Ok(Inbound::Text(payload))
}

fn close(payload: &[u8]) -> Result<Inbound, WireError> {
    match payload {
        [] => Ok(Inbound::Close(None)),
        [_] => Err(WireError::Protocol("close frame with a one-byte body")),
        [a, b, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(WireError::InvalidUtf8);
            }
            let code = u16::from_be_bytes([*a, *b]);
            // RFC 6455 §7.4: codes a peer may send.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(WireError::Protocol("close code a peer may not send"));
            }
            Ok(Inbound::Close(Some(code)))
        }
    }
}

/// XOR the client's mask over the payload, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Reads messages off a socket, keeping a buffer only while a frame is
/// partly read.
pub(crate) struct Reader<R> {
    io: R,
    buf: BytesMut,
    decoder: Decoder,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A reader over `io`; `already_read` are bytes read past the HTTP
    /// request (a client may send its first frame right after it).
    pub(crate) fn new(io: R, already_read: &[u8], max_message: usize) -> Reader<R> {
        Reader { io, buf: BytesMut::from(already_read), decoder: Decoder::new(max_message) }
    }

    /// The next message; `None` when the client closed the socket.
    /// Cancel-safe: bytes read are kept in the reader.
    pub(crate) async fn next(&mut self) -> Option<Result<Inbound, WireError>> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(msg)) => return Some(Ok(msg)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.buf.is_empty() {
                // Nothing pending: hold no memory while waiting (the bytes
                // of earlier messages may still share the old allocation).
                self.buf = BytesMut::new();
            }
            match self.read().await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(WireError::Io(e))),
            }
        }
    }

    async fn read(&mut self) -> io::Result<usize> {
        let Reader { io, buf, .. } = self;
        poll_fn(|cx| {
            // On the stack for this call only: an idle connection keeps none.
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    buf.extend_from_slice(rb.filled());
                    Poll::Ready(Ok(rb.filled().len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// The header of an unmasked server frame with `fin` set.
fn header(opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Payloads up to this size are copied into the encoder's buffer; larger
/// ones are written from their shared bytes as they are.
pub(crate) const COPY_MAX: usize = 2048;

/// The largest buffer a thread keeps for its next writer.
const MAX_SPARE: usize = 512 * 1024;

thread_local! {
    /// One copy buffer per thread, lent to an encoder for one write: the
    /// writers of a thousand connections take turns on a few warm buffers
    /// instead of each allocating (and faulting in) its own per write.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A piece of what is to be written: bytes of the encoder's own buffer,
/// or a shared payload.
#[derive(Debug)]
enum Part {
    Own(std::ops::Range<usize>),
    Shared(Bytes),
}

impl Part {
    fn bytes<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        match self {
            Part::Own(r) => &buf[r.clone()],
            Part::Shared(b) => b,
        }
    }
}

/// Builds the server's frames for one write: headers and small payloads
/// copied into one buffer, large payloads referenced where they are, all
/// handed to the socket with one (vectored) write.
///
/// Why copy: a frame's payload is shared by every subscriber of the same
/// event, and writing it from there (one `iovec` per header, payload and
/// separator) cost more than the copy it saved. Each reference is an
/// atomic count that the fan-out's thread raises and the writers' threads
/// lower, so the count's cache line moved between the cores three times
/// per delivery, and the kernel walked two or three `iovec`s per message.
/// Copying a few hundred bytes that are in the cache is cheaper than
/// either; a large payload is still not copied.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
    parts: Vec<Part>,
    /// Where the buffer's bytes not yet in `parts` start.
    open: usize,
    /// Bytes of the shared parts.
    shared: usize,
}

impl Encoder {
    /// Bytes encoded and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() + self.shared
    }

    /// Make room for `n` more bytes to be copied. An encoder without a
    /// buffer takes its thread's spare one (see `SPARE`).
    pub fn reserve(&mut self, n: usize) {
        self.borrow_spare();
        self.buf.reserve(n);
    }

    /// An encoder without a buffer (new, or just written) takes its
    /// thread's spare one before it copies anything.
    fn borrow_spare(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf = SPARE.with(|s| s.take());
        }
    }

    /// The buffer's bytes since the last part become a part.
    fn seal(&mut self) {
        if self.buf.len() > self.open {
            self.parts.push(Part::Own(self.open..self.buf.len()));
            self.open = self.buf.len();
        }
    }

    fn push_payload(&mut self, b: &Bytes) {
        if b.len() <= COPY_MAX {
            self.buf.extend_from_slice(b);
        } else {
            self.seal();
            self.shared += b.len();
            self.parts.push(Part::Shared(b.clone()));
        }
    }

    /// One text frame holding `payload` (valid UTF-8).
    pub fn text(&mut self, payload: &Bytes) {
        self.borrow_spare();
        header(OP_TEXT, payload.len(), &mut self.buf);
        self.push_payload(payload);
    }

    /// One text frame holding the messages one per line (`hello.batch`).
    pub fn text_lines<'a>(&mut self, lines: impl Iterator<Item = &'a Bytes> + Clone) {
        self.borrow_spare();
        let n = lines.clone().count();
        let total = lines.clone().map(Bytes::len).sum::<usize>() + n.saturating_sub(1);
        header(OP_TEXT, total, &mut self.buf);
        for (i, line) in lines.enumerate() {
            if i > 0 {
                self.buf.push(b'\n');
            }
            self.push_payload(line);
        }
    }

    /// A ping with an empty body.
    pub fn ping(&mut self) {
        self.borrow_spare();
        header(OP_PING, 0, &mut self.buf);
    }

    /// A pong answering a ping's body.
    pub fn pong(&mut self, body: &[u8]) {
        self.borrow_spare();
        let body = &body[..body.len().min(125)];
        header(OP_PONG, body.len(), &mut self.buf);
        self.buf.extend_from_slice(body);
    }

    /// A close frame with `code` and `reason` (cut to fit a control frame).
    pub fn close(&mut self, code: u16, reason: &str) {
        self.borrow_spare();
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        header(OP_CLOSE, 2 + end, &mut self.buf);
        self.buf.extend_from_slice(&code.to_be_bytes());
        self.buf.extend_from_slice(&reason.as_bytes()[..end]);
    }

    /// Write everything built so far into `io` and forget it (the buffer
    /// goes back to the thread's spare for the next write).
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        self.seal();
        let mut first = 0;
        while first < self.parts.len() {
            let n = {
                let Encoder { buf, parts, .. } = &*self;
                if first + 1 == parts.len() {
                    io.write(parts[first].bytes(buf)).await?
                } else {
                    let end = parts.len().min(first + MAX_SLICES);
                    let slices: Vec<io::IoSlice<'_>> =
                        parts[first..end].iter().map(|p| io::IoSlice::new(p.bytes(buf))).collect();
                    io.write_vectored(&slices).await?
                }
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            // Skip what was written: whole parts, then into the next one.
            let mut left = n;
            while left > 0 {
                let part = &mut self.parts[first];
                let len = match part {
                    Part::Own(r) => r.len(),
                    Part::Shared(b) => b.len(),
                };
                if left >= len {
                    left -= len;
                    first += 1;
                } else {
                    match part {
                        Part::Own(r) => r.start += left,
                        Part::Shared(b) => b.advance(left),
                    }
                    left = 0;
                }
            }
        }
        io.flush().await?;
        self.parts.clear();
        if self.parts.capacity() > MAX_SLICES {
            self.parts = Vec::new();
        }
        self.buf.clear();
        self.open = 0;
        self.shared = 0;
        // Written: the buffer goes back to this thread for the next writer
        // (a connection keeps none between writes).
        if self.buf.capacity() <= MAX_SPARE {
            let buf = std::mem::take(&mut self.buf);
            SPARE.with(|s| {
                let held = s.take();
                s.set(if held.capacity() >= buf.capacity() { held } else { buf });
            });
        }
        Ok(())
    }
}

/// A masked client frame, as a client library sends it (for the decoder's
/// tests and the in-process tier's bare client).
#[cfg(test)]
pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 65535 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn decode_all(bytes: &[u8], max: usize) -> Result<Vec<Inbound>, String> {
        let mut d = Decoder::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        // Byte by byte: every split point of every frame is a partial read.
        for b in bytes {
            buf.put_u8(*b);
            while let Some(m) = d.decode(&mut buf).map_err(|e| e.to_string())? {
                out.push(m);
            }
        }
        assert!(buf.is_empty(), "nothing left over");
        Ok(out)
    }

    #[test]
    fn whole_and_fragmented_messages_with_control_frames_between() {
        let long = "é".repeat(40_000);
        let mut bytes = client_frame(true, OP_TEXT, b"{\"a\":1}");
        bytes.extend(client_frame(false, OP_TEXT, &long.as_bytes()[..1001]));
        bytes.extend(client_frame(true, OP_PING, b"hi"));
        bytes.extend(client_frame(true, OP_CONTINUATION, &long.as_bytes()[1001..]));
        bytes.extend(client_frame(true, OP_BINARY, &[0xFF; 3]));
        bytes.extend(client_frame(true, OP_PONG, b""));
        bytes.extend(client_frame(true, OP_CLOSE, &[0x03, 0xE8, b'o', b'k']));
        let got = decode_all(&bytes, 1 << 20).expect("valid");
        assert_eq!(
            got,
            vec![
                Inbound::Text(Bytes::from_static(b"{\"a\":1}")),
                Inbound::Ping(Bytes::from_static(b"hi")),
                Inbound::Text(Bytes::from(long)),
                Inbound::Binary(Bytes::from_static(&[0xFF; 3])),
                Inbound::Pong,
                Inbound::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn broken_rules_are_refused_with_their_close_codes() {
        use herald_protocol::CloseCode;
        let unmasked = vec![0x81, 0x01, b'x'];
        let cases: Vec<(Vec<u8>, CloseCode)> = vec![
            (unmasked, CloseCode::WebSocketProtocol),
            (client_frame(true, 0x3, b""), CloseCode::WebSocketProtocol),
            (client_frame(true, OP_TEXT | 0x40, b"x"), CloseCode::WebSocketProtocol),
            (client_frame(true, OP_CONTINUATION, b"x"), CloseCode::WebSocketProtocol),
            (client_frame(false, OP_PING, b"x"), CloseCode::WebSocketProtocol),
            (client_frame(true, OP_PING, &[0; 126]), CloseCode::WebSocketProtocol),
            (client_frame(true, OP_CLOSE, &[3]), CloseCode::WebSocketProtocol),
            (client_frame(true, OP_CLOSE, &[0x03, 0xEE]), CloseCode::WebSocketProtocol),
            (client_frame(true, OP_TEXT, &[0xC3, 0x28]), CloseCode::InvalidUtf8),
            (client_frame(true, OP_TEXT, &[b'x'; 2000]), CloseCode::TooBig),
            (
                {
                    let mut b = client_frame(false, OP_TEXT, b"a");
                    b.extend(client_frame(true, OP_TEXT, b"b"));
                    b
                },
                CloseCode::WebSocketProtocol,
            ),
            (
                {
                    let mut b = client_frame(false, OP_TEXT, &[b'x'; 600]);
                    b.extend(client_frame(true, OP_CONTINUATION, &[b'x'; 600]));
                    b
                },
                CloseCode::TooBig,
            ),
        ];
        for (bytes, code) in cases {
            let mut d = Decoder::new(1000);
            let mut buf = BytesMut::from(&bytes[..]);
            let err = loop {
                match d.decode(&mut buf) {
                    Err(e) => break e,
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("accepted {bytes:?}"),
                }
            };
            assert_eq!(err.close_code(), code, "{bytes:?}: {err}");
        }
    }

    #[test]
    fn a_huge_declared_length_is_refused_before_it_is_buffered() {
        let mut buf = BytesMut::from(&[0x81u8, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0][..]);
        let err = Decoder::new(1 << 20).decode(&mut buf).expect_err("too big");
        assert!(matches!(err, WireError::TooBig(n) if n == 1 << 32), "{err}");
    }

    #[test]
    fn unmask_matches_the_bytewise_definition() {
        let mask = [1, 2, 3, 4];
        for n in 0..40 {
            let plain: Vec<u8> = (0..n as u8).collect();
            let mut masked = plain.clone();
            unmask(&mut masked, mask);
            let expect: Vec<u8> = plain.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]).collect();
            assert_eq!(masked, expect);
        }
    }

    #[tokio::test]
    async fn encoded_frames_are_what_a_websocket_library_reads() {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::{protocol::Role, Message};
        let (server, client) = tokio::io::duplex(1 << 20);
        let (_, mut w) = tokio::io::split(server);
        let mut enc = Encoder::default();
        enc.text(&Bytes::from_static(b"{\"a\":1}"));
        let lines = [Bytes::from_static(b"1"), Bytes::from_static(b"2"), Bytes::from_static(b"3")];
        enc.text_lines(lines.iter());
        let big = Bytes::from("x".repeat(70_000));
        enc.text(&big);
        // A large payload between small ones: copied around, referenced itself.
        enc.text_lines([Bytes::from_static(b"a"), big.clone(), Bytes::from_static(b"b")].iter());
        enc.ping();
        enc.pong(b"p");
        enc.close(4408, "slow consumer");
        enc.write_to(&mut w).await.expect("written");
        assert!(enc.parts.is_empty() && enc.pending() == 0);
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut got = Vec::new();
        for _ in 0..7 {
            got.push(ws.next().await.expect("a message").expect("valid"));
        }
        assert_eq!(got[0], Message::text("{\"a\":1}"));
        assert_eq!(got[1], Message::text("1\n2\n3"));
        assert_eq!(got[2].len(), big.len());
        assert_eq!(got[3], Message::text(format!("a\n{}\nb", "x".repeat(70_000))));
        assert!(matches!(got[4], Message::Ping(_)));
        assert!(matches!(&got[5], Message::Pong(p) if p.as_ref() == b"p"));
        assert!(matches!(&got[6], Message::Close(Some(f)) if u16::from(f.code) == 4408 && f.reason == "slow consumer"));
    }
}

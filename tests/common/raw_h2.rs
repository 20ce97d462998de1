//! A raw HTTP/2 client, frame by frame: the connection limits are tested
//! with what a client library never does (open a connection and send no
//! request, ignore a PING), and GOAWAY frames are seen only at this level.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A GOAWAY's last stream id.
    pub fn last_stream(&self) -> u32 {
        let id: [u8; 4] = self.payload[..4].try_into().expect("GOAWAY payload");
        u32::from_be_bytes(id) & 0x7fff_ffff
    }
}

/// What a connection brought until it ended or the wait ran out.
#[derive(Debug)]
pub struct Seen {
    /// Each frame with the time since the wait began.
    pub frames: Vec<(Duration, Frame)>,
    /// When the server closed, if it did within the wait.
    pub eof: Option<Duration>,
}

impl Seen {
    pub fn goaways(&self) -> Vec<(Duration, &Frame)> {
        self.frames
            .iter()
            .filter(|(_, f)| f.kind == GOAWAY)
            .map(|(at, f)| (*at, f))
            .collect()
    }
}

async fn write_frame<S: AsyncWrite + Unpin>(
    io: &mut S,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    io.write_all(&out).await?;
    io.flush().await
}

/// The client connection preface and an empty SETTINGS frame.
pub async fn preface<S: AsyncWrite + Unpin>(io: &mut S) {
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    write_frame(io, SETTINGS, 0, 0, &[])
        .await
        .expect("SETTINGS");
}

/// `GET path` on `stream` (odd, rising), headers HPACK-coded as literals
/// without Huffman coding.
pub async fn get<S: AsyncWrite + Unpin>(io: &mut S, stream: u32, authority: &str, path: &str) {
    // Static table: 2 `:method GET`, 6 `:scheme http`; 1 `:authority`
    // and 4 `:path` as names for literals without indexing.
    let mut block = vec![0x82, 0x86];
    for (index, value) in [(0x01u8, authority), (0x04, path)] {
        block.push(index);
        block.push(u8::try_from(value.len()).expect("short header value"));
        block.extend_from_slice(value.as_bytes());
    }
    write_frame(io, HEADERS, END_STREAM | END_HEADERS, stream, &block)
        .await
        .expect("HEADERS");
}

/// Reads frames until `wait` after `started` (the times in [`Seen`] count
/// from it too), acknowledging the server's SETTINGS, until the server
/// closes or a frame on `until_stream` ends that stream. PINGs are answered
/// only when `answer_pings`: a client that ignores them must not hold a
/// connection open either.
pub async fn read<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    started: Instant,
    wait: Duration,
    until_stream: Option<u32>,
    answer_pings: bool,
) -> Seen {
    let mut seen = Seen {
        frames: Vec::new(),
        eof: None,
    };
    while let Some(left) = wait.checked_sub(started.elapsed()) {
        let mut head = [0u8; 9];
        match tokio::time::timeout(left, io.read_exact(&mut head)).await {
            Err(_) => break,
            // EOF, or a reset: either way the server closed.
            Ok(Err(_)) => {
                seen.eof = Some(started.elapsed());
                break;
            }
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if tokio::time::timeout(left, io.read_exact(&mut payload))
            .await
            .map_or(true, |r| r.is_err())
        {
            seen.eof = Some(started.elapsed());
            break;
        }
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        };
        // Answers may fail once the server has closed: EOF comes next.
        match frame.kind {
            SETTINGS if frame.flags & ACK == 0 => {
                let _ = write_frame(io, SETTINGS, ACK, 0, &[]).await;
            }
            PING if frame.flags & ACK == 0 && answer_pings => {
                let _ = write_frame(io, PING, ACK, 0, &frame.payload).await;
            }
            _ => {}
        }
        let done = until_stream == Some(frame.stream)
            && matches!(frame.kind, HEADERS | DATA)
            && frame.flags & END_STREAM != 0;
        seen.frames.push((started.elapsed(), frame));
        if done {
            break;
        }
    }
    seen
}

/// Sends `GET path` on `stream` and asserts a 200 answer comes back whole
/// on it, with no GOAWAY before.
pub async fn assert_served<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, stream: u32, path: &str) {
    get(io, stream, "localhost", path).await;
    let seen = read(
        io,
        Instant::now(),
        Duration::from_secs(10),
        Some(stream),
        true,
    )
    .await;
    assert!(seen.goaways().is_empty(), "GOAWAY instead: {seen:?}");
    let head = seen
        .frames
        .iter()
        .find(|(_, f)| f.kind == HEADERS && f.stream == stream)
        .unwrap_or_else(|| panic!("no answer on stream {stream}: {seen:?}"));
    // `:status 200` is static-table entry 8, sent indexed.
    assert_eq!(head.1.payload.first(), Some(&0x88), "{seen:?}");
    let last = seen
        .frames
        .last()
        .map(|(_, f)| (f.stream, f.flags & END_STREAM));
    assert_eq!(last, Some((stream, END_STREAM)), "answer cut: {seen:?}");
}

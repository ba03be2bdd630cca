//! The gang's messages on a TCP connection, and the connection that carries them.
//!
//! A frame is a kind byte, a little-endian u64 payload length and the payload. Both ends send
//! a heartbeat frame whenever they have sent nothing for [`BEAT`] (a peer computing a long
//! step still beats), so a reader that hears nothing for [`SILENCE`] knows its peer is gone,
//! even when the peer's host vanished without closing the connection.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often an idle end sends a heartbeat.
pub const BEAT: Duration = Duration::from_secs(1);
/// How long without a frame before a peer counts as gone: the bound on noticing a dead peer.
pub const SILENCE: Duration = Duration::from_secs(10);
/// The largest frame accepted (a rank-512 LoRA of FLUX.1-dev with AdamW's moments is ~11 GB).
const MAX_FRAME: u64 = 64 << 30;
/// The largest hello (read before the token is checked).
const MAX_HELLO: u64 = 64 << 10;

/// What a joining worker says first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub worker: String,
    /// The node's fingerprint and the unit: a worker of another node (or another version of
    /// this one) is refused.
    pub fingerprint: String,
    pub unit: usize,
    /// The unit's key (its rows): a worker that cut the input otherwise is refused.
    pub unit_key: String,
    /// The token of the gang's record in the workspace.
    pub token: String,
}

/// A message.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Hello(Vec<u8>),
    /// The follower is ready for orders (its models are loaded, its input read).
    Ready,
    Beat,
    State(Vec<u8>),
    Step {
        step: u64,
        attempt: u64,
        rank: u32,
        size: u32,
    },
    /// A follower's share of attempt `attempt`.
    Share {
        attempt: u64,
        values: Vec<f32>,
        scalars: Vec<f64>,
    },
    Sums {
        values: Vec<f32>,
        scalars: Vec<f64>,
    },
    Done,
    Refused(String),
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Self::Hello(_) => 1,
            Self::Ready => 2,
            Self::Beat => 3,
            Self::State(_) => 4,
            Self::Step { .. } => 5,
            Self::Share { .. } => 6,
            Self::Sums { .. } => 7,
            Self::Done => 8,
            Self::Refused(_) => 9,
        }
    }

    /// The payload: a borrowed one as it is (a training state is gigabytes), others encoded.
    fn payload(&self) -> std::borrow::Cow<'_, [u8]> {
        use std::borrow::Cow;
        match self {
            Self::Hello(bytes) | Self::State(bytes) => Cow::Borrowed(bytes),
            Self::Refused(message) => Cow::Borrowed(message.as_bytes()),
            Self::Ready | Self::Beat | Self::Done => Cow::Borrowed(&[]),
            Self::Step { step, attempt, rank, size } => {
                Cow::Owned([&step.to_le_bytes()[..], &attempt.to_le_bytes(), &rank.to_le_bytes(), &size.to_le_bytes()].concat())
            }
            Self::Share { attempt, values, scalars } => {
                let mut out = attempt.to_le_bytes().to_vec();
                numbers(&mut out, values, scalars);
                Cow::Owned(out)
            }
            Self::Sums { values, scalars } => {
                let mut out = Vec::new();
                numbers(&mut out, values, scalars);
                Cow::Owned(out)
            }
        }
    }

    fn parse(kind: u8, payload: Vec<u8>) -> std::io::Result<Self> {
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a gang peer sent {what}"));
        let u64_at = |at: usize| -> std::io::Result<u64> {
            payload.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default())).ok_or_else(|| bad("a short frame"))
        };
        Ok(match kind {
            1 => Self::Hello(payload),
            2 => Self::Ready,
            3 => Self::Beat,
            4 => Self::State(payload),
            5 => {
                let word = |at: usize| payload.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
                match (word(16), word(20)) {
                    (Some(rank), Some(size)) => Self::Step { step: u64_at(0)?, attempt: u64_at(8)?, rank, size },
                    _ => return Err(bad("a short step")),
                }
            }
            6 => {
                let attempt = u64_at(0)?;
                let (values, scalars) = parse_numbers(&payload[8..]).ok_or_else(|| bad("a malformed share"))?;
                Self::Share { attempt, values, scalars }
            }
            7 => {
                let (values, scalars) = parse_numbers(&payload).ok_or_else(|| bad("malformed sums"))?;
                Self::Sums { values, scalars }
            }
            8 => Self::Done,
            9 => Self::Refused(String::from_utf8_lossy(&payload).into_owned()),
            other => return Err(bad(&format!("an unknown frame kind {other}"))),
        })
    }
}

/// `scalars` then `values`, after their counts.
fn numbers(out: &mut Vec<u8>, values: &[f32], scalars: &[f64]) {
    out.reserve(16 + 8 * scalars.len() + 4 * values.len());
    out.extend_from_slice(&(scalars.len() as u64).to_le_bytes());
    out.extend_from_slice(&(values.len() as u64).to_le_bytes());
    for s in scalars {
        out.extend_from_slice(&s.to_le_bytes());
    }
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn parse_numbers(bytes: &[u8]) -> Option<(Vec<f32>, Vec<f64>)> {
    let count = |at: usize| bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    let (n_scalars, n_values) = (usize::try_from(count(0)?).ok()?, usize::try_from(count(8)?).ok()?);
    let values_at = n_scalars.checked_mul(8)?.checked_add(16)?;
    let scalar_bytes = bytes.get(16..values_at)?;
    let value_bytes = bytes.get(values_at..)?;
    if value_bytes.len() != n_values.checked_mul(4)? {
        return None;
    }
    let scalars = scalar_bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
    let values = value_bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default())).collect();
    Some((values, scalars))
}

/// One end of a gang connection: frames in and out, and a heartbeat while it lives.
#[derive(Debug)]
pub struct Conn {
    reader: Mutex<BufReader<TcpStream>>,
    writer: Arc<Mutex<Writer>>,
    closed: Arc<AtomicBool>,
    /// Who is at the other end, for messages.
    pub peer: String,
}

#[derive(Debug)]
struct Writer {
    out: BufWriter<TcpStream>,
    /// Whether a frame was sent since the last heartbeat tick.
    sent: bool,
}

impl Conn {
    /// Wraps a connected stream and starts its heartbeat.
    pub fn new(stream: TcpStream, peer: String) -> std::io::Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(SILENCE))?;
        stream.set_write_timeout(Some(SILENCE))?;
        let writer = Arc::new(Mutex::new(Writer { out: BufWriter::with_capacity(1 << 20, stream.try_clone()?), sent: false }));
        let closed = Arc::new(AtomicBool::new(false));
        let (beats, stop) = (Arc::clone(&writer), Arc::clone(&closed));
        std::thread::Builder::new().name("gang-beat".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(BEAT);
                let mut w = beats.lock().unwrap_or_else(PoisonError::into_inner);
                if !std::mem::take(&mut w.sent) && !stop.load(Ordering::Relaxed) && write_frame(&mut w.out, &Frame::Beat).is_err() {
                    break;
                }
            }
        })?;
        Ok(Self { reader: Mutex::new(BufReader::with_capacity(1 << 20, stream)), writer, closed, peer })
    }

    /// Sends a frame.
    pub fn send(&self, frame: &Frame) -> std::io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        w.sent = true;
        write_frame(&mut w.out, frame)
    }

    /// The next frame that is not a heartbeat; an error when the peer closed the connection,
    /// went silent for [`SILENCE`], or sent something malformed.
    pub fn receive(&self) -> std::io::Result<Frame> {
        self.receive_unless(&|| false)
    }

    /// [`Self::receive`], giving up (`Interrupted`) when `stop` says so, which it is asked at
    /// every heartbeat.
    pub fn receive_unless(&self, stop: &dyn Fn() -> bool) -> std::io::Result<Frame> {
        let mut r = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match read_frame(&mut *r, MAX_FRAME)? {
                Frame::Beat if stop() => return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "stopped")),
                Frame::Beat => continue,
                frame => return Ok(frame),
            }
        }
    }

    /// The first frame of a worker that connected: a hello, small, before anything else (a
    /// stranger can make the leader read nothing larger).
    pub fn receive_hello(&self) -> std::io::Result<Hello> {
        let mut r = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        match read_frame(&mut *r, MAX_HELLO)? {
            Frame::Hello(bytes) => serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a gang peer spoke before its hello")),
        }
    }

    /// Closes the connection (a reader blocked on it gets an error).
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = w.out.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

/// One frame of at most `max` payload bytes.
fn read_frame(r: &mut impl Read, max: u64) -> std::io::Result<Frame> {
    let mut header = [0u8; 9];
    r.read_exact(&mut header)?;
    let len = u64::from_le_bytes(header[1..].try_into().unwrap_or_default());
    if len > max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a gang frame of {len} bytes (at most {max} here)")));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Frame::parse(header[0], payload)
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn write_frame(out: &mut BufWriter<TcpStream>, frame: &Frame) -> std::io::Result<()> {
    let payload = frame.payload();
    out.write_all(&[frame.kind()])?;
    out.write_all(&(payload.len() as u64).to_le_bytes())?;
    out.write_all(&payload)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_as_written_and_heartbeats_are_skipped() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let conn = Conn::new(TcpStream::connect(address).unwrap(), "leader".into()).unwrap();
            // Longer than a beat: the other end must skip the heartbeats in between.
            std::thread::sleep(BEAT + Duration::from_millis(300));
            for frame in [
                Frame::Step { step: 7, attempt: 2, rank: 1, size: 3 },
                Frame::Share { attempt: 2, values: vec![1.5, -0.0, f32::MIN_POSITIVE], scalars: vec![0.25] },
                Frame::Sums { values: vec![], scalars: vec![] },
                Frame::Refused("full".into()),
                Frame::Done,
            ] {
                conn.send(&frame).unwrap();
            }
            conn
        });
        let (stream, _) = listener.accept().unwrap();
        let conn = Conn::new(stream, "follower".into()).unwrap();
        assert_eq!(conn.receive().unwrap(), Frame::Step { step: 7, attempt: 2, rank: 1, size: 3 });
        let Frame::Share { attempt, values, scalars } = conn.receive().unwrap() else { panic!("a share") };
        assert_eq!((attempt, scalars), (2, vec![0.25]));
        assert_eq!(values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), [1.5f32, -0.0, f32::MIN_POSITIVE].map(f32::to_bits));
        assert_eq!(conn.receive().unwrap(), Frame::Sums { values: vec![], scalars: vec![] });
        assert_eq!(conn.receive().unwrap(), Frame::Refused("full".into()));
        assert_eq!(conn.receive().unwrap(), Frame::Done);
        drop(client.join().unwrap());
        assert!(conn.receive().is_err(), "a closed connection is an error, not a hang");
    }

    #[test]
    fn a_hello_too_large_is_refused_before_it_is_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut stream = TcpStream::connect(address).unwrap();
            let mut header = vec![1u8];
            header.extend_from_slice(&(1u64 << 40).to_le_bytes());
            stream.write_all(&header).unwrap();
            stream
        });
        let (stream, _) = listener.accept().unwrap();
        let conn = Conn::new(stream, "stranger".into()).unwrap();
        let refused = conn.receive_hello().unwrap_err();
        assert!(refused.to_string().contains("at most 65536"), "{refused}");
        drop(client.join().unwrap());
    }
}

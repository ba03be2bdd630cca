//! A follower's end of a gang: orders from the leader in, shares out.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use unoflow_api::gang::{Gang, GangFollower, GangRole, Order};
use unoflow_api::{OpError, Result};

use super::wire::{Conn, Frame, Hello, SILENCE};

/// How long a connection to a leader may take.
const CONNECT: Duration = Duration::from_secs(5);

/// A follower's end.
pub struct Follower {
    conn: Conn,
    /// Whether to stop waiting for orders (the run stops, or the node is done here).
    stop: Box<dyn Fn() -> bool + Send + Sync>,
    /// Whether the leader was told this worker is ready (at the first order asked for).
    ready: AtomicBool,
    /// The attempt of the step ordered last, which a share answers.
    attempt: AtomicU64,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").field("leader", &self.conn.peer).finish_non_exhaustive()
    }
}

impl Follower {
    /// Connects to the leader at `address` (each address it resolves to, in turn) and says
    /// hello.
    pub fn connect(address: &str, hello: &Hello, stop: Box<dyn Fn() -> bool + Send + Sync>) -> std::io::Result<Self> {
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, format!("{address} resolves to no address"));
        for target in address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&target, CONNECT) {
                Ok(stream) => {
                    let conn = Conn::new(stream, address.to_string())?;
                    let bytes = serde_json::to_vec(hello).map_err(std::io::Error::other)?;
                    conn.send(&Frame::Hello(bytes))?;
                    return Ok(Self { conn, stop, ready: AtomicBool::new(false), attempt: AtomicU64::new(0) });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn gone(&self, why: std::io::Error) -> OpError {
        let what = match why.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!("silent for {} s", SILENCE.as_secs()),
            std::io::ErrorKind::UnexpectedEof => "it closed the connection".to_string(),
            _ => why.to_string(),
        };
        OpError::Execution(format!("lost the gang's leader at {}: {what}", self.conn.peer))
    }
}

impl Gang for Follower {
    fn role(&self) -> GangRole<'_> {
        GangRole::Follower(self)
    }
}

impl GangFollower for Follower {
    fn next(&self) -> Result<Order> {
        if !self.ready.swap(true, Ordering::Relaxed) {
            self.conn.send(&Frame::Ready).map_err(|e| self.gone(e))?;
        }
        loop {
            let frame = match self.conn.receive_unless(&*self.stop) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Err(OpError::Execution("stopped".into())),
                received => received.map_err(|e| self.gone(e))?,
            };
            return match frame {
                Frame::State(bytes) => Ok(Order::State(bytes)),
                Frame::Step { step, attempt, rank, size } => {
                    self.attempt.store(attempt, Ordering::Relaxed);
                    Ok(Order::Step { step, rank: rank as usize, size: size as usize })
                }
                Frame::Sums { values, scalars } => Ok(Order::Sums { values, scalars }),
                Frame::Done => Ok(Order::Done),
                Frame::Refused(why) => Err(OpError::Execution(format!("the gang's leader refused this worker: {why}"))),
                Frame::Hello(_) | Frame::Ready | Frame::Beat | Frame::Share { .. } => continue,
            };
        }
    }

    fn send(&self, values: &[f32], scalars: &[f64]) -> Result<()> {
        let attempt = self.attempt.load(Ordering::Relaxed);
        self.conn.send(&Frame::Share { attempt, values: values.to_vec(), scalars: scalars.to_vec() }).map_err(|e| self.gone(e))
    }
}

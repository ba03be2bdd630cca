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
#[derive(Debug)]
pub struct Follower {
    conn: Conn,
    /// Whether the leader was told this worker is ready (at the first order asked for).
    ready: AtomicBool,
    /// The attempt of the step ordered last, which a share answers.
    attempt: AtomicU64,
}

impl Follower {
    /// Connects to the leader at `address` and says hello.
    pub fn connect(address: &str, hello: &Hello) -> std::io::Result<Self> {
        let target = address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{address} resolves to no address")))?;
        let conn = Conn::new(TcpStream::connect_timeout(&target, CONNECT)?, address.to_string())?;
        let bytes = serde_json::to_vec(hello).map_err(std::io::Error::other)?;
        conn.send(&Frame::Hello(bytes))?;
        Ok(Self { conn, ready: AtomicBool::new(false), attempt: AtomicU64::new(0) })
    }

    fn gone(&self, why: impl std::fmt::Display) -> OpError {
        OpError::Execution(format!(
            "the gang's leader at {} is gone ({why}; a peer silent for {} s counts as gone)",
            self.conn.peer,
            SILENCE.as_secs()
        ))
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
            return match self.conn.receive().map_err(|e| self.gone(e))? {
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

//! The leader's end of a gang: it listens for workers that want to join, admits them at the
//! step boundaries the operator picks, tells each its rank before every step, and sums the
//! shares in rank order.
//!
//! Every admitted follower has a reader thread that takes its frames as they come, so no
//! follower's upload waits for another's to be read; the sums are still taken in rank order.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use unoflow_api::Result;
use unoflow_api::gang::{Gang, GangLeader, GangRole};

use super::wire::{Conn, Frame, SILENCE};
use crate::workspace::PeerSpan;

/// What a gang's leader must know before it listens.
#[derive(Clone)]
pub struct Charter {
    pub fingerprint: String,
    pub unit: usize,
    /// The unit's key: a follower must have cut the same rows.
    pub unit_key: String,
    /// The secret joining workers present (from the gang's record in the workspace).
    pub token: String,
    /// How many other workers to wait for at the start (workers started together).
    pub expected: usize,
}

impl std::fmt::Debug for Charter {
    // The token is left out: it is the key to the gang.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charter")
            .field("fingerprint", &self.fingerprint)
            .field("unit", &self.unit)
            .field("expected", &self.expected)
            .finish()
    }
}

/// The peers of a gang now, for its record.
#[derive(Debug, Clone, PartialEq)]
pub struct Roster {
    pub peers: Vec<String>,
    pub step: u64,
    /// The most peers the gang takes (known once the operator said).
    pub max_peers: Option<usize>,
}

/// An admitted follower: its connection and the frames its reader thread took.
struct Member {
    conn: Arc<Conn>,
    frames: Receiver<std::io::Result<Frame>>,
    /// Admitted since its last share: its first step also loads the state it was sent.
    fresh: bool,
}

/// How long past the leader's own share a follower's may come: its heartbeats only say that
/// its process lives, not that its computation moves. Three times the leader's time (a
/// follower never has more micro-batches than rank 0) and the silence limit.
fn share_deadline(own: Duration) -> Duration {
    own * 3 + SILENCE
}

/// The extra time a follower has for the first share after it joined (it loads the state).
const JOIN_GRACE: Duration = Duration::from_secs(300);

impl Member {
    fn new(conn: Conn) -> std::io::Result<Self> {
        let conn = Arc::new(conn);
        let (tx, frames) = channel();
        let reader = Arc::clone(&conn);
        std::thread::Builder::new().name("gang-read".into()).spawn(move || {
            loop {
                let frame = reader.receive();
                let failed = frame.is_err();
                if tx.send(frame).is_err() || failed {
                    break;
                }
            }
        })?;
        Ok(Self { conn, frames, fresh: true })
    }

    /// The share of attempt `attempt`, if the follower sends one of the right lengths by
    /// `deadline`.
    fn share(&self, attempt: u64, values: usize, scalars: usize, deadline: Instant) -> Option<(Vec<f32>, Vec<f64>)> {
        loop {
            match self.frames.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.conn.send(&Frame::Refused("no share in time: the gang goes on without this worker".into()));
                    return None;
                }
                // A share of an earlier attempt at the step, sent before the new order came.
                Ok(Ok(Frame::Share { attempt: a, .. })) if a != attempt => continue,
                Ok(Ok(Frame::Share { values: v, scalars: s, .. })) if v.len() == values && s.len() == scalars => return Some((v, s)),
                Ok(Ok(Frame::Share { values: v, .. })) => {
                    let _ = self.conn.send(&Frame::Refused(format!("a share of {} values, not {values}", v.len())));
                    return None;
                }
                _ => return None,
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Ends the reader thread, which holds the connection too.
        self.conn.shutdown();
    }
}

/// The leader's end.
pub struct Leader {
    charter: Charter,
    /// The followers, in rank order (rank k + 1).
    members: Mutex<Vec<Member>>,
    /// Workers that said hello and are ready, waiting to be admitted.
    waiting: Arc<Mutex<Vec<Conn>>>,
    /// The most peers, once the operator said (0 until then); greeted workers beyond it are
    /// refused at once.
    max_peers: Arc<AtomicUsize>,
    /// The step begun last, its attempt, and when.
    current: Mutex<(u64, u64, Instant)>,
    attempts: AtomicU64,
    spans: Mutex<Vec<PeerSpan>>,
    closed: Arc<AtomicBool>,
    /// Told whenever the gang's peers change (to rewrite the gang's record).
    on_change: Box<dyn Fn(Roster) + Send + Sync>,
    /// This worker's id (the first peer).
    pub id: String,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader").field("charter", &self.charter).field("id", &self.id).finish_non_exhaustive()
    }
}

impl Leader {
    /// Starts listening on `listener` for workers of this charter's unit.
    pub fn start(
        listener: TcpListener,
        id: String,
        charter: Charter,
        on_change: Box<dyn Fn(Roster) + Send + Sync>,
    ) -> std::io::Result<Arc<Self>> {
        listener.set_nonblocking(true)?;
        let leader = Arc::new(Self {
            charter,
            members: Mutex::default(),
            waiting: Arc::default(),
            max_peers: Arc::default(),
            current: Mutex::new((0, 0, Instant::now())),
            attempts: AtomicU64::new(0),
            spans: Mutex::default(),
            closed: Arc::default(),
            on_change,
            id,
        });
        let (closed, waiting, max_peers, charter) =
            (Arc::clone(&leader.closed), Arc::clone(&leader.waiting), Arc::clone(&leader.max_peers), leader.charter.clone());
        std::thread::Builder::new().name("gang-accept".into()).spawn(move || {
            while !closed.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, from)) => {
                        let (waiting, max_peers, charter) = (Arc::clone(&waiting), Arc::clone(&max_peers), charter.clone());
                        let _ = std::thread::Builder::new().name("gang-hello".into()).spawn(move || {
                            if let Some(conn) = greet(stream, from.to_string(), &charter, &max_peers) {
                                waiting.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
                            }
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(25)),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })?;
        Ok(leader)
    }

    /// How many peers trained which steps.
    pub fn spans(&self) -> Vec<PeerSpan> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Ends the gang: every follower and waiting worker is told the unit is done, or, when
    /// the leader's attempt failed (`failure`), why.
    pub fn close(&self, failure: Option<&str>) {
        self.closed.store(true, Ordering::Relaxed);
        let frame = match failure {
            None => Frame::Done,
            Some(why) => Frame::Refused(format!("the leader's attempt failed ({why}); the unit is tried again")),
        };
        for member in self.members.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            let _ = member.conn.send(&frame);
        }
        for conn in self.waiting.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            let _ = conn.send(&frame);
        }
    }

    fn roster(&self, members: &[Member]) -> Roster {
        let step = self.current.lock().unwrap_or_else(PoisonError::into_inner).0;
        let max_peers = Some(self.max_peers.load(Ordering::Relaxed)).filter(|m| *m > 0);
        Roster { peers: std::iter::once(self.id.clone()).chain(members.iter().map(|m| m.conn.peer.clone())).collect(), step, max_peers }
    }

    /// Drops the followers at `lost` (indices into `members`), and says so.
    fn drop_members(&self, members: &mut Vec<Member>, lost: &[usize]) {
        for &k in lost.iter().rev() {
            members.remove(k);
        }
        (self.on_change)(self.roster(members));
    }

    /// Notes that step `step` is being computed by `peers` peers (again, with fewer, if a
    /// peer was lost during it).
    fn record_span(&self, step: u64, peers: usize) {
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = spans.last_mut()
            && last.last_step == step
        {
            // Begun again: the step belongs to the new gang.
            if last.first_step == step {
                spans.pop();
            } else {
                last.last_step -= 1;
            }
        }
        match spans.last_mut() {
            Some(last) if last.peers == peers && last.last_step + 1 == step => last.last_step = step,
            _ => spans.push(PeerSpan { first_step: step, last_step: step, peers }),
        }
    }
}

/// Reads a joining worker's hello (small, and within the connection's silence limit) and waits
/// until it is ready;
/// `None` (and the worker told why, where it can be) when it is not one of this gang's or the
/// gang is full.
fn greet(stream: TcpStream, from: String, charter: &Charter, max_peers: &AtomicUsize) -> Option<Conn> {
    let mut conn = Conn::new(stream, from).ok()?;
    let hello = conn.receive_hello().ok()?;
    let refuse = |why: String| {
        let _ = conn.send(&Frame::Refused(why));
    };
    if !same_secret(&hello.token, &charter.token) {
        refuse("a wrong token (the gang's record was rewritten: its leader changed)".into());
        return None;
    }
    if hello.fingerprint != charter.fingerprint || hello.unit != charter.unit || hello.unit_key != charter.unit_key {
        refuse(format!(
            "another node or unit: the leader trains unit {} ({}) of node {}; check that every worker runs the same unoflow \
             version and DAG",
            charter.unit, charter.unit_key, charter.fingerprint
        ));
        return None;
    }
    if max_peers.load(Ordering::Relaxed) == 1 {
        refuse("the gang is full: a step of one micro-batch is computed by one peer".into());
        return None;
    }
    conn.peer = hello.worker;
    matches!(conn.receive(), Ok(Frame::Ready)).then_some(conn)
}

/// Compares two secrets in a time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Gang for Leader {
    fn role(&self) -> GangRole<'_> {
        GangRole::Leader(self)
    }
}

impl GangLeader for Leader {
    fn admit(&self, wait: Duration, max_peers: usize, state: &mut dyn FnMut() -> Result<Vec<u8>>) -> Result<usize> {
        let first = self.max_peers.swap(max_peers.max(1), Ordering::Relaxed) == 0;
        let deadline = Instant::now() + wait;
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        if first {
            // Published only now, when the training runs: a worker never joins a leader that
            // is not training yet (one waiting for its own process's other work).
            (self.on_change)(self.roster(&members));
        }
        let room = max_peers.saturating_sub(1 + members.len());
        let wanted = room.min(self.charter.expected.saturating_sub(members.len()));
        while Instant::now() < deadline && self.waiting.lock().unwrap_or_else(PoisonError::into_inner).len() < wanted {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut joining: Vec<Conn> = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        for extra in joining.drain(room.min(joining.len())..) {
            let _ = extra.send(&Frame::Refused(format!("the gang is full ({max_peers} peers: one per micro-batch of a step)")));
        }
        let joined = !joining.is_empty();
        if joined {
            let frame = Frame::State(state()?);
            for conn in joining {
                if conn.send(&frame).is_ok()
                    && let Ok(member) = Member::new(conn)
                {
                    members.push(member);
                }
            }
        }
        if joined {
            (self.on_change)(self.roster(&members));
        }
        Ok(1 + members.len())
    }

    fn begin_step(&self, step: u64) -> usize {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let attempt = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
            let size = 1 + members.len();
            let lost: Vec<usize> = (0..members.len())
                .filter(|&k| members[k].conn.send(&Frame::Step { step, attempt, rank: k as u32 + 1, size: size as u32 }).is_err())
                .collect();
            if lost.is_empty() {
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = (step, attempt, Instant::now());
                self.record_span(step, size);
                return size;
            }
            // Ranks changed: every follower is told again (a follower drops an order it got
            // before a newer one).
            self.drop_members(&mut members, &lost);
        }
    }

    fn all_reduce(&self, values: &mut [f32], scalars: &mut [f64]) -> bool {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, attempt, begun) = *self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + share_deadline(begun.elapsed());
        for k in 0..members.len() {
            let by = if members[k].fresh { deadline + JOIN_GRACE } else { deadline };
            let Some((v, s)) = members[k].share(attempt, values.len(), scalars.len(), by) else {
                self.drop_members(&mut members, &[k]);
                return false;
            };
            members[k].fresh = false;
            // Rank order: the sums are the same bytes whatever the order the shares came in.
            for (sum, x) in values.iter_mut().zip(&v) {
                *sum += x;
            }
            for (sum, x) in scalars.iter_mut().zip(&s) {
                *sum += x;
            }
        }
        let frame = Frame::Sums { values: values.to_vec(), scalars: scalars.to_vec() };
        let lost: Vec<usize> = (0..members.len()).filter(|&k| members[k].conn.send(&frame).is_err()).collect();
        if !lost.is_empty() {
            // They are gone; the others and this peer have the sums.
            self.drop_members(&mut members, &lost);
        }
        true
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Relaxed) {
            self.close(Some("it stopped"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd") && !same_secret("abc", "ab") && !same_secret("", "a"));
    }
}

//! The leader's end of a gang: it listens for workers that want to join, admits them at the
//! step boundaries the operator picks, tells each its rank before every step, and sums the
//! shares in rank order.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use unoflow_api::Result;
use unoflow_api::gang::{Gang, GangLeader, GangRole};

use super::wire::{Conn, Frame, Hello};
use crate::workspace::PeerSpan;

/// What a gang's leader must know before it listens.
#[derive(Debug, Clone)]
pub struct Charter {
    pub fingerprint: String,
    pub unit: usize,
    /// The secret joining workers present (from the gang's record in the workspace).
    pub token: String,
    /// How many other workers to wait for at the start (workers started together).
    pub expected: usize,
}

/// The peers of a gang now, for its record.
#[derive(Debug, Clone, PartialEq)]
pub struct Roster {
    pub peers: Vec<String>,
    pub step: u64,
}

/// The leader's end.
pub struct Leader {
    charter: Charter,
    /// The followers, in rank order (rank k + 1).
    members: Mutex<Vec<Conn>>,
    /// Workers that said hello and are ready, waiting to be admitted.
    waiting: Arc<Mutex<Vec<Conn>>>,
    /// The step begun last, its attempt and the gang's size then.
    current: Mutex<(u64, u64, usize)>,
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
            current: Mutex::new((0, 0, 1)),
            attempts: AtomicU64::new(0),
            spans: Mutex::default(),
            closed: Arc::default(),
            on_change,
            id,
        });
        let (closed, waiting, charter) = (Arc::clone(&leader.closed), Arc::clone(&leader.waiting), leader.charter.clone());
        std::thread::Builder::new().name("gang-accept".into()).spawn(move || {
            while !closed.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, from)) => {
                        let (waiting, charter) = (Arc::clone(&waiting), charter.clone());
                        let _ = std::thread::Builder::new().name("gang-hello".into()).spawn(move || {
                            if let Some(conn) = greet(stream, from.to_string(), &charter) {
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

    /// Ends the gang: every follower and waiting worker is told the unit is done.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        for conn in self.members.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            let _ = conn.send(&Frame::Done);
        }
        for conn in self.waiting.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            let _ = conn.send(&Frame::Done);
        }
    }

    fn roster(&self, members: &[Conn]) -> Roster {
        let step = self.current.lock().unwrap_or_else(PoisonError::into_inner).0;
        Roster { peers: std::iter::once(self.id.clone()).chain(members.iter().map(|m| m.peer.clone())).collect(), step }
    }

    /// Drops the followers at `lost` (indices into `members`), and says so.
    fn drop_members(&self, members: &mut Vec<Conn>, lost: &[usize]) {
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

/// Reads a joining worker's hello and waits until it is ready; `None` (and the worker told
/// why, where it can be) when it is not one of this gang's.
fn greet(stream: TcpStream, from: String, charter: &Charter) -> Option<Conn> {
    let mut conn = Conn::new(stream, from).ok()?;
    let Ok(Frame::Hello(bytes)) = conn.receive() else { return None };
    let hello: Hello = serde_json::from_slice(&bytes).ok()?;
    if hello.token != charter.token || hello.fingerprint != charter.fingerprint || hello.unit != charter.unit {
        let _ = conn.send(&Frame::Refused("not this gang (another node, unit or workspace)".into()));
        return None;
    }
    conn.peer = hello.worker;
    matches!(conn.receive(), Ok(Frame::Ready)).then_some(conn)
}

impl Gang for Leader {
    fn role(&self) -> GangRole<'_> {
        GangRole::Leader(self)
    }
}

impl GangLeader for Leader {
    fn admit(&self, wait: Duration, max_peers: usize, state: &mut dyn FnMut() -> Result<Vec<u8>>) -> Result<usize> {
        let deadline = Instant::now() + wait;
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let room = max_peers.saturating_sub(1 + members.len());
        let wanted = room.min(self.charter.expected.saturating_sub(members.len()));
        while Instant::now() < deadline && self.waiting.lock().unwrap_or_else(PoisonError::into_inner).len() < wanted {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut joining: Vec<Conn> = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        for extra in joining.drain(room.min(joining.len())..) {
            let _ = extra.send(&Frame::Refused(format!("the gang is full ({max_peers} peers: one per micro-batch of a step)")));
        }
        if !joining.is_empty() {
            let bytes = state()?;
            let frame = Frame::State(bytes);
            members.extend(joining.into_iter().filter(|conn| conn.send(&frame).is_ok()));
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
                .filter(|&k| members[k].send(&Frame::Step { step, attempt, rank: k as u32 + 1, size: size as u32 }).is_err())
                .collect();
            if lost.is_empty() {
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = (step, attempt, size);
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
        let (_, attempt, _) = *self.current.lock().unwrap_or_else(PoisonError::into_inner);
        for k in 0..members.len() {
            let share = loop {
                match members[k].receive() {
                    // A share of an earlier attempt at the step, sent before the new order came.
                    Ok(Frame::Share { attempt: a, .. }) if a != attempt => continue,
                    Ok(Frame::Share { values: v, scalars: s, .. }) if v.len() == values.len() && s.len() == scalars.len() => {
                        break Some((v, s));
                    }
                    _ => break None,
                }
            };
            let Some((v, s)) = share else {
                self.drop_members(&mut members, &[k]);
                return false;
            };
            // Rank order: the sums are the same bytes whatever the order the shares came in.
            for (sum, x) in values.iter_mut().zip(&v) {
                *sum += x;
            }
            for (sum, x) in scalars.iter_mut().zip(&s) {
                *sum += x;
            }
        }
        let frame = Frame::Sums { values: values.to_vec(), scalars: scalars.to_vec() };
        let lost: Vec<usize> = (0..members.len()).filter(|&k| members[k].send(&frame).is_err()).collect();
        if !lost.is_empty() {
            // They are gone; the others and this peer have the sums.
            self.drop_members(&mut members, &lost);
        }
        true
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.close();
    }
}

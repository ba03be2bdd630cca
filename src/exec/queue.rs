//! The order in which a worker asks for the units of a node, and what it does about the units
//! other workers hold. The policy only: it makes no request itself (see `exec::units`, which
//! asks the store what it says and tells it the answers), so it is tested without a store.
//!
//! A worker asks first for its own units (their keys hash to its rank, so workers started
//! together rarely ask for the same unit), in order. Then it turns to the other units, from a
//! point that depends on its rank (so workers that finish early spread over what is left
//! instead of queueing behind each other), a window at a time: each window is first checked
//! against the commits (one listing), and only the units without one are asked for. A unit
//! another worker holds is put aside until its lease could be taken over, and looked up again
//! (is it committed?) every poll, the poll growing from [`MIN_POLL_MS`] to the worker's poll
//! interval while nothing changes. After `give_up` held units in a row the rest are most likely
//! held too: the worker pauses for a poll instead of asking for them one by one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The first wait for units others hold; it doubles up to the worker's poll interval while
/// nothing changes, so short units are noticed quickly and long waits cost few requests.
pub const MIN_POLL_MS: i64 = 25;

/// Up to how many units put aside are looked up quickly again after one of them was committed.
const FEW: usize = 32;

/// How many of the other workers' units are checked against the commits at once where a
/// listing can start at a key (one page of an object-store listing); elsewhere all are, by one
/// listing.
pub const WINDOW: usize = 1000;

/// What a worker should do next for a node's units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Ask for this unit (claim it, or start it when the worker is alone).
    Ask(usize),
    /// Look up which of these units have a commit and which others hold, then tell
    /// [`UnitQueue::checked`].
    Check(Vec<usize>),
    /// Look up which of these units, put aside as held by others, have a commit now, then tell
    /// [`UnitQueue::checked`] (when their leases may be taken over is known already).
    Recheck(Vec<usize>),
    /// Nothing to ask for before this time (Unix ms), unless a unit of this worker ends.
    Wait(i64),
    /// Every unit was asked for or found committed.
    Empty,
}

/// The units of a node a worker has not seen committed yet, in the order it asks for them.
#[derive(Debug)]
pub struct UnitQueue {
    /// To ask for now, in order.
    ready: VecDeque<usize>,
    /// The other workers' first choices, in the order to ask, not yet checked for commits.
    unchecked: VecDeque<usize>,
    /// Held by another worker: when its lease may be taken over if not renewed (Unix ms).
    deferred: BTreeMap<usize, i64>,
    held_in_a_row: usize,
    give_up: usize,
    /// How many of `unchecked` are checked at once.
    window: usize,
    /// Whether this worker's own units were all asked for (it turned to the others').
    turned: bool,
    /// When the units in `ready` from the others' were last checked against the commits.
    checked_at: i64,
    /// No asking before this (after `give_up` held units in a row).
    paused_until: i64,
    /// When the units put aside are looked up next, and the poll now.
    next_poll_at: i64,
    poll_ms: i64,
    max_poll_ms: i64,
}

impl UnitQueue {
    /// A worker alone in its workspace: every unit, in order, nothing to claim.
    pub fn alone(units: impl IntoIterator<Item = usize>) -> Self {
        Self::with(units.into_iter().collect(), VecDeque::new(), 1, 0)
    }

    /// A worker among others: `units` are the node's units not known to be committed, each
    /// with whether it is this worker's first choice; `total` is the node's unit count and
    /// `start` where this worker begins among the others' units (by rank), `window` how many of
    /// them are checked at once. `give_up` held units in a row pause the asking for
    /// `max_poll_ms`.
    pub fn shared(
        units: impl IntoIterator<Item = (usize, bool)>,
        total: usize,
        start: usize,
        window: usize,
        give_up: usize,
        max_poll_ms: i64,
    ) -> Self {
        let (mut own, mut others) = (VecDeque::new(), Vec::new());
        for (unit, first_choice) in units {
            if first_choice { own.push_back(unit) } else { others.push(unit) }
        }
        let n = total.max(1);
        others.sort_by_key(|u| (u + n - start % n) % n);
        Self { window: window.max(1), ..Self::with(own, others.into(), give_up, max_poll_ms) }
    }

    fn with(ready: VecDeque<usize>, unchecked: VecDeque<usize>, give_up: usize, max_poll_ms: i64) -> Self {
        Self {
            ready,
            unchecked,
            deferred: BTreeMap::new(),
            held_in_a_row: 0,
            give_up: give_up.max(1),
            window: usize::MAX,
            turned: false,
            checked_at: 0,
            paused_until: 0,
            next_poll_at: 0,
            poll_ms: MIN_POLL_MS,
            max_poll_ms: max_poll_ms.max(MIN_POLL_MS),
        }
    }

    /// What to do now (`now` in Unix ms).
    pub fn next(&mut self, now: i64) -> Next {
        if now < self.paused_until {
            return Next::Wait(self.paused_until);
        }
        if let Some(unit) = self.ready.pop_front() {
            return Next::Ask(unit);
        }
        if !self.unchecked.is_empty() {
            self.turned = true;
            let take = self.window.min(self.unchecked.len());
            return Next::Check(self.unchecked.drain(..take).collect());
        }
        let Some(&first_due) = self.deferred.values().min() else { return Next::Empty };
        if now >= self.next_poll_at || now >= first_due {
            // Many units put aside take a listing to look up: only at the slower poll.
            if self.deferred.len() > FEW {
                self.poll_ms = self.max_poll_ms;
            }
            self.next_poll_at = now + self.poll_ms;
            self.poll_ms = (self.poll_ms * 2).min(self.max_poll_ms);
            return Next::Recheck(self.deferred.keys().copied().collect());
        }
        Next::Wait(self.next_poll_at.min(first_due))
    }

    /// The answer to a [`Next::Check`]: which of `units` have a commit, and which others hold
    /// (when their lease may be taken over, if known). The rest are asked for; those held, once
    /// their lease may be taken over.
    pub fn checked(&mut self, units: &[usize], committed: &BTreeSet<usize>, held: &BTreeMap<usize, i64>, now: i64) {
        self.checked_at = now;
        let mut news = false;
        for &unit in units {
            if committed.contains(&unit) {
                news |= self.deferred.remove(&unit).is_some();
                continue;
            }
            let put_aside = match held.get(&unit) {
                Some(&due) if due > now => Some(*self.deferred.entry(unit).and_modify(|d| *d = due).or_insert(due)),
                _ => self.deferred.get(&unit).copied(),
            };
            match put_aside {
                Some(due) if due > now => {}
                Some(_) => {
                    self.deferred.remove(&unit);
                    self.ready.push_back(unit);
                    news = true;
                }
                None => self.ready.push_back(unit),
            }
        }
        // Waiting for a few units, look again soon after one is committed (the others may
        // follow); waiting for many, keep to the slower poll (each look is a listing).
        if news && self.deferred.len() <= FEW {
            self.poll_ms = MIN_POLL_MS;
        }
    }

    /// The unit asked for was claimed.
    pub fn claimed(&mut self) {
        self.held_in_a_row = 0;
    }

    /// The unit asked for is held by another worker, whose lease may be taken over at
    /// `retry_at` (Unix ms) if not renewed.
    ///
    /// Held units in a row mean the units waiting to be asked for were committed or claimed
    /// since they were checked (a lease stays until its node is complete): those are checked
    /// again, one listing instead of two requests each; if they were checked just now, they are
    /// claimed by others, and the asking pauses for a poll.
    pub fn held(&mut self, unit: usize, retry_at: i64, now: i64) {
        self.deferred.insert(unit, retry_at);
        // Among its own units a worker finds only those others took over early: each is asked
        // for once, which costs less than a listing.
        if !self.turned {
            return;
        }
        self.held_in_a_row += 1;
        if self.held_in_a_row < self.give_up {
            return;
        }
        self.held_in_a_row = 0;
        if now - self.checked_at < self.max_poll_ms {
            self.paused_until = now + self.max_poll_ms;
        } else {
            while let Some(unit) = self.ready.pop_back() {
                self.unchecked.push_front(unit);
            }
        }
    }

    /// An attempt at the unit failed; it is asked for again (by this or another worker).
    pub fn retry(&mut self, unit: usize) {
        self.ready.push_back(unit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The units asked for in a row (each claimed), and what came after them.
    fn asks(queue: &mut UnitQueue, now: i64) -> (Vec<usize>, Next) {
        let mut out = Vec::new();
        loop {
            match queue.next(now) {
                Next::Ask(unit) => {
                    queue.claimed();
                    out.push(unit);
                }
                next => return (out, next),
            }
        }
    }

    #[test]
    fn alone_every_unit_is_asked_for_in_order() {
        let mut queue = UnitQueue::alone([0, 1, 2]);
        assert_eq!(asks(&mut queue, 0), (vec![0, 1, 2], Next::Empty));
    }

    #[test]
    fn own_units_first_then_the_others_from_the_ranks_start_after_a_check() {
        // Units 0..10; this worker's own are 2 and 7; it starts among the others at 5.
        let mut queue = UnitQueue::shared((0..10).map(|u| (u, u == 2 || u == 7)), 10, 5, WINDOW, 4, 1000);
        let window = vec![5, 6, 8, 9, 0, 1, 3, 4];
        assert_eq!(asks(&mut queue, 0), (vec![2, 7], Next::Check(window.clone())));
        queue.checked(&window, &BTreeSet::from([5, 6, 0]), &BTreeMap::new(), 0);
        assert_eq!(asks(&mut queue, 0), (vec![8, 9, 1, 3, 4], Next::Empty));
    }

    #[test]
    fn a_held_unit_is_looked_up_every_poll_and_asked_again_once_its_lease_may_be_taken_over() {
        let mut queue = UnitQueue::shared([(4, true)], 1, 0, WINDOW, 10, 1000);
        assert_eq!(queue.next(0), Next::Ask(4));
        queue.held(4, 1_000, 0);
        // Looked up at once, then after polls that double while nothing changes.
        assert_eq!(queue.next(0), Next::Recheck(vec![4]));
        queue.checked(&[4], &BTreeSet::new(), &BTreeMap::new(), 0);
        assert_eq!(queue.next(0), Next::Wait(MIN_POLL_MS));
        assert_eq!(queue.next(MIN_POLL_MS), Next::Recheck(vec![4]));
        queue.checked(&[4], &BTreeSet::new(), &BTreeMap::new(), MIN_POLL_MS);
        assert_eq!(queue.next(MIN_POLL_MS), Next::Wait(3 * MIN_POLL_MS));
        // Past the lease: asked for again (to take it over).
        assert_eq!(queue.next(1_000), Next::Recheck(vec![4]));
        queue.checked(&[4], &BTreeSet::new(), &BTreeMap::new(), 1_000);
        assert_eq!(queue.next(1_000), Next::Ask(4));
        // Held again, then found committed: nothing left.
        queue.held(4, 2_000, 1_000);
        assert_eq!(queue.next(1_000), Next::Wait(1_000 + 4 * MIN_POLL_MS));
        assert_eq!(queue.next(1_100), Next::Recheck(vec![4]));
        queue.checked(&[4], &BTreeSet::from([4]), &BTreeMap::new(), 1_100);
        assert_eq!(queue.next(1_100), Next::Empty);
    }

    #[test]
    fn after_give_up_held_units_in_a_row_the_rest_is_checked_again_or_asking_pauses() {
        let mut queue = UnitQueue::shared((0..6).map(|u| (u, false)), 6, 0, WINDOW, 2, 300);
        assert_eq!(queue.next(0), Next::Check(vec![0, 1, 2, 3, 4, 5]));
        queue.checked(&[0, 1, 2, 3, 4, 5], &BTreeSet::new(), &BTreeMap::new(), 0);
        // Checked a while ago: the rest is checked again before it is asked for.
        assert_eq!(queue.next(1_000), Next::Ask(0));
        queue.held(0, 9_000, 1_000);
        assert_eq!(queue.next(1_000), Next::Ask(1));
        queue.held(1, 9_000, 1_000);
        assert_eq!(queue.next(1_000), Next::Check(vec![2, 3, 4, 5]));
        queue.checked(&[2, 3, 4, 5], &BTreeSet::from([2]), &BTreeMap::new(), 1_000);
        // Checked just now and still held: the asking pauses for a poll.
        assert_eq!(queue.next(1_000), Next::Ask(3));
        queue.held(3, 9_000, 1_000);
        assert_eq!(queue.next(1_000), Next::Ask(4));
        queue.held(4, 9_000, 1_010);
        assert_eq!(queue.next(1_020), Next::Wait(1_310));
        assert_eq!(queue.next(1_310), Next::Ask(5));
    }

    #[test]
    fn own_units_others_took_are_each_asked_for_once_without_a_pause() {
        let mut queue = UnitQueue::shared((0..4).map(|u| (u, true)), 4, 0, WINDOW, 2, 300);
        for unit in 0..4 {
            assert_eq!(queue.next(0), Next::Ask(unit));
            queue.held(unit, 9_000, 0);
        }
        assert_eq!(queue.next(0), Next::Recheck(vec![0, 1, 2, 3]));
    }

    #[test]
    fn units_others_hold_are_put_aside_by_the_check_not_asked_for() {
        let mut queue = UnitQueue::shared((0..4).map(|u| (u, false)), 4, 0, WINDOW, 4, 1000);
        assert_eq!(queue.next(0), Next::Check(vec![0, 1, 2, 3]));
        // 1 is committed, 2 held until 500, 3's lease lapsed at -1.
        queue.checked(&[0, 1, 2, 3], &BTreeSet::from([1]), &BTreeMap::from([(2, 500), (3, -1)]), 0);
        assert_eq!(asks(&mut queue, 0), (vec![0, 3], Next::Recheck(vec![2])));
    }

    #[test]
    fn the_others_are_checked_a_window_at_a_time() {
        let n = WINDOW + 10;
        let mut queue = UnitQueue::shared((0..n).map(|u| (u, false)), n, 0, WINDOW, 4, 1000);
        let Next::Check(first) = queue.next(0) else { panic!("a check first") };
        assert_eq!(first.len(), WINDOW);
        queue.checked(&first, &first.iter().copied().collect(), &BTreeMap::new(), 0);
        assert_eq!(queue.next(0), Next::Check((WINDOW..n).collect()));
    }
}

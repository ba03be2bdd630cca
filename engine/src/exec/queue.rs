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
//!
//! At scale the cost is at the end of a node, when every worker has turned to the others'
//! units: windows that give nothing to ask for are checked more and more slowly, and a worker
//! with units put aside does not look them all up every poll (a thousand workers each
//! looking up the thousand units the others run is a million requests): one worker, the
//! watcher, does; the others look up a unit only when its lease could be taken over, and
//! otherwise watch for the node's manifest.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The first wait for units others hold; it doubles up to the worker's poll interval while
/// nothing changes, so short units are noticed quickly and long waits cost few requests.
pub const MIN_POLL_MS: i64 = 25;

/// Up to how many units put aside are looked up quickly again after one of them was committed.
const FEW: usize = 32;

/// Windows in a row with nothing to ask for after which the rest is set aside.
const IDLE_WINDOWS: usize = 2;

/// For how many of the longest polls (a poll is an eighth of a lease) units set aside unchecked
/// wait before they are looked up.
const SET_ASIDE_POLLS: i64 = 8;

/// How many of the other workers' units are checked against the commits at once where a
/// listing can start at a key (one page of an object-store listing); elsewhere all are, by one
/// listing.
pub const WINDOW: usize = 1000;

/// A unit's place in a scattered order (a bijection of `usize`, so no two units tie).
fn scattered(unit: usize) -> u64 {
    (unit as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Units put aside as held by others, each with when its lease may be taken over (Unix ms),
/// also ordered by that time: a worker asks for the first every time it looks what to do next,
/// and with thousands put aside a scan each time kept two cores busy at the end of a node.
#[derive(Debug, Default)]
struct Deferred {
    by_unit: BTreeMap<usize, i64>,
    by_due: BTreeSet<(i64, usize)>,
}

impl Deferred {
    fn insert(&mut self, unit: usize, due: i64) {
        if let Some(before) = self.by_unit.insert(unit, due) {
            self.by_due.remove(&(before, unit));
        }
        self.by_due.insert((due, unit));
    }

    fn remove(&mut self, unit: &usize) -> Option<i64> {
        let due = self.by_unit.remove(unit)?;
        self.by_due.remove(&(due, *unit));
        Some(due)
    }

    fn get(&self, unit: &usize) -> Option<&i64> {
        self.by_unit.get(unit)
    }

    fn len(&self) -> usize {
        self.by_unit.len()
    }

    fn first_due(&self) -> Option<i64> {
        self.by_due.first().map(|(due, _)| *due)
    }

    /// The units whose leases may be taken over by `now`, in unit order.
    fn due_by(&self, now: i64) -> Vec<usize> {
        let mut due: Vec<usize> = self.by_due.range(..(now.saturating_add(1), 0)).map(|(_, unit)| *unit).collect();
        due.sort_unstable();
        due
    }

    fn units(&self) -> impl Iterator<Item = usize> + '_ {
        self.by_unit.keys().copied()
    }
}

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
    /// Nothing to ask for now, and units put aside: look whether the node is complete (its
    /// manifest exists) rather than looking them all up, and tell [`UnitQueue::complete`]
    /// if it is. One worker, the watcher ([`UnitQueue::watch`]), looks them up every poll: a
    /// thousand workers each looking up the thousand units the others run would cost a
    /// million requests at the end of every node.
    Watch,
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
    deferred: Deferred,
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
    /// Whether this worker looks up all the units put aside every poll (else only those whose
    /// lease may be taken over, and it watches for the node's end).
    watcher: bool,
    /// When the next window of the others' units is checked, and the wait after a window that
    /// gave nothing to ask for (it doubles while windows give nothing).
    scan_at: i64,
    scan_poll_ms: i64,
    /// Whether the check asked for last is of a window (not a look-up of units put aside).
    checking: bool,
    /// Windows in a row that gave nothing to ask for.
    idle_windows: usize,
    /// Others' units set aside unchecked (after windows with nothing to ask for), in order, and
    /// when they come back to be checked.
    set_aside: VecDeque<usize>,
    set_aside_due: i64,
    /// Mixed into the order in which this worker asks for the units of a window.
    salt: usize,
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
        // Own units in a scattered order: the ones a worker has not reached yet are then spread
        // over the node, not bunched at its end, so a window with nothing to claim means the
        // others' units are taken (see `set_aside_unchecked`), not that their owners are behind.
        own.make_contiguous().sort_by_key(|&u| scattered(u));
        let n = total.max(1);
        others.sort_by_key(|u| (u + n - start % n) % n);
        Self { window: window.max(1), salt: scattered(start) as usize, ..Self::with(own, others.into(), give_up, max_poll_ms) }
    }

    fn with(ready: VecDeque<usize>, unchecked: VecDeque<usize>, give_up: usize, max_poll_ms: i64) -> Self {
        Self {
            ready,
            unchecked,
            deferred: Deferred::default(),
            held_in_a_row: 0,
            give_up: give_up.max(1),
            window: usize::MAX,
            turned: false,
            checked_at: 0,
            paused_until: 0,
            next_poll_at: 0,
            poll_ms: MIN_POLL_MS,
            max_poll_ms: max_poll_ms.max(MIN_POLL_MS),
            watcher: false,
            scan_at: 0,
            scan_poll_ms: MIN_POLL_MS,
            checking: false,
            idle_windows: 0,
            set_aside: VecDeque::new(),
            set_aside_due: 0,
            salt: 0,
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
        if !self.watcher && !self.unchecked.is_empty() && now >= self.scan_at {
            self.turned = true;
            self.checking = true;
            let take = self.window.min(self.unchecked.len());
            return Next::Check(self.unchecked.drain(..take).collect());
        }
        let scan_at = (!self.unchecked.is_empty() && !self.watcher).then_some(self.scan_at);
        let first_due = self.deferred.first_due();
        let unseen = if self.watcher { self.unchecked.len() } else { 0 };
        if first_due.is_none() && self.set_aside.is_empty() && unseen == 0 {
            return scan_at.map_or(Next::Empty, Next::Wait);
        }
        let first_due = first_due.unwrap_or(i64::MAX);
        if self.watcher {
            if now >= self.next_poll_at || now >= first_due {
                // Many units take listings to look up: only at the slower poll.
                if self.deferred.len() + self.set_aside.len() + self.unchecked.len() > FEW {
                    self.poll_ms = self.max_poll_ms;
                }
                self.next_poll_at = now + self.poll_ms;
                self.poll_ms = (self.poll_ms * 2).min(self.max_poll_ms);
                // The watcher must see every unit committed, and finds the unclaimed ones for
                // the others (see `offer`): it looks up every unit it has not seen committed,
                // commits and leases, at once (listings of the runs they make).
                let mut units: Vec<usize> = self.set_aside.drain(..).chain(self.unchecked.drain(..)).collect();
                units.extend(self.deferred.units());
                return Next::Check(units);
            }
        } else if now >= first_due {
            return Next::Recheck(self.deferred.due_by(now));
        } else if !self.set_aside.is_empty() && now >= self.set_aside_due {
            // Back to the windows: the node took longer than the others' checks.
            self.unchecked.extend(self.set_aside.drain(..));
            self.idle_windows = 0;
            self.scan_at = now;
            return self.next(now);
        } else if now >= self.next_poll_at {
            self.next_poll_at = now + self.poll_ms;
            self.poll_ms = (self.poll_ms * 2).min(self.max_poll_ms);
            return Next::Watch;
        }
        let set_aside_due = if self.set_aside.is_empty() || self.watcher { i64::MAX } else { self.set_aside_due };
        Next::Wait(self.next_poll_at.min(first_due).min(scan_at.unwrap_or(i64::MAX)).min(set_aside_due))
    }

    /// This worker becomes the node's watcher: it looks up every unit put aside each poll, and
    /// so sees first when the node is complete.
    pub fn watch(&mut self) {
        self.watcher = true;
        self.next_poll_at = 0;
    }

    /// The answer to a [`Next::Watch`] that found the node complete: every unit this worker
    /// did not see committed was committed by others. Returns them; the queue is empty then.
    pub fn complete(&mut self) -> Vec<usize> {
        let mut rest: Vec<usize> = std::mem::take(&mut self.deferred).units().collect();
        rest.extend(self.unchecked.drain(..));
        rest.extend(self.set_aside.drain(..));
        rest.extend(self.ready.drain(..));
        rest
    }

    /// The answer to a [`Next::Check`]: which of `units` have a commit, and which others hold
    /// (when their lease may be taken over, if known). The rest are asked for; those held, once
    /// their lease may be taken over.
    pub fn checked(&mut self, units: &[usize], committed: &BTreeSet<usize>, held: &BTreeMap<usize, i64>, now: i64) {
        self.checked_at = now;
        let (window, ready_before) = (std::mem::take(&mut self.checking), self.ready.len());
        let mut news = false;
        for &unit in units {
            if committed.contains(&unit) {
                news |= self.deferred.remove(&unit).is_some();
                continue;
            }
            let put_aside = match held.get(&unit) {
                Some(&due) if due > now => {
                    self.deferred.insert(unit, due);
                    Some(due)
                }
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
        // The watcher waiting for a few units looks again soon after one is committed (the
        // others may follow); waiting for many, it keeps to the slower poll (each look is a
        // listing). The others' polls are for the watcher's report and the manifest, which
        // a commit they saw does not bring sooner: a thousand workers polling every 25 ms at
        // the end of a node would swamp the store (and, in one process, its host).
        if news && self.watcher && self.deferred.len() <= FEW {
            self.poll_ms = MIN_POLL_MS;
        }
        // Of a window, only what this worker will ask for soon stays ready: the rest would be
        // stale (claimed by others meanwhile) by the time its turn came, and is checked again
        // then, one listing for all of it, instead of failing claims that each force a check.
        // Which units those are follows an order of this worker's own, so that workers checking
        // the same window at once (neighbours in rank start close together) ask for different
        // units, not all for the first few.
        let keep = ready_before + self.give_up * 4;
        if window && self.ready.len() > keep {
            let salt = self.salt;
            self.ready.make_contiguous()[ready_before..].sort_by_key(|&u| scattered(u ^ salt));
            for unit in self.ready.drain(keep..).rev() {
                self.unchecked.push_front(unit);
            }
        }
        // A window that gave nothing to ask for: the others' units are taken as fast as they
        // are checked, so the next window waits (a little longer each time it gives nothing).
        if window && self.ready.len() == ready_before {
            self.scan_at = now + self.scan_poll_ms;
            self.scan_poll_ms = (self.scan_poll_ms * 2).min(self.max_poll_ms);
            self.idle_windows += 1;
            if self.idle_windows >= IDLE_WINDOWS {
                self.set_aside_unchecked(now);
            }
        } else if window {
            self.scan_poll_ms = MIN_POLL_MS;
            self.idle_windows = 0;
        }
    }

    /// Puts the units not checked yet aside for about a lease: windows in a row with nothing
    /// to ask for mean the others' units are all taken (workers started at other points check
    /// these), and a thousand workers each checking every window cost a listing per thousand
    /// units each. They come back to the windows if the node is not complete by then (a worker
    /// that died before claiming its units leaves them to those checks); the watcher checks
    /// them at once.
    fn set_aside_unchecked(&mut self, now: i64) {
        self.set_aside.extend(self.unchecked.drain(..));
        self.set_aside_due = now + SET_ASIDE_POLLS * self.max_poll_ms;
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

    /// Whether this worker is the node's watcher.
    pub fn is_watcher(&self) -> bool {
        self.watcher
    }

    /// The watcher's units to ask for (those it found neither committed nor held), offered to
    /// the workers with nothing to do, who otherwise find them only when the windows they set
    /// aside come back: up to `most` go in the offer, and the watcher keeps to ask for only
    /// its own share of them (`share`); the rest it looks up again at its next poll.
    pub fn offer(&mut self, most: usize, share: impl Fn(&[usize]) -> BTreeSet<usize>) -> Vec<usize> {
        let offered: Vec<usize> = self.ready.iter().take(most).copied().collect();
        let own = share(&offered);
        let (keep, rest): (VecDeque<usize>, VecDeque<usize>) = self.ready.drain(..).partition(|u| own.contains(u));
        self.ready = keep;
        self.set_aside.extend(rest);
        offered
    }

    /// Units the watcher offered this worker (its share of those it found unclaimed): asked
    /// for next. An offer may be stale; the claim decides.
    pub fn take_offered(&mut self, units: impl IntoIterator<Item = usize>) {
        for unit in units {
            if !self.ready.contains(&unit) {
                self.deferred.remove(&unit);
                self.ready.push_back(unit);
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
        let (mut own, next) = asks(&mut queue, 0);
        own.sort_unstable();
        assert_eq!((own, next), (vec![2, 7], Next::Check(window.clone())));
        queue.checked(&window, &BTreeSet::from([5, 6, 0]), &BTreeMap::new(), 0);
        assert_eq!(asks(&mut queue, 0), (vec![8, 9, 1, 3, 4], Next::Empty));
    }

    #[test]
    fn the_watcher_looks_up_a_held_unit_every_poll_and_asks_again_once_its_lease_may_be_taken_over() {
        let mut queue = UnitQueue::shared([(4, true)], 1, 0, WINDOW, 10, 1000);
        queue.watch();
        assert_eq!(queue.next(0), Next::Ask(4));
        queue.held(4, 1_000, 0);
        // Looked up at once, then after polls that double while nothing changes.
        assert_eq!(queue.next(0), Next::Check(vec![4]));
        queue.checked(&[4], &BTreeSet::new(), &BTreeMap::new(), 0);
        assert_eq!(queue.next(0), Next::Wait(MIN_POLL_MS));
        assert_eq!(queue.next(MIN_POLL_MS), Next::Check(vec![4]));
        queue.checked(&[4], &BTreeSet::new(), &BTreeMap::new(), MIN_POLL_MS);
        assert_eq!(queue.next(MIN_POLL_MS), Next::Wait(3 * MIN_POLL_MS));
        // Past the lease: asked for again (to take it over).
        assert_eq!(queue.next(1_000), Next::Check(vec![4]));
        queue.checked(&[4], &BTreeSet::new(), &BTreeMap::new(), 1_000);
        assert_eq!(queue.next(1_000), Next::Ask(4));
        // Held again, then found committed: nothing left.
        queue.held(4, 2_000, 1_000);
        assert_eq!(queue.next(1_000), Next::Wait(1_000 + 4 * MIN_POLL_MS));
        assert_eq!(queue.next(1_100), Next::Check(vec![4]));
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
        let mut asked = Vec::new();
        for _ in 0..4 {
            let Next::Ask(unit) = queue.next(0) else { panic!("each own unit is asked for") };
            queue.held(unit, 9_000, 0);
            asked.push(unit);
        }
        asked.sort_unstable();
        assert_eq!(asked, [0, 1, 2, 3]);
        assert_eq!(queue.next(0), Next::Watch);
    }

    #[test]
    fn of_a_window_only_what_is_asked_for_soon_stays_ready_the_rest_is_checked_again_later() {
        let mut queue = UnitQueue::shared((0..20).map(|u| (u, false)), 20, 0, WINDOW, 2, 1000);
        assert_eq!(queue.next(0), Next::Check((0..20).collect()));
        queue.checked(&(0..20).collect::<Vec<_>>(), &BTreeSet::new(), &BTreeMap::new(), 0);
        let (mut asked, Next::Check(mut rest)) = asks(&mut queue, 0) else { panic!("the rest is checked again") };
        assert_eq!(asked.len(), 8, "give_up × 4 stay ready");
        asked.append(&mut rest);
        asked.sort_unstable();
        assert_eq!(asked, (0..20).collect::<Vec<_>>());
        // Workers starting elsewhere keep other units of the same window: they do not all ask
        // for the first few.
        let kept = |start: usize| {
            let mut queue = UnitQueue::shared((0..20).map(|u| (u, false)), 20, start, WINDOW, 2, 1000);
            let Next::Check(window) = queue.next(0) else { panic!("a check first") };
            queue.checked(&window, &BTreeSet::new(), &BTreeMap::new(), 0);
            let mut asked = asks(&mut queue, 0).0;
            asked.sort_unstable();
            asked
        };
        assert_ne!(kept(0), kept(5));
    }

    #[test]
    fn the_watcher_keeps_its_share_of_the_units_it_offers_and_the_others_take_theirs() {
        let n = 12;
        let mut watcher = UnitQueue::shared((0..n).map(|u| (u, false)), n, 0, WINDOW, 4, 1000);
        watcher.watch();
        // Every unit not seen committed is looked up at once; 0..4 are committed, 4..6 held.
        assert_eq!(watcher.next(0), Next::Check((0..n).collect()));
        let held: BTreeMap<usize, i64> = [(4, 9_000), (5, 9_000)].into();
        watcher.checked(&(0..n).collect::<Vec<_>>(), &(0..4).collect(), &held, 0);
        // It offers the unclaimed ones (up to 4 here) and keeps only its share (every other).
        let offered = watcher.offer(4, |units| units.iter().step_by(2).copied().collect());
        assert_eq!(offered, [6, 7, 8, 9]);
        assert_eq!(asks(&mut watcher, 0).0, [6, 8]);
        // The rest (not its share, or beyond the offer) is looked up again at its next poll.
        let Next::Check(mut again) = watcher.next(1_000) else { panic!("the watcher's poll") };
        again.sort_unstable();
        assert_eq!(again, [4, 5, 7, 9, 10, 11]);
        // An idle worker asks for its share of the offer (after what it had ready).
        let mut other = UnitQueue::shared([(20, true)], 21, 0, WINDOW, 4, 1000);
        other.take_offered([7, 9]);
        assert_eq!(asks(&mut other, 0).0, [20, 7, 9]);
    }

    #[test]
    fn a_commit_a_worker_sees_does_not_quicken_its_watch_for_the_report() {
        // Two units others hold, whose leases may be taken over at 5 s and 9 s.
        let mut queue = UnitQueue::shared((0..2).map(|u| (u, false)), 2, 0, WINDOW, 4, 1000);
        assert_eq!(queue.next(0), Next::Check(vec![0, 1]));
        queue.checked(&[0, 1], &BTreeSet::new(), &BTreeMap::from([(0, 5_000), (1, 9_000)]), 0);
        // It watches for the watcher's report, each poll twice as long while nothing changes.
        for at in [0, 25, 75] {
            assert_eq!(queue.next(at), Next::Watch);
        }
        assert_eq!(queue.next(5_000), Next::Recheck(vec![0]));
        queue.checked(&[0], &BTreeSet::from([0]), &BTreeMap::new(), 5_000);
        assert_eq!(queue.next(5_000), Next::Watch);
        assert_eq!(queue.next(5_200), Next::Watch);
        // Unit 0's commit tells nothing of the report: the poll keeps growing (a thousand
        // workers back at 25 ms at the end of a node kept two cores busy for seconds).
        assert_eq!(queue.next(5_201), Next::Wait(5_600));
    }

    #[test]
    fn units_others_hold_are_put_aside_by_the_check_not_asked_for() {
        let mut queue = UnitQueue::shared((0..4).map(|u| (u, false)), 4, 0, WINDOW, 4, 1000);
        assert_eq!(queue.next(0), Next::Check(vec![0, 1, 2, 3]));
        // 1 is committed, 2 held until 500, 3's lease lapsed at -1.
        queue.checked(&[0, 1, 2, 3], &BTreeSet::from([1]), &BTreeMap::from([(2, 500), (3, -1)]), 0);
        assert_eq!(asks(&mut queue, 0), (vec![0, 3], Next::Watch));
    }

    #[test]
    fn the_others_are_checked_a_window_at_a_time() {
        let n = WINDOW + 10;
        let mut queue = UnitQueue::shared((0..n).map(|u| (u, false)), n, 0, WINDOW, 4, 1000);
        let Next::Check(first) = queue.next(0) else { panic!("a check first") };
        assert_eq!(first.len(), WINDOW);
        // All committed: nothing to ask for, so the next window waits a poll.
        queue.checked(&first, &first.iter().copied().collect(), &BTreeMap::new(), 0);
        assert_eq!(queue.next(0), Next::Wait(MIN_POLL_MS));
        assert_eq!(queue.next(MIN_POLL_MS), Next::Check((WINDOW..n).collect()));
    }

    #[test]
    fn after_windows_in_a_row_with_nothing_to_ask_for_the_rest_is_set_aside_until_it_comes_due() {
        let n = 3 * WINDOW;
        let mut queue = UnitQueue::shared((0..n).map(|u| (u, false)), n, 0, WINDOW, 4, 1000);
        let mut now = 0;
        for _ in 0..IDLE_WINDOWS {
            let Next::Check(window) = queue.next(now) else { panic!("a window to check") };
            queue.checked(&window, &window.iter().copied().collect(), &BTreeMap::new(), now);
            now += 1000;
        }
        // The last window is not checked: the node may end first; it is checked when due.
        let set_aside = (IDLE_WINDOWS * WINDOW..n).collect::<Vec<_>>();
        assert_eq!(queue.next(now), Next::Watch);
        let due = now - 1000 + SET_ASIDE_POLLS * 1000;
        assert_eq!(queue.next(due), Next::Check(set_aside.clone()));
        queue.checked(&set_aside, &BTreeSet::new(), &BTreeMap::new(), due);
        assert!(matches!(queue.next(due), Next::Ask(unit) if set_aside.contains(&unit)));
        // A watcher checks units set aside at once, at its poll.
        let mut watcher = UnitQueue::shared((0..n).map(|u| (u, false)), n, 0, WINDOW, 4, 1000);
        for at in 0..IDLE_WINDOWS as i64 {
            let Next::Check(window) = watcher.next(1000 * at) else { panic!("a window to check") };
            watcher.checked(&window, &window.iter().copied().collect(), &BTreeMap::new(), 1000 * at);
        }
        watcher.watch();
        assert_eq!(watcher.next(1000 * IDLE_WINDOWS as i64), Next::Check(set_aside));
    }

    #[test]
    fn with_many_units_put_aside_one_watcher_looks_them_up_and_the_others_watch_for_the_end() {
        let n = 3 * FEW;
        let others_hold: BTreeMap<usize, i64> = (0..n).map(|u| (u, 5_000 + u as i64)).collect();
        let mut watcher = UnitQueue::shared((0..n).map(|u| (u, false)), n, 0, WINDOW, 4, 1000);
        let mut other = UnitQueue::shared((0..n).map(|u| (u, false)), n, 0, WINDOW, 4, 1000);
        for queue in [&mut watcher, &mut other] {
            let Next::Check(window) = queue.next(0) else { panic!("a check first") };
            queue.checked(&window, &BTreeSet::new(), &others_hold, 0);
        }
        watcher.watch();
        assert_eq!(watcher.next(0), Next::Check((0..n).collect()));
        // The other watches for the node's end, each poll, until a lease may be taken over;
        // then it looks up only the units whose lease may be.
        assert_eq!(other.next(0), Next::Watch);
        assert_eq!(other.next(1), Next::Wait(MIN_POLL_MS));
        assert_eq!(other.next(MIN_POLL_MS), Next::Watch);
        assert_eq!(other.next(5_001), Next::Recheck(vec![0, 1]));
        other.checked(&[0, 1], &BTreeSet::from([0]), &BTreeMap::new(), 5_001);
        assert_eq!(other.next(5_001), Next::Ask(1));
        // The node's manifest appears: the rest were committed by others.
        assert_eq!(other.complete(), (2..n).collect::<Vec<_>>());
        assert_eq!(other.next(5_002), Next::Empty);
    }
}

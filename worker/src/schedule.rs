//! The bookkeeping of key-ordered processing, free of I/O so it can be tested on its own.
//!
//! [`OffsetWindow`] answers "up to where may this partition commit?": the lowest offset whose
//! record is not final yet, however out of order records finish. [`KeyQueue`] answers "which
//! record may start now?": records of different keys run concurrently, records of one key
//! strictly one after the other, and a key whose record is retrying (in place, or away in a
//! retry topic) holds its later records back (parked) while other keys go on.

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;

/// The offsets of one topic-partition that were received and are not final yet.
#[derive(Debug, Default)]
pub struct OffsetWindow {
    /// Received offsets in increasing order, with whether each is final.
    offsets: VecDeque<(i64, bool)>,
    /// The position to commit once everything before it is final.
    position: Option<i64>,
}

impl OffsetWindow {
    /// A record was received. Offsets arrive in increasing order within a partition; an older
    /// one (a redelivery after a seek) is ignored, as its first copy is tracked already.
    pub fn receive(&mut self, offset: i64) -> bool {
        if self.offsets.back().is_some_and(|(last, _)| *last >= offset)
            || self.position.is_some_and(|p| offset < p)
        {
            return false;
        }
        self.offsets.push_back((offset, false));
        true
    }

    /// The record at `offset` is final. Returns the new commit position when it moved: the
    /// offset of the oldest record still unfinished, or one past the last when none is.
    pub fn finish(&mut self, offset: i64) -> Option<i64> {
        let index = self
            .offsets
            .binary_search_by_key(&offset, |(o, _)| *o)
            .ok()?;
        self.offsets[index].1 = true;
        let before = self.position;
        while let Some(&(front, done)) = self.offsets.front() {
            if !done {
                self.position = Some(front);
                break;
            }
            self.offsets.pop_front();
            self.position = Some(front + 1);
        }
        (self.position != before).then_some(self.position).flatten()
    }

    /// Records received and not final.
    pub fn unfinished(&self) -> usize {
        self.offsets.iter().filter(|(_, done)| !done).count()
    }
}

/// A record key reduced to 64 bits. Two keys that collide only wait for each other: safe.
pub fn key_hash(key: Option<&[u8]>) -> Option<u64> {
    let key = key?;
    // A fixed seed: the same key hashes the same in every task and across restarts.
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(key);
    Some(hasher.finish())
}

/// Which failure of which record a retry-topic copy carries: the record's original offset
/// and the attempts it had failed. A forward and the arrival of its copy match on it.
pub type RetryId = (i64, u32);

/// A forward and the arrival of its copy cancel out, whichever is reported first: `id` leaves
/// `pending` if it is there, and is noted in `early` otherwise.
fn cancel_or_note(pending: &mut Vec<RetryId>, early: &mut Vec<RetryId>, id: RetryId) {
    match pending.iter().position(|a| *a == id) {
        Some(i) => {
            pending.swap_remove(i);
        }
        None => early.push(id),
    }
}

/// A busy key: 16 bytes with its hash in the map, so the thousands of keys in flight per
/// partition stay in the CPU's cache (every record looks its key up twice). What only a
/// retrying key has lives in [`Waits`].
#[derive(Debug, Clone, Copy)]
struct KeyState {
    /// Records of the key started, ready to start, or waiting for their due time.
    active: u32,
    /// Whether the key has an entry in `KeyQueue::waits`.
    waits: bool,
}

/// What a key whose record is retrying (or away in a retry topic) holds.
#[derive(Debug)]
struct Waits<T> {
    /// Copies sent to a retry topic that have not come back yet.
    awaiting: Vec<RetryId>,
    /// Copies that came back before their forward was reported, or after a restart.
    arrived: Vec<RetryId>,
    /// Later records of the key, in arrival order.
    parked: VecDeque<T>,
}

impl<T> Default for Waits<T> {
    fn default() -> Self {
        Self {
            awaiting: Vec::new(),
            arrived: Vec::new(),
            parked: VecDeque::new(),
        }
    }
}

impl<T> Waits<T> {
    fn is_empty(&self) -> bool {
        self.awaiting.is_empty() && self.arrived.is_empty() && self.parked.is_empty()
    }
}

/// The map of key hashes: they are hashes already, so the map uses them as they are.
#[derive(Debug, Default, Clone, Copy)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in case that changes.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<Prehashed>>;

/// Which records may start, per key.
#[derive(Debug)]
pub struct KeyQueue<T> {
    /// Every busy key.
    keys: KeyMap<KeyState>,
    /// The busy keys that wait for something (few: those retrying, and the keys behind them).
    waits: KeyMap<Waits<T>>,
    ready: VecDeque<T>,
    parked: usize,
}

impl<T> Default for KeyQueue<T> {
    fn default() -> Self {
        Self {
            keys: KeyMap::default(),
            waits: KeyMap::default(),
            ready: VecDeque::new(),
            parked: 0,
        }
    }
}

impl<T> KeyQueue<T> {
    /// A new record: ready when its key is idle, parked behind the key's records otherwise.
    /// Records without a key are never ordered.
    pub fn push(&mut self, key: Option<u64>, item: T) {
        self.push_or_park(key, item, |item| item);
    }

    /// [`Self::push`], passing a record that parks through `park` first.
    pub fn push_or_park(&mut self, key: Option<u64>, item: T, park: impl FnOnce(T) -> T) {
        let Some(key) = key else {
            self.ready.push_back(item);
            return;
        };
        match self.keys.get_mut(&key) {
            Some(state) => {
                state.waits = true;
                self.waits
                    .entry(key)
                    .or_default()
                    .parked
                    .push_back(park(item));
                self.parked += 1;
            }
            None => {
                self.keys.insert(
                    key,
                    KeyState {
                        active: 1,
                        waits: false,
                    },
                );
                self.ready.push_back(item);
            }
        }
    }

    /// A copy came back from a retry topic: it continues its key's turn (its record was the
    /// key's active one when it failed), so it never parks. After a restart nothing awaited
    /// it, and it takes the key's turn. The caller makes it ready with [`Self::push_ready`]
    /// when it is due.
    pub fn resume(&mut self, key: Option<u64>, id: RetryId) {
        let Some(key) = key else { return };
        let state = self.keys.entry(key).or_insert(KeyState {
            active: 0,
            waits: false,
        });
        state.active += 1;
        state.waits = true;
        let waits = self.waits.entry(key).or_default();
        cancel_or_note(&mut waits.awaiting, &mut waits.arrived, id);
    }

    /// Makes a record ready without parking (a resumed record that is due).
    pub fn push_ready(&mut self, item: T) {
        self.ready.push_back(item);
    }

    /// The next record allowed to start.
    pub fn pop_ready(&mut self) -> Option<T> {
        self.ready.pop_front()
    }

    /// Records allowed to start.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// Takes up to `max` ready records from the front while `batchable` accepts them; the
    /// first one it refuses stays first. Costs only what it takes.
    pub fn pop_batch(&mut self, max: usize, batchable: impl Fn(&T) -> bool) -> Vec<T> {
        let mut batch = Vec::new();
        while batch.len() < max && self.ready.front().is_some_and(&batchable) {
            batch.extend(self.ready.pop_front());
        }
        batch
    }

    /// The key's record is final: its next parked record becomes ready.
    pub fn finish(&mut self, key: Option<u64>) {
        let Some(key) = key else { return };
        let Some(state) = self.keys.get_mut(&key) else {
            return;
        };
        state.active = state.active.saturating_sub(1);
        if state.active == 0 && !state.waits {
            // The common case: an idle key with nothing behind it.
            self.keys.remove(&key);
            return;
        }
        self.release(key);
    }

    /// The key's record went to a retry topic as copy `id`: the key stays taken until the copy
    /// comes back (it may have already).
    pub fn forwarded(&mut self, key: Option<u64>, id: RetryId) {
        let Some(key) = key else { return };
        let Some(state) = self.keys.get_mut(&key) else {
            return;
        };
        state.active = state.active.saturating_sub(1);
        state.waits = true;
        let waits = self.waits.entry(key).or_default();
        cancel_or_note(&mut waits.arrived, &mut waits.awaiting, id);
        self.release(key);
    }

    fn release(&mut self, key: u64) {
        let Some(state) = self.keys.get_mut(&key) else {
            return;
        };
        let waits = if state.waits {
            self.waits.get_mut(&key)
        } else {
            None
        };
        if state.active > 0 || waits.as_ref().is_some_and(|w| !w.awaiting.is_empty()) {
            return;
        }
        match waits.and_then(|w| w.parked.pop_front().map(|next| (w, next))) {
            Some((waits, next)) => {
                state.active = 1;
                waits.arrived.clear();
                if waits.is_empty() {
                    self.waits.remove(&key);
                    state.waits = false;
                }
                self.parked -= 1;
                self.ready.push_back(next);
            }
            None => {
                self.keys.remove(&key);
                self.waits.remove(&key);
            }
        }
    }

    /// Records held back behind their key.
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// Whether a record of `key` is active or awaited.
    pub fn is_busy(&self, key: u64) -> bool {
        self.keys.contains_key(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_position_waits_for_the_oldest_unfinished_offset() {
        let mut w = OffsetWindow::default();
        for o in [10, 11, 12, 14] {
            assert!(w.receive(o));
        }
        assert_eq!(w.finish(11), Some(10));
        assert_eq!(w.finish(12), None);
        assert_eq!(w.finish(10), Some(14), "10-12 final: 14 is next");
        assert_eq!(w.unfinished(), 1);
        assert_eq!(w.finish(14), Some(15));
        assert_eq!(w.unfinished(), 0);
        assert_eq!(w.finish(99), None, "an unknown offset changes nothing");
    }

    #[test]
    fn redelivered_offsets_are_not_tracked_twice() {
        let mut w = OffsetWindow::default();
        assert!(w.receive(5));
        assert!(!w.receive(5));
        assert!(!w.receive(3));
        assert_eq!(w.finish(5), Some(6));
        assert!(!w.receive(4), "behind the committed position");
        assert!(w.receive(6));
    }

    #[test]
    fn records_of_one_key_run_one_at_a_time_in_order() {
        let mut q = KeyQueue::default();
        let (a, b) = (key_hash(Some(b"a")), key_hash(Some(b"b")));
        q.push(a, "a1");
        q.push(a, "a2");
        q.push(b, "b1");
        q.push(a, "a3");
        assert_eq!(q.parked(), 2);
        assert_eq!(q.pop_ready(), Some("a1"));
        assert_eq!(q.pop_ready(), Some("b1"), "b does not wait for a");
        assert_eq!(q.pop_ready(), None);
        q.finish(a);
        assert_eq!(q.pop_ready(), Some("a2"));
        q.finish(b);
        assert!(!q.is_busy(b.unwrap()));
        q.finish(a);
        assert_eq!(q.pop_ready(), Some("a3"));
        q.finish(a);
        assert!(!q.is_busy(a.unwrap()));
        assert_eq!(q.parked(), 0);
    }

    #[test]
    fn a_key_away_in_a_retry_topic_holds_its_later_records() {
        let mut q = KeyQueue::default();
        let a = key_hash(Some(b"order-1"));
        q.push(a, "a1");
        assert_eq!(q.pop_ready(), Some("a1"));
        q.forwarded(a, (0, 1));
        q.push(a, "a2");
        assert_eq!(q.pop_ready(), None, "a2 waits for a1's retry");
        q.resume(a, (0, 1));
        q.push_ready("a1 retried");
        assert_eq!(q.pop_ready(), Some("a1 retried"));
        q.finish(a);
        assert_eq!(q.pop_ready(), Some("a2"));
    }

    #[test]
    fn a_retry_copy_after_a_restart_takes_the_turn_of_its_key() {
        let mut q = KeyQueue::default();
        let a = key_hash(Some(b"order-1"));
        q.resume(a, (0, 2));
        q.push_ready("a1 retried");
        q.push(a, "a1 redelivered");
        assert_eq!(q.pop_ready(), Some("a1 retried"));
        assert_eq!(q.pop_ready(), None);
        q.finish(a);
        assert_eq!(q.pop_ready(), Some("a1 redelivered"));
    }

    #[test]
    fn a_copy_that_comes_back_before_its_forward_is_reported_still_holds_the_key() {
        let mut q = KeyQueue::default();
        let a = key_hash(Some(b"x"));
        q.push(a, "a1");
        q.pop_ready();
        q.resume(a, (5, 1));
        q.push_ready("a1 retried");
        q.forwarded(a, (5, 1));
        q.push(a, "a2");
        assert_eq!(q.pop_ready(), Some("a1 retried"));
        assert_eq!(q.pop_ready(), None);
        q.forwarded(a, (5, 2));
        assert_eq!(q.pop_ready(), None, "away again");
        q.resume(a, (5, 2));
        q.push_ready("a1 retried twice");
        q.pop_ready();
        q.finish(a);
        assert_eq!(q.pop_ready(), Some("a2"));
    }

    #[test]
    fn a_stale_copy_after_a_restart_does_not_release_a_later_forward() {
        let mut q = KeyQueue::default();
        let a = key_hash(Some(b"x"));
        q.resume(a, (5, 1));
        q.push_ready("copy 1");
        q.push(a, "a6");
        q.pop_ready();
        q.forwarded(a, (5, 2));
        assert_eq!(q.pop_ready(), None, "a6 waits for the second retry");
        q.resume(a, (5, 2));
        q.push_ready("copy 2");
        q.pop_ready();
        q.finish(a);
        assert_eq!(q.pop_ready(), Some("a6"));
    }

    #[test]
    fn keys_are_forgotten_once_idle_whatever_they_went_through() {
        let mut q = KeyQueue::default();
        let (a, b, c) = (
            key_hash(Some(b"a")),
            key_hash(Some(b"b")),
            key_hash(Some(b"c")),
        );
        // a: parked records; b: away in a retry topic and back; c: a copy after a restart.
        q.push(a, "a1");
        q.push(a, "a2");
        q.push(b, "b1");
        q.resume(c, (9, 1));
        q.push_ready("c1 retried");
        assert_eq!(q.pop_ready(), Some("a1"));
        assert_eq!(q.pop_ready(), Some("b1"));
        q.forwarded(b, (3, 1));
        q.push(b, "b2");
        q.finish(a);
        assert_eq!(q.pop_ready(), Some("c1 retried"));
        assert_eq!(q.pop_ready(), Some("a2"));
        q.resume(b, (3, 1));
        q.push_ready("b1 retried");
        assert_eq!(q.pop_ready(), Some("b1 retried"));
        q.finish(b);
        assert_eq!(q.pop_ready(), Some("b2"));
        for key in [a, b, c] {
            q.finish(key);
        }
        assert_eq!(q.pop_ready(), None);
        assert!(q.keys.is_empty(), "{:?}", q.keys);
        assert!(q.waits.is_empty(), "{:?}", q.waits);
        assert_eq!(q.parked(), 0);
    }

    #[test]
    fn records_without_a_key_are_never_held() {
        let mut q = KeyQueue::default();
        q.push(None, 1);
        q.push(None, 2);
        q.forwarded(None, (0, 1));
        q.finish(None);
        assert_eq!(q.pop_ready(), Some(1));
        assert_eq!(q.pop_ready(), Some(2));
    }

    #[test]
    fn batches_take_accepted_records_from_the_front() {
        let mut q = KeyQueue::default();
        for i in [2, 4, 6, 7, 8, 10] {
            q.push(None, i);
        }
        assert_eq!(q.pop_batch(2, |i| i % 2 == 0), vec![2, 4]);
        assert_eq!(q.pop_batch(5, |i| i % 2 == 0), vec![6], "7 stops the batch");
        assert_eq!(q.pop_batch(5, |i| i % 2 == 0), Vec::<i32>::new());
        assert_eq!(q.pop_ready(), Some(7));
        assert_eq!(q.pop_batch(5, |i| i % 2 == 0), vec![8, 10]);
        assert_eq!(q.ready(), 0);
    }

    #[test]
    fn key_hashes_are_stable() {
        assert_eq!(key_hash(Some(b"k")), key_hash(Some(b"k")));
        assert_ne!(key_hash(Some(b"k")), key_hash(Some(b"l")));
        assert_eq!(key_hash(None), None);
    }
}

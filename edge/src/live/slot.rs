//! The latest-value slot between pipeline stages: a writer never waits, a reader always gets
//! the newest value, and a value replaced before anyone took it is counted as dropped (for
//! frames: stale frames skipped instead of queued, so latency stays one frame deep).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// What [`LatestSlot::take`] found.
#[derive(Debug, PartialEq)]
pub enum Taken<T> {
    Value(T),
    /// Nothing new within the timeout.
    Timeout,
    /// The writer closed the slot and the last value was taken.
    Closed,
}

#[derive(Debug)]
struct State<T> {
    value: Option<T>,
    closed: bool,
    dropped: u64,
}

/// A one-value mailbox that keeps only the newest value.
#[derive(Debug)]
pub struct LatestSlot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Default for LatestSlot<T> {
    fn default() -> Self {
        LatestSlot {
            state: Mutex::new(State {
                value: None,
                closed: false,
                dropped: 0,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T> LatestSlot<T> {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panicking holder cannot leave the slot half-updated (each update is one
        // assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `value`, replacing (and counting as dropped) an untaken one. Returns whether
    /// one was replaced. Never blocks on the reader.
    pub fn put(&self, value: T) -> bool {
        let mut s = self.lock();
        let replaced = s.value.replace(value).is_some();
        if replaced {
            s.dropped += 1;
        }
        drop(s);
        self.ready.notify_all();
        replaced
    }

    /// Takes the newest value, waiting up to `timeout` for one.
    pub fn take(&self, timeout: Duration) -> Taken<T> {
        let s = self.lock();
        let (mut s, _) = self
            .ready
            .wait_timeout_while(s, timeout, |s| s.value.is_none() && !s.closed)
            .unwrap_or_else(|p| p.into_inner());
        match s.value.take() {
            Some(v) => Taken::Value(v),
            None if s.closed => Taken::Closed,
            None => Taken::Timeout,
        }
    }

    /// No more values will come; readers get the last one, then [`Taken::Closed`].
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Values replaced before they were taken.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn keeps_the_newest_and_counts_replaced_values() {
        let slot = LatestSlot::new();
        assert!(!slot.put(1));
        assert!(slot.put(2));
        assert!(slot.put(3));
        assert_eq!(slot.take(Duration::ZERO), Taken::Value(3));
        assert_eq!(slot.dropped(), 2);
        assert_eq!(slot.take(Duration::from_millis(5)), Taken::Timeout);
        slot.put(4);
        slot.close();
        assert_eq!(slot.take(Duration::ZERO), Taken::Value(4));
        assert_eq!(slot.take(Duration::from_secs(5)), Taken::Closed);
    }

    #[test]
    fn a_fast_writer_never_waits_for_a_slow_reader() {
        let slot = Arc::new(LatestSlot::new());
        let w = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u32 {
                    slot.put(i);
                }
                slot.close();
            })
        };
        let mut taken = Vec::new();
        loop {
            match slot.take(Duration::from_secs(5)) {
                Taken::Value(v) => {
                    taken.push(v);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Taken::Closed => break,
                Taken::Timeout => panic!("writer stalled"),
            }
        }
        w.join().unwrap();
        assert_eq!(
            *taken.last().unwrap(),
            9_999,
            "the last value is always delivered"
        );
        assert!(
            taken.windows(2).all(|p| p[0] < p[1]),
            "newest first, never older"
        );
        assert_eq!(slot.dropped() + taken.len() as u64, 10_000);
    }
}

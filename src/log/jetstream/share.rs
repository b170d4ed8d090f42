//! A node's share of one kind of lease: the sinks' partitions ([`super::leases`])
//! or the connections' shards ([`crate::connections::cluster`]).
//!
//! Every lease of the kind that this node's pipelines have is contended by
//! one task here, which counts itself in the kind's `total` while it runs
//! ([`Share::join`]): a pipeline started or stopped by a reload changes the
//! total as its tasks start and end. A node takes a lease only while it
//! holds fewer than its fair share, `ceil(total / live nodes)`, and gives
//! one back per renewal while it holds more, one at a time ([`Share::give`]),
//! so a node that joins gets its share within a few lease periods.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// How many leases of one kind this node's pipelines have and how many it
/// holds.
#[derive(Debug, Default)]
pub struct Share {
    total: AtomicUsize,
    held: AtomicUsize,
    /// One lease is being given back (one at a time).
    giving: AtomicBool,
}

impl Share {
    /// Counts one more lease in the total until the returned guard drops.
    pub fn join(self: &Arc<Self>) -> Member {
        self.total.fetch_add(1, Ordering::Relaxed);
        Member(self.clone())
    }

    /// This node's fair share with `live` nodes alive.
    pub fn fair(&self, live: usize) -> usize {
        self.total.load(Ordering::Relaxed).div_ceil(live.max(1))
    }

    /// Whether this node may take one more lease.
    pub fn wants(&self, live: usize) -> bool {
        self.held.load(Ordering::Relaxed) < self.fair(live)
    }

    /// Counts a lease taken until the returned guard drops.
    pub fn hold(self: &Arc<Self>) -> Held {
        self.held.fetch_add(1, Ordering::Relaxed);
        Held(self.clone())
    }

    /// Whether this node holds more than its share and no other lease is
    /// being given back: if so, the caller gives its lease back and calls
    /// [`Share::given`] once it did.
    pub fn give(&self, live: usize) -> bool {
        self.held.load(Ordering::Relaxed) > self.fair(live)
            && !self.giving.swap(true, Ordering::AcqRel)
    }

    /// The lease [`Share::give`] chose is given back (or lost meanwhile).
    pub fn given(&self) {
        self.giving.store(false, Ordering::Release);
    }

    /// What `/api/pipelines` shows of it with `live` nodes alive.
    pub fn status(&self, live: usize) -> serde_json::Value {
        serde_json::json!({
            "total": self.total.load(Ordering::Relaxed),
            "held": self.held.load(Ordering::Relaxed),
            "fair": self.fair(live),
        })
    }
}

/// One lease counted in its kind's total (see [`Share::join`]).
pub struct Member(Arc<Share>);

impl Drop for Member {
    fn drop(&mut self) {
        self.0.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One lease held (see [`Share::hold`]).
pub struct Held(Arc<Share>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fair_share_follows_the_leases_that_come_and_go() {
        let share = Arc::new(Share::default());
        let mut members: Vec<Member> = (0..6).map(|_| share.join()).collect();
        assert_eq!(share.fair(2), 3);
        let held: Vec<Held> = (0..3).map(|_| share.hold()).collect();
        assert!(!share.wants(2), "3 of 6 over 2 nodes is the share");
        assert!(!share.give(2));
        // A pipeline of 4 of them stops (a reload): 2 left, 1 each.
        members.truncate(2);
        assert_eq!(share.fair(2), 1);
        assert!(share.give(2), "3 held, 1 fair: give one back");
        assert!(!share.give(2), "one at a time");
        share.given();
        drop(held);
        assert!(share.wants(2));
    }
}

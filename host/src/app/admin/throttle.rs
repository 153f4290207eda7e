//! Failed admin tokens, throttled per client address.
//!
//! The admin token guards reload, rollback and key creation, so guessing it must be slow:
//! after [`FREE_FAILURES`] wrong tokens from one address, each further one blocks that
//! address for twice as long as the last (1 s, 2 s, 4 s, … up to [`MAX_BLOCK`]); while
//! blocked, every admin request from it gets 429 with `Retry-After`, the right token
//! included, so a guess is never checked. A right token clears the address's record; a
//! record untouched for [`FORGET_AFTER`] is forgotten. The table is bounded: past
//! [`MAX_PEERS`] addresses the forgotten and unblocked ones are dropped first, then all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tokens an address may send before it is blocked.
pub const FREE_FAILURES: u32 = 5;
/// The longest block.
pub const MAX_BLOCK: Duration = Duration::from_secs(300);
/// A record with no failure for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Addresses tracked at most.
const MAX_PEERS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    blocked_until: Option<Instant>,
}

/// Per-address failure records.
#[derive(Debug, Default)]
pub struct AdminThrottle {
    peers: Mutex<HashMap<IpAddr, Record>>,
}

impl AdminThrottle {
    /// `Err(seconds to wait)` while `peer` is blocked.
    pub fn check(&self, peer: IpAddr, now: Instant) -> Result<(), u64> {
        let Ok(peers) = self.peers.lock() else {
            return Ok(());
        };
        match peers.get(&peer).and_then(|r| r.blocked_until) {
            Some(until) if until > now => {
                Err(until.duration_since(now).as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => Ok(()),
        }
    }

    /// A wrong token from `peer`.
    pub fn failed(&self, peer: IpAddr, now: Instant) {
        let Ok(mut peers) = self.peers.lock() else {
            return;
        };
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, r| {
                now.duration_since(r.last_failure) < FORGET_AFTER
                    && r.blocked_until.is_some_and(|u| u > now)
            });
            if peers.len() >= MAX_PEERS {
                peers.clear();
            }
        }
        let r = peers.entry(peer).or_insert(Record {
            failures: 0,
            last_failure: now,
            blocked_until: None,
        });
        if now.duration_since(r.last_failure) >= FORGET_AFTER {
            r.failures = 0;
        }
        r.failures = r.failures.saturating_add(1);
        r.last_failure = now;
        if r.failures > FREE_FAILURES {
            let doublings = (r.failures - FREE_FAILURES - 1).min(16);
            let block = Duration::from_secs(1u64 << doublings).min(MAX_BLOCK);
            r.blocked_until = Some(now + block);
        }
    }

    /// The right token from `peer`: its record is cleared.
    pub fn succeeded(&self, peer: IpAddr) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.remove(&peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_double_after_the_free_failures_and_a_success_clears() {
        let t = AdminThrottle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert!(t.check(a, t0).is_ok());
            t.failed(a, t0);
        }
        assert!(t.check(a, t0).is_ok());
        t.failed(a, t0);
        assert_eq!(t.check(a, t0), Err(1));
        // Another address is not affected.
        assert!(t.check(b, t0).is_ok());
        let t1 = t0 + Duration::from_secs(2);
        assert!(t.check(a, t1).is_ok());
        t.failed(a, t1);
        assert_eq!(t.check(a, t1), Err(2));
        let mut now = t1;
        for _ in 0..40 {
            t.failed(a, now);
            now += Duration::from_millis(1);
        }
        assert_eq!(t.check(a, now), Err(MAX_BLOCK.as_secs()));
        t.succeeded(a);
        assert!(t.check(a, now).is_ok());
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = AdminThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 10) {
            t.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(t.peers.lock().unwrap().len() <= MAX_PEERS);
    }
}

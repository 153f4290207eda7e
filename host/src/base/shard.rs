//! Which serving thread ("shard") the current code runs on.
//!
//! With `[server] threads = N` the gateway serves client connections on N shards, each a
//! one-worker runtime with its own event loop. A request, its plugin calls and its upstream
//! connection stay on the shard that accepted the connection: nothing crosses threads, so
//! nothing wakes another thread. Upstream clients are kept per shard (a pooled connection's
//! task lives on the runtime that opened it; checked out from another shard, every read
//! would wake the opening shard), and this marker says which one a caller gets. It is set
//! on every thread a shard's runtime starts, its blocking threads included (a plugin call
//! moved off the event loop keeps its shard). Threads of no shard (startup, the admin
//! listener, health checks) read `None`. The background thread that sends shadow and judge
//! calls marks itself [`BACKGROUND`]: its connections must be its own, or a served request
//! could be handed a connection whose I/O runs on a low-priority thread.

use std::cell::Cell;

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The marker of the background thread (shadow and judge calls): no serving shard has it.
pub const BACKGROUND: usize = usize::MAX;

/// Mark the calling thread as one of shard `index`'s (or [`BACKGROUND`]).
pub fn enter(index: usize) {
    CURRENT.with(|c| c.set(Some(index)));
}

/// The shard the calling thread belongs to, if any.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_of_no_shard_until_it_enters_one() {
        std::thread::spawn(|| {
            assert_eq!(current(), None);
            enter(3);
            assert_eq!(current(), Some(3));
        })
        .join()
        .unwrap();
        assert_eq!(std::thread::spawn(current).join().unwrap(), None);
    }
}

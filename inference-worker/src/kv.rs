//! The paged KV cache's bookkeeping: fixed-size blocks, their allocator and the prefix cache.
//!
//! The cache is a pool of blocks of `BLOCK_TOKENS` positions each. A sequence owns a *block
//! table*, the list of block ids holding its positions in order (position `p` lives in
//! `table[p / BLOCK_TOKENS]` at slot `p % BLOCK_TOKENS`). Where a block's keys and values
//! physically sit, and in what format, is the backend's business; this module only hands out
//! ids, so the scheduler and every backend share one logical view.
//!
//! ```text
//!   allocate ──► in use (refs ≥ 1) ──free (refs → 0)──► LRU free list ──allocate──► reused
//!                    ▲                                     │ (a cached block keeps its
//!                    └──────────── prefix-cache hit ◄──────┘  content until reused)
//! ```
//!
//! Prefix caching: a full block is identified by the hash of its tokens chained with the hash
//! of the block before it, so equal hashes mean equal prefixes. Once a block's keys and values
//! are computed it is registered under that hash; a later sequence whose prompt starts the same
//! way takes the block by reference (refs + 1) instead of computing it again. Only full blocks
//! are shared and a full block is never written again, so sharing needs no copy-on-write. A
//! block whose last user finished stays cached on the free list until it is reused, least
//! recently freed first.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::tokenizer::TokenId;

/// Positions per block.
pub const BLOCK_TOKENS: usize = 16;

/// A block's index in the pool.
pub type BlockId = u32;

/// Blocks needed to hold `tokens` positions.
pub fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK_TOKENS)
}

/// The content hash of a full block: its tokens chained with the hash of every block before
/// it (128 bits of SHA-256, so two different prefixes never meet in practice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(u128);

impl BlockHash {
    /// The hash of the block holding `tokens` (exactly `BLOCK_TOKENS` of them) after the
    /// prefix whose last block hashed to `parent` (`None` for the first block).
    pub fn of(parent: Option<BlockHash>, tokens: &[TokenId]) -> BlockHash {
        let mut h = Sha256::new();
        h.update(parent.map_or([0u8; 16], |p| p.0.to_le_bytes()));
        h.update([u8::from(parent.is_some())]);
        for t in tokens {
            h.update(t.to_le_bytes());
        }
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        BlockHash(u128::from_le_bytes(b))
    }

    /// The hashes of every full block of `tokens`, in order.
    pub fn chain(tokens: &[TokenId]) -> Vec<BlockHash> {
        let mut out: Vec<BlockHash> = Vec::with_capacity(tokens.len() / BLOCK_TOKENS);
        for block in tokens.chunks_exact(BLOCK_TOKENS) {
            out.push(BlockHash::of(out.last().copied(), block));
        }
        out
    }
}

const NIL: u32 = u32::MAX;

/// Prefix-cache counters, in tokens.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prompt tokens looked up in the cache.
    pub queried: u64,
    /// Of those, tokens whose keys and values were found and reused.
    pub hit: u64,
}

/// The block pool's allocator: reference counts, an LRU free list, and the prefix cache.
#[derive(Debug)]
pub struct BlockAllocator {
    refs: Vec<u32>,
    /// The hash a block is registered under in the prefix cache.
    hash: Vec<Option<BlockHash>>,
    cached: HashMap<BlockHash, BlockId>,
    /// Free blocks as a doubly linked list, least recently freed at `head`, so a cache hit
    /// can take a free block out of the middle in O(1).
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    n_free: usize,
    stats: PrefixStats,
}

impl BlockAllocator {
    /// A pool of `n` blocks, all free.
    pub fn new(n: usize) -> BlockAllocator {
        let n32 = u32::try_from(n).unwrap_or(NIL - 1).min(NIL - 1);
        let n = n32 as usize;
        let mut a = BlockAllocator {
            refs: vec![0; n],
            hash: vec![None; n],
            cached: HashMap::new(),
            prev: vec![NIL; n],
            next: vec![NIL; n],
            head: NIL,
            tail: NIL,
            n_free: 0,
            stats: PrefixStats::default(),
        };
        for id in 0..n32 {
            a.push_free(id);
        }
        a
    }

    /// Blocks in the pool.
    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks no sequence holds (cached ones included: they are reused when needed).
    pub fn free(&self) -> usize {
        self.n_free
    }

    /// Blocks held by at least one sequence.
    pub fn used(&self) -> usize {
        self.total() - self.n_free
    }

    /// Full blocks registered in the prefix cache (held or free).
    pub fn cached(&self) -> usize {
        self.cached.len()
    }

    pub fn stats(&self) -> PrefixStats {
        self.stats
    }

    /// How many sequences hold `id`.
    pub fn refs(&self, id: BlockId) -> u32 {
        self.refs[id as usize]
    }

    /// Takes the least recently freed block (dropping its cached content), or `None` when
    /// every block is held.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = self.head;
        if id == NIL {
            return None;
        }
        self.unlink(id);
        if let Some(h) = self.hash[id as usize].take() {
            self.cached.remove(&h);
        }
        self.refs[id as usize] = 1;
        Some(id)
    }

    /// Drops one reference to `id`; at zero the block goes to the back of the free list,
    /// keeping its cached content until it is reused.
    pub fn release(&mut self, id: BlockId) {
        let r = &mut self.refs[id as usize];
        debug_assert!(*r > 0, "block {id} released while free");
        if *r == 0 {
            return;
        }
        *r -= 1;
        if *r == 0 {
            self.push_free(id);
        }
    }

    /// Releases a sequence's blocks, its last block first: the tail of a sequence is the least
    /// likely to be shared, so it is the first to be reused.
    pub fn release_all(&mut self, table: &mut Vec<BlockId>) {
        while let Some(id) = table.pop() {
            self.release(id);
        }
    }

    /// The cached block with content `hash`, if any, without taking it.
    pub fn probe(&self, hash: &BlockHash) -> Option<BlockId> {
        self.cached.get(hash).copied()
    }

    /// Takes a reference to the cached block with content `hash` (out of the free list if no
    /// one held it).
    pub fn take_cached(&mut self, hash: &BlockHash) -> Option<BlockId> {
        let id = *self.cached.get(hash)?;
        if self.refs[id as usize] == 0 {
            self.unlink(id);
        }
        self.refs[id as usize] += 1;
        Some(id)
    }

    /// Records a prefix-cache lookup of `queried` prompt tokens of which `hit` were reused.
    pub fn count_lookup(&mut self, queried: usize, hit: usize) {
        self.stats.queried += queried as u64;
        self.stats.hit += hit as u64;
    }

    /// Registers the held block `id`, now full and computed, under `hash`. False (and nothing
    /// changes) when another block already holds that content or `id` is registered already.
    pub fn register(&mut self, id: BlockId, hash: BlockHash) -> bool {
        if self.hash[id as usize].is_some() || self.cached.contains_key(&hash) {
            return false;
        }
        self.cached.insert(hash, id);
        self.hash[id as usize] = Some(hash);
        true
    }

    fn push_free(&mut self, id: BlockId) {
        let i = id as usize;
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail == NIL {
            self.head = id;
        } else {
            self.next[self.tail as usize] = id;
        }
        self.tail = id;
        self.n_free += 1;
    }

    fn unlink(&mut self, id: BlockId) {
        let i = id as usize;
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.n_free -= 1;
    }

    /// Checks the allocator's invariants (tests): the free list holds exactly the blocks
    /// nobody references, and the cache map and the per-block hashes agree.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = vec![false; self.total()];
        let mut n = 0;
        let mut at = self.head;
        let mut before = NIL;
        while at != NIL {
            let i = at as usize;
            if seen[i] {
                return Err(format!("block {at} twice on the free list"));
            }
            seen[i] = true;
            if self.refs[i] != 0 {
                return Err(format!("block {at} free with {} refs", self.refs[i]));
            }
            if self.prev[i] != before {
                return Err(format!("block {at}: broken back link"));
            }
            before = at;
            at = self.next[i];
            n += 1;
        }
        if n != self.n_free {
            return Err(format!("{n} blocks listed free, {} counted", self.n_free));
        }
        let unlisted = (0..self.total()).filter(|&i| !seen[i] && self.refs[i] == 0);
        if let Some(i) = unlisted.into_iter().next() {
            return Err(format!("block {i} has no refs but is not free"));
        }
        for (h, &id) in &self.cached {
            if self.hash[id as usize] != Some(*h) {
                return Err(format!(
                    "cache entry for block {id} disagrees with its hash"
                ));
            }
        }
        let hashed = self.hash.iter().filter(|h| h.is_some()).count();
        if hashed != self.cached.len() {
            return Err(format!(
                "{hashed} blocks hashed, {} cache entries",
                self.cached.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_every_block_once_then_reuses_the_least_recently_freed() {
        let mut a = BlockAllocator::new(3);
        let got: Vec<_> = (0..3).filter_map(|_| a.allocate()).collect();
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(a.allocate(), None);
        a.release(1);
        a.release(0);
        assert_eq!(a.free(), 2);
        assert_eq!(a.allocate(), Some(1));
        assert_eq!(a.allocate(), Some(0));
        a.check().unwrap();
    }

    #[test]
    fn cached_blocks_are_shared_by_reference_and_evicted_when_reused() {
        let toks: Vec<u32> = (0..32).collect();
        let hs = BlockHash::chain(&toks);
        assert_eq!(hs.len(), 2);
        // The second block's hash depends on the first block's content.
        let mut other = toks.clone();
        other[0] = 99;
        assert_ne!(BlockHash::chain(&other)[1], hs[1]);

        let mut a = BlockAllocator::new(2);
        let b0 = a.allocate().unwrap();
        assert!(a.register(b0, hs[0]));
        assert!(!a.register(b0, hs[1]), "a block has one content");
        assert_eq!(a.take_cached(&hs[0]), Some(b0));
        assert_eq!(a.refs(b0), 2);
        a.release(b0);
        a.release(b0);
        assert_eq!(a.free(), 2);
        // Free but still cached: a hit takes it back out of the free list.
        assert_eq!(a.take_cached(&hs[0]), Some(b0));
        assert_eq!(a.free(), 1);
        a.release(b0);
        a.check().unwrap();
        // Reusing it for something else drops the cached content.
        let x = a.allocate().unwrap();
        let y = a.allocate().unwrap();
        assert!(x == b0 || y == b0);
        assert_eq!(a.probe(&hs[0]), None);
        a.check().unwrap();
    }
}

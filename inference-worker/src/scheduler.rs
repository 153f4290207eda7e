//! Which sequences run in the next step, and how many of their tokens: continuous batching
//! over the paged KV cache. Pure bookkeeping (no model, no threads), driven by the engine and
//! by tests with `backend::fake`.
//!
//! A sequence is its tokens (prompt, then generated) and how many of them have keys and values
//! in its blocks (`computed`); every token past `computed` still has to be fed. Each step:
//!
//! 1. Running sequences that decode (one token to feed) get their token first, oldest first.
//! 2. Running sequences still prefilling get chunks of their prompt from what is left of the
//!    step's token budget, oldest first, so a long prompt never stalls the streams already
//!    decoding and the oldest prompt finishes first.
//! 3. Waiting sequences are admitted in arrival order while there is budget, room in the batch
//!    and free blocks beyond a watermark (head of line first: a large request is never
//!    overtaken forever by small ones). Full blocks of the prompt already in the prefix cache
//!    are taken by reference instead of being computed.
//!
//! When a running sequence needs a block and none is free, the most recently admitted
//! sequence not yet in the step is *preempted*: its blocks are released and it goes back to
//! the head of the queue, to be recomputed (its tokens are kept; blocks still cached make
//! the recompute cheap). A step that preempted admits nothing new. Finishing or cancelling a
//! sequence releases its blocks at once.

use std::collections::{HashMap, VecDeque};

use crate::kv::{BLOCK_TOKENS, BlockAllocator, BlockHash, BlockId, PrefixStats, blocks_for};
use crate::tokenizer::TokenId;

/// A sequence's handle.
pub type SeqId = u64;

/// Scheduling limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sequences in the running batch at most (`--max-batch`).
    pub max_seqs: usize,
    /// Tokens fed per step at most, decode and prefill together.
    pub step_tokens: usize,
    /// Free blocks to keep when admitting, so running sequences can grow without preemption.
    pub watermark_blocks: usize,
    /// Share full blocks of equal prefixes.
    pub prefix_caching: bool,
}

impl Limits {
    /// `max_seqs` sequences, a budget of `step_tokens` (at least one token per sequence and
    /// a block of prefill), a watermark of 1% of `n_blocks`, prefix caching on.
    pub fn new(max_seqs: usize, step_tokens: usize, n_blocks: usize) -> Limits {
        let max_seqs = max_seqs.max(1);
        Limits {
            max_seqs,
            step_tokens: step_tokens.max(max_seqs + BLOCK_TOKENS),
            watermark_blocks: n_blocks / 100,
            prefix_caching: true,
        }
    }
}

/// One sequence's share of a step: feed `tokens[start..start + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub id: SeqId,
    pub start: usize,
    pub len: usize,
    /// The chunk reaches the last known token, so the step yields the next one.
    pub yields_token: bool,
}

/// The outcome of [`Scheduler::schedule`].
#[derive(Debug, Default)]
pub struct Plan {
    pub items: Vec<Scheduled>,
    /// Sequences preempted this step (back in the queue, to be recomputed).
    pub preempted: Vec<SeqId>,
    /// Sequences that can never fit in the cache (removed; the engine ends them).
    pub unservable: Vec<SeqId>,
}

/// Counters for /metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub preemptions: u64,
    pub prefix: PrefixStats,
}

struct Seq {
    tokens: Vec<TokenId>,
    /// Positions whose keys and values are in `blocks`.
    computed: usize,
    blocks: Vec<BlockId>,
    /// Content hashes of the full blocks of `tokens`, as far as computed.
    hashes: Vec<BlockHash>,
    /// Leading blocks already registered in (or taken from) the prefix cache.
    registered: usize,
    /// In the step being planned.
    planned: bool,
}

impl Seq {
    /// Hashes of the first `n` full blocks.
    fn hashes_upto(&mut self, n: usize) -> &[BlockHash] {
        while self.hashes.len() < n {
            let i = self.hashes.len();
            let parent = self.hashes.last().copied();
            let h = BlockHash::of(
                parent,
                &self.tokens[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS],
            );
            self.hashes.push(h);
        }
        &self.hashes[..n]
    }
}

/// See the module docs.
pub struct Scheduler {
    limits: Limits,
    alloc: BlockAllocator,
    seqs: HashMap<SeqId, Seq>,
    /// In admission order.
    running: Vec<SeqId>,
    waiting: VecDeque<SeqId>,
    next_id: SeqId,
    preemptions: u64,
}

impl Scheduler {
    /// A scheduler over a pool of `n_blocks` blocks.
    pub fn new(n_blocks: usize, limits: Limits) -> Scheduler {
        Scheduler {
            limits,
            alloc: BlockAllocator::new(n_blocks),
            seqs: HashMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            next_id: 0,
            preemptions: 0,
        }
    }

    /// Queues a sequence with its prompt (at least one token).
    pub fn add(&mut self, prompt: Vec<TokenId>) -> SeqId {
        let id = self.next_id;
        self.next_id += 1;
        self.seqs.insert(
            id,
            Seq {
                tokens: prompt,
                computed: 0,
                blocks: Vec::new(),
                hashes: Vec::new(),
                registered: 0,
                planned: false,
            },
        );
        self.waiting.push_back(id);
        id
    }

    /// Nothing running or waiting.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    pub fn running(&self) -> &[SeqId] {
        &self.running
    }

    pub fn waiting(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.waiting.iter().copied()
    }

    pub fn allocator(&self) -> &BlockAllocator {
        &self.alloc
    }

    /// The allocator, for work outside the schedule (embeddings) that returns its blocks
    /// before the next step.
    pub fn allocator_mut(&mut self) -> &mut BlockAllocator {
        &mut self.alloc
    }

    pub fn counters(&self) -> Counters {
        Counters {
            preemptions: self.preemptions,
            prefix: self.alloc.stats(),
        }
    }

    /// A sequence's tokens (prompt and generated).
    pub fn tokens(&self, id: SeqId) -> &[TokenId] {
        self.seqs.get(&id).map_or(&[], |s| &s.tokens)
    }

    /// A sequence's block table.
    pub fn blocks(&self, id: SeqId) -> &[BlockId] {
        self.seqs.get(&id).map_or(&[], |s| &s.blocks)
    }

    /// Positions with keys and values in the cache, over running sequences.
    pub fn cached_tokens(&self) -> usize {
        self.running.iter().map(|id| self.seqs[id].computed).sum()
    }

    /// Plans the next step; see the module docs.
    pub fn schedule(&mut self) -> Plan {
        let mut plan = Plan::default();
        let mut budget = self.limits.step_tokens;
        for decoding in [true, false] {
            let order = self.running.clone();
            for id in order {
                if budget == 0 {
                    break;
                }
                // Preempted (or unservable) earlier in this pass.
                let Some(s) = self.seqs.get(&id).filter(|_| self.running.contains(&id)) else {
                    continue;
                };
                let left = s.tokens.len() - s.computed;
                if s.planned || (left == 1) != decoding {
                    continue;
                }
                let n = left.min(budget);
                let need = blocks_for(s.computed + n) - s.blocks.len();
                if self.make_room(id, need, &mut plan) {
                    self.plan(id, n, &mut plan);
                    budget -= n;
                }
            }
        }
        if plan.preempted.is_empty() {
            self.admit(&mut budget, &mut plan);
        }
        for it in &plan.items {
            if let Some(s) = self.seqs.get_mut(&it.id) {
                s.planned = false;
            }
        }
        plan
    }

    /// Frees `need` blocks for running sequence `id` by preempting the newest sequences not
    /// yet planned. False when `id` itself had to go (preempted, or unservable when it could
    /// not fit even alone).
    fn make_room(&mut self, id: SeqId, need: usize, plan: &mut Plan) -> bool {
        while self.alloc.free() < need {
            let victim = self
                .running
                .iter()
                .rev()
                .copied()
                .find(|v| *v != id && !self.seqs[v].planned);
            match victim {
                Some(v) => self.preempt(v, plan),
                None if self.alloc.used() == self.seqs[&id].blocks.len() => {
                    // Alone in the pool and still too long for it.
                    self.remove(id);
                    plan.unservable.push(id);
                    return false;
                }
                None => {
                    self.preempt(id, plan);
                    return false;
                }
            }
        }
        true
    }

    /// Adds `n` tokens of running sequence `id` to the plan, with the blocks they need.
    fn plan(&mut self, id: SeqId, n: usize, plan: &mut Plan) {
        let Some(s) = self.seqs.get_mut(&id) else {
            return;
        };
        while s.blocks.len() < blocks_for(s.computed + n) {
            match self.alloc.allocate() {
                Some(b) => s.blocks.push(b),
                None => return, // make_room guaranteed the blocks
            }
        }
        s.planned = true;
        plan.items.push(Scheduled {
            id,
            start: s.computed,
            len: n,
            yields_token: s.computed + n == s.tokens.len(),
        });
    }

    fn preempt(&mut self, id: SeqId, plan: &mut Plan) {
        self.running.retain(|r| *r != id);
        if let Some(s) = self.seqs.get_mut(&id) {
            self.alloc.release_all(&mut s.blocks);
            s.computed = 0;
            s.registered = 0;
        }
        self.waiting.push_front(id);
        plan.preempted.push(id);
        self.preemptions += 1;
    }

    /// Admits waiting sequences, head of the queue first; see the module docs.
    fn admit(&mut self, budget: &mut usize, plan: &mut Plan) {
        while *budget > 0 && self.running.len() < self.limits.max_seqs {
            let Some(&id) = self.waiting.front() else {
                return;
            };
            let total = self.alloc.total();
            let prefix = self.limits.prefix_caching;
            let Some(s) = self.seqs.get_mut(&id) else {
                self.waiting.pop_front();
                continue;
            };
            if blocks_for(s.tokens.len()) > total {
                self.waiting.pop_front();
                self.remove(id);
                plan.unservable.push(id);
                continue;
            }
            // Cached full blocks, leaving at least one token to compute for the logits.
            let mut hits: Vec<BlockHash> = Vec::new();
            if prefix {
                let usable = (s.tokens.len() - 1) / BLOCK_TOKENS;
                for h in s.hashes_upto(usable) {
                    if self.alloc.probe(h).is_none() {
                        break;
                    }
                    hits.push(*h);
                }
            }
            let hit_tokens = hits.len() * BLOCK_TOKENS;
            let n = (s.tokens.len() - hit_tokens).min(*budget);
            let fresh = blocks_for(hit_tokens + n) - hits.len();
            // Taking a cached block nobody holds also uses up a free block.
            let idle_hits = hits
                .iter()
                .filter(|h| self.alloc.probe(h).is_some_and(|b| self.alloc.refs(b) == 0))
                .count();
            let reserve = if self.running.is_empty() {
                0
            } else {
                self.limits.watermark_blocks
            };
            if self.alloc.free() < fresh + idle_hits + reserve {
                return;
            }
            if prefix {
                self.alloc.count_lookup(s.tokens.len(), hit_tokens);
            }
            for h in &hits {
                if let Some(b) = self.alloc.take_cached(h) {
                    s.blocks.push(b);
                }
            }
            s.computed = hit_tokens;
            s.registered = hits.len();
            self.waiting.pop_front();
            self.running.push(id);
            self.plan(id, n, plan);
            *budget -= n;
        }
    }

    /// Records that the planned chunks were computed, and registers the blocks they filled
    /// in the prefix cache.
    pub fn commit(&mut self, plan: &Plan) {
        for it in &plan.items {
            let Some(s) = self.seqs.get_mut(&it.id) else {
                continue; // finished or cancelled since
            };
            s.computed = it.start + it.len;
            if !self.limits.prefix_caching {
                continue;
            }
            let full = s.computed / BLOCK_TOKENS;
            if s.registered < full {
                let from = s.registered;
                let hashes = s.hashes_upto(full)[from..].to_vec();
                for (k, h) in hashes.into_iter().enumerate() {
                    self.alloc.register(s.blocks[from + k], h);
                }
                s.registered = full;
            }
        }
    }

    /// Appends a generated token to running sequence `id`: it is fed next step.
    pub fn push(&mut self, id: SeqId, token: TokenId) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.tokens.push(token);
        }
    }

    /// Ends sequence `id` (finished or cancelled, running or waiting): its blocks are released
    /// at once.
    pub fn finish(&mut self, id: SeqId) {
        self.running.retain(|r| *r != id);
        self.waiting.retain(|r| *r != id);
        self.remove(id);
    }

    fn remove(&mut self, id: SeqId) {
        self.running.retain(|r| *r != id);
        if let Some(mut s) = self.seqs.remove(&id) {
            self.alloc.release_all(&mut s.blocks);
        }
    }
}

//! The scheduler and the paged KV cache, driven step by step against the fake backend, whose
//! prediction after a context is a known function of the context read back through the block
//! tables (`backend::fake`): every generated token is checked against that function, so a
//! wrong, stale or shared-and-overwritten block fails the test where it happens.

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use switchyard_worker::backend::fake::FakeBackend;
use switchyard_worker::backend::{Backend, Output, SampleArgs, SeqStep, Want};
use switchyard_worker::kv::{BLOCK_TOKENS, blocks_for};
use switchyard_worker::sampling::{Rng, SamplingParams, argmax, sample};
use switchyard_worker::scheduler::{Limits, Plan, Scheduler, SeqId};

const VOCAB: usize = 50;

/// A scheduler, a fake backend, and what the engine does around them: greedy or seeded
/// sampling, and sequences that end after a number of generated tokens.
struct Harness {
    sched: Scheduler,
    be: FakeBackend,
    /// Generated tokens each live sequence should end at.
    target: HashMap<SeqId, usize>,
    generated: HashMap<SeqId, Vec<u32>>,
    /// Per sequence: sampling parameters and generator (absent: greedy).
    sampling: HashMap<SeqId, (SamplingParams, Rng)>,
    /// Finished sequences' outputs.
    done: HashMap<SeqId, Vec<u32>>,
    preempted: usize,
    unservable: Vec<SeqId>,
}

impl Harness {
    fn new(n_blocks: usize, limits: Limits) -> Harness {
        Harness::with(FakeBackend::new(n_blocks, VOCAB), limits)
    }

    fn with(be: FakeBackend, limits: Limits) -> Harness {
        Harness {
            sched: Scheduler::new(be.kv_blocks(), limits),
            be,
            target: HashMap::new(),
            generated: HashMap::new(),
            sampling: HashMap::new(),
            done: HashMap::new(),
            preempted: 0,
            unservable: Vec::new(),
        }
    }

    fn add(&mut self, prompt: Vec<u32>, n_gen: usize) -> SeqId {
        let id = self.sched.add(prompt);
        self.target.insert(id, n_gen);
        self.generated.insert(id, Vec::new());
        id
    }

    fn add_sampled(&mut self, prompt: Vec<u32>, n_gen: usize, seed: u64) -> SeqId {
        let id = self.add(prompt, n_gen);
        let p = SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            seed: Some(seed),
            ..Default::default()
        };
        self.sampling.insert(id, (p, Rng::new(Some(seed))));
        id
    }

    fn cancel(&mut self, id: SeqId) {
        self.sched.finish(id);
        self.target.remove(&id);
        self.generated.remove(&id);
    }

    /// One engine step; returns its plan.
    fn step(&mut self) -> Plan {
        let plan = self.sched.schedule();
        self.preempted += plan.preempted.len();
        for id in &plan.unservable {
            self.unservable.push(*id);
            self.target.remove(id);
            self.generated.remove(id);
        }
        // Sequences only ever write blocks they hold alone.
        for it in &plan.items {
            let blocks = self.sched.blocks(it.id);
            let written = &blocks[it.start / BLOCK_TOKENS..blocks_for(it.start + it.len)];
            for b in written {
                assert_eq!(
                    self.sched.allocator().refs(*b),
                    1,
                    "sequence {} writes shared block {b}",
                    it.id,
                );
            }
        }
        // Device sampling: the draws are taken before the step, as the engine does.
        let device = self.be.samples_on_device();
        let mut uniforms: HashMap<SeqId, f32> = HashMap::new();
        if device {
            for it in plan.items.iter().filter(|it| it.yields_token) {
                if let Some((p, r)) = self.sampling.get_mut(&it.id) {
                    uniforms.insert(it.id, r.uniform_for(p));
                }
            }
        }
        let outputs = {
            let steps: Vec<SeqStep<'_>> = plan
                .items
                .iter()
                .map(|it| {
                    let tokens = self.sched.tokens(it.id);
                    let want = match (it.yields_token, uniforms.get(&it.id)) {
                        (false, _) => Want::Nothing,
                        (true, Some(u)) => Want::Token(SampleArgs {
                            params: &self.sampling[&it.id].0,
                            history: tokens,
                            uniform: *u,
                        }),
                        (true, None) => Want::Last,
                    };
                    SeqStep {
                        blocks: self.sched.blocks(it.id),
                        start: it.start,
                        tokens: &tokens[it.start..it.start + it.len],
                        want,
                    }
                })
                .collect();
            self.be.forward(&steps).unwrap()
        };
        self.sched.commit(&plan);
        for (it, out) in plan.items.iter().zip(outputs) {
            if !it.yields_token {
                assert_eq!(out, Output::Nothing);
                continue;
            }
            let context = self.sched.tokens(it.id).to_vec();
            let token = match out {
                Output::Token(t) => t,
                Output::Logits(l) => {
                    assert_eq!(l, FakeBackend::logits(&context, VOCAB), "seq {}", it.id);
                    match self.sampling.get_mut(&it.id) {
                        Some((p, r)) => {
                            let u = r.uniform_for(p);
                            sample(&l, p, &context, u)
                        }
                        None => argmax(&l),
                    }
                }
                Output::Nothing | Output::Hidden(_) => panic!("seq {} wanted a token", it.id),
            };
            if !self.sampling.contains_key(&it.id) {
                assert_eq!(token, FakeBackend::next_token(&context, VOCAB));
            }
            let g = self.generated.get_mut(&it.id).unwrap();
            g.push(token);
            if g.len() >= self.target[&it.id] {
                let out = self.generated.remove(&it.id).unwrap();
                self.target.remove(&it.id);
                self.done.insert(it.id, out);
                self.sched.finish(it.id);
            } else {
                self.sched.push(it.id, token);
            }
        }
        plan
    }

    fn run_to_end(&mut self, max_steps: usize) {
        let mut steps = 0;
        while !self.sched.is_idle() {
            self.step();
            steps += 1;
            assert!(steps <= max_steps, "not done after {max_steps} steps");
        }
    }

    fn assert_no_leaks(&self) {
        let a = self.sched.allocator();
        a.check().unwrap();
        assert_eq!(a.free(), a.total(), "{} blocks still held", a.used());
    }
}

fn limits(max_seqs: usize, step_tokens: usize, n_blocks: usize) -> Limits {
    Limits {
        max_seqs,
        step_tokens,
        watermark_blocks: 1.min(n_blocks / 4),
        prefix_caching: true,
    }
}

/// A prompt of `n` tokens starting with one of a few shared prefixes, so prefix caching has
/// something to share.
fn prompt(rng: &mut Rng, n: usize) -> Vec<u32> {
    let family = (rng.next_u64() % 4) as u32;
    (0..n)
        .map(|i| {
            if i < 40 {
                (family * 7 + i as u32) % VOCAB as u32
            } else {
                (rng.next_u64() % VOCAB as u64) as u32
            }
        })
        .collect()
}

#[test]
fn no_block_leaks_after_ten_thousand_random_admit_cancel_finish() {
    let n_blocks = 24;
    let mut h = Harness::new(n_blocks, limits(8, 64, n_blocks));
    let mut rng = Rng::new(Some(1));
    let mut added = 0;
    let mut cancelled = 0;
    while added < 10_000 || !h.sched.is_idle() {
        let r = rng.next_u64() % 20;
        if r < 7 && added < 10_000 {
            let len = 1 + (rng.next_u64() % 90) as usize;
            let n_gen = 1 + (rng.next_u64() % 40) as usize;
            let p = prompt(&mut rng, len);
            if rng.next_u64().is_multiple_of(3) {
                h.add_sampled(p, n_gen, rng.next_u64());
            } else {
                h.add(p, n_gen);
            }
            added += 1;
        } else if r < 8 {
            // Cancel a live sequence, running or waiting.
            let live: Vec<SeqId> = h.target.keys().copied().collect();
            if !live.is_empty() {
                let id = live[(rng.next_u64() % live.len() as u64) as usize];
                h.cancel(id);
                cancelled += 1;
            }
        } else if !h.sched.is_idle() {
            h.step();
        }
        h.sched.allocator().check().unwrap();
    }
    h.assert_no_leaks();
    eprintln!(
        "{} finished, {cancelled} cancelled, {} preemptions, {} prompt tokens reused",
        h.done.len(),
        h.preempted,
        h.sched.counters().prefix.hit
    );
    assert!(
        h.preempted > 0,
        "the pool was never short: no preemption exercised"
    );
    assert!(h.sched.counters().prefix.hit > 0, "no prefix was shared");
    assert!(h.unservable.is_empty(), "{:?}", h.unservable);
    assert_eq!(h.done.len() + cancelled, 10_000);
}

/// Runs the same sequences in a pool of `n_blocks`; their outputs and the preemptions.
fn outputs(n_blocks: usize, device_sampling: bool) -> (Vec<Vec<u32>>, usize) {
    let be = FakeBackend::new(n_blocks, VOCAB);
    let be = if device_sampling {
        be.sampling_on_device()
    } else {
        be
    };
    let mut h = Harness::with(be, limits(8, 64, n_blocks));
    let mut rng = Rng::new(Some(2));
    let ids: Vec<SeqId> = (0..8)
        .map(|i| {
            let p = prompt(&mut rng, 20 + i * 7);
            if i % 2 == 0 {
                h.add(p, 60)
            } else {
                h.add_sampled(p, 60, i as u64)
            }
        })
        .collect();
    h.run_to_end(10_000);
    h.assert_no_leaks();
    (
        ids.iter().map(|id| h.done[id].clone()).collect(),
        h.preempted,
    )
}

#[test]
fn preemption_and_resume_give_the_same_tokens_as_an_unpreempted_run() {
    let (free, p0) = outputs(400, false);
    assert_eq!(p0, 0, "the large pool should not preempt");
    let (tight, p1) = outputs(14, false);
    assert!(p1 > 0, "the small pool should preempt");
    assert_eq!(tight, free);
}

#[test]
fn sampling_on_the_device_gives_the_tokens_of_host_sampling() {
    let (host, _) = outputs(400, false);
    let (device, _) = outputs(400, true);
    assert_eq!(device, host);
    let (device_tight, p) = outputs(14, true);
    assert!(p > 0);
    assert_eq!(device_tight, host);
}

#[test]
fn a_shared_prefix_is_prefilled_once() {
    let mut h = Harness::new(100, limits(4, 512, 100));
    let shared: Vec<u32> = (0..64).map(|i| (i * 3 % VOCAB) as u32).collect();
    let with = |tail: &[u32]| -> Vec<u32> { shared.iter().chain(tail).copied().collect() };
    // The first request computes the prefix; the second, arriving while the first still
    // runs, and the third, after it finished, reuse its blocks.
    let a = h.add(with(&[1, 2, 3]), 5);
    h.step();
    let after_first = h.be.computed();
    assert_eq!(after_first, 67);
    let b = h.add(with(&[4, 5, 6, 7]), 5);
    h.step();
    assert_eq!(
        h.be.computed() - after_first,
        1 + 4,
        "a's decode token and b's tail"
    );
    h.run_to_end(100);
    let before = h.be.computed();
    let c = h.add(with(&[9]), 1);
    h.run_to_end(100);
    assert_eq!(h.be.computed() - before, 1, "only c's last token");
    let stats = h.sched.counters().prefix;
    assert_eq!(stats.hit, 128);
    assert_eq!(stats.queried, 67 + 68 + 65);
    for id in [a, b, c] {
        assert!(h.done.contains_key(&id));
    }
    h.assert_no_leaks();
    // Whole prompts in the cache still compute their last token (the logits come from it):
    // a 64-token prompt reuses three of its four blocks.
    let before = h.be.computed();
    h.add(shared.clone(), 1);
    h.run_to_end(100);
    assert_eq!(h.be.computed() - before, 16);
}

#[test]
fn long_prompts_are_chunked_and_running_streams_keep_decoding() {
    let mut h = Harness::new(200, limits(4, 40, 200));
    let mut rng = Rng::new(Some(3));
    let streaming = h.add(prompt(&mut rng, 10), 200);
    h.step();
    let long = h.add(prompt(&mut rng, 300), 3);
    let mut chunks = Vec::new();
    while !h.done.contains_key(&long) {
        let plan = h.step();
        let fed: usize = plan.items.iter().map(|it| it.len).sum();
        assert!(fed <= 40, "step fed {fed} tokens over a budget of 40");
        let decoded = plan
            .items
            .iter()
            .any(|it| it.id == streaming && it.len == 1);
        assert!(
            decoded,
            "the running stream stalled while a prompt was prefilled"
        );
        if let Some(it) = plan.items.iter().find(|it| it.id == long && it.len > 1) {
            chunks.push(it.len);
        }
    }
    // The 300-token prompt went in 39-token chunks beside the stream's decode token.
    assert!(chunks.len() >= 7, "{chunks:?}");
    assert!(chunks.iter().all(|&c| c <= 39), "{chunks:?}");
    assert_eq!(chunks.iter().sum::<usize>(), 300);
    h.cancel(streaming);
    h.run_to_end(100);
    h.assert_no_leaks();
}

#[test]
fn waiting_requests_are_served_in_arrival_order_and_a_large_one_is_not_starved() {
    // Room for about 10 blocks in use; a stream of small requests keeps arriving while a large
    // one waits at the head of the queue.
    let mut h = Harness::new(12, limits(3, 64, 12));
    let mut rng = Rng::new(Some(4));
    let first = h.add(prompt(&mut rng, 30), 40);
    let big = h.add(prompt(&mut rng, 120), 4);
    let mut admitted: Vec<SeqId> = Vec::new();
    let mut smalls = Vec::new();
    for step in 0..400 {
        if step % 3 == 0 && smalls.len() < 60 {
            smalls.push(h.add(prompt(&mut rng, 8), 4));
        }
        if h.sched.is_idle() {
            break;
        }
        let plan = h.step();
        for it in &plan.items {
            if it.start == 0 && !admitted.contains(&it.id) {
                admitted.push(it.id);
            }
        }
    }
    assert!(h.done.contains_key(&big), "the large request starved");
    // Admission follows arrival: the large one before every small one that came after it.
    let pos = |id| admitted.iter().position(|x| *x == id).unwrap();
    assert!(pos(first) < pos(big));
    for w in smalls.iter().filter(|s| admitted.contains(s)) {
        assert!(
            pos(big) < pos(*w),
            "small request {w} overtook the large one"
        );
    }
    let mut sorted = admitted.clone();
    sorted.sort();
    assert_eq!(admitted, sorted, "admission out of arrival order");
}

#[test]
fn cancelling_frees_blocks_at_once_and_a_request_too_large_for_the_pool_is_refused() {
    let mut h = Harness::new(10, limits(2, 64, 10));
    let mut rng = Rng::new(Some(5));
    let a = h.add(prompt(&mut rng, 50), 100);
    h.step();
    h.step();
    assert_eq!(h.sched.allocator().used(), 4);
    h.cancel(a);
    assert_eq!(h.sched.allocator().used(), 0, "blocks held after cancel");
    let huge = h.add(prompt(&mut rng, 10 * BLOCK_TOKENS + 1), 1);
    h.step();
    assert_eq!(h.unservable, vec![huge]);
    // A request that fits at first but outgrows the whole pool is ended, not looped on.
    let grows = h.add(prompt(&mut rng, 100), 1000);
    h.run_to_end(1000);
    assert_eq!(h.unservable, vec![huge, grows]);
    h.assert_no_leaks();
}

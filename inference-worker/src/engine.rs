//! The engine: a request queue and one thread that steps the model over every running
//! sequence.
//!
//! The HTTP server never touches the model. It sends a `GenRequest` down a channel and reads
//! `Event`s back. The engine thread loops:
//!
//! ```text
//!   take new requests ─► drop cancelled ones ─► Scheduler::schedule ─► Backend::forward
//!        ▲                  (blocks freed)        (who runs, how many     (one batch)
//!        │                                         tokens, which blocks)        │
//!        └── events: text, stop strings, limits ◄── sample, in parallel ◄───────┘
//! ```
//!
//! New requests join between steps and finished ones leave (continuous batching); prompts are
//! fed in chunks mixed with other sequences' decode tokens under one token budget per step;
//! the KV cache is paged and shared by prefix (`scheduler`, `kv`). Sampling runs in parallel
//! across sequences on the thread pool, each from its own seeded generator, so a seeded
//! request gives the same tokens whatever else shares its batch. A request whose event
//! receiver is gone (client disconnected) is dropped before the next step and its blocks
//! freed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use crate::backend::{Backend, Output, SampleArgs, SeqStep, Solo, Want};
use crate::grammar::{Constraint, Grammar, TokenTrie};
use crate::sampling::{Rng, SamplingParams, logprobs, sample};
use crate::scheduler::{Limits, Plan, Scheduler, SeqId};
use crate::tokenizer::{StreamDecoder, TokenId, Tokenizer};

/// One generation job.
pub struct GenRequest {
    pub prompt: Vec<TokenId>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Number of top alternatives per token, when logprobs were asked for.
    pub logprobs: Option<usize>,
    pub events: UnboundedSender<Event>,
    /// When the server accepted the request (queue time and TTFT count from here).
    pub arrived: std::time::Instant,
    /// A grammar the output must follow (structured output, forced tool calls): tokens are
    /// masked to it and generation ends when its value is complete.
    pub constraint: Option<Arc<Grammar>>,
    /// Render control tokens as their text (tool-call markers such as `<|python_tag|>` are
    /// control tokens the tool-call parser must see).
    pub special_text: bool,
}

/// How token states pool into one embedding (`--pooling`, else the GGUF's `pooling_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// The average over every token (the default for causal models).
    #[default]
    Mean,
    /// The last token's state.
    Last,
    /// The first token's state.
    Cls,
}

impl std::str::FromStr for Pooling {
    type Err = String;

    fn from_str(s: &str) -> Result<Pooling, String> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "last" => Ok(Pooling::Last),
            "cls" => Ok(Pooling::Cls),
            _ => Err(format!("`{s}`: expected `mean`, `last` or `cls`")),
        }
    }
}

impl Pooling {
    /// From a GGUF `pooling_type` (llama.cpp's numbering); `None` for none/unknown.
    pub fn from_gguf(t: u32) -> Option<Pooling> {
        match t {
            1 => Some(Pooling::Mean),
            2 => Some(Pooling::Cls),
            3 => Some(Pooling::Last),
            _ => None,
        }
    }
}

/// Embeddings for some inputs: one L2-normalised vector per input, or why not.
pub struct EmbedRequest {
    pub inputs: Vec<Vec<TokenId>>,
    pub reply: UnboundedSender<Result<Vec<Vec<f32>>, String>>,
}

/// Work for the engine thread.
enum Job {
    Generate(GenRequest),
    Embed(EmbedRequest),
}

/// Log-probability information for one generated token.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the engine reports for a request.
#[derive(Debug)]
pub enum Event {
    /// New text (may be empty while held back for a possible stop string).
    Token {
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
        timings: Timings,
    },
}

/// When a request passed each phase, for its trace span.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Accepted by the server (`GenRequest::arrived`).
    pub arrived: Instant,
    /// Given a slot in the running batch: the end of its queue time.
    pub admitted: Instant,
    /// Its first token was sampled: the end of prefill (absent when none was).
    pub first_token: Option<Instant>,
    /// Generation ended.
    pub finished: Instant,
}

/// Counters exported on /metrics.
#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub active: AtomicU64,
    pub queued: AtomicU64,
    /// Requests cancelled by their client disconnecting.
    pub cancelled: AtomicU64,
    pub steps: AtomicU64,
    /// Tokens held in the KV cache for the running sequences.
    pub kv_tokens: AtomicU64,
    /// Blocks of the KV cache pool held by running sequences.
    pub kv_blocks_used: AtomicU64,
    /// Blocks in the KV cache pool.
    pub kv_blocks_total: AtomicU64,
    /// Sequences preempted for KV cache space (to be recomputed).
    pub preemptions: AtomicU64,
    /// Prompt tokens looked up in the prefix cache at admission.
    pub prefix_queried: AtomicU64,
    /// Of those, tokens whose keys and values were reused instead of computed.
    pub prefix_hits: AtomicU64,
    /// Generated tokens per second over the last second of work (0 when idle), as f64 bits.
    pub tokens_per_second: AtomicU64,
    /// Microseconds the engine spent working (forward steps and embeddings), so a gateway
    /// can price tokens by the GPU time they took (`gpu_hour_usd`).
    pub busy_micros: AtomicU64,
    /// Time from arrival to the first generated token.
    pub ttft: Histogram,
    /// Time from arrival to admission into the running batch.
    pub queue_time: Histogram,
}

/// A Prometheus histogram with fixed bucket bounds (seconds), updated without locks.
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative; summed when rendered).
    counts: Vec<AtomicU64>,
    /// Observations above the last bound.
    over: AtomicU64,
    sum_micros: AtomicU64,
}

/// The OpenTelemetry GenAI buckets for `gen_ai.server.time_to_first_token`.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new(TTFT_BUCKETS)
    }
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            over: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        match self.bounds.iter().position(|b| secs <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The histogram in Prometheus text format under `name`.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.over.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// How the engine schedules.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// The context size: prompt and completion of one request together, at most.
    pub n_ctx: usize,
    /// Sequences in the running batch at most.
    pub max_batch: usize,
    /// Tokens fed per step at most (decode tokens and prompt chunks together).
    pub step_tokens: usize,
    /// Share the keys and values of equal prompt prefixes.
    pub prefix_caching: bool,
    /// How embeddings pool token states.
    pub pooling: Pooling,
}

impl EngineOptions {
    /// Context `n_ctx`, `max_batch` sequences, 512 tokens per step, prefix caching on.
    pub fn new(n_ctx: usize, max_batch: usize) -> EngineOptions {
        EngineOptions {
            n_ctx,
            max_batch,
            step_tokens: 512,
            prefix_caching: true,
            pooling: Pooling::Mean,
        }
    }
}

/// Handle for submitting work; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Job>,
    pub tokenizer: Arc<Tokenizer>,
    pub metrics: Arc<Metrics>,
    pub n_ctx: usize,
}

/// The engine's side of one request.
struct Active {
    req: GenRequest,
    rng: Rng,
    decoder: StreamDecoder,
    /// Text decoded but not yet sent (could be the start of a stop string).
    held: String,
    /// Tokens generated, the end token included.
    generated: usize,
    /// When it first joined the running batch.
    admitted: Option<Instant>,
    /// When its first token was sampled (TTFT recorded).
    first_token: Option<Instant>,
    /// The request's grammar state, when it has one.
    constraint: Option<Constraint>,
}

impl Engine {
    /// Starts the engine thread over `backend`.
    pub fn start(
        backend: Box<dyn Backend>,
        tokenizer: Arc<Tokenizer>,
        opts: EngineOptions,
    ) -> Engine {
        let (tx, rx) = mpsc::channel::<Job>();
        let metrics = Arc::new(Metrics::default());
        let m = metrics.clone();
        let tk = tokenizer.clone();
        std::thread::Builder::new()
            .name("switchyard-engine".into())
            .spawn(move || Loop::new(backend, tk, m, opts).run(rx))
            .ok();
        Engine {
            tx,
            tokenizer,
            metrics,
            n_ctx: opts.n_ctx,
        }
    }

    /// Queues a request; false if the engine is gone.
    pub fn submit(&self, req: GenRequest) -> bool {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Job::Generate(req)).is_ok()
    }

    /// Queues an embedding job; false if the engine is gone.
    pub fn embed(&self, req: EmbedRequest) -> bool {
        self.tx.send(Job::Embed(req)).is_ok()
    }
}

/// The engine thread's state.
struct Loop {
    backend: Box<dyn Backend>,
    tok: Arc<Tokenizer>,
    m: Arc<Metrics>,
    n_ctx: usize,
    sched: Scheduler,
    active: HashMap<SeqId, Active>,
    /// Throughput window for `tokens_per_second`: its start and the tokens since.
    window: (Instant, u64),
    /// The vocabulary's byte trie, built for the first constrained request.
    trie: Option<Arc<TokenTrie>>,
    step_tokens: usize,
    pooling: Pooling,
}

/// A sequence's token from this step, with its log-probabilities when asked for.
struct Picked {
    id: SeqId,
    token: TokenId,
    logprob: Option<TokenLogprob>,
}

impl Loop {
    fn new(
        backend: Box<dyn Backend>,
        tok: Arc<Tokenizer>,
        m: Arc<Metrics>,
        opts: EngineOptions,
    ) -> Loop {
        let n_blocks = backend.kv_blocks();
        let mut limits = Limits::new(opts.max_batch, opts.step_tokens, n_blocks);
        limits.prefix_caching = opts.prefix_caching;
        m.kv_blocks_total.store(n_blocks as u64, Ordering::Relaxed);
        Loop {
            backend,
            tok,
            m,
            n_ctx: opts.n_ctx,
            sched: Scheduler::new(n_blocks, limits),
            active: HashMap::new(),
            window: (Instant::now(), 0),
            trie: None,
            step_tokens: opts.step_tokens,
            pooling: opts.pooling,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            // Block only when there is nothing to do.
            if self.sched.is_idle() {
                match rx.recv() {
                    Ok(j) => self.job(j),
                    Err(_) => return,
                }
            }
            while let Ok(j) = rx.try_recv() {
                self.job(j);
            }
            self.drop_cancelled();
            if !self.sched.is_idle() {
                let t = Instant::now();
                self.step();
                self.busy(t);
            }
            self.update_gauges();
        }
    }

    fn job(&mut self, j: Job) {
        match j {
            Job::Generate(r) => self.add(r),
            Job::Embed(e) => {
                let t = Instant::now();
                let res = self.embed(&e.inputs);
                self.busy(t);
                let _ = e.reply.send(res);
            }
        }
    }

    /// Embeds `inputs` between steps, as many sequences per forward pass as the step's token
    /// budget allows, on blocks borrowed from the pool and returned at once.
    fn embed(&mut self, inputs: &[Vec<TokenId>]) -> Result<Vec<Vec<f32>>, String> {
        let mut out = Vec::with_capacity(inputs.len());
        let mut i = 0;
        while i < inputs.len() {
            let mut n = 0;
            let mut j = i;
            while j < inputs.len() && (j == i || n + inputs[j].len() <= self.step_tokens) {
                n += inputs[j].len();
                j += 1;
            }
            let mut solos: Vec<Solo> = (i..j).map(|_| Solo::default()).collect();
            let res = {
                let mut seqs: Vec<(&mut Solo, &[TokenId])> = solos
                    .iter_mut()
                    .zip(&inputs[i..j])
                    .map(|(s, t)| (s, t.as_slice()))
                    .collect();
                Solo::step(
                    &mut *self.backend,
                    self.sched.allocator_mut(),
                    &mut seqs,
                    Want::Hidden,
                )
            };
            for s in &mut solos {
                s.release(self.sched.allocator_mut());
            }
            let outs = res.map_err(|e| e.to_string())?;
            for (o, input) in outs.into_iter().zip(&inputs[i..j]) {
                let Output::Hidden(h) = o else {
                    return Err("the backend returned no hidden states".into());
                };
                out.push(pool(&h, h.len() / input.len().max(1), self.pooling));
            }
            i = j;
        }
        Ok(out)
    }

    fn add(&mut self, req: GenRequest) {
        let rng = Rng::new(req.params.seed);
        let constraint = req.constraint.clone().map(|g| {
            let tok = &self.tok;
            let trie = self
                .trie
                .get_or_insert_with(|| Arc::new(TokenTrie::new(tok)))
                .clone();
            Constraint::new(g, trie)
        });
        let id = self.sched.add(req.prompt.clone());
        self.active.insert(
            id,
            Active {
                req,
                rng,
                decoder: StreamDecoder::default(),
                held: String::new(),
                generated: 0,
                admitted: None,
                first_token: None,
                constraint,
            },
        );
    }

    /// Ends the sequences whose client went away; their blocks are free for the next step.
    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.req.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.end(id);
            self.m.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes a sequence from the engine and the scheduler.
    fn end(&mut self, id: SeqId) {
        self.sched.finish(id);
        if let Some(a) = self.active.remove(&id)
            && a.admitted.is_none()
        {
            self.m.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// One scheduled forward step, its sampling and its events.
    fn step(&mut self) {
        let plan = self.sched.schedule();
        self.account(&plan);
        if plan.items.is_empty() {
            return;
        }
        let uniforms = self.device_draws(&plan);
        let outputs = {
            let steps: Vec<SeqStep<'_>> = plan
                .items
                .iter()
                .map(|it| {
                    let tokens = self.sched.tokens(it.id);
                    let want = match uniforms.get(&it.id) {
                        _ if !it.yields_token => Want::Nothing,
                        Some(u) => Want::Token(SampleArgs {
                            params: &self.active[&it.id].req.params,
                            history: tokens,
                            uniform: *u,
                        }),
                        None => Want::Last,
                    };
                    SeqStep {
                        blocks: self.sched.blocks(it.id),
                        start: it.start,
                        tokens: &tokens[it.start..it.start + it.len],
                        want,
                    }
                })
                .collect();
            self.backend.forward(&steps)
        };
        self.m.steps.fetch_add(1, Ordering::Relaxed);
        let outputs = match outputs {
            Ok(o) => o,
            Err(e) => {
                // A malformed step is a bug: end its sequences rather than loop on it.
                eprintln!("switchyard-worker: engine step failed, ending its requests: {e}");
                for it in &plan.items {
                    self.end(it.id);
                }
                return;
            }
        };
        self.sched.commit(&plan);
        let picked = self.pick(&plan, outputs);
        for p in picked {
            self.emit(p);
        }
    }

    /// Metrics for what the plan did; sequences that can never fit end with `length`.
    fn account(&mut self, plan: &Plan) {
        let now = Instant::now();
        for it in &plan.items {
            if let Some(a) = self.active.get_mut(&it.id)
                && a.admitted.is_none()
            {
                a.admitted = Some(now);
                self.m.queued.fetch_sub(1, Ordering::Relaxed);
                self.m.queue_time.observe(now - a.req.arrived);
                self.m
                    .prompt_tokens
                    .fetch_add(a.req.prompt.len() as u64, Ordering::Relaxed);
            }
        }
        self.m
            .preemptions
            .fetch_add(plan.preempted.len() as u64, Ordering::Relaxed);
        for &id in &plan.unservable {
            if let Some(mut a) = self.active.remove(&id) {
                if a.admitted.is_none() {
                    self.m.queued.fetch_sub(1, Ordering::Relaxed);
                    a.admitted = Some(now);
                }
                finish(&mut a, Finish::Length);
            }
        }
    }

    /// For a backend that samples on the device: each sampling sequence's next draw.
    fn device_draws(&mut self, plan: &Plan) -> HashMap<SeqId, f32> {
        if !self.backend.samples_on_device() {
            return HashMap::new();
        }
        plan.items
            .iter()
            .filter(|it| it.yields_token)
            .filter_map(|it| {
                let a = self.active.get_mut(&it.id)?;
                // Log-probabilities and grammars need the logits on the host.
                if a.req.logprobs.is_some() || a.constraint.is_some() {
                    return None;
                }
                Some((it.id, a.rng.uniform_for(&a.req.params)))
            })
            .collect()
    }

    /// The next token of every sequence the step yielded one for: sampled from the logits in
    /// parallel across sequences, or as the device sampled it.
    fn pick(&mut self, plan: &Plan, outputs: Vec<Output>) -> Vec<Picked> {
        let sched = &self.sched;
        let tok = &*self.tok;
        let mut work: Vec<(SeqId, Output, &mut Active)> = Vec::new();
        let mut by_id: HashMap<SeqId, Output> = plan
            .items
            .iter()
            .zip(outputs)
            .filter(|(it, _)| it.yields_token)
            .map(|(it, o)| (it.id, o))
            .collect();
        for (id, a) in self.active.iter_mut() {
            if let Some(o) = by_id.remove(id) {
                work.push((*id, o, a));
            }
        }
        work.into_par_iter()
            .filter_map(|(id, out, a)| {
                let (token, logits) = match out {
                    Output::Token(t) => (t, None),
                    Output::Logits(l) if a.constraint.is_some() => {
                        // Nothing fits (a grammar the vocabulary cannot spell): end the answer.
                        let t = constrained_sample(&l, a, sched.tokens(id))
                            .unwrap_or_else(|| tok.eog.first().copied().unwrap_or(0));
                        (t, Some(l))
                    }
                    Output::Logits(l) => {
                        let u = a.rng.uniform_for(&a.req.params);
                        (sample(&l, &a.req.params, sched.tokens(id), u), Some(l))
                    }
                    Output::Nothing | Output::Hidden(_) => return None,
                };
                let logprob = match (a.req.logprobs, &logits) {
                    (Some(n), Some(l)) => Some(token_logprob(tok, l, token, n)),
                    _ => None,
                };
                Some(Picked { id, token, logprob })
            })
            .collect()
    }

    /// Delivers one picked token: end of generation, text, stop strings, limits.
    fn emit(&mut self, p: Picked) {
        let Some(a) = self.active.get_mut(&p.id) else {
            return;
        };
        self.m.generated_tokens.fetch_add(1, Ordering::Relaxed);
        self.window.1 += 1;
        if a.first_token.is_none() {
            let now = Instant::now();
            a.first_token = Some(now);
            self.m.ttft.observe(now - a.req.arrived);
        }
        let n_tokens = self.sched.tokens(p.id).len() + 1;
        let over = n_tokens >= self.n_ctx;
        match deliver(a, &self.tok, p.token, p.logprob, over) {
            Delivered::More => self.sched.push(p.id, p.token),
            Delivered::Done => {
                self.active.remove(&p.id);
                self.sched.finish(p.id);
            }
            Delivered::Gone => {
                self.m.cancelled.fetch_add(1, Ordering::Relaxed);
                self.active.remove(&p.id);
                self.sched.finish(p.id);
            }
        }
    }

    fn busy(&self, since: Instant) {
        let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.m.busy_micros.fetch_add(us, Ordering::Relaxed);
    }

    fn update_gauges(&mut self) {
        let m = &self.m;
        let alloc = self.sched.allocator();
        let c = self.sched.counters();
        m.preemptions.store(c.preemptions, Ordering::Relaxed);
        m.prefix_queried.store(c.prefix.queried, Ordering::Relaxed);
        m.prefix_hits.store(c.prefix.hit, Ordering::Relaxed);
        m.kv_tokens
            .store(self.sched.cached_tokens() as u64, Ordering::Relaxed);
        m.kv_blocks_used
            .store(alloc.used() as u64, Ordering::Relaxed);
        let running = self.sched.running().len();
        let elapsed = self.window.0.elapsed();
        if running == 0 {
            m.tokens_per_second.store(0f64.to_bits(), Ordering::Relaxed);
            self.window = (Instant::now(), 0);
        } else if elapsed >= Duration::from_secs(1) {
            let rate = self.window.1 as f64 / elapsed.as_secs_f64();
            m.tokens_per_second.store(rate.to_bits(), Ordering::Relaxed);
            self.window = (Instant::now(), 0);
        }
        // Last: a reader that sees no sequences sees the gauges above cleared.
        m.active.store(running as u64, Ordering::Relaxed);
    }
}

/// One embedding from `rows` token states of `d` values: pooled, then scaled to unit length.
fn pool(rows: &[f32], d: usize, how: Pooling) -> Vec<f32> {
    if d == 0 {
        return Vec::new();
    }
    let n = rows.len() / d;
    let mut v = match how {
        Pooling::Mean => {
            let mut v = vec![0f32; d];
            for r in rows.chunks_exact(d) {
                for (a, x) in v.iter_mut().zip(r) {
                    *a += x;
                }
            }
            let inv = 1.0 / n.max(1) as f32;
            v.iter_mut().for_each(|a| *a *= inv);
            v
        }
        Pooling::Last => rows[(n.max(1) - 1) * d..].to_vec(),
        Pooling::Cls => rows[..d.min(rows.len())].to_vec(),
    };
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
    v
}

/// The next token under the request's grammar, which takes it: the drawn token when it fits
/// (and leaves room to finish the value in the tokens left), else one drawn again from the
/// masked logits; when the budget is only just enough, the shortest way to close. `None`
/// only if nothing fits (a grammar the vocabulary cannot spell).
fn constrained_sample(l: &[f32], a: &mut Active, history: &[TokenId]) -> Option<TokenId> {
    let remaining = a.req.max_tokens.saturating_sub(a.generated).max(1);
    let c = a.constraint.as_mut()?;
    let p = &a.req.params;
    let pick = match c.forced(remaining) {
        Some(t) => t,
        None => {
            let t = sample(l, p, history, a.rng.uniform_for(p));
            if c.allows(t, remaining - 1) {
                t
            } else {
                let bits = c.mask();
                let masked: Vec<f32> = l
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| {
                        if bits[i / 64] >> (i % 64) & 1 == 1 {
                            x
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                    .collect();
                let t = sample(&masked, p, history, a.rng.uniform_for(p));
                if c.allows(t, remaining - 1) {
                    t
                } else {
                    c.forced(0)?
                }
            }
        }
    };
    c.accept(pick).then_some(pick)
}

/// The log-probability of `token` and the `n` most likely alternatives, with their text.
fn token_logprob(tok: &Tokenizer, logits: &[f32], token: TokenId, n: usize) -> TokenLogprob {
    let (lp, top) = logprobs(logits, token, n);
    let b = tok.token_bytes(token, true);
    TokenLogprob {
        token: String::from_utf8_lossy(&b).into_owned(),
        bytes: b,
        logprob: lp,
        top: top
            .into_iter()
            .map(|(t, l)| {
                let b = tok.token_bytes(t, true);
                (String::from_utf8_lossy(&b).into_owned(), b, l)
            })
            .collect(),
    }
}

/// What became of a delivered token.
enum Delivered {
    /// The sequence goes on with it.
    More,
    /// The sequence ended (its `Done` is sent).
    Done,
    /// The client is gone.
    Gone,
}

/// Sends what remains held and the `Done` event.
fn finish(a: &mut Active, how: Finish) {
    let rest = std::mem::take(&mut a.held) + &a.decoder.finish();
    if !rest.is_empty() {
        let _ = a.req.events.send(Event::Token {
            text: rest,
            logprob: None,
        });
    }
    let now = Instant::now();
    let _ = a.req.events.send(Event::Done {
        finish: how,
        prompt_tokens: a.req.prompt.len(),
        completion_tokens: a.generated,
        timings: Timings {
            arrived: a.req.arrived,
            admitted: a.admitted.unwrap_or(now),
            first_token: a.first_token,
            finished: now,
        },
    });
}

/// Handles one sampled token: end-of-generation, text, stop strings, limits. `at_context_end`:
/// the context has no room for another token.
fn deliver(
    a: &mut Active,
    tok: &Tokenizer,
    id: TokenId,
    logprob: Option<TokenLogprob>,
    at_context_end: bool,
) -> Delivered {
    // The end token counts as generated, as in OpenAI's usage.
    a.generated += 1;
    if tok.is_eog(id) {
        finish(a, Finish::Stop);
        return Delivered::Done;
    }
    let special = a.req.special_text;
    a.held
        .push_str(&a.decoder.push_bytes(&tok.token_bytes(id, special)));
    // A stop string anywhere in the held text ends generation; the stop text is not sent.
    if let Some((pos, _)) = a
        .req
        .stop
        .iter()
        .filter_map(|st| a.held.find(st.as_str()).map(|p| (p, st.len())))
        .min()
    {
        let text = a.held[..pos].to_string();
        a.held.clear();
        let _ = a.req.events.send(Event::Token { text, logprob });
        a.decoder = StreamDecoder::default();
        finish(a, Finish::Stop);
        return Delivered::Done;
    }
    // Hold back the longest tail that could still grow into a stop string.
    let keep = a
        .req
        .stop
        .iter()
        .map(|st| {
            (1..st.len().min(a.held.len() + 1))
                .rev()
                .find(|&k| {
                    a.held.is_char_boundary(a.held.len() - k)
                        && st.starts_with(&a.held[a.held.len() - k..])
                })
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let cut = a.held.len() - keep;
    let text: String = a.held.drain(..cut).collect();
    if a.req.events.send(Event::Token { text, logprob }).is_err() {
        return Delivered::Gone;
    }
    // A grammar's value is complete: nothing may follow it.
    if a.constraint.as_ref().is_some_and(Constraint::is_done) {
        finish(a, Finish::Stop);
        return Delivered::Done;
    }
    if a.generated >= a.req.max_tokens || at_context_end {
        finish(a, Finish::Length);
        return Delivered::Done;
    }
    Delivered::More
}

//! The engine: a request queue and one scheduler thread that steps every active sequence.
//!
//! The HTTP server never touches the model. It sends a `GenRequest` down a channel and reads
//! `Event`s back. The scheduler keeps a set of active sequences (at most `max_batch`), each with
//! its own `KvCache`; every step it builds one batch from all of them (a chunk of prompt for
//! sequences still prefilling, the last sampled token for the others), runs one `forward`, then
//! samples, detokenizes, checks stop strings and limits per sequence. New requests join between
//! steps and finished ones leave, which is continuous batching; a GPU backend plugs in by
//! providing the same `forward`. A request whose event receiver is gone (client disconnected)
//! is dropped at the next step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::model::{KvCache, Model, SeqInput};
use crate::sampling::{Rng, SamplingParams, logprobs, sample};
use crate::tokenizer::{StreamDecoder, TokenId, Tokenizer};

/// Prompt tokens one sequence may feed per step, so long prompts do not stall other streams.
const PREFILL_CHUNK: usize = 256;

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
}

/// Log-probability information for one generated token.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(String, Vec<u8>, f32)>,
}

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
    pub cancelled: AtomicU64,
    pub steps: AtomicU64,
    /// Tokens held in the KV caches of the running sequences.
    pub kv_tokens: AtomicU64,
    /// What the KV caches can hold at most: `max_batch` sequences of `n_ctx` tokens.
    pub kv_capacity: AtomicU64,
    /// Generated tokens per second over the last second of work (0 when idle), as f64 bits.
    pub tokens_per_second: AtomicU64,
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

/// Handle for submitting work; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<GenRequest>,
    pub tokenizer: Arc<Tokenizer>,
    pub metrics: Arc<Metrics>,
    pub n_ctx: usize,
}

struct Seq {
    req: GenRequest,
    cache: KvCache,
    /// Prompt tokens fed so far.
    fed: usize,
    generated: Vec<TokenId>,
    history: Vec<TokenId>,
    rng: Rng,
    decoder: StreamDecoder,
    /// Text decoded but not yet sent (could be the start of a stop string).
    held: String,
    last: Option<TokenId>,
    done: bool,
    cancelled: bool,
    /// When it joined the running batch.
    admitted: Instant,
    /// When its first token was sampled (TTFT recorded).
    first_token: Option<Instant>,
}

impl Engine {
    /// Starts the scheduler thread over `model`.
    pub fn start(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        n_ctx: usize,
        max_batch: usize,
    ) -> Engine {
        let (tx, rx) = mpsc::channel::<GenRequest>();
        let metrics = Arc::new(Metrics::default());
        metrics
            .kv_capacity
            .store((max_batch.max(1) * n_ctx) as u64, Ordering::Relaxed);
        let m = metrics.clone();
        let tk = tokenizer.clone();
        std::thread::Builder::new()
            .name("switchyard-scheduler".into())
            .spawn(move || scheduler(model, tk, rx, m, max_batch.max(1)))
            .ok();
        Engine {
            tx,
            tokenizer,
            metrics,
            n_ctx,
        }
    }

    /// Queues a request; false if the scheduler is gone.
    pub fn submit(&self, req: GenRequest) -> bool {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(req).is_ok()
    }
}

fn scheduler(
    model: Arc<Model>,
    tok: Arc<Tokenizer>,
    rx: mpsc::Receiver<GenRequest>,
    m: Arc<Metrics>,
    max_batch: usize,
) {
    let mut active: Vec<Seq> = Vec::new();
    // Throughput window for `tokens_per_second`.
    let mut window = (Instant::now(), 0u64);
    let mut waiting: std::collections::VecDeque<GenRequest> = Default::default();
    loop {
        // Block only when there is nothing to do.
        if active.is_empty() && waiting.is_empty() {
            match rx.recv() {
                Ok(r) => waiting.push_back(r),
                Err(_) => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            waiting.push_back(r);
        }
        while active.len() < max_batch {
            let Some(req) = waiting.pop_front() else {
                break;
            };
            m.queued.fetch_sub(1, Ordering::Relaxed);
            let admitted = Instant::now();
            m.queue_time.observe(admitted - req.arrived);
            m.prompt_tokens
                .fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
            let rng = Rng::new(req.params.seed);
            active.push(Seq {
                history: req.prompt.clone(),
                cache: KvCache::new(&model.cfg),
                fed: 0,
                generated: Vec::new(),
                rng,
                decoder: StreamDecoder::default(),
                held: String::new(),
                last: None,
                done: false,
                cancelled: false,
                admitted,
                first_token: None,
                req,
            });
        }
        // Drop sequences whose client went away.
        active.retain(|s| {
            let gone = s.req.events.is_closed();
            if gone {
                m.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            !gone
        });
        if active.is_empty() {
            // Gauges before `active`: a reader that sees no sequences sees them cleared.
            m.kv_tokens.store(0, Ordering::Relaxed);
            m.tokens_per_second.store(0f64.to_bits(), Ordering::Relaxed);
            window = (Instant::now(), 0);
            m.active.store(0, Ordering::Relaxed);
            continue;
        }
        m.active.store(active.len() as u64, Ordering::Relaxed);

        // One batch: a prompt chunk or the last token of each sequence.
        let mut inputs: Vec<Vec<TokenId>> = Vec::with_capacity(active.len());
        for s in &active {
            if s.fed < s.req.prompt.len() {
                let end = (s.fed + PREFILL_CHUNK).min(s.req.prompt.len());
                inputs.push(s.req.prompt[s.fed..end].to_vec());
            } else {
                inputs.push(s.last.into_iter().collect());
            }
        }
        let logits = {
            let mut batch: Vec<SeqInput<'_>> = active
                .iter_mut()
                .zip(&inputs)
                .map(|(s, t)| SeqInput {
                    cache: &mut s.cache,
                    tokens: t,
                    all_logits: false,
                })
                .collect();
            model.forward(&mut batch)
        };
        m.steps.fetch_add(1, Ordering::Relaxed);
        for ((s, inp), lg) in active.iter_mut().zip(&inputs).zip(logits) {
            if s.fed < s.req.prompt.len() {
                s.fed += inp.len();
                if s.fed < s.req.prompt.len() {
                    continue; // still prefilling
                }
            }
            if lg.is_empty() {
                s.done = true;
                continue;
            }
            let id = sample(&lg, &s.req.params, &s.history, &mut s.rng);
            m.generated_tokens.fetch_add(1, Ordering::Relaxed);
            window.1 += 1;
            if s.first_token.is_none() {
                let now = Instant::now();
                s.first_token = Some(now);
                m.ttft.observe(now - s.req.arrived);
            }
            step_sequence(s, id, &lg, &tok);
        }
        let n_cancelled = active.iter().filter(|s| s.cancelled).count();
        m.cancelled.fetch_add(n_cancelled as u64, Ordering::Relaxed);
        active.retain(|s| !s.done);
        let cached: usize = active.iter().map(|s| s.fed + s.generated.len()).sum();
        m.kv_tokens.store(cached as u64, Ordering::Relaxed);
        let elapsed = window.0.elapsed();
        if active.is_empty() {
            m.tokens_per_second.store(0f64.to_bits(), Ordering::Relaxed);
        } else if elapsed >= std::time::Duration::from_secs(1) {
            let rate = window.1 as f64 / elapsed.as_secs_f64();
            m.tokens_per_second.store(rate.to_bits(), Ordering::Relaxed);
            window = (Instant::now(), 0);
        }
        m.active.store(active.len() as u64, Ordering::Relaxed);
    }
}

/// Handles one sampled token: end-of-generation, text, stop strings, limits.
fn step_sequence(s: &mut Seq, id: TokenId, logits: &[f32], tok: &Tokenizer) {
    let n_prompt = s.req.prompt.len();
    let finish = |s: &mut Seq, finish: Finish| {
        let _ = s.req.events.send(Event::Done {
            finish,
            prompt_tokens: n_prompt,
            completion_tokens: s.generated.len(),
            timings: Timings {
                arrived: s.req.arrived,
                admitted: s.admitted,
                first_token: s.first_token,
                finished: Instant::now(),
            },
        });
        s.done = true;
    };
    if tok.is_eog(id) {
        let rest = std::mem::take(&mut s.held) + &s.decoder.finish();
        if !rest.is_empty() {
            let _ = s.req.events.send(Event::Token {
                text: rest,
                logprob: None,
            });
        }
        // The end token counts as generated, as in OpenAI's usage.
        s.generated.push(id);
        finish(s, Finish::Stop);
        return;
    }
    s.generated.push(id);
    s.history.push(id);
    s.last = Some(id);
    let lp = s.req.logprobs.map(|n| {
        let (lp, top) = logprobs(logits, id, n);
        let b = tok.token_bytes(id, true);
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
    });
    s.held.push_str(&s.decoder.push(tok, id));
    // A stop string anywhere in the held text ends generation; the stop text is not sent.
    if let Some((pos, _)) = s
        .req
        .stop
        .iter()
        .filter_map(|st| s.held.find(st.as_str()).map(|p| (p, st.len())))
        .min()
    {
        let text = s.held[..pos].to_string();
        s.held.clear();
        let _ = s.req.events.send(Event::Token { text, logprob: lp });
        finish(s, Finish::Stop);
        return;
    }
    // Hold back the longest tail that could still grow into a stop string.
    let keep = s
        .req
        .stop
        .iter()
        .map(|st| {
            (1..st.len().min(s.held.len() + 1))
                .rev()
                .find(|&k| {
                    s.held.is_char_boundary(s.held.len() - k)
                        && st.starts_with(&s.held[s.held.len() - k..])
                })
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let cut = s.held.len() - keep;
    let text: String = s.held.drain(..cut).collect();
    if s.req
        .events
        .send(Event::Token { text, logprob: lp })
        .is_err()
    {
        // The receiver is gone: the client disconnected.
        s.done = true;
        s.cancelled = true;
        return;
    }
    if s.generated.len() >= s.req.max_tokens || s.cache.len() + 1 >= s.cache_limit() {
        let rest = std::mem::take(&mut s.held) + &s.decoder.finish();
        if !rest.is_empty() {
            let _ = s.req.events.send(Event::Token {
                text: rest,
                logprob: None,
            });
        }
        finish(s, Finish::Length);
    }
}

impl Seq {
    fn cache_limit(&self) -> usize {
        // The server already bounded prompt + max_tokens by the context size.
        self.req.prompt.len() + self.req.max_tokens + 1
    }
}

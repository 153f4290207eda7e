//! A backend without a model, for testing the scheduler and engine exactly.
//!
//! Its "KV cache" stores the token at every position of every block, and its prediction after
//! a context is a hash of the whole context read back *through the block table*: the logits
//! are zero except for one token, [`FakeBackend::next_token`] of (the sequence's tokens, its
//! length). So a block table that points at a wrong, stale or unwritten block changes the
//! answer or fails the step, and a test can compute the right answer for any sequence without
//! a model. It also records what each step computed, so tests can count prefill work (a shared
//! prefix computed once), chunk sizes and token budgets.

use super::{Backend, BackendError, Output, SeqStep, Want};
use crate::kv::{BLOCK_TOKENS, blocks_for};
use crate::model::Config;
use crate::sampling::sample;
use crate::tokenizer::TokenId;

/// What one step fed: per sequence, (first position, tokens).
pub type StepLog = Vec<(usize, usize)>;

/// See the module docs.
pub struct FakeBackend {
    cfg: Config,
    n_blocks: usize,
    /// The token stored at each (block, slot); `None` when never written.
    slots: Vec<Option<TokenId>>,
    on_device: bool,
    /// Each step takes at least this long, as a real model's would.
    step_time: std::time::Duration,
    /// Every step's work, in order.
    pub log: Vec<StepLog>,
}

impl FakeBackend {
    /// A pool of `n_blocks` blocks and a vocabulary of `n_vocab` tokens.
    pub fn new(n_blocks: usize, n_vocab: usize) -> FakeBackend {
        FakeBackend {
            cfg: Config {
                arch: "fake".into(),
                n_embd: 0,
                n_layer: 1,
                n_head: 1,
                n_head_kv: 1,
                head_dim: 1,
                n_ff: 0,
                n_vocab,
                n_ctx_train: 1 << 20,
                rms_eps: 0.0,
                rope_base: 0.0,
                n_rot: 0,
                rope_linear: 1.0,
                pooling: None,
                n_expert: 0,
                n_expert_used: 0,
            },
            n_blocks,
            slots: vec![None; n_blocks * BLOCK_TOKENS],
            on_device: false,
            step_time: std::time::Duration::ZERO,
            log: Vec::new(),
        }
    }

    /// Makes every step take at least `d`, so an engine test can act between steps.
    pub fn with_step_time(mut self, d: std::time::Duration) -> FakeBackend {
        self.step_time = d;
        self
    }

    /// Answers `Want::Token` with the sampled token, as a GPU backend that samples on the
    /// device does (using `sampling::sample`, the host's exact rule).
    pub fn sampling_on_device(mut self) -> FakeBackend {
        self.on_device = true;
        self
    }

    /// The token the fake model predicts after `context`.
    pub fn next_token(context: &[TokenId], n_vocab: usize) -> TokenId {
        // FNV-1a over the tokens and the length, then a final mix.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for t in context.iter().copied().chain([context.len() as u32]) {
            for b in t.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h ^= h >> 29;
        (h % n_vocab as u64) as TokenId
    }

    /// The logits after `context`: 10 for the predicted token, 0 elsewhere.
    pub fn logits(context: &[TokenId], n_vocab: usize) -> Vec<f32> {
        let mut l = vec![0f32; n_vocab];
        l[Self::next_token(context, n_vocab) as usize] = 10.0;
        l
    }

    /// Tokens computed over all steps.
    pub fn computed(&self) -> usize {
        self.log.iter().flatten().map(|(_, n)| n).sum()
    }

    fn slot(&self, blocks: &[u32], p: usize) -> usize {
        blocks[p / BLOCK_TOKENS] as usize * BLOCK_TOKENS + p % BLOCK_TOKENS
    }
}

impl Backend for FakeBackend {
    fn describe(&self) -> String {
        format!("fake ({} blocks)", self.n_blocks)
    }

    fn config(&self) -> &Config {
        &self.cfg
    }

    fn kv_blocks(&self) -> usize {
        self.n_blocks
    }

    fn kv_block_bytes(&self) -> usize {
        BLOCK_TOKENS * 4
    }

    fn samples_on_device(&self) -> bool {
        self.on_device
    }

    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Output>, BackendError> {
        let n_vocab = self.cfg.n_vocab;
        let mut out = Vec::with_capacity(batch.len());
        for (i, s) in batch.iter().enumerate() {
            let end = s.start + s.tokens.len();
            if s.blocks.len() < blocks_for(end) {
                return Err(BackendError::Step(format!(
                    "sequence {i}: {} blocks cannot hold {end} positions",
                    s.blocks.len()
                )));
            }
            if let Some(b) = s.blocks.iter().find(|b| **b as usize >= self.n_blocks) {
                return Err(BackendError::Step(format!(
                    "sequence {i}: block {b} outside the pool"
                )));
            }
            let mut context = Vec::with_capacity(end);
            for p in 0..s.start {
                let t = self.slots[self.slot(s.blocks, p)].ok_or_else(|| {
                    BackendError::Step(format!(
                        "sequence {i}: position {p} read before it was written"
                    ))
                })?;
                context.push(t);
            }
            for (j, &t) in s.tokens.iter().enumerate() {
                let at = self.slot(s.blocks, s.start + j);
                self.slots[at] = Some(t);
                context.push(t);
            }
            out.push(match s.want {
                _ if s.tokens.is_empty() => Output::Nothing,
                Want::Nothing => Output::Nothing,
                Want::Last => Output::Logits(Self::logits(&context, n_vocab)),
                Want::All => Output::Logits(
                    (s.start + 1..=end)
                        .flat_map(|k| Self::logits(&context[..k], n_vocab))
                        .collect(),
                ),
                Want::Token(args) if self.on_device => {
                    let l = Self::logits(&context, n_vocab);
                    Output::Token(sample(&l, args.params, args.history, args.uniform))
                }
                Want::Token(_) => Output::Logits(Self::logits(&context, n_vocab)),
                // Each token's "hidden state": its logits over its context, which depend on
                // every earlier token as a model's do.
                Want::Hidden => Output::Hidden(
                    (s.start + 1..=end)
                        .flat_map(|k| Self::logits(&context[..k], n_vocab))
                        .collect(),
                ),
            });
        }
        self.log
            .push(batch.iter().map(|s| (s.start, s.tokens.len())).collect());
        Ok(out)
    }
}

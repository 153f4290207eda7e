//! The seam between the engine and the hardware that runs the model.
//!
//! A [`Backend`] holds a model's weights and the physical pool of the paged KV cache, and
//! runs one forward step over a batch of sequences. The engine describes each sequence by
//! its block table (where its positions live in the pool, see `kv`), the position of its first
//! new token and the new tokens; the backend writes their keys and values into those blocks
//! and returns logits, or the sampled token when it samples on the device. How a block is laid
//! out in memory, and in what precision, stays private to the backend: the scheduler only
//! counts blocks.
//!
//! ```text
//!   engine ── SeqStep { blocks, start, tokens, want } ──► Backend::forward ──► Output per sequence
//!                                                          ├─ cpu::CpuBackend   (this build)
//!                                                          ├─ cuda              (the `cuda` feature)
//!                                                          └─ fake::FakeBackend (engine tests)
//! ```
//!
//! [`load`] is the one place a `--device` turns into a backend.

pub mod cpu;
mod cuda;
pub mod fake;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::gguf::Gguf;
use crate::kv::{BlockAllocator, BlockId};
use crate::model::Config;
use crate::sampling::SamplingParams;
use crate::tokenizer::TokenId;

/// Where the model runs (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Device, BackendError> {
        let bad = || BackendError::Device(format!("`{s}`: expected `cpu` or `cuda:N`"));
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(Device::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The precision keys and values are stored in (`--kv-cache-type`, llama.cpp's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheType {
    /// Half precision, as llama.cpp's default cache (the CPU path is bit-identical to it).
    #[default]
    F16,
    /// 8-bit blocks of 32 with an f16 scale: half the memory and memory traffic of f16.
    Q8_0,
}

impl FromStr for KvCacheType {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<KvCacheType, BackendError> {
        match s {
            "f16" => Ok(KvCacheType::F16),
            "q8_0" => Ok(KvCacheType::Q8_0),
            _ => Err(BackendError::Device(format!(
                "`{s}`: expected `f16` or `q8_0`"
            ))),
        }
    }
}

impl fmt::Display for KvCacheType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvCacheType::F16 => "f16",
            KvCacheType::Q8_0 => "q8_0",
        })
    }
}

/// How to build a backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct BackendOptions {
    pub device: Device,
    /// Bytes for the KV cache pool (`--kv-cache-mb`); `None` sizes it from free memory.
    pub kv_bytes: Option<usize>,
    pub kv_type: KvCacheType,
}

/// What a sequence wants back from a step.
#[derive(Debug, Clone, Copy)]
pub enum Want<'a> {
    /// Nothing: a chunk of a prompt whose end is still to come.
    Nothing,
    /// The logits of its last new token.
    Last,
    /// The logits of every new token (tests, prompt log-probabilities).
    All,
    /// The final hidden state (after the output norm) of every new token: embeddings.
    Hidden,
    /// The next token, sampled on the device when the backend can
    /// ([`Backend::samples_on_device`]); others answer with the last token's logits.
    Token(SampleArgs<'a>),
}

/// What sampling one token needs, so a device samples exactly as `sampling::sample` does.
#[derive(Debug, Clone, Copy)]
pub struct SampleArgs<'a> {
    pub params: &'a SamplingParams,
    /// Prompt and generated tokens, for the repetition penalties.
    pub history: &'a [TokenId],
    /// The sequence's next uniform draw in [0, 1) (unused when greedy).
    pub uniform: f32,
}

/// One sequence's part of a step.
#[derive(Debug, Clone, Copy)]
pub struct SeqStep<'a> {
    /// Its block table: covers positions `0..start + tokens.len()`.
    pub blocks: &'a [BlockId],
    /// Positions already in the cache: `tokens[0]` goes to position `start`.
    pub start: usize,
    pub tokens: &'a [TokenId],
    pub want: Want<'a>,
}

/// A sequence's result of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Nothing,
    /// `n_vocab` logits per token asked for.
    Logits(Vec<f32>),
    /// `n_embd` values per new token (`Want::Hidden`).
    Hidden(Vec<f32>),
    Token(TokenId),
}

/// Failures of a backend: at load, or a malformed step.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "--device {device}: this build has no CUDA backend (rebuild with `--features {feature}`, or use --device cpu)"
    )]
    NotCompiled {
        device: Device,
        feature: &'static str,
    },
    #[error("{0}")]
    Device(String),
    #[error("{0}")]
    Load(String),
    #[error("step: {0}")]
    Step(String),
}

/// The hardware a model runs on; see the module docs.
pub trait Backend: Send {
    /// One line for the startup log: device, threads, KV cache format and size.
    fn describe(&self) -> String;

    /// The model's hyper-parameters.
    fn config(&self) -> &Config;

    /// Blocks of `kv::BLOCK_TOKENS` positions the KV cache pool holds.
    fn kv_blocks(&self) -> usize;

    /// Bytes one block takes (all layers, keys and values).
    fn kv_block_bytes(&self) -> usize;

    /// Whether `Want::Token` is answered with `Output::Token`.
    fn samples_on_device(&self) -> bool {
        false
    }

    /// Runs every sequence's new tokens through the model, storing their keys and values in
    /// the blocks of its table, and answers what each wants. Sequences never share a written
    /// block; they may share the blocks before `start`.
    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Output>, BackendError>;
}

/// A sequence fed straight to a backend, outside the engine and its scheduler (tests,
/// benchmarks, diagnostics): its block table grows from an allocator as the sequence does.
#[derive(Debug, Default)]
pub struct Solo {
    pub blocks: Vec<BlockId>,
    /// Positions in the cache.
    pub len: usize,
}

impl Solo {
    /// Runs `seqs` (each with its new tokens) as one batch, every one wanting `want`.
    pub fn step(
        backend: &mut dyn Backend,
        alloc: &mut BlockAllocator,
        seqs: &mut [(&mut Solo, &[TokenId])],
        want: Want<'_>,
    ) -> Result<Vec<Output>, BackendError> {
        for (s, tokens) in seqs.iter_mut() {
            while s.blocks.len() < crate::kv::blocks_for(s.len + tokens.len()) {
                let b = alloc
                    .allocate()
                    .ok_or_else(|| BackendError::Step("the KV cache is full".into()))?;
                s.blocks.push(b);
            }
        }
        let steps: Vec<SeqStep<'_>> = seqs
            .iter()
            .map(|(s, tokens)| SeqStep {
                blocks: &s.blocks,
                start: s.len,
                tokens,
                want,
            })
            .collect();
        let out = backend.forward(&steps)?;
        for (s, tokens) in seqs.iter_mut() {
            s.len += tokens.len();
        }
        Ok(out)
    }

    /// Feeds this sequence alone; its logits (empty when `want` asks for none).
    pub fn feed(
        &mut self,
        backend: &mut dyn Backend,
        alloc: &mut BlockAllocator,
        tokens: &[TokenId],
        want: Want<'_>,
    ) -> Result<Vec<f32>, BackendError> {
        let out = Solo::step(backend, alloc, &mut [(self, tokens)], want)?;
        Ok(match out.into_iter().next() {
            Some(Output::Logits(l)) => l,
            _ => Vec::new(),
        })
    }

    /// Returns the sequence's blocks to `alloc`.
    pub fn release(&mut self, alloc: &mut BlockAllocator) {
        alloc.release_all(&mut self.blocks);
        self.len = 0;
    }
}

/// The one switch point from `--device` to a backend: loads the weights of `gguf` (reporting
/// bytes read so far and in all to `read`) and sizes the KV cache pool.
pub fn load(
    gguf: Arc<Gguf>,
    opts: &BackendOptions,
    read: &mut dyn FnMut(usize, usize),
) -> Result<Box<dyn Backend>, BackendError> {
    match opts.device {
        Device::Cpu => Ok(Box::new(cpu::CpuBackend::load(gguf, opts, read)?)),
        Device::Cuda(ordinal) => cuda::load(ordinal, gguf, opts, read),
    }
}

/// Whether this build can drive `device` (checked before anything is loaded).
pub fn available(device: Device) -> Result<(), BackendError> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(ordinal) => cuda::available(ordinal),
    }
}

/// The KV budget when none is given: a quarter of the memory available now, at most 8 GiB
/// (pages are committed as blocks are first used, so an idle pool costs address space only).
pub fn default_kv_bytes() -> usize {
    const FALLBACK: usize = 1 << 30;
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map(|kb| kb.saturating_mul(1024));
    avail.map_or(FALLBACK, |a| (a / 4).clamp(64 << 20, 8 << 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_cache_types_parse() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert!("gpu".parse::<Device>().is_err());
        assert!("cuda:x".parse::<Device>().is_err());
        assert_eq!("q8_0".parse::<KvCacheType>().unwrap(), KvCacheType::Q8_0);
        assert!("q4_0".parse::<KvCacheType>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_names_it() {
        let g =
            Arc::new(Gguf::from_bytes(crate::gguf::writer::Writer::default().finish()).unwrap());
        let opts = BackendOptions {
            device: Device::Cuda(0),
            ..Default::default()
        };
        let e = load(g, &opts, &mut |_, _| {}).err().unwrap().to_string();
        assert!(e.contains("--features cuda"), "{e}");
        assert!(e.contains("cuda:0"), "{e}");
    }
}

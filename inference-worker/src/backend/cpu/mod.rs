//! The CPU backend: weights memory-mapped in their GGUF formats, the KV cache in a pool in
//! main memory, and the forward pass spread over rayon's thread pool.
//!
//! `kv_pool` lays the blocks out, `attention` is the kernel that reads them, `ops` holds the
//! matmul, norm and quantization steps, `forward` strings the layers together, and `team` is
//! the threads they run on (as many as rayon's global pool, which `--threads` sets). Tokens
//! are never sampled here: the engine samples from the logits, in parallel across sequences.

mod attention;
mod forward;
mod kv_pool;
mod ops;
mod team;

use std::sync::Arc;

use super::{Backend, BackendError, BackendOptions, KvCacheType, Output, SeqStep};
use crate::gguf::Gguf;
use crate::model::{Config, Model};

/// The model on the CPU.
pub struct CpuBackend {
    model: Model,
    pool: kv_pool::KvPool,
    team: team::Team,
}

impl CpuBackend {
    /// Loads the weights of `gguf`, reads them once into memory (reporting bytes done and
    /// in all to `read`), and allocates a KV pool of `opts.kv_bytes` (default: sized from free
    /// memory).
    pub fn load(
        gguf: Arc<Gguf>,
        opts: &BackendOptions,
        read: &mut dyn FnMut(usize, usize),
    ) -> Result<CpuBackend, BackendError> {
        let model = Model::load(gguf).map_err(|e| BackendError::Load(e.to_string()))?;
        model.warm_up(read);
        let bytes = opts.kv_bytes.unwrap_or_else(super::default_kv_bytes);
        CpuBackend::new(model, opts.kv_type, bytes)
    }

    /// A backend over an already loaded model with a KV pool of `kv_bytes`.
    pub fn new(
        model: Model,
        kv_type: KvCacheType,
        kv_bytes: usize,
    ) -> Result<CpuBackend, BackendError> {
        let pool =
            kv_pool::KvPool::new(&model.cfg, kv_type, kv_bytes).map_err(BackendError::Load)?;
        let team = team::Team::new(rayon::current_num_threads());
        Ok(CpuBackend { model, pool, team })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        let per_block = self.kv_block_bytes();
        format!(
            "cpu ({} threads), {} KV cache of {} blocks ({:.0} MiB, {} tokens)",
            self.team.threads(),
            self.pool.ty,
            self.pool.n_blocks,
            (self.pool.n_blocks * per_block) as f64 / (1 << 20) as f64,
            self.pool.n_blocks * crate::kv::BLOCK_TOKENS,
        )
    }

    fn config(&self) -> &Config {
        &self.model.cfg
    }

    fn kv_blocks(&self) -> usize {
        self.pool.n_blocks
    }

    fn kv_block_bytes(&self) -> usize {
        kv_pool::KvPool::block_bytes(&self.model.cfg, self.pool.ty)
    }

    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Output>, BackendError> {
        forward::forward((&self.model, &self.team), &mut self.pool, batch)
    }
}

//! The CPU backend's physical KV cache: one pool of blocks per layer, keys and values apart.
//!
//! A block holds `BLOCK_TOKENS` positions. Within a layer's pool a block is laid out head by
//! head, so the attention kernel reads one head's 16 positions as one contiguous run:
//!
//! ```text
//!   keys[layer] = [block 0: [head 0: 16 rows of head_dim] [head 1: ...] ...] [block 1: ...] ...
//! ```
//!
//! A row is `head_dim` f16 values, or `head_dim / 32` ggml `q8_0` blocks (34 bytes each: an
//! f16 scale and 32 signed bytes) with `--kv-cache-type q8_0`. The pools are zero-allocated,
//! so the operating system commits a block's pages only when a block is first written.

use half::f16;

use super::super::KvCacheType;
use crate::kv::{BLOCK_TOKENS, BlockId};
use crate::model::Config;
use crate::quant::QK;

/// Bytes of one q8_0 block of 32 values.
const Q8_0_BYTES: usize = 34;

/// A layer's keys or values.
pub(crate) enum Rows {
    /// f16 bits, `head_dim` per row.
    F16(Vec<u16>),
    /// ggml q8_0 blocks, `head_dim / 32` per row.
    Q8(Vec<u8>),
}

/// The KV cache pool of every layer.
pub(crate) struct KvPool {
    pub(crate) ty: KvCacheType,
    pub(crate) n_blocks: usize,
    pub(crate) n_head_kv: usize,
    pub(crate) head_dim: usize,
    pub(crate) keys: Vec<Rows>,
    pub(crate) values: Vec<Rows>,
}

impl KvPool {
    /// Bytes of one row (one position of one head) in format `ty`.
    fn row_bytes(ty: KvCacheType, head_dim: usize) -> usize {
        match ty {
            KvCacheType::F16 => head_dim * 2,
            KvCacheType::Q8_0 => head_dim / QK * Q8_0_BYTES,
        }
    }

    /// Bytes of one block over all layers, keys and values.
    pub(crate) fn block_bytes(cfg: &Config, ty: KvCacheType) -> usize {
        cfg.n_layer * 2 * cfg.n_head_kv * BLOCK_TOKENS * Self::row_bytes(ty, cfg.head_dim)
    }

    /// A pool of as many blocks as fit in `bytes`; an error names what does not fit.
    pub(crate) fn new(cfg: &Config, ty: KvCacheType, bytes: usize) -> Result<KvPool, String> {
        if ty == KvCacheType::Q8_0 && !cfg.head_dim.is_multiple_of(QK) {
            return Err(format!(
                "--kv-cache-type q8_0 needs a head size that is a multiple of {QK} (this model's is {})",
                cfg.head_dim
            ));
        }
        let per_block = Self::block_bytes(cfg, ty);
        let n_blocks = bytes / per_block.max(1);
        if n_blocks == 0 {
            return Err(format!(
                "a KV cache of {bytes} bytes holds no block ({per_block} bytes each for this model)"
            ));
        }
        let layer_elems = n_blocks * cfg.n_head_kv * BLOCK_TOKENS * cfg.head_dim;
        let rows = || match ty {
            KvCacheType::F16 => Rows::F16(vec![0u16; layer_elems]),
            KvCacheType::Q8_0 => Rows::Q8(vec![0u8; layer_elems / QK * Q8_0_BYTES]),
        };
        Ok(KvPool {
            ty,
            n_blocks,
            n_head_kv: cfg.n_head_kv,
            head_dim: cfg.head_dim,
            keys: (0..cfg.n_layer).map(|_| rows()).collect(),
            values: (0..cfg.n_layer).map(|_| rows()).collect(),
        })
    }

    /// Index of the row of `head` at `slot` of `block`, in rows.
    #[inline]
    pub(crate) fn row(&self, block: BlockId, head: usize, slot: usize) -> usize {
        (block as usize * self.n_head_kv + head) * BLOCK_TOKENS + slot
    }

    /// Stores one position's keys and values (all heads, `n_head_kv * head_dim` each) of
    /// `layer` at `slot` of `block`, in the pool's format.
    pub(crate) fn write(
        &mut self,
        layer: usize,
        block: BlockId,
        slot: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let hd = self.head_dim;
        for h in 0..self.n_head_kv {
            let r = self.row(block, h, slot);
            let (kh, vh) = (&k[h * hd..(h + 1) * hd], &v[h * hd..(h + 1) * hd]);
            store(&mut self.keys[layer], r, hd, kh);
            store(&mut self.values[layer], r, hd, vh);
        }
    }
}

fn store(rows: &mut Rows, r: usize, hd: usize, x: &[f32]) {
    match rows {
        Rows::F16(d) => {
            for (o, v) in d[r * hd..(r + 1) * hd].iter_mut().zip(x) {
                *o = f16::from_f32(*v).to_bits();
            }
        }
        Rows::Q8(d) => {
            let rb = hd / QK * Q8_0_BYTES;
            quantize_q8_0(x, &mut d[r * rb..(r + 1) * rb]);
        }
    }
}

/// ggml's reference q8_0 quantizer: per 32 values, scale `amax / 127` (stored as f16) and
/// the values divided by it, rounded to nearest.
pub(crate) fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (q, v) in ob[2..].iter_mut().zip(xb) {
            *q = (v * id).round() as i8 as u8;
        }
    }
}

/// One q8_0 row back to f32.
pub(crate) fn dequantize_q8_0(b: &[u8], out: &mut [f32]) {
    for (ob, xb) in out.chunks_exact_mut(QK).zip(b.chunks_exact(Q8_0_BYTES)) {
        let d = f16::from_le_bytes([xb[0], xb[1]]).to_f32();
        for (o, q) in ob.iter_mut().zip(&xb[2..]) {
            *o = f32::from(*q as i8) * d;
        }
    }
}

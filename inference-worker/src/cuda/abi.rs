//! The kernels' parameter blocks, field for field as `cuda/common.cuh` declares them (which
//! also documents each field). Device addresses are `u64`; under the CPU twin they are host
//! addresses. Both sides assert the same sizes, so a field added on one side only fails to
//! build (C++) or fails `sizes_match_common_cuh` (Rust).

/// A repacked weight matrix: plane `k` of row `r` at `p[k] + r * stride[k]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Mat {
    pub p: [u64; 4],
    pub stride: [u32; 4],
    pub rows: u32,
    pub cols: u32,
    pub fmt: u32,
    pub pad: u32,
}

/// Activations quantized to 8-bit blocks of 32 (`quant::Q8Act` per token), read or written.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Act {
    pub qs: u64,
    pub d: u64,
    pub isum: u64,
    pub s: u64,
    pub f: u64,
    pub n: u32,
    pub n_tok: u32,
}

/// GEMV and prefill GEMM: `out = W·a` (mode 0) or `out += W·a` (mode 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MatmulParams {
    pub w: Mat,
    pub a: Act,
    pub out: u64,
    pub out_stride: u32,
    pub mode: u32,
}

/// RMSNorm (norm = 1) or copy (norm = 0), then quantization.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NormParams {
    pub x: u64,
    pub g: u64,
    pub out: Act,
    pub x_stride: u32,
    pub eps: f32,
    pub norm: u32,
    pub pad: u32,
}

/// A layer's paged KV pool and where each token's positions live in it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct KvRef {
    pub kv: u64,
    pub pos: u64,
    pub tok_seq: u64,
    pub tables: u64,
    pub table_stride: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    /// 0: f16 pool, 1: q8_0 pool ([`KvType`]).
    pub q8: u32,
}

/// Where projected q, k, v go: RoPE on q and k, q to `q_out`, k and v into the paged pool.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct QkvOut {
    pub kv: KvRef,
    pub q_out: u64,
    pub rope: u64,
    pub q_dim: u32,
    pub kv_dim: u32,
    pub n_rot: u32,
    pub pad: u32,
}

/// Fused QKV projection with RoPE and the KV write.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct QkvParams {
    pub w: Mat,
    pub a: Act,
    pub o: QkvOut,
    pub row0: u32,
    pub pad: u32,
}

/// The QKV epilogue after the prefill GEMM.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RopeKvParams {
    pub y: u64,
    pub o: QkvOut,
    pub y_stride: u32,
    pub n_tok: u32,
}

/// The gate‖up epilogue after the prefill GEMM.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SwigluParams {
    pub y: u64,
    pub out: Act,
    pub y_stride: u32,
    pub pad: u32,
}

/// Fused gate‖up projection with SwiGLU and quantization.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GateUpParams {
    pub w: Mat,
    pub a: Act,
    pub out: Act,
}

/// Split-K paged flash-decode.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AttnParams {
    pub q: u64,
    pub kv: KvRef,
    pub part: u64,
    pub n_head: u32,
    pub n_split: u32,
    pub blocks_per_split: u32,
    pub scale: f32,
}

/// Merge of the attention splits, quantized for the output projection.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CombineParams {
    pub part: u64,
    pub out: Act,
    pub n_head: u32,
    pub n_split: u32,
}

/// Embedding lookup.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedParams {
    pub w: Mat,
    pub ids: u64,
    pub out: u64,
    pub n_tok: u32,
    pub pad: u32,
}

/// Argmax (k ignored) and top-k per row of logits.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TopKParams {
    pub x: u64,
    pub out_val: u64,
    pub out_idx: u64,
    pub n: u32,
    pub stride: u32,
    pub k: u32,
    pub pad: u32,
}

/// One row's sampling parameters (`sampling::sample` without penalties).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SampleRow {
    /// 1: argmax.
    pub greedy: u32,
    /// `1.0 / temperature` as the CPU sampler computes it.
    pub inv_t: f32,
    pub top_p: f32,
    pub min_p: f32,
    pub top_k: u32,
    pub uniform: f32,
    pub pad: [u32; 2],
}

/// The token `sampling::sample` picks, per row of logits.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleParams {
    pub x: u64,
    /// `SampleRow` per row.
    pub rows: u64,
    pub out_idx: u64,
    pub n: u32,
    pub stride: u32,
}

/// Element type of the paged KV pool (layouts in `cuda/common.cuh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvType {
    F16,
    Q8_0,
}

impl KvType {
    /// Bytes of one K (or V) tile: 16 positions of one KV head.
    pub fn tile_bytes(self, head_dim: usize) -> usize {
        match self {
            KvType::F16 => KV_BLOCK * head_dim * 2,
            KvType::Q8_0 => KV_BLOCK * head_dim + KV_BLOCK * (head_dim / 32) * 2,
        }
    }
    /// Bytes of one physical block of one layer (K and V of every KV head).
    pub fn block_bytes(self, n_head_kv: usize, head_dim: usize) -> usize {
        2 * n_head_kv * self.tile_bytes(head_dim)
    }
    /// `KvRef::q8`.
    pub fn flag(self) -> u32 {
        match self {
            KvType::F16 => 0,
            KvType::Q8_0 => 1,
        }
    }
}

/// Largest k of the top-k kernel (`SY_TOPK_MAX`).
pub const TOPK_MAX: u32 = 256;
/// Positions per KV block (`SY_KV_BLOCK`).
pub const KV_BLOCK: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn sizes_match_common_cuh() {
        assert_eq!(size_of::<Mat>(), 64);
        assert_eq!(size_of::<Act>(), 48);
        assert_eq!(size_of::<MatmulParams>(), 128);
        assert_eq!(size_of::<NormParams>(), 80);
        assert_eq!(size_of::<KvRef>(), 48);
        assert_eq!(size_of::<QkvOut>(), 80);
        assert_eq!(size_of::<QkvParams>(), 200);
        assert_eq!(size_of::<RopeKvParams>(), 96);
        assert_eq!(size_of::<SwigluParams>(), 64);
        assert_eq!(size_of::<GateUpParams>(), 160);
        assert_eq!(size_of::<AttnParams>(), 80);
        assert_eq!(size_of::<CombineParams>(), 64);
        assert_eq!(size_of::<EmbedParams>(), 88);
        assert_eq!(size_of::<TopKParams>(), 40);
        assert_eq!(size_of::<SampleRow>(), 32);
        assert_eq!(size_of::<SampleParams>(), 32);
    }

    #[test]
    fn kv_tiles_are_16_byte_multiples() {
        for hd in [64, 128] {
            assert_eq!(KvType::F16.tile_bytes(hd) % 16, 0);
            assert_eq!(KvType::Q8_0.tile_bytes(hd) % 16, 0);
        }
        // Llama-2-7B, one layer's block: 256 KiB in f16, 136 KiB in q8_0.
        assert_eq!(KvType::F16.block_bytes(32, 128), 262_144);
        assert_eq!(KvType::Q8_0.block_bytes(32, 128), 139_264);
    }
}

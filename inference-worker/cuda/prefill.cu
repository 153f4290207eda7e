// The epilogues the decode GEMVs fuse, as kernels of their own for prefill, where the int8
// GEMM (`mmq_F`, mode 0) first stores the stacked projections in f32:
//
//   rope_kv        y = [Wq; Wk; Wv]·a per token: RoPE on q and k, q to q_out, k and v into the
//                  paged pool (the same `qkv_store_pair` as qkv_F_cN). grid (ceil(rows/256),
//                  n_tok), 128 threads, one RoPE pair each.
//   swiglu_quant   y = [Wgate; Wup]·a per token: silu(gate) * up, quantized for the down GEMM.
//                  grid (ceil(n_ff/128), n_tok), 128 threads, one activation block per warp.
//
// A prefill layer: rmsnorm_quant, mmq (QKV), rope_kv, attn, combine, mmq (Wo, +x),
// rmsnorm_quant, mmq (gate‖up), swiglu_quant, mmq (down, +x): 10 launches.
#include "common.cuh"

__device__ __forceinline__ void rope_kv_body(const RopeKvParams& p) {
  const u32 t = blockIdx.y;
  const u32 row = 2 * (blockIdx.x * 128 + threadIdx.x);
  // Lanes 16k..16k+15 hold 32 consecutive rows (a q8_0 block); every lane calls.
  const bool valid = t < p.n_tok && row < p.o.q_dim + 2 * p.o.kv_dim;
  const float* y = p.y + size_t(t) * p.y_stride;
  qkv_store_pair(p.o, t, row, valid ? y[row] : 0.0f, valid ? y[row + 1] : 0.0f, valid);
}
SY_KERNEL(rope_kv, RopeKvParams, 128, rope_kv_body)

__device__ __forceinline__ void swiglu_quant_body(const SwigluParams& p) {
  const u32 t = blockIdx.y, blk = blockIdx.x * 4 + warp_id();
  if (blk < p.out.n / 32) {
    const float* y = p.y + size_t(t) * p.y_stride;
    const u32 i = 32 * blk + lane_id();
    quantize_block32(sy_silu(y[i]) * y[p.out.n + i], p.out, t, blk);
  }
}
SY_KERNEL(swiglu_quant, SwigluParams, 128, swiglu_quant_body)

// Matrix-vector products for decode (1 to 8 tokens), one warp per weight row.
//
// Each lane streams 16-byte chunks of the repacked row (`formats.cuh`): chunk c goes to lane
// c % 32, so one load instruction of a warp reads 512 contiguous bytes, and each lane issues
// `UNROLL` loads before it uses any (several loads in flight per lane, which is what keeps an
// HBM3 part near its bandwidth with few warps). The activations (a few KiB) are re-read from
// L1 per row. NC = 1, 2, 4, 8 token columns share every weight load; a launch for n tokens
// uses the smallest NC >= n.
//
// Kernels (F in q4_0, q4_1, q8_0, q4_k, q5_k, q6_k, f16; N in 1, 2, 4, 8):
//   gemv_F_cN     out = W·a or out += W·a (residual), 4 rows per block of 128 threads
//   qkv_F_cN      [Wq; Wk; Wv]·a with RoPE; q to q_out, k and v (f16) into the paged pool;
//                 32 rows per block. When the three differ in format, one launch per run of
//                 equal formats, each with `row0` its first global row
//   gateup_F_cN   silu(Wgate·a) * (Wup·a), quantized for the down projection; 32 outputs
//                 (64 rows) per block
#include "formats.cuh"

#define GEMV_WARPS 4
#define GEMV_THREADS (GEMV_WARPS * 32)
// Rows of one block of the fused kernels: one activation block of 32 for the SwiGLU quantizer,
// whole RoPE pairs and one head slice for QKV.
#define FUSED_ROWS 32

// acc[t] = W[row] · a[t] for t < a.n_tok, summed over the warp (every lane gets the result).
template <int F, int NC>
__device__ __forceinline__ void row_dot(const Mat& w, u32 row, const Act& a, float (&acc)[NC]) {
  using T = Fmt<F>;
  constexpr int U = T::UNROLL;
  const u32 nch = w.cols / T::ELEMS;
  const u32 lane = lane_id();
#pragma unroll
  for (int t = 0; t < NC; t++) acc[t] = 0.0f;
  for (u32 c0 = 0; c0 < nch; c0 += 32 * U) {
    typename T::Chunk ch[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const u32 c = c0 + 32 * u + lane;
      if (c < nch) ch[u] = T::load(w, row, c);
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const u32 c = c0 + 32 * u + lane;
      if (c < nch) {
#pragma unroll
        for (int t = 0; t < NC; t++)
          if (u32(t) < a.n_tok) acc[t] += T::dot(ch[u], a, t, c);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < NC; t++) acc[t] = warp_sum(acc[t]);
}

template <int F, int NC>
__device__ __forceinline__ void gemv(const MatmulParams& p) {
  const u32 row = blockIdx.x * GEMV_WARPS + warp_id();
  if (row >= p.w.rows) return;
  float acc[NC];
  row_dot<F, NC>(p.w, row, p.a, acc);
  // Lane t writes token t's result.
#pragma unroll
  for (int t = 0; t < NC; t++) {
    if (lane_id() == u32(t) && u32(t) < p.a.n_tok) {
      float* o = p.out + size_t(t) * p.out_stride + row;
      *o = p.mode == 1 ? *o + acc[t] : acc[t];
    }
  }
}

template <int F, int NC>
__device__ __forceinline__ void qkv(const QkvParams& p) {
  __shared__ float y[NC][FUSED_ROWS];
  const u32 base = blockIdx.x * FUSED_ROWS;
  for (u32 i = warp_id(); i < FUSED_ROWS; i += GEMV_WARPS) {
    float acc[NC];
    row_dot<F, NC>(p.w, base + i, p.a, acc);
#pragma unroll
    for (int t = 0; t < NC; t++)
      if (lane_id() == 0) y[t][i] = acc[t];
  }
  __syncthreads();
  const u32 gbase = p.row0 + base;  // global row of the block's first row
  // One thread per RoPE pair and token; lanes 16k..16k+15 hold one token's 16 pairs (what the
  // q8_0 pool's shuffles need), and whole warps run every pass.
  for (u32 e0 = 0; e0 < NC * FUSED_ROWS / 2; e0 += GEMV_THREADS) {
    const u32 e = e0 + threadIdx.x;
    const u32 t = e / (FUSED_ROWS / 2), i = 2 * (e % (FUSED_ROWS / 2));
    const bool valid = e < NC * FUSED_ROWS / 2 && t < p.a.n_tok;
    qkv_store_pair(p.o, valid ? t : 0, gbase + i, valid ? y[t][i] : 0.0f, valid ? y[t][i + 1] : 0.0f,
                   valid);
  }
}

template <int F, int NC>
__device__ __forceinline__ void gateup(const GateUpParams& p) {
  __shared__ float y[NC][2 * FUSED_ROWS];
  const u32 base = blockIdx.x * FUSED_ROWS;
  const u32 n_ff = p.w.rows / 2;
  for (u32 i = warp_id(); i < 2 * FUSED_ROWS; i += GEMV_WARPS) {
    const u32 row = i < FUSED_ROWS ? base + i : n_ff + base + (i - FUSED_ROWS);
    float acc[NC];
    row_dot<F, NC>(p.w, row, p.a, acc);
#pragma unroll
    for (int t = 0; t < NC; t++)
      if (lane_id() == 0) y[t][i] = acc[t];
  }
  __syncthreads();
  for (u32 t = warp_id(); t < NC; t += GEMV_WARPS) {
    if (t < p.a.n_tok) {
      const float g = y[t][lane_id()], u = y[t][FUSED_ROWS + lane_id()];
      quantize_block32(sy_silu(g) * u, p.out, t, base / 32);
    }
  }
}

// The QKV kernels take the occupancy hint 1: without it ptxas' heuristics spilled 16 bytes at
// 56 registers in two of them.
#define SY_GEMV_SET(fname, F, N)                                         \
  SY_KERNEL(gemv_##fname##_c##N, MatmulParams, GEMV_THREADS, (gemv<F, N>)) \
  SY_KERNEL_MB(qkv_##fname##_c##N, QkvParams, GEMV_THREADS, 1, (qkv<F, N>)) \
  SY_KERNEL(gateup_##fname##_c##N, GateUpParams, GEMV_THREADS, (gateup<F, N>))
#define SY_GEMV_FMT(fname, F) \
  SY_GEMV_SET(fname, F, 1)    \
  SY_GEMV_SET(fname, F, 2)    \
  SY_GEMV_SET(fname, F, 4)    \
  SY_GEMV_SET(fname, F, 8)

SY_GEMV_FMT(q4_0, SY_Q4_0)
SY_GEMV_FMT(q4_1, SY_Q4_1)
SY_GEMV_FMT(q8_0, SY_Q8_0)
SY_GEMV_FMT(q4_k, SY_Q4_K)
SY_GEMV_FMT(q5_k, SY_Q5_K)
SY_GEMV_FMT(q6_k, SY_Q6_K)
SY_GEMV_FMT(f16, SY_F16)

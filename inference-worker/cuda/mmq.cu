// Prefill GEMM for quantized weights with int8 tensor cores (MMQ-style): out = W·a for many
// tokens, W in Q4_0, Q4_1, Q8_0, Q4_K or Q5_K (formats whose weights are an int8 value times
// one scale, plus one offset, per 32-element block); Q6_K and F16 go through the GEMV kernels
// 8 tokens at a time.
//
//   mmq_F   grid (ceil(rows / 64), ceil(n_tok / 32)), 128 threads. A block stages 4 weight
//           blocks (128 k) of 64 rows, unpacked to int8 with their scale and offset, and the
//           same k range of 32 tokens' int8 activations in shared memory (rows padded to 36
//           words: fragment reads hit 32 distinct banks). Each warp owns 16 rows x 32 tokens:
//           per 32-k block, 4 `mma.sync.m16n8k32` s8 products give exact integer sums, then
//           acc += w_scale * a_scale * sum + w_offset * a_offset_term in f32.
//
// Tensor-core path: on the GPU `mma_s8` is the `mma.sync` instruction; under the twin it is
// `twin::mma_m16n8k32_s8`, a scalar emulation following the PTX ISA's fragment layout. The twin
// therefore checks the tiling, the unpacking and the scaling, but not that the hardware lays out
// fragments as that reading of the ISA says; the GPU acceptance run must (issue 34).
#include "formats.cuh"

#define MMQ_ROWS 64
#define MMQ_TOKS 32
#define MMQ_STAGE 4
#define MMQ_THREADS 128
#define MMQ_LD (MMQ_STAGE * 8 + 4)

__device__ __forceinline__ void mma_s8(i32 (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
#if defined(SY_CUDA)
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  ::twin::mma_m16n8k32_s8(d, a, b);
#endif
}

// Block `blk` (32 elements) of `row` as int8 values with scale and offset:
// w[i] = sc * q[i] + mn.
template <int F>
struct Block32 {
  __device__ static void load(const Mat& w, u32 row, u32 blk, uint4& lo, uint4& hi, float& sc,
                              float& mn) {
    Fmt<F>::unpack32(Fmt<F>::load(w, row, blk), blk, lo, hi, sc, mn);
  }
};
template <bool FIVE>
struct Block32K {
  __device__ static void load(const Mat& w, u32 row, u32 blk, uint4& lo, uint4& hi, float& sc,
                              float& mn) {
    const u32 sb = blk / 8, sub = blk % 8, c = sb * 8 + 2 * (sub / 2);
    FmtK45<FIVE>::unpack_sub(FmtK45<FIVE>::load(w, row, c), FmtK45<FIVE>::load(w, row, c + 1),
                             sub, lo, hi, sc, mn);
  }
};
template <>
struct Block32<SY_Q4_K> : Block32K<false> {};
template <>
struct Block32<SY_Q5_K> : Block32K<true> {};

template <int F>
__device__ __forceinline__ void mmq(const MatmulParams& p) {
  __shared__ u32 s_w[MMQ_ROWS][MMQ_LD];
  __shared__ float s_wsc[MMQ_ROWS][MMQ_STAGE], s_wmn[MMQ_ROWS][MMQ_STAGE];
  __shared__ u32 s_a[MMQ_TOKS][MMQ_LD];
  __shared__ float s_ad[MMQ_TOKS][MMQ_STAGE], s_am[MMQ_TOKS][MMQ_STAGE];

  const u32 row0 = blockIdx.x * MMQ_ROWS, tok0 = blockIdx.y * MMQ_TOKS;
  const u32 nb = p.w.cols / 32;
  const u32 g = lane_id() / 4, t = lane_id() % 4, wr = warp_id() * 16;
  float acc[4][4];
#pragma unroll
  for (int j = 0; j < 4; j++)
#pragma unroll
    for (int i = 0; i < 4; i++) acc[j][i] = 0.0f;

  for (u32 k0 = 0; k0 < nb; k0 += MMQ_STAGE) {
    // Stage weights: 64 rows x 4 blocks, two per thread.
    for (u32 u = threadIdx.x; u < MMQ_ROWS * MMQ_STAGE; u += MMQ_THREADS) {
      const u32 r = u / MMQ_STAGE, kb = u % MMQ_STAGE;
      uint4 lo = {0, 0, 0, 0}, hi = {0, 0, 0, 0};
      float sc = 0.0f, mn = 0.0f;
      if (row0 + r < p.w.rows && k0 + kb < nb) Block32<F>::load(p.w, row0 + r, k0 + kb, lo, hi, sc, mn);
      u32* d = &s_w[r][kb * 8];
      d[0] = lo.x, d[1] = lo.y, d[2] = lo.z, d[3] = lo.w;
      d[4] = hi.x, d[5] = hi.y, d[6] = hi.z, d[7] = hi.w;
      s_wsc[r][kb] = sc;
      s_wmn[r][kb] = mn;
    }
    // Stage activations: 32 tokens x 4 blocks, one per thread.
    for (u32 u = threadIdx.x; u < MMQ_TOKS * MMQ_STAGE; u += MMQ_THREADS) {
      const u32 tk = u / MMQ_STAGE, kb = u % MMQ_STAGE, tok = tok0 + tk, b = k0 + kb;
      uint4 lo = {0, 0, 0, 0}, hi = {0, 0, 0, 0};
      float ad = 0.0f, am = 0.0f;
      if (tok < p.a.n_tok && b < nb) {
        lo = act16(p.a, tok, 32 * b);
        hi = act16(p.a, tok, 32 * b + 16);
        const u32 ab = act_blk(p.a, tok, b);
        ad = p.a.d[ab];
        // The offset term: Q4_1 uses ggml's f16-rounded d*sum, the others d*sum.
        am = F == SY_Q4_1 ? p.a.s[ab] : ad * float(p.a.isum[ab]);
      }
      u32* d = &s_a[tk][kb * 8];
      d[0] = lo.x, d[1] = lo.y, d[2] = lo.z, d[3] = lo.w;
      d[4] = hi.x, d[5] = hi.y, d[6] = hi.z, d[7] = hi.w;
      s_ad[tk][kb] = ad;
      s_am[tk][kb] = am;
    }
    __syncthreads();
#pragma unroll
    for (u32 kb = 0; kb < MMQ_STAGE; kb++) {
      const u32 a[4] = {s_w[wr + g][kb * 8 + t], s_w[wr + g + 8][kb * 8 + t],
                        s_w[wr + g][kb * 8 + 4 + t], s_w[wr + g + 8][kb * 8 + 4 + t]};
#pragma unroll
      for (u32 j = 0; j < 4; j++) {
        const u32 b[2] = {s_a[8 * j + g][kb * 8 + t], s_a[8 * j + g][kb * 8 + 4 + t]};
        i32 c[4] = {0, 0, 0, 0};
        mma_s8(c, a, b);
#pragma unroll
        for (u32 i = 0; i < 4; i++) {
          const u32 r = wr + g + (i >= 2 ? 8 : 0), tk = 8 * j + 2 * t + (i & 1);
          acc[j][i] = fmaf(s_wsc[r][kb] * s_ad[tk][kb], float(c[i]),
                           fmaf(s_wmn[r][kb], s_am[tk][kb], acc[j][i]));
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (u32 j = 0; j < 4; j++)
#pragma unroll
    for (u32 i = 0; i < 4; i++) {
      const u32 row = row0 + wr + g + (i >= 2 ? 8 : 0), tok = tok0 + 8 * j + 2 * t + (i & 1);
      if (row < p.w.rows && tok < p.a.n_tok) {
        float* o = p.out + size_t(tok) * p.out_stride + row;
        *o = p.mode == 1 ? *o + acc[j][i] : acc[j][i];
      }
    }
}

SY_KERNEL(mmq_q4_0, MatmulParams, MMQ_THREADS, mmq<SY_Q4_0>)
SY_KERNEL(mmq_q4_1, MatmulParams, MMQ_THREADS, mmq<SY_Q4_1>)
SY_KERNEL(mmq_q8_0, MatmulParams, MMQ_THREADS, mmq<SY_Q8_0>)
SY_KERNEL(mmq_q4_k, MatmulParams, MMQ_THREADS, mmq<SY_Q4_K>)
SY_KERNEL(mmq_q5_k, MatmulParams, MMQ_THREADS, mmq<SY_Q5_K>)

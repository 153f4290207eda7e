// Sampling helpers over logits on the device, so only a few values per sequence cross PCIe.
//
//   argmax   one block of 256 threads per row: the largest value, ties to the lower index
//            (as `sampling::argmax`); NaN never wins.
//   topk     one block of 256 threads per row: the k largest (k <= SY_TOPK_MAX) in descending
//            order, ties to the lower index. A 4-pass radix select (8 bits per pass, shared
//            histogram) finds the k-th largest key, elements above it are gathered, the ties
//            needed are taken in index order, and the k candidates are ranked in shared memory.
//            NaN counts as the smallest value.
#include "common.cuh"

#define SAMPLE_THREADS 256
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
#define NEG_INF_F (-bits_f(0x7f800000u))

// Orders floats as unsigned integers (larger float, larger key); NaN lowest.
__device__ __forceinline__ u32 order_key(float v) {
  if (v != v) return 0u;
  u32 b;
#if defined(SY_CUDA)
  b = __float_as_uint(v);
#else
  std::memcpy(&b, &v, 4);
#endif
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// True when (v, i) ranks before (bv, bi): larger value, then lower index.
__device__ __forceinline__ bool better(float v, u32 i, float bv, u32 bi) {
  return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void argmax_body(const TopKParams& p) {
  __shared__ float s_v[SAMPLE_WARPS];
  __shared__ u32 s_i[SAMPLE_WARPS];
  const float* x = p.x + size_t(blockIdx.x) * p.stride;
  float bv = NEG_INF_F;
  u32 bi = 0xFFFFFFFFu;
  for (u32 i = threadIdx.x; i < p.n; i += SAMPLE_THREADS)
    if (better(x[i], i, bv, bi)) {
      bv = x[i];
      bi = i;
    }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(FULL_MASK, bv, o);
    const u32 oi = __shfl_xor_sync(FULL_MASK, bi, o);
    if (better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
  if (lane_id() == 0) {
    s_v[warp_id()] = bv;
    s_i[warp_id()] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < SAMPLE_WARPS; w++)
      if (better(s_v[w], s_i[w], bv, bi)) {
        bv = s_v[w];
        bi = s_i[w];
      }
    p.out_val[blockIdx.x] = bv;
    p.out_idx[blockIdx.x] = bi == 0xFFFFFFFFu ? 0u : bi;
  }
}
SY_KERNEL(argmax, TopKParams, SAMPLE_THREADS, argmax_body)

__device__ __forceinline__ void topk_body(const TopKParams& p) {
  __shared__ u32 hist[256];
  __shared__ u32 s_prefix, s_need, s_gt, s_base;
  __shared__ u32 s_warp[SAMPLE_WARPS];
  __shared__ float cv[SY_TOPK_MAX];
  __shared__ u32 ci[SY_TOPK_MAX];
  const float* x = p.x + size_t(blockIdx.x) * p.stride;
  const u32 k = p.k < p.n ? p.k : p.n;
  if (threadIdx.x == 0) {
    s_prefix = 0;
    s_need = k;
    s_gt = 0;
    s_base = 0;
  }
  // Radix select: after the pass at `shift`, the bits above it of the k-th largest key are
  // known (s_prefix) and s_need counts how many of the elements sharing them still rank in.
  u32 mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (u32 i = threadIdx.x; i < 256; i += SAMPLE_THREADS) hist[i] = 0;
    __syncthreads();
    const u32 prefix = s_prefix;
    for (u32 i = threadIdx.x; i < p.n; i += SAMPLE_THREADS) {
      const u32 key = order_key(x[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      u32 above = 0;
      for (int bin = 255; bin >= 0; bin--) {
        if (above + hist[bin] >= s_need) {
          s_prefix = prefix | (u32(bin) << shift);
          s_need -= above;
          break;
        }
        above += hist[bin];
      }
    }
    mask |= 255u << shift;
    __syncthreads();
  }
  const u32 kth = s_prefix, ties = s_need, n_gt = k - ties;
  for (u32 i = threadIdx.x; i < p.n; i += SAMPLE_THREADS) {
    if (order_key(x[i]) > kth) {
      const u32 slot = atomicAdd(&s_gt, 1u);
      cv[slot] = x[i];
      ci[slot] = i;
    }
  }
  // The first `ties` elements equal to the k-th key, in index order, one tile at a time.
  for (u32 t0 = 0; t0 < p.n; t0 += SAMPLE_THREADS) {
    const u32 i = t0 + threadIdx.x;
    const bool tie = i < p.n && order_key(x[i]) == kth;
    const u32 ballot = __ballot_sync(FULL_MASK, tie);
    if (lane_id() == 0) s_warp[warp_id()] = __popc(ballot);
    __syncthreads();
    const u32 base = s_base;
    u32 before = 0, total = 0;
    for (u32 w = 0; w < SAMPLE_WARPS; w++) {
      if (w < warp_id()) before += s_warp[w];
      total += s_warp[w];
    }
    const u32 rank = base + before + __popc(ballot & ((1u << lane_id()) - 1u));
    if (tie && rank < ties) {
      cv[n_gt + rank] = x[i];
      ci[n_gt + rank] = i;
    }
    __syncthreads();
    if (threadIdx.x == 0) s_base = base + total;
    __syncthreads();
    if (s_base >= ties) break;
  }
  __syncthreads();
  for (u32 s = threadIdx.x; s < k; s += SAMPLE_THREADS) {
    const u32 ks = order_key(cv[s]);
    u32 rank = 0;
    for (u32 j = 0; j < k; j++) {
      const u32 kj = order_key(cv[j]);
      rank += (kj > ks || (kj == ks && ci[j] < ci[s])) ? 1u : 0u;
    }
    p.out_val[size_t(blockIdx.x) * p.k + rank] = cv[s];
    p.out_idx[size_t(blockIdx.x) * p.k + rank] = ci[s];
  }
}
SY_KERNEL(topk, TopKParams, SAMPLE_THREADS, topk_body)

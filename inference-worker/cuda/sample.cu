// Sampling helpers over logits on the device, so only a few values per sequence cross PCIe.
//
//   argmax   one block of 256 threads per row: the largest value, ties to the lower index
//            (as `sampling::argmax`); NaN never wins.
//   topk     one block of 256 threads per row: the k largest (k <= SY_TOPK_MAX) in descending
//            order, ties to the lower index. A 4-pass radix select (8 bits per pass, shared
//            histogram) finds the k-th largest key, elements above it are gathered, the ties
//            needed are taken in index order, and the k candidates are ranked in shared memory.
//            NaN counts as the smallest value.
//   sample   one block of 256 threads per row: the token `sampling::sample` picks for the
//            row's `SampleRow` (penalties aside), bit for bit: the same fixed-point weights
//            (e^((x - max) / T) in units of 2^-30 of the best, ggml's exp polynomial), the same
//            integer sums, the same f64 products for the top-p goal and the draw's target, and
//            the draw walks ids in order. The cuts are found without sorting: the top-k
//            threshold by the radix select of `topk`, the top-p cut weight by a binary search
//            on exact sums (the largest weight w with sum(weights >= w) >= goal), and ties at a
//            cut by a walk in id order. A walk gives each thread a contiguous run of ids; a
//            block scan of the runs' sums picks the one thread that walks its run.
//            NaN logits (which the CPU orders differently) are outside its contract.
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

// ---------------------------------------------------------------------------------------------
// sample

#define SY_ONE 1073741824.0f  // 2^30: the weight of the most likely token

// `sampling::weight`: e^((x - max) * inv_t) in units of 2^-30, truncated (0 for NaN).
__device__ __forceinline__ u32 sample_weight(float x, float max, float inv_t) {
  float v = sy_expf((x - max) * inv_t) * SY_ONE;
  v = v > 0.0f ? fminf(v, SY_ONE) : 0.0f;
  return u32(i32(v));
}

// Shared state of one row's block.
struct SampleShared {
  u64 warp[SAMPLE_WARPS];
  u32 hist[256];
  u32 res;
  u32 prefix, need;
};

// The block's sum of `v` (every thread gets it).
__device__ __forceinline__ u64 block_sum(u64 v, SampleShared& sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
  __syncthreads();
  if (lane_id() == 0) sh.warp[warp_id()] = v;
  __syncthreads();
  u64 t = 0;
#pragma unroll
  for (int w = 0; w < SAMPLE_WARPS; w++) t += sh.warp[w];
  return t;
}

// Thread t's run of ids: [t*c, min((t+1)*c, n)).
struct Run {
  u32 b, e;
};
__device__ __forceinline__ Run run_of(u32 n) {
  const u32 c = (n + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
  const u32 b = threadIdx.x * c < n ? threadIdx.x * c : n;
  return Run{b, b + c < n ? b + c : n};
}

// The first id i (walking ids in order) where the running sum of f(0..=i) exceeds `target`;
// `n` when the total does not.
template <class F>
__device__ __forceinline__ u32 find_first(u32 n, u64 target, const F& f, SampleShared& sh) {
  const Run r = run_of(n);
  u64 mine = 0;
  for (u32 i = r.b; i < r.e; i++) mine += f(i);
  // Inclusive scan over the warp, then over the warps' totals.
  u64 inc = mine;
  const u32 lane = lane_id();
#pragma unroll
  for (u32 o = 1; o < 32; o <<= 1) {
    const u64 y = __shfl_sync(FULL_MASK, inc, int(lane >= o ? lane - o : lane));
    if (lane >= o) inc += y;
  }
  __syncthreads();
  if (lane == 31) sh.warp[warp_id()] = inc;
  if (threadIdx.x == 0) sh.res = n;
  __syncthreads();
  u64 start = inc - mine;
  for (u32 w = 0; w < warp_id(); w++) start += sh.warp[w];
  if (start <= target && target < start + mine) {
    u64 cum = start;
    for (u32 i = r.b; i < r.e; i++) {
      cum += f(i);
      if (target < cum) {
        sh.res = i;
        break;
      }
    }
  }
  __syncthreads();
  return sh.res;
}

// The order key of the k-th largest value of x (radix select, as `topk`) and how many values
// equal to it rank in the top k (`ties`).
__device__ __forceinline__ u32 kth_key(const float* x, u32 n, u32 k, u32& ties, SampleShared& sh) {
  if (threadIdx.x == 0) {
    sh.prefix = 0;
    sh.need = k;
  }
  u32 mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (u32 i = threadIdx.x; i < 256; i += SAMPLE_THREADS) sh.hist[i] = 0;
    __syncthreads();
    const u32 prefix = sh.prefix;
    for (u32 i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
      const u32 key = order_key(x[i]);
      if ((key & mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      u32 above = 0;
      for (int bin = 255; bin >= 0; bin--) {
        if (above + sh.hist[bin] >= sh.need) {
          sh.prefix = prefix | (u32(bin) << shift);
          sh.need -= above;
          break;
        }
        above += sh.hist[bin];
      }
    }
    mask |= 255u << shift;
    __syncthreads();
  }
  ties = sh.need;
  return sh.prefix;
}

__device__ __forceinline__ void sample_body(const SampleParams& p) {
  __shared__ SampleShared sh;
  __shared__ float s_v[SAMPLE_WARPS];
  __shared__ u32 s_i[SAMPLE_WARPS];
  const float* x = p.x + size_t(blockIdx.x) * p.stride;
  const SampleRow a = p.rows[blockIdx.x];
  const u32 n = p.n;
  // Argmax (greedy rows, and the draw's fallback when nothing weighs anything), and the max.
  float bv = NEG_INF_F, mx = NEG_INF_F;
  u32 bi = 0xFFFFFFFFu;
  for (u32 i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
    mx = fmaxf(mx, x[i]);
    if (better(x[i], i, bv, bi)) {
      bv = x[i];
      bi = i;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(FULL_MASK, bv, o);
    const u32 oi = __shfl_xor_sync(FULL_MASK, bi, o);
    mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, o));
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
  for (int w = 0; w < SAMPLE_WARPS; w++) {
    mx = fmaxf(mx, s_v[w]);
    if (better(s_v[w], s_i[w], bv, bi)) {
      bv = s_v[w];
      bi = s_i[w];
    }
  }
  const u32 best = bi == 0xFFFFFFFFu ? 0u : bi;
  if (a.greedy || n == 0) {
    if (threadIdx.x == 0) p.out_idx[blockIdx.x] = best;
    return;
  }
  const bool use_k = a.top_k > 0 && a.top_k < n;
  const bool use_p = a.top_p < 1.0f;
  const bool use_m = a.min_p > 0.0f;
  const bool cut = use_k || use_p || use_m;

  // Top-k: values above the k-th, and ties with it up to the `ties`-th in id order.
  u32 kth = 0, kth_last = 0xFFFFFFFFu;
  if (use_k) {
    u32 ties = 0;
    kth = kth_key(x, n, a.top_k, ties, sh);
    kth_last = find_first(n, u64(ties) - 1, [&](u32 i) { return u64(order_key(x[i]) == kth); }, sh);
  }
  auto in_k = [&](u32 i) {
    const u32 key = order_key(x[i]);
    return !use_k || key > kth || (key == kth && i <= kth_last);
  };

  // Top-p over the top-k pool: the cut weight `cw` and the last id `cid` at it.
  u32 cw = 0, cid = 0xFFFFFFFFu;
  if (use_p) {
    auto sum_ge = [&](u32 v) {
      const Run r = run_of(n);
      u64 s = 0;
      for (u32 i = r.b; i < r.e; i++) {
        const u32 w = sample_weight(x[i], mx, 1.0f);
        if (w >= v && in_k(i)) s += w;
      }
      return block_sum(s, sh);
    };
    const u64 total = sum_ge(0);
    u64 goal = u64(ceil(double(a.top_p) * double(total)));
    const u64 top = total > 1 ? total : 1;
    goal = goal < 1 ? 1 : (goal > top ? top : goal);
    u32 lo = 0, hi = u32(SY_ONE);
    while (lo < hi) {
      const u32 mid = lo + (hi - lo + 1) / 2;
      if (sum_ge(mid) >= goal) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    cw = lo;
    const u64 above = sum_ge(cw + 1);
    if (goal > above) {
      cid = find_first(
          n, goal - above - 1,
          [&](u32 i) {
            const u32 w = sample_weight(x[i], mx, 1.0f);
            return u64(w == cw && in_k(i) ? w : 0u);
          },
          sh);
    }
  }
  const u32 least = use_m ? u32(ceil(double(a.min_p) * double(SY_ONE))) : 0u;
  auto kept = [&](u32 i) {
    if (!cut) return true;
    if (!in_k(i)) return false;
    if (!use_p && !use_m) return true;
    const u32 w = sample_weight(x[i], mx, 1.0f);
    return (!use_p || w > cw || (w == cw && i <= cid)) && w >= least;
  };
  auto drawn = [&](u32 i) { return u64(kept(i) ? sample_weight(x[i], mx, a.inv_t) : 0u); };

  // The draw: ids in order, the first whose running weight passes uniform * total.
  u64 total = 0;
  {
    const Run r = run_of(n);
    for (u32 i = r.b; i < r.e; i++) total += drawn(i);
  }
  total = block_sum(total, sh);
  const u64 target = u64(double(a.uniform) * double(total));
  u32 pick = find_first(n, target, drawn, sh);
  if (pick == n) {
    // As the CPU: the argmax over the whole vocabulary, else the last id kept (or 0).
    if (!cut) {
      pick = best;
    } else {
      u32 last = 0;
      for (u32 i = threadIdx.x; i < n; i += SAMPLE_THREADS)
        if (kept(i)) last = i;
      __syncthreads();
      if (threadIdx.x == 0) sh.res = 0;
      __syncthreads();
      atomicMax(&sh.res, last);
      __syncthreads();
      pick = sh.res;
    }
  }
  if (threadIdx.x == 0) p.out_idx[blockIdx.x] = pick;
}
SY_KERNEL(sample, SampleParams, SAMPLE_THREADS, sample_body)

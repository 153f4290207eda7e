// Decode attention over the paged KV pool: split-K flash-decode, then a combine that also
// quantizes the result for the output projection.
//
//   attn_hdD_gG[_q8]  (f16 or q8_0 pool)
//                 grid (n_head_kv * G'/G, n_tok, n_split), 128 threads. One block reads the K and
//                 V tiles of one KV head over `blocks_per_split` 16-position blocks once, for G
//                 query heads of its group (GQA: G' = n_head / n_head_kv; the host picks G
//                 dividing G'), and keeps an online softmax per head. A position takes D/8
//                 lanes (16 bytes of K and of V each), so a warp covers 32/(D/8) positions per
//                 step and every load is a 16-byte vector; a thread issues all its K and V
//                 loads of a block before using them and fetches the next block id early.
//                 Writes the split's unnormalised output, running max and sum.
//   combine_hdD   grid (n_head, n_tok), D threads: merges the splits and quantizes each head's
//                 D outputs (D/32 activation blocks) into an `Act` for the Wo GEMV.
//
// Scores are scaled by `scale` after the dot product; exp is `sy_expf` (common.cuh). A token at
// position p attends to positions 0..=p of its sequence (causal), read through its block table.
//
// With the q8_0 pool, q is quantized per 32 dims as `Q8Act::quantize` does and q·k is an
// integer dot product per 4 dims (dp4a) scaled and summed in the CPU's order (`q8_score`), as
// the CPU backend's q8_0 attention computes it (llama.cpp's CPU and CUDA paths also quantize q
// for a q8_0 K). An f32 q against dequantized K differs from those by q's rounding, enough to
// flip near-tied greedy tokens.
#include "common.cuh"

#define ATTN_WARPS 4
#define ATTN_THREADS (ATTN_WARPS * 32)
#define NEG_INF (-bits_f(0x7f800000u))

// q·k over a q8_0 K row in the CPU's order (`quant::vec_dot` for Q8_0, AVX2 and scalar alike):
// eight accumulators, one per group of 4 dims of a block, each `fmaf(d_b, sum_b, acc)` over
// the blocks b in order, then the 8 summed as (v0+v4 + v2+v6) + (v1+v5 + v3+v7). Lane `li`
// of a position holds groups 2(li%4), 2(li%4)+1 of block li/4 (`kw`, `qw`: 8 bytes each, `d`:
// the block's d_k·d_q); the running sums pass from block to block 4 lanes up. Every lane of
// the position gets the score.
template <u32 LPP>
__device__ __forceinline__ float q8_score(const uint4& kw, const u32 (&qw)[2], float d, u32 li) {
  constexpr u32 NB = LPP / 4;  // blocks of 32 per head
  const float s0 = float(dp4a(i32(kw.x), i32(qw[0]), 0));
  const float s1 = float(dp4a(i32(kw.y), i32(qw[1]), 0));
  float c0 = fmaf(d, s0, 0.0f), c1 = fmaf(d, s1, 0.0f);
  const u32 lane = lane_id();
#pragma unroll
  for (u32 b = 1; b < NB; b++) {
    const u32 from = li >= 4 ? lane - 4 : lane;
    const float p0 = __shfl_sync(FULL_MASK, c0, int(from));
    const float p1 = __shfl_sync(FULL_MASK, c1, int(from));
    if (li / 4 == b) {
      c0 = fmaf(d, s0, p0);
      c1 = fmaf(d, s1, p1);
    }
  }
  // In the last block's lanes j = li % 4: c0 = v[2j], c1 = v[2j+1].
  c0 += __shfl_xor_sync(FULL_MASK, c0, 2);  // j = 0: v0+v4, j = 1: v2+v6
  c1 += __shfl_xor_sync(FULL_MASK, c1, 2);  // j = 0: v1+v5, j = 1: v3+v7
  c0 += __shfl_xor_sync(FULL_MASK, c0, 1);
  c1 += __shfl_xor_sync(FULL_MASK, c1, 1);
  return __shfl_sync(FULL_MASK, c0 + c1, int(lane - li + 4 * (NB - 1)));
}

template <int HD, int G, bool KV8>
__device__ __forceinline__ void attn(const AttnParams& p) {
  constexpr u32 LPP = HD / 8;                 // lanes per position
  constexpr u32 PPW = 32 / LPP;               // positions per warp per step
  constexpr u32 GROUPS = ATTN_WARPS * PPW;    // position groups per block
  __shared__ float s_acc[G][GROUPS][HD];
  __shared__ float s_m[G][GROUPS];
  __shared__ float s_l[G][GROUPS];

  const u32 group_heads = p.n_head / p.kv.n_head_kv;
  const u32 tiles = group_heads / G;
  const u32 kvh = blockIdx.x / tiles;
  const u32 h0 = kvh * group_heads + (blockIdx.x % tiles) * G;
  const u32 tok = blockIdx.y, split = blockIdx.z;
  const u32 len = p.kv.pos[tok] + 1;
  const u32 n_blocks = (len + SY_KV_BLOCK - 1) / SY_KV_BLOCK;
  const u32 b_begin = split * p.blocks_per_split;
  const u32 b_end = b_begin + p.blocks_per_split < n_blocks ? b_begin + p.blocks_per_split : n_blocks;
  const u32 sub = lane_id() / LPP, li = lane_id() % LPP;
  const u32 grp = warp_id() * PPW + sub;
  const u32* table = p.kv.tables + size_t(p.kv.tok_seq[tok]) * p.kv.table_stride;

  float q[G][8], acc[G][8], m[G], l[G];
#pragma unroll
  for (int g = 0; g < G; g++) {
    const float* qh = p.q + size_t(tok) * p.n_head * HD + size_t(h0 + g) * HD + li * 8;
#pragma unroll
    for (int e = 0; e < 8; e++) {
      q[g][e] = qh[e];
      acc[g][e] = 0.0f;
    }
    m[g] = NEG_INF;
    l[g] = 0.0f;
  }
  // q8_0 pool: each lane's 8 dims of q as 8 signed bytes and the scale of their block of 32
  // (lanes 4k..4k+3 of a position hold one block: the max is shared over lane ^ 1, ^ 2).
  u32 qq[G][2];
  float qd[G];
#pragma unroll
  for (int g = 0; g < G; g++) {
    qq[g][0] = qq[g][1] = 0;
    qd[g] = 0.0f;
    if (KV8) {
      float amax = 0.0f;
#pragma unroll
      for (int e = 0; e < 8; e++) amax = fmaxf(amax, fabsf(q[g][e]));
      amax = fmaxf(amax, __shfl_xor_sync(FULL_MASK, amax, 1));
      amax = fmaxf(amax, __shfl_xor_sync(FULL_MASK, amax, 2));
      const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
      qd[g] = h2f(f2h(amax / 127.0f));
#pragma unroll
      for (int e = 0; e < 8; e++) {
        const i32 v = i32((q[g][e] * id + 12582912.0f) - 12582912.0f);
        qq[g][e / 4] |= (u32(v) & 0xFFu) << (8 * (e % 4));
      }
    }
  }

  // Per KV block a thread handles SLOTS positions; it issues all their K and V loads (2·SLOTS
  // 16-byte loads) before using any, and reads the next block's id from the table early.
  constexpr u32 SLOTS = SY_KV_BLOCK / GROUPS;
  u32 next = b_begin < b_end ? table[b_begin] : 0;
  for (u32 b = b_begin; b < b_end; b++) {
    const u32 phys = next;
    if (b + 1 < b_end) next = table[b + 1];
    const u8* kt = kv_tile(p.kv, phys, 0, kvh);
    const u8* vt = kv_tile(p.kv, phys, 1, kvh);
    // f16: 16 bytes (8 dims) of K and of V per position; q8_0: 8 bytes and a scale each.
    uint4 kw[SLOTS], vw[SLOTS];
    u32 ks[SLOTS], vs[SLOTS];
#pragma unroll
    for (u32 j = 0; j < SLOTS; j++) {
      const u32 slot = grp + j * GROUPS;
      if (KV8) {
        const uint2 k8 = ld8_shared_ro(kt + slot * HD + li * 8);
        const uint2 v8 = ld8_shared_ro(vt + slot * HD + li * 8);
        kw[j] = uint4{k8.x, k8.y, 0, 0};
        vw[j] = uint4{v8.x, v8.y, 0, 0};
        const u32 sc = (SY_KV_BLOCK * HD + (slot * (HD / 32) + li / 4) * 2);
        ks[j] = ld_u16(kt + sc);
        vs[j] = ld_u16(vt + sc);
      } else {
        kw[j] = ld_shared_ro(kt + (slot * HD + li * 8) * 2);
        vw[j] = ld_shared_ro(vt + (slot * HD + li * 8) * 2);
        ks[j] = vs[j] = 0;
      }
    }
#pragma unroll
    for (u32 j = 0; j < SLOTS; j++) {
      const bool valid = b * SY_KV_BLOCK + grp + j * GROUPS < len;
      float kf[8], vf[8];
      if (KV8) {
        const float dv = h2f(u16(vs[j]));
#pragma unroll
        for (u32 e = 0; e < 8; e++) {
          kf[e] = 0.0f;
          vf[e] = float(i8(byte_of(vw[j], e))) * dv;
        }
      } else {
        const u32 kk[4] = {kw[j].x, kw[j].y, kw[j].z, kw[j].w};
        const u32 vv[4] = {vw[j].x, vw[j].y, vw[j].z, vw[j].w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
          kf[2 * i] = h2f(u16(kk[i]));
          kf[2 * i + 1] = h2f(u16(kk[i] >> 16));
          vf[2 * i] = h2f(u16(vv[i]));
          vf[2 * i + 1] = h2f(u16(vv[i] >> 16));
        }
      }
#pragma unroll
      for (int g = 0; g < G; g++) {
        float s = 0.0f;
        if (KV8) {
          s = q8_score<LPP>(kw[j], qq[g], h2f(u16(ks[j])) * qd[g], li);
        } else {
#pragma unroll
          for (int e = 0; e < 8; e++) s = fmaf(q[g][e], kf[e], s);
#pragma unroll
          for (u32 o = LPP / 2; o > 0; o >>= 1) s += __shfl_xor_sync(FULL_MASK, s, o);
        }
        s = valid ? s * p.scale : NEG_INF;
        const float mn = fmaxf(m[g], s);
        const float corr = mn == NEG_INF ? 1.0f : sy_expf(m[g] - mn);
        const float pe = mn == NEG_INF ? 0.0f : sy_expf(s - mn);
        l[g] = fmaf(l[g], corr, pe);
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = fmaf(pe, vf[e], acc[g][e] * corr);
        m[g] = mn;
      }
    }
  }

  // Merge the position groups of the block.
#pragma unroll
  for (int g = 0; g < G; g++) {
#pragma unroll
    for (int e = 0; e < 8; e++) s_acc[g][grp][li * 8 + e] = acc[g][e];
    if (li == 0) {
      s_m[g][grp] = m[g];
      s_l[g][grp] = l[g];
    }
  }
  __syncthreads();
  for (u32 i = threadIdx.x; i < G * HD; i += ATTN_THREADS) {
    const u32 g = i / HD, d = i % HD;
    float mx = NEG_INF;
    for (u32 k = 0; k < GROUPS; k++) mx = fmaxf(mx, s_m[g][k]);
    float a = 0.0f, sum = 0.0f;
    if (mx != NEG_INF) {
      for (u32 k = 0; k < GROUPS; k++) {
        const float w = s_m[g][k] == NEG_INF ? 0.0f : sy_expf(s_m[g][k] - mx);
        a = fmaf(s_acc[g][k][d], w, a);
        sum = fmaf(s_l[g][k], w, sum);
      }
    }
    float* out = p.part + ((size_t(tok) * p.n_head + h0 + g) * p.n_split + split) * (HD + 2);
    out[d] = a;
    if (d == 0) {
      out[HD] = mx;
      out[HD + 1] = sum;
    }
  }
}

template <int HD>
__device__ __forceinline__ void combine(const CombineParams& p) {
  const u32 h = blockIdx.x, tok = blockIdx.y, d = threadIdx.x;
  const float* part = p.part + (size_t(tok) * p.n_head + h) * p.n_split * (HD + 2);
  float mx = NEG_INF;
  for (u32 s = 0; s < p.n_split; s++) mx = fmaxf(mx, part[s * (HD + 2) + HD]);
  float a = 0.0f, sum = 0.0f;
  for (u32 s = 0; s < p.n_split; s++) {
    const float ms = part[s * (HD + 2) + HD];
    const float w = ms == NEG_INF ? 0.0f : sy_expf(ms - mx);
    a = fmaf(part[s * (HD + 2) + d], w, a);
    sum = fmaf(part[s * (HD + 2) + HD + 1], w, sum);
  }
  const float v = sum > 0.0f ? a / sum : 0.0f;
  quantize_block32(v, p.out, tok, (h * HD + d) / 32);
}

// Occupancy hint 1, as the QKV kernels: under the default heuristic ptxas spilled 8 bytes in
// attn_hd128_g2 for sm_80 at 80 registers.
#define SY_ATTN(hd, g)                                                                 \
  SY_KERNEL_MB(attn_hd##hd##_g##g, AttnParams, ATTN_THREADS, 1, (attn<hd, g, false>))    \
  SY_KERNEL_MB(attn_hd##hd##_g##g##_q8, AttnParams, ATTN_THREADS, 1, (attn<hd, g, true>))
SY_ATTN(64, 1)
SY_ATTN(64, 2)
SY_ATTN(64, 4)
SY_ATTN(128, 1)
SY_ATTN(128, 2)
SY_ATTN(128, 4)
SY_KERNEL(combine_hd64, CombineParams, 64, combine<64>)
SY_KERNEL(combine_hd128, CombineParams, 128, combine<128>)

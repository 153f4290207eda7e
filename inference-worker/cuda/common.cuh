// Shared definitions of the worker's CUDA kernels: types, the layouts of repacked weights,
// activations and the paged KV pool, the kernels' parameter blocks (mirrored field for field
// by `src/cuda/abi.rs`), and the few device primitives every kernel uses.
//
// The same source compiles two ways:
//   - NVRTC (`-DSY_CUDA`, `--fmad=false`): cubins for sm_80/sm_90 and compute_80 PTX;
//   - g++ against twin/twin.hpp (`-DSY_TWIN`, `-ffp-contract=off`): the CPU twin.
// Neither contracts `a*b+c`; every fused multiply-add is written `fmaf`, so GPU and twin round
// every float operation alike and the twin's results are the GPU's, bit for bit, except where
// an instruction differs by design (none here: exp is our own polynomial, sqrt and division
// are IEEE on both). Integer paths are exact everywhere.
//
// ## Repacked weights (`Mat`)
// GGUF blocks are 18 (Q4_0), 20 (Q4_1), 34 (Q8_0) or 210 (Q6_K) bytes: no 16-byte alignment,
// so no 128-bit loads. At load, `src/cuda/repack.rs` splits every matrix into planes, each
// row-major `[rows][blocks][bytes per block]`, quants apart from scales:
//
//   format  plane 0 (quants)         plane 1              plane 2           plane 3
//   Q4_0    16 B / 32 (nibbles)      f16 d, 2 B / 32
//   Q4_1    16 B / 32                f16 d,m 4 B / 32
//   Q8_0    32 B / 32                f16 d, 2 B / 32
//   Q4_K    128 B / 256 (qs)         16 B / 256 (d, dmin, 12 B scales as in GGUF)
//   Q5_K    128 B / 256 (qs)         32 B / 256 (qh)      16 B / 256 (d, dmin, scales)
//   Q6_K    128 B / 256 (ql)         64 B / 256 (qh)      16 B / 256 (i8 scales)   f16 d 2 B / 256
//   F16     2 B / element
//
// A "chunk" is 16 bytes of plane 0 (32 bytes for Q8_0): one lane loads it with one vector load
// and chunk c of a row is bytes [16c, 16c+16) of the row, so a warp reading a row reads 512
// contiguous bytes per load instruction. Quant planes carry no padding: bytes moved per weight
// equal GGUF's.
//
// ## Activations (`Act`)
// A vector of n values per token quantized to 8-bit blocks of 32 as `quant::Q8Act`: `qs` i8
// [tok][n], `d` f32 [tok][n/32] (f16-rounded), `isum` i32 [tok][n/32], `s` f32 [tok][n/32]
// (f16 of d*isum), and the f32 values `f` [tok][n] (for F16 weights and attention).
//
// ## Paged KV pool
// The scheduler gives each sequence a table of u32 physical block ids, 16 positions per block;
// position p lives in block `table[p / 16]`, slot `p % 16`. One layer's pool (`kv`, f16):
//
//   kv[block][2 (K, V)][n_head_kv][16 (slot)][head_dim]
//
// so the K (or V) tile of one block and head is 16 * head_dim * 2 bytes contiguous (4 KiB at
// head_dim 128) and one CTA of the attention kernel streams it with 16-byte loads.
//
// With `KvRef::q8 = 1` the pool is q8_0 (llama.cpp's `--cache-type-k/v q8_0`), same tile order,
// each tile 17 * head_dim bytes (2176 at head_dim 128, 16-byte aligned): the 16 * head_dim i8
// quants `[slot][head_dim]`, then the f16 scales `[slot][head_dim / 32]`. Values are quantized
// per 32 dims of one position as `quant::Q8Act` does; this halves the KV bytes that dominate
// decode at 64 streams.
//
// ## RoPE table
// `rope[pos][n_rot/2][2]` = (cos, sin), computed on the host exactly as the CPU model computes
// them (ggml's recurrence for theta), so GPU and CPU rotate by the same values.
#pragma once

#if defined(SY_TWIN)
#include "twin/twin.hpp"
#endif

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;

#if defined(SY_TWIN)
struct alignas(16) uint4 {
  u32 x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  u32 x, y;
};
#endif

// Formats (ggml type ids).
#define SY_F16 1
#define SY_Q4_0 2
#define SY_Q4_1 3
#define SY_Q8_0 8
#define SY_Q4_K 12
#define SY_Q5_K 13
#define SY_Q6_K 14

// Positions per KV block.
#define SY_KV_BLOCK 16

// ---------------------------------------------------------------------------------------------
// Parameter blocks (one struct per kernel family, passed by value). Field order keeps every
// member naturally aligned with no padding; `src/cuda/abi.rs` mirrors them and tests the sizes.

// A repacked weight matrix: planes `p[k]` (row r at `p[k] + r * stride[k]`).
struct Mat {
  const u8* p[4];
  u32 stride[4];
  u32 rows;
  u32 cols;
  u32 fmt;
  u32 pad;
};

// Quantized activations (read side).
struct Act {
  const i8* qs;
  const float* d;
  const i32* isum;
  const float* s;
  const float* f;
  u32 n;
  u32 n_tok;
};

// Quantized activations (write side; same layout as `Act`).
struct ActOut {
  i8* qs;
  float* d;
  i32* isum;
  float* s;
  float* f;
  u32 n;
  u32 n_tok;
};

// y = W·a per token (GEMV and the prefill GEMM). mode 0: out = y; mode 1: out += y (residual).
struct MatmulParams {
  Mat w;
  Act a;
  float* out;
  u32 out_stride;
  u32 mode;
};

// RMSNorm (norm = 1) or plain copy (norm = 0) of x, then quantization into `out`.
struct NormParams {
  const float* x;
  const float* g;
  ActOut out;
  u32 x_stride;
  float eps;
  u32 norm;
  u32 pad;
};

// Where a token's keys and values go and come from.
struct KvRef {
  u8* kv;               // this layer's pool
  const u32* pos;       // [tok] position of the token in its sequence
  const u32* tok_seq;   // [tok] the token's sequence
  const u32* tables;    // [seq][table_stride] physical block ids
  u32 table_stride;
  u32 n_head_kv;
  u32 head_dim;
  u32 q8;               // 0: f16 pool, 1: q8_0 pool
};

// Where projected q, k, v go: RoPE on q and k, q to `q_out` ([tok][q_dim] f32), k and v into
// the paged pool. Rows are those of [Wq; Wk; Wv].
struct QkvOut {
  KvRef kv;
  float* q_out;
  const float* rope;
  u32 q_dim;
  u32 kv_dim;
  u32 n_rot;
  u32 pad;
};

// [Wq; Wk; Wv]·a into `o`.
struct QkvParams {
  Mat w;
  Act a;
  QkvOut o;
  u32 row0;           // global row (in [Wq; Wk; Wv]) of this matrix's row 0
  u32 pad;
};

// The QKV epilogue alone, after the prefill GEMM stored y = [Wq; Wk; Wv]·a ([tok][y_stride]).
struct RopeKvParams {
  const float* y;
  QkvOut o;
  u32 y_stride;
  u32 n_tok;
};

// The gate‖up epilogue alone, after the prefill GEMM stored y = [Wgate; Wup]·a: out =
// quantized silu(y[:n_ff]) * y[n_ff:], n_ff = out.n.
struct SwigluParams {
  const float* y;
  ActOut out;
  u32 y_stride;
  u32 pad;
};

// silu([Wgate]·a) * ([Wup]·a) with W = [Wgate; Wup], quantized into `out` for the down GEMV.
struct GateUpParams {
  Mat w;
  Act a;
  ActOut out;
};

// Split-K paged flash-decode: per (kv head, token, split) the partial softmax state of every
// query head of the group over `blocks_per_split` KV blocks.
struct AttnParams {
  const float* q;     // [tok][n_head * head_dim]
  KvRef kv;
  float* part;        // [tok][n_head][n_split][head_dim + 2] (acc..., max, sum)
  u32 n_head;
  u32 n_split;
  u32 blocks_per_split;
  float scale;
};

// Merges the splits of `part` and quantizes each head's output into `out` (n = n_head*hd).
struct CombineParams {
  const float* part;
  ActOut out;
  u32 n_head;
  u32 n_split;
};

// Token ids to f32 rows of the (repacked) embedding matrix.
struct EmbedParams {
  Mat w;
  const u32* ids;
  float* out;
  u32 n_tok;
  u32 pad;
};

// Per row of `x` ([rows][stride], n valid): the k largest values, descending, ties by lower
// index (k = 1: argmax). k <= SY_TOPK_MAX.
struct TopKParams {
  const float* x;
  float* out_val;     // [rows][k]
  u32* out_idx;       // [rows][k]
  u32 n;
  u32 stride;
  u32 k;
  u32 pad;
};
#define SY_TOPK_MAX 256

// One row's sampling parameters for `sample` (mirrors `sampling::sample`; penalties stay on
// the host). `inv_t` is the host's `1.0 / temperature` (f32).
struct SampleRow {
  u32 greedy;         // 1: argmax
  float inv_t;
  float top_p;        // >= 1: off
  float min_p;        // <= 0: off
  u32 top_k;          // 0 or >= n: off
  float uniform;      // the sequence's draw in [0, 1)
  u32 pad[2];
};

// Per row of `x` ([rows][stride], n valid): the token `sampling::sample` picks with `rows[r]`.
struct SampleParams {
  const float* x;
  const SampleRow* rows;
  u32* out_idx;       // [rows]
  u32 n;
  u32 stride;
};

// The sizes `src/cuda/abi.rs` asserts too.
static_assert(sizeof(Mat) == 64, "Mat");
static_assert(sizeof(Act) == 48 && sizeof(ActOut) == 48, "Act");
static_assert(sizeof(MatmulParams) == 128, "MatmulParams");
static_assert(sizeof(NormParams) == 80, "NormParams");
static_assert(sizeof(KvRef) == 48, "KvRef");
static_assert(sizeof(QkvOut) == 80, "QkvOut");
static_assert(sizeof(QkvParams) == 200, "QkvParams");
static_assert(sizeof(RopeKvParams) == 96, "RopeKvParams");
static_assert(sizeof(SwigluParams) == 64, "SwigluParams");
static_assert(sizeof(GateUpParams) == 160, "GateUpParams");
static_assert(sizeof(AttnParams) == 80, "AttnParams");
static_assert(sizeof(CombineParams) == 64, "CombineParams");
static_assert(sizeof(EmbedParams) == 88, "EmbedParams");
static_assert(sizeof(TopKParams) == 40, "TopKParams");
static_assert(sizeof(SampleRow) == 32 && sizeof(SampleParams) == 32, "SampleParams");

// ---------------------------------------------------------------------------------------------
// Device primitives.

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ u32 lane_id() { return threadIdx.x & 31u; }
__device__ __forceinline__ u32 warp_id() { return threadIdx.x >> 5; }

// f16 <-> f32, round to nearest even (as the `half` crate and ggml do).
#if defined(SY_CUDA)
__device__ __forceinline__ float h2f(u16 h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ u16 f2h(float f) {
  u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#else
inline float h2f(u16 h) {
  const u32 sign = u32(h & 0x8000u) << 16;
  u32 exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        exp--;
      }
      bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline u16 f2h(float f) {
  u32 x;
  std::memcpy(&x, &f, 4);
  const u32 sign = (x >> 16) & 0x8000u;
  const u32 ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return u16(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
  if (ax >= 0x477ff000u) return u16(sign | 0x7c00u);  // rounds to infinity
  if (ax < 0x38800000u) {                              // f16 subnormal or zero
    if (ax < 0x33000000u) return u16(sign);            // below half the smallest subnormal
    const u32 e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    const u32 shift = 126 - e;  // 14 + (112 - e): to units of 2^-24
    u32 r = m >> shift;
    const u32 rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) r++;
    return u16(sign | r);
  }
  u32 r = ((ax >> 13) - (112u << 10));
  const u32 rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
  return u16(sign | r);
}
#endif

// Four signed byte products summed into c.
#if defined(SY_CUDA)
__device__ __forceinline__ i32 dp4a(i32 a, i32 b, i32 c) { return __dp4a(a, b, c); }
#else
inline i32 dp4a(i32 a, i32 b, i32 c) {
  for (int i = 0; i < 4; i++) c += i32(i8(u32(a) >> (8 * i))) * i32(i8(u32(b) >> (8 * i)));
  return c;
}
#endif

// Weights are read once per token: a 16-byte load that skips L1 allocation.
#if defined(SY_CUDA)
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
// Activations and KV tiles are shared by many warps: read through the read-only cache.
__device__ __forceinline__ uint4 ld_shared_ro(const void* p) { return __ldg((const uint4*)p); }
__device__ __forceinline__ uint2 ld8_shared_ro(const void* p) { return __ldg((const uint2*)p); }
#else
inline uint2 ld8_shared_ro(const void* p) { return *(const uint2*)p; }
inline uint4 ld_stream(const void* p) { return *(const uint4*)p; }
inline uint4 ld_shared_ro(const void* p) { return *(const uint4*)p; }
#endif

__device__ __forceinline__ u16 ld_u16(const u8* p) { return *(const u16*)p; }

#if defined(SY_TWIN)
// The twin replays the same butterfly in one exchange (twin.hpp); the order of operations is
// the loop's below.
inline float warp_sum(float v) {
  return ::twin::butterfly(v, [](float a, float b) { return a + b; });
}
inline double warp_sum_f64(double v) {
  return ::twin::butterfly(v, [](double a, double b) { return a + b; });
}
inline i32 warp_sum_i32(i32 v) {
  return ::twin::butterfly(v, [](i32 a, i32 b) { return a + b; });
}
inline float warp_max(float v) {
  return ::twin::butterfly(v, [](float a, float b) { return fmaxf(a, b); });
}
#else
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(FULL_MASK, v, m);
  return v;
}
__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(FULL_MASK, v, m);
  return v;
}
__device__ __forceinline__ i32 warp_sum_i32(i32 v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(FULL_MASK, v, m);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, m));
  return v;
}
#endif

__device__ __forceinline__ float bits_f(u32 b) {
#if defined(SY_CUDA)
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, 4);
  return f;
#endif
}

// x * 2^n for integral n, rounded once (also into the subnormal range).
__device__ __forceinline__ float scale_pow2(float x, float n) {
  const i32 k = i32(n);
  if (k > 127) return x * bits_f(u32(64 + 127) << 23) * bits_f(u32(k - 64 + 127) << 23);
  if (k < -126) return x * bits_f(u32(-64 + 127) << 23) * bits_f(u32(k + 64 + 127) << 23);
  return x * bits_f(u32(k + 127) << 23);
}

// exp(x): the polynomial of `numerics::v_expf` (ggml's), operation for operation, so GPU, twin
// and the CPU model's SiLU agree exactly.
__device__ __forceinline__ float sy_expf(float x) {
  const float r = bits_f(0x4B400000u);
  const float z = fmaf(x, bits_f(0x3FB8AA3Bu), r);
  const float n = z - r;
  const float b = fmaf(-n, bits_f(0x35BFBE8Eu), fmaf(-n, bits_f(0x3F317200u), x));
  if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : bits_f(0x7f800000u);
  const float u = b * b;
  const float j = fmaf(fmaf(fmaf(bits_f(0x3C072010u), b, bits_f(0x3D2B9F17u)), u,
                            fmaf(bits_f(0x3E2AAF33u), b, bits_f(0x3EFFFEDBu))),
                       u, fmaf(bits_f(0x3F7FFFF6u), b, 1.0f));
  return scale_pow2(j, n);
}

// ggml's SiLU as `numerics::silu`.
__device__ __forceinline__ float sy_silu(float x) { return x / (1.0f + sy_expf(0.0f - x)); }

// Quantizes one block of 32 values, one per lane, as `Q8Act::quantize` does, and writes block
// `blk` of `out` for token `tok` (f32 copy included).
__device__ __forceinline__ void quantize_block32(float v, const ActOut& out, u32 tok, u32 blk) {
  const float amax = warp_max(fabsf(v));
  const float d = amax / 127.0f;
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  const i32 q = i32((v * id + 12582912.0f) - 12582912.0f);
  const i32 sum = warp_sum_i32(q);
  const size_t at = size_t(tok) * out.n + size_t(blk) * 32 + lane_id();
  out.qs[at] = i8(q);
  out.f[at] = v;
  if (lane_id() == 0) {
    const size_t b = size_t(tok) * (out.n / 32) + blk;
    out.d[b] = h2f(f2h(d));
    out.isum[b] = sum;
    out.s[b] = h2f(f2h(d * float(sum)));
  }
}

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block (`sc` = its 12 bytes).
__device__ __forceinline__ void scale_min_k4(u32 j, const u8* sc, u32& s, u32& m) {
  if (j < 4) {
    s = sc[j] & 63u;
    m = sc[j + 4] & 63u;
  } else {
    s = (sc[j + 4] & 0xFu) | ((sc[j - 4] >> 6) << 4);
    m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
  }
}

// The K (which = 0) or V (1) tile of `head` in physical block `block` of the paged pool.
__device__ __forceinline__ u8* kv_tile(const KvRef& r, u32 block, u32 which, u32 head) {
  const size_t tile = r.q8 ? size_t(17) * r.head_dim : size_t(32) * r.head_dim;
  return r.kv + ((size_t(block) * 2 + which) * r.n_head_kv + head) * tile;
}

// `word`'s byte k of a 16-byte value, k known only at run time (selects, not an indexed local
// array, which would live in local memory).
__device__ __forceinline__ u32 byte_of(const uint4& v, u32 k) {
  const u32 w = k < 8 ? (k < 4 ? v.x : v.y) : (k < 12 ? v.z : v.w);
  return (w >> (8 * (k & 3))) & 0xFFu;
}

// Declares kernel `name` taking `Params` by value, with `threads` per block, running `call(p)`;
// `min_blocks` is the occupancy hint of `__launch_bounds__` (0: none).
// Under the twin it also registers the kernel by name for `sy_twin_launch`.
#if defined(SY_TWIN)
#define SY_KERNEL_MB(name, Params, threads, min_blocks, call)                             \
  extern "C" void name(Params p) { call(p); }                                             \
  static const ::twin::Registered sy_reg_##name(#name, sizeof(Params), [](const void* q) { \
    name(*static_cast<const Params*>(q));                                                 \
  });
#else
#if defined(SY_SQUEEZE)
// `cargo xtask cuda-check`'s self-test: every kernel asked for SY_SQUEEZE blocks per SM (16:
// at most 32 registers at 128 threads), so that kernels spill and the check must fail.
#define SY_LAUNCH_BOUNDS_0(threads) __launch_bounds__(threads, SY_SQUEEZE)
#define SY_LAUNCH_BOUNDS_1(threads) __launch_bounds__(threads, SY_SQUEEZE)
#else
#define SY_LAUNCH_BOUNDS_0(threads) __launch_bounds__(threads)
#define SY_LAUNCH_BOUNDS_1(threads) __launch_bounds__(threads, 1)
#endif
#define SY_KERNEL_MB(name, Params, threads, min_blocks, call) \
  extern "C" __global__ void SY_LAUNCH_BOUNDS_##min_blocks(threads) name(Params p) { call(p); }
#endif
#define SY_KERNEL(name, Params, threads, call) SY_KERNEL_MB(name, Params, threads, 0, call)

// RoPE on the pair (row, row + 1) of token t's [q; k; v] (row even, global), then q to q_out
// and k, v into the paged pool (f16, or q8_0 quantized per 32 dims).
//
// Called by every lane of a warp (`valid` false for lanes without a pair): with a q8_0 pool the
// 16 lanes l ^ 1..15 must hold the other pairs of the same 32 rows and token (the callers lay
// out pairs that way), and share the block's absolute maximum by shuffles.
__device__ __forceinline__ void qkv_store_pair(const QkvOut& o, u32 t, u32 row, float x0, float x1,
                                               bool valid) {
  const u32 hd = o.kv.head_dim;
  const u32 region = row < o.q_dim ? 0 : (row < o.q_dim + o.kv_dim ? 1 : 2);
  const u32 local = region == 0 ? row : row - o.q_dim - (region == 2 ? o.kv_dim : 0);
  const u32 pos = valid ? o.kv.pos[t] : 0;
  const u32 pair = (local % hd) / 2;
  if (valid && region != 2 && pair < o.n_rot / 2) {
    const float* cs = o.rope + (size_t(pos) * (o.n_rot / 2) + pair) * 2;
    const float c = cs[0], s = cs[1];
    const float r0 = fmaf(x0, c, -(x1 * s));
    const float r1 = fmaf(x0, s, x1 * c);
    x0 = r0;
    x1 = r1;
  }
  if (o.kv.q8) {
    // Every lane takes part in the shuffles; the result matters where the region holds K, V.
    float amax = valid ? fmaxf(fabsf(x0), fabsf(x1)) : 0.0f;
#pragma unroll
    for (int m = 8; m > 0; m >>= 1) amax = fmaxf(amax, __shfl_xor_sync(FULL_MASK, amax, m));
    if (valid && region != 0) {
      const u32 seq = o.kv.tok_seq[t];
      const u32 block = o.kv.tables[size_t(seq) * o.kv.table_stride + pos / SY_KV_BLOCK];
      u8* tile = kv_tile(o.kv, block, region - 1, local / hd);
      const u32 slot = pos % SY_KV_BLOCK, dim = local % hd;
      const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
      tile[slot * hd + dim] = u8(i8(i32((x0 * id + 12582912.0f) - 12582912.0f)));
      tile[slot * hd + dim + 1] = u8(i8(i32((x1 * id + 12582912.0f) - 12582912.0f)));
      if (dim % 32 == 0) {
        u16* scale = (u16*)(tile + SY_KV_BLOCK * hd) + slot * (hd / 32) + dim / 32;
        *scale = f2h(amax / 127.0f);
      }
    }
  }
  if (!valid) return;
  if (region == 0) {
    o.q_out[size_t(t) * o.q_dim + row] = x0;
    o.q_out[size_t(t) * o.q_dim + row + 1] = x1;
  } else if (!o.kv.q8) {
    const u32 seq = o.kv.tok_seq[t];
    const u32 block = o.kv.tables[size_t(seq) * o.kv.table_stride + pos / SY_KV_BLOCK];
    u16* dst = (u16*)kv_tile(o.kv, block, region - 1, local / hd) + (pos % SY_KV_BLOCK) * hd + local % hd;
    dst[0] = f2h(x0);
    dst[1] = f2h(x1);
  }
}

// Per weight format: how one lane loads a chunk of a repacked row (16 bytes of quants plus the
// scales they need; layouts in common.cuh), its dot product with the quantized activations,
// and its exact dequantization (formulas of `quant::dequantize_row`, operation for operation).
//
// `Fmt<F>::ELEMS` elements per chunk; chunk c of a row covers:
//   Q4_0/Q4_1/Q8_0: elements [32c, 32c+32)
//   Q4_K/Q5_K: super-block c/8; with p = (c%8)/2, h = c%2, elements 16h..16h+15 of
//              sub-blocks 2p (low nibbles) and 2p+1 (high nibbles)
//   Q6_K: super-block c/8, half n = (c%8)/4, quarter q = c%4: elements l0..l0+15
//         (l0 = 16 (q&1)) of sub-blocks k = q/2 (low nibbles) and k+2 (high) of that half
//   F16: elements [8c, 8c+8)
#pragma once
#include "common.cuh"

template <int F>
struct Fmt;

// Bytes [16c, 16c+16) of the activation row of `tok`, as 4 words.
__device__ __forceinline__ uint4 act16(const Act& a, u32 tok, u32 elem) {
  return ld_shared_ro(a.qs + size_t(tok) * a.n + elem);
}
__device__ __forceinline__ u32 act_blk(const Act& a, u32 tok, u32 b) {
  return tok * (a.n / 32) + b;
}
__device__ __forceinline__ i32 dot4(const uint4& w, const uint4& x, i32 s) {
  s = dp4a(i32(w.x), i32(x.x), s);
  s = dp4a(i32(w.y), i32(x.y), s);
  s = dp4a(i32(w.z), i32(x.z), s);
  return dp4a(i32(w.w), i32(x.w), s);
}
__device__ __forceinline__ i32 sum16(const uint4& x) {
  const uint4 ones = {0x01010101u, 0x01010101u, 0x01010101u, 0x01010101u};
  return dot4(ones, x, 0);
}
__device__ __forceinline__ uint4 and4(const uint4& v, u32 m) {
  return uint4{v.x & m, v.y & m, v.z & m, v.w & m};
}
__device__ __forceinline__ uint4 shr4(const uint4& v, u32 s) {
  return uint4{v.x >> s, v.y >> s, v.z >> s, v.w >> s};
}
__device__ __forceinline__ uint4 or4(const uint4& a, const uint4& b) {
  return uint4{a.x | b.x, a.y | b.y, a.z | b.z, a.w | b.w};
}
__device__ __forceinline__ uint4 shl4(const uint4& v, u32 s) {
  return uint4{v.x << s, v.y << s, v.z << s, v.w << s};
}
__device__ __forceinline__ const u8* plane(const Mat& w, u32 k, u32 row) {
  return w.p[k] + size_t(row) * w.stride[k];
}

// ---- Q4_0: w = d * (q - 8)
template <>
struct Fmt<SY_Q4_0> {
  static constexpr u32 ELEMS = 32;
  static constexpr int UNROLL = 4;
  struct Chunk {
    uint4 q;
    u32 d;
  };
  __device__ static Chunk load(const Mat& w, u32 row, u32 c) {
    return Chunk{ld_stream(plane(w, 0, row) + 16 * c), ld_u16(plane(w, 1, row) + 2 * c)};
  }
  __device__ static float dot(const Chunk& k, const Act& a, u32 tok, u32 c) {
    const uint4 lo = act16(a, tok, 32 * c), hi = act16(a, tok, 32 * c + 16);
    i32 s = dot4(and4(k.q, 0x0F0F0F0Fu), lo, 0);
    s = dot4(and4(shr4(k.q, 4), 0x0F0F0F0Fu), hi, s);
    const u32 b = act_blk(a, tok, c);
    return h2f(u16(k.d)) * a.d[b] * float(s - 8 * a.isum[b]);
  }
  __device__ static void dequant(const Chunk& k, u32 c, float* row) {
    const float d = h2f(u16(k.d));
    for (u32 j = 0; j < 16; j++) {
      const u32 byte = byte_of(k.q, j);
      row[32 * c + j] = (float(byte & 0xFu) + -8.0f) * d + 0.0f;
      row[32 * c + j + 16] = (float(byte >> 4) + -8.0f) * d + 0.0f;
    }
  }
  // The 32 weights of chunk c as signed bytes with one scale (prefill GEMM): q - 8, d, min 0.
  __device__ static void unpack32(const Chunk& k, u32, uint4& lo, uint4& hi, float& sc,
                                  float& mn) {
    const u32 eight = 0x08080808u;
    // Nibbles are 0..15: subtracting 8 per byte never borrows across bytes when done as
    // (q | 0x80) - 8 then flipping the top bit back.
    const uint4 l = and4(k.q, 0x0F0F0F0Fu), h = and4(shr4(k.q, 4), 0x0F0F0F0Fu);
    lo = uint4{((l.x | 0x80808080u) - eight) ^ 0x80808080u, ((l.y | 0x80808080u) - eight) ^ 0x80808080u,
               ((l.z | 0x80808080u) - eight) ^ 0x80808080u, ((l.w | 0x80808080u) - eight) ^ 0x80808080u};
    hi = uint4{((h.x | 0x80808080u) - eight) ^ 0x80808080u, ((h.y | 0x80808080u) - eight) ^ 0x80808080u,
               ((h.z | 0x80808080u) - eight) ^ 0x80808080u, ((h.w | 0x80808080u) - eight) ^ 0x80808080u};
    sc = h2f(u16(k.d));
    mn = 0.0f;
  }
};

// ---- Q4_1: w = d * q + m
template <>
struct Fmt<SY_Q4_1> {
  static constexpr u32 ELEMS = 32;
  static constexpr int UNROLL = 4;
  struct Chunk {
    uint4 q;
    u32 dm;
  };
  __device__ static Chunk load(const Mat& w, u32 row, u32 c) {
    return Chunk{ld_stream(plane(w, 0, row) + 16 * c),
                 *(const u32*)(plane(w, 1, row) + 4 * c)};
  }
  __device__ static float dot(const Chunk& k, const Act& a, u32 tok, u32 c) {
    const uint4 lo = act16(a, tok, 32 * c), hi = act16(a, tok, 32 * c + 16);
    i32 s = dot4(and4(k.q, 0x0F0F0F0Fu), lo, 0);
    s = dot4(and4(shr4(k.q, 4), 0x0F0F0F0Fu), hi, s);
    const u32 b = act_blk(a, tok, c);
    return fmaf(h2f(u16(k.dm)) * a.d[b], float(s), h2f(u16(k.dm >> 16)) * a.s[b]);
  }
  __device__ static void dequant(const Chunk& k, u32 c, float* row) {
    const float d = h2f(u16(k.dm)), m = h2f(u16(k.dm >> 16));
    for (u32 j = 0; j < 16; j++) {
      const u32 byte = byte_of(k.q, j);
      row[32 * c + j] = (float(byte & 0xFu) + 0.0f) * d + m;
      row[32 * c + j + 16] = (float(byte >> 4) + 0.0f) * d + m;
    }
  }
  __device__ static void unpack32(const Chunk& k, u32, uint4& lo, uint4& hi, float& sc,
                                  float& mn) {
    lo = and4(k.q, 0x0F0F0F0Fu);
    hi = and4(shr4(k.q, 4), 0x0F0F0F0Fu);
    sc = h2f(u16(k.dm));
    mn = h2f(u16(k.dm >> 16));
  }
};

// ---- Q8_0: w = d * q
template <>
struct Fmt<SY_Q8_0> {
  static constexpr u32 ELEMS = 32;
  static constexpr int UNROLL = 2;
  struct Chunk {
    uint4 q0, q1;
    u32 d;
  };
  __device__ static Chunk load(const Mat& w, u32 row, u32 c) {
    const u8* q = plane(w, 0, row) + 32 * c;
    return Chunk{ld_stream(q), ld_stream(q + 16), ld_u16(plane(w, 1, row) + 2 * c)};
  }
  __device__ static float dot(const Chunk& k, const Act& a, u32 tok, u32 c) {
    const uint4 lo = act16(a, tok, 32 * c), hi = act16(a, tok, 32 * c + 16);
    const i32 s = dot4(k.q1, hi, dot4(k.q0, lo, 0));
    return h2f(u16(k.d)) * a.d[act_blk(a, tok, c)] * float(s);
  }
  __device__ static void dequant(const Chunk& k, u32 c, float* row) {
    const float d = h2f(u16(k.d));
    for (u32 j = 0; j < 16; j++) {
      row[32 * c + j] = float(i8(byte_of(k.q0, j))) * d;
      row[32 * c + j + 16] = float(i8(byte_of(k.q1, j))) * d;
    }
  }
  __device__ static void unpack32(const Chunk& k, u32, uint4& lo, uint4& hi, float& sc,
                                  float& mn) {
    lo = k.q0;
    hi = k.q1;
    sc = h2f(u16(k.d));
    mn = 0.0f;
  }
};

// Scale and min of sub-block j from a Q4_K/Q5_K header (d, dmin, 12 scale bytes).
__device__ __forceinline__ void k4_scale(const uint4& meta, u32 j, u32& s, u32& m) {
  if (j < 4) {
    s = byte_of(meta, 4 + j) & 63u;
    m = byte_of(meta, 8 + j) & 63u;
  } else {
    s = (byte_of(meta, 8 + j) & 0xFu) | ((byte_of(meta, j) >> 6) << 4);
    m = (byte_of(meta, 8 + j) >> 4) | ((byte_of(meta, 4 + j) >> 6) << 4);
  }
}

// Q4_K and Q5_K share everything but the fifth bit.
template <bool FIVE>
struct FmtK45 {
  static constexpr u32 ELEMS = 32;
  static constexpr int UNROLL = 2;
  struct Chunk {
    uint4 q, qh, meta;
  };
  __device__ static Chunk load(const Mat& w, u32 row, u32 c) {
    const u32 sb = c / 8, h = c & 1;
    Chunk k;
    k.q = ld_stream(plane(w, 0, row) + 16 * c);
    if (FIVE) {
      k.qh = ld_stream(plane(w, 1, row) + 32 * sb + 16 * h);
      k.meta = ld_stream(plane(w, 2, row) + 16 * sb);
    } else {
      k.qh = uint4{0, 0, 0, 0};
      k.meta = ld_stream(plane(w, 1, row) + 16 * sb);
    }
    return k;
  }
  // The two sub-blocks' values (0..15 or 0..31) as bytes.
  __device__ static void values(const Chunk& k, u32 c, uint4& lo, uint4& hi) {
    const u32 p = (c & 7) / 2;
    lo = and4(k.q, 0x0F0F0F0Fu);
    hi = and4(shr4(k.q, 4), 0x0F0F0F0Fu);
    if (FIVE) {
      lo = or4(lo, shl4(and4(shr4(k.qh, 2 * p), 0x01010101u), 4));
      hi = or4(hi, shl4(and4(shr4(k.qh, 2 * p + 1), 0x01010101u), 4));
    }
  }
  __device__ static float dot(const Chunk& k, const Act& a, u32 tok, u32 c) {
    const u32 sb = c / 8, p = (c & 7) / 2, h = c & 1;
    uint4 lo, hi;
    values(k, c, lo, hi);
    const u32 j0 = 2 * p, b0 = act_blk(a, tok, sb * 8 + j0), b1 = b0 + 1;
    const i32 s0 = dot4(lo, act16(a, tok, (sb * 8 + j0) * 32 + 16 * h), 0);
    const i32 s1 = dot4(hi, act16(a, tok, (sb * 8 + j0 + 1) * 32 + 16 * h), 0);
    u32 sc0, m0, sc1, m1;
    k4_scale(k.meta, j0, sc0, m0);
    k4_scale(k.meta, j0 + 1, sc1, m1);
    const float d = h2f(u16(k.meta.x)), dmin = h2f(u16(k.meta.x >> 16));
    float r = d * fmaf(float(sc0) * a.d[b0], float(s0), float(sc1) * a.d[b1] * float(s1));
    // The min term covers whole sub-blocks: counted once, by the chunk with h = 0.
    if (h == 0)
      r -= dmin * fmaf(float(m0) * a.d[b0], float(a.isum[b0]),
                       float(m1) * a.d[b1] * float(a.isum[b1]));
    return r;
  }
  __device__ static void dequant(const Chunk& k, u32 c, float* row) {
    const u32 sb = c / 8, p = (c & 7) / 2, h = c & 1;
    uint4 lo, hi;
    values(k, c, lo, hi);
    const float d = h2f(u16(k.meta.x)), dmin = h2f(u16(k.meta.x >> 16));
    for (u32 half = 0; half < 2; half++) {
      u32 sc, m;
      k4_scale(k.meta, 2 * p + half, sc, m);
      const float d1 = d * float(sc), m1 = dmin * float(m);
      float* y = row + sb * 256 + (2 * p + half) * 32 + 16 * h;
      for (u32 i = 0; i < 16; i++) y[i] = d1 * float(byte_of(half ? hi : lo, i)) - m1;
    }
  }
  // 32 weights of sub-block `sub` (0..7) of super-block c/8 for the GEMM: the caller loads
  // the two chunks (h = 0, 1) holding it.
  __device__ static void unpack_sub(const Chunk& k0, const Chunk& k1, u32 sub, uint4& lo,
                                    uint4& hi, float& sc, float& mn) {
    const u32 c0 = 2 * (sub / 2);
    uint4 a0, b0, a1, b1;
    values(k0, c0, a0, b0);
    values(k1, c0 + 1, a1, b1);
    const bool odd = sub & 1;
    lo = odd ? b0 : a0;
    hi = odd ? b1 : a1;
    u32 s, m;
    k4_scale(k0.meta, sub, s, m);
    sc = h2f(u16(k0.meta.x)) * float(s);
    mn = -(h2f(u16(k0.meta.x >> 16)) * float(m));
  }
};
template <>
struct Fmt<SY_Q4_K> : FmtK45<false> {};
template <>
struct Fmt<SY_Q5_K> : FmtK45<true> {};

// ---- Q6_K: w = d * sc[16 elements] * (q - 32), q 6 bits
template <>
struct Fmt<SY_Q6_K> {
  static constexpr u32 ELEMS = 32;
  static constexpr int UNROLL = 2;
  struct Chunk {
    uint4 ql, qh, sc;
    u32 d;
  };
  __device__ static Chunk load(const Mat& w, u32 row, u32 c) {
    const u32 sb = c / 8, n = (c & 7) / 4, l0 = 16 * (c & 1);
    return Chunk{ld_stream(plane(w, 0, row) + 16 * c),
                 ld_stream(plane(w, 1, row) + 64 * sb + 32 * n + l0),
                 ld_stream(plane(w, 2, row) + 16 * sb), ld_u16(plane(w, 3, row) + 2 * sb)};
  }
  __device__ static void values(const Chunk& k, u32 c, uint4& lo, uint4& hi, u32& klo) {
    klo = (c & 3) >> 1;
    lo = or4(and4(k.ql, 0x0F0F0F0Fu), shl4(and4(shr4(k.qh, 2 * klo), 0x03030303u), 4));
    hi = or4(and4(shr4(k.ql, 4), 0x0F0F0F0Fu),
             shl4(and4(shr4(k.qh, 2 * (klo + 2)), 0x03030303u), 4));
  }
  __device__ static float dot(const Chunk& k, const Act& a, u32 tok, u32 c) {
    const u32 sb = c / 8, n = (c & 7) / 4, l0 = 16 * (c & 1);
    uint4 lo, hi;
    u32 klo;
    values(k, c, lo, hi, klo);
    const u32 blo = sb * 8 + n * 4 + klo, bhi = blo + 2;
    const uint4 alo = act16(a, tok, blo * 32 + l0), ahi = act16(a, tok, bhi * 32 + l0);
    const i32 slo = dot4(lo, alo, 0) - 32 * sum16(alo);
    const i32 shi = dot4(hi, ahi, 0) - 32 * sum16(ahi);
    const i32 sclo = i32(i8(byte_of(k.sc, n * 8 + (c & 1) + 2 * klo)));
    const i32 schi = i32(i8(byte_of(k.sc, n * 8 + (c & 1) + 2 * (klo + 2))));
    return h2f(u16(k.d)) * fmaf(a.d[act_blk(a, tok, blo)], float(sclo * slo),
                                a.d[act_blk(a, tok, bhi)] * float(schi * shi));
  }
  __device__ static void dequant(const Chunk& k, u32 c, float* row) {
    const u32 sb = c / 8, n = (c & 7) / 4, l0 = 16 * (c & 1);
    uint4 lo, hi;
    u32 klo;
    values(k, c, lo, hi, klo);
    const float d = h2f(u16(k.d));
    for (u32 half = 0; half < 2; half++) {
      const u32 kk = klo + 2 * half;
      const float dsc = d * float(i8(byte_of(k.sc, n * 8 + (c & 1) + 2 * kk)));
      float* y = row + sb * 256 + n * 128 + kk * 32 + l0;
      for (u32 i = 0; i < 16; i++) y[i] = dsc * float(i32(byte_of(half ? hi : lo, i)) - 32);
    }
  }
};

// ---- F16: w as is; the dot uses the f32 activations.
template <>
struct Fmt<SY_F16> {
  static constexpr u32 ELEMS = 8;
  static constexpr int UNROLL = 4;
  struct Chunk {
    uint4 q;
  };
  __device__ static Chunk load(const Mat& w, u32 row, u32 c) {
    return Chunk{ld_stream(plane(w, 0, row) + 16 * c)};
  }
  __device__ static float dot(const Chunk& k, const Act& a, u32 tok, u32 c) {
    const float* x = a.f + size_t(tok) * a.n + 8 * c;
    float s = 0.0f;
    const u32 w[4] = {k.q.x, k.q.y, k.q.z, k.q.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      s = fmaf(h2f(u16(w[i])), x[2 * i], s);
      s = fmaf(h2f(u16(w[i] >> 16)), x[2 * i + 1], s);
    }
    return s;
  }
  __device__ static void dequant(const Chunk& k, u32 c, float* row) {
    for (u32 i = 0; i < 8; i++) {
      const u32 b = byte_of(k.q, 2 * i) | (byte_of(k.q, 2 * i + 1) << 8);
      row[8 * c + i] = h2f(u16(b));
    }
  }
};

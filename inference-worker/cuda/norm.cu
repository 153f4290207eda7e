// Row-wise kernels: RMSNorm fused with activation quantization, and the embedding lookup.
//
//   rmsnorm_quant   per token: x * rsqrt(mean(x^2) + eps) * g (or x unchanged, norm = 0),
//                   quantized to 8-bit blocks of 32 (`Act` layout) with its f32 copy; the
//                   input of every GEMV. 256 threads, one block per token. Computed as the
//                   CPU model does (squares in f32, summed in f64, mean rounded to f32), so
//                   its output equals `quant::Q8Act::quantize(rms_norm(x))` exactly.
//   embed_F         per token: the row `ids[t]` of the repacked embedding matrix, dequantized
//                   exactly as `quant::dequantize_row`. 128 threads, one block per token.
#include "formats.cuh"

#define NORM_THREADS 256

__device__ __forceinline__ void rmsnorm_quant_body(const NormParams& p) {
  __shared__ double part[NORM_THREADS / 32];
  const u32 t = blockIdx.x, n = p.out.n;
  const float* x = p.x + size_t(t) * p.x_stride;
  float s = 1.0f;
  if (p.norm) {
    double acc = 0.0;
    for (u32 i = threadIdx.x; i < n; i += NORM_THREADS) acc += double(x[i] * x[i]);
    acc = warp_sum_f64(acc);
    if (lane_id() == 0) part[warp_id()] = acc;
    __syncthreads();
    double total = 0.0;
#pragma unroll
    for (int w = 0; w < NORM_THREADS / 32; w++) total += part[w];
    const float ms = float(total / double(n));
    s = 1.0f / sqrtf(ms + p.eps);
  }
  for (u32 b = warp_id(); b < n / 32; b += NORM_THREADS / 32) {
    const u32 i = 32 * b + lane_id();
    const float v = p.norm ? x[i] * s * p.g[i] : x[i];
    quantize_block32(v, p.out, t, b);
  }
}
SY_KERNEL(rmsnorm_quant, NormParams, NORM_THREADS, rmsnorm_quant_body)

template <int F>
__device__ __forceinline__ void embed(const EmbedParams& p) {
  using T = Fmt<F>;
  const u32 t = blockIdx.x;
  const u32 id = p.ids[t] < p.w.rows ? p.ids[t] : p.w.rows - 1;
  float* out = p.out + size_t(t) * p.w.cols;
  for (u32 c = threadIdx.x; c < p.w.cols / T::ELEMS; c += 128) T::dequant(T::load(p.w, id, c), c, out);
}
SY_KERNEL(embed_q4_0, EmbedParams, 128, embed<SY_Q4_0>)
SY_KERNEL(embed_q4_1, EmbedParams, 128, embed<SY_Q4_1>)
SY_KERNEL(embed_q8_0, EmbedParams, 128, embed<SY_Q8_0>)
SY_KERNEL(embed_q4_k, EmbedParams, 128, embed<SY_Q4_K>)
SY_KERNEL(embed_q5_k, EmbedParams, 128, embed<SY_Q5_K>)
SY_KERNEL(embed_q6_k, EmbedParams, 128, embed<SY_Q6_K>)
SY_KERNEL(embed_f16, EmbedParams, 128, embed<SY_F16>)

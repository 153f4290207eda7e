//! Tensor formats: ggml block layouts, dequantization, and quantized dot products.
//!
//! Weights stay in their file format; a matrix-vector product quantizes the activation vector
//! once to 8-bit blocks of 32 (`Q8Act`, like ggml's Q8_0/Q8_1) and then each weight row is
//! dotted against it with integer arithmetic per block. The scalar functions here are the
//! reference; `simd` holds AVX2 versions of the hot formats, chosen at runtime, and the tests
//! check each against the scalar dequantize-then-multiply result block by block.

use half::{bf16, f16};

/// Elements per block of the "legacy" formats and of an activation block.
pub const QK: usize = 32;
/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// The tensor types this worker can compute with (ggml type ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q8_0 = 8,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    BF16 = 30,
}

/// Name of any ggml type id, supported or not (for error messages).
pub fn ggml_type_name(id: u32) -> String {
    const NAMES: [&str; 31] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES.get(id as usize).map_or_else(
        || format!("unknown type id {id}"),
        |n| format!("{n} (id {id})"),
    )
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }
    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => QK,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => QK_K,
        }
    }
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }
    /// Bytes of one row of `n` elements.
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_len() * self.block_bytes()
    }
}

#[inline]
fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Dequantizes one row (`out.len()` elements) from its bytes.
pub fn dequantize_row(ty: GgmlType, b: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let bb = ty.block_bytes();
            for (y, x) in out.chunks_exact_mut(QK).zip(b.chunks_exact(bb)) {
                let d = h(x, 0);
                let (m, qs, off) = if ty == GgmlType::Q4_1 {
                    (h(x, 2), &x[4..20], 0.0)
                } else {
                    (0.0, &x[2..18], -8.0)
                };
                for j in 0..16 {
                    y[j] = ((qs[j] & 0xF) as f32 + off) * d + m;
                    y[j + 16] = ((qs[j] >> 4) as f32 + off) * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (y, x) in out.chunks_exact_mut(QK).zip(b.chunks_exact(34)) {
                let d = h(x, 0);
                for j in 0..QK {
                    y[j] = x[2 + j] as i8 as f32 * d;
                }
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let five = ty == GgmlType::Q5_K;
            for (y, x) in out
                .chunks_exact_mut(QK_K)
                .zip(b.chunks_exact(ty.block_bytes()))
            {
                let d = h(x, 0);
                let dmin = h(x, 2);
                let scales = &x[4..16];
                let (qh, qs) = if five {
                    (&x[16..48], &x[48..176])
                } else {
                    (&x[0..0], &x[16..144])
                };
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, scales);
                    let (d1, m1) = (d * sc as f32, dmin * m as f32);
                    let q = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
                    for l in 0..32 {
                        let mut v = if j % 2 == 0 { q[l] & 0xF } else { q[l] >> 4 };
                        if five && (qh[l] >> j) & 1 != 0 {
                            v += 16;
                        }
                        y[j * 32 + l] = d1 * v as f32 - m1;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (y, x) in out.chunks_exact_mut(QK_K).zip(b.chunks_exact(210)) {
                let d = h(x, 208);
                for n in 0..2 {
                    let ql = &x[64 * n..64 * n + 64];
                    let qh = &x[128 + 32 * n..128 + 32 * n + 32];
                    let sc = &x[192 + 8 * n..192 + 8 * n + 8];
                    let y = &mut y[128 * n..128 * n + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
    }
}

/// An activation vector quantized to 8-bit blocks of 32, plus its f32 original (used by the
/// float weight formats). Scales are rounded to f16 precision as ggml's Q8_0/Q8_1 store them,
/// so the results track llama.cpp's closely.
#[derive(Debug, Clone, Default)]
pub struct Q8Act {
    pub f: Vec<f32>,
    pub qs: Vec<i8>,
    /// Per block: scale.
    pub d: Vec<f32>,
    /// Per block: sum of the quantized values (exact).
    pub isum: Vec<i32>,
    /// Per block: `d * isum` rounded to f16 (ggml's Q8_1 `s`).
    pub s: Vec<f32>,
}

impl Q8Act {
    /// Quantizes `x` (length a multiple of 32) into `self`, reusing its buffers.
    pub fn quantize(&mut self, x: &[f32]) {
        let nb = x.len() / QK;
        self.f.clear();
        self.f.extend_from_slice(x);
        self.qs.resize(x.len(), 0);
        self.d.resize(nb, 0.0);
        self.isum.resize(nb, 0);
        self.s.resize(nb, 0.0);
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            // ggml computes the multiplier as 127/amax, not 1/d: they differ in the last bit
            // often enough to move a rounding.
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in self.qs[b * QK..b * QK + QK].iter_mut().zip(xb) {
                // |v * id| <= 127: adding 1.5 * 2^23 rounds to the nearest integer, ties to
                // even, like ggml's AVX2 quantizer, without a libm call.
                let r = ((v * id + 12_582_912.0) - 12_582_912.0) as i32;
                *q = r as i8;
                sum += r;
            }
            self.d[b] = f16::from_f32(d).to_f32();
            self.isum[b] = sum;
            self.s[b] = f16::from_f32(d * sum as f32).to_f32();
        }
    }
}

/// Whether the AVX2 paths are in use on this machine.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Dot product of one weight row (`row` bytes of type `ty`) with a quantized activation.
#[inline]
pub fn vec_dot(ty: GgmlType, row: &[u8], a: &Q8Act) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = simd::vec_dot(ty, row, a) {
        return v;
    }
    vec_dot_scalar(ty, row, a)
}

/// `out[k] = row · acts[k]` for every activation, with exactly `vec_dot`'s results; formats
/// with a multi-activation kernel unpack each weight block once for several activations.
pub fn vec_dot_many(ty: GgmlType, row: &[u8], acts: &[Q8Act], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if ty == GgmlType::Q4_1 && simd_available() {
        let mut i = 0;
        while i + 4 <= acts.len() {
            let a = [&acts[i], &acts[i + 1], &acts[i + 2], &acts[i + 3]];
            if let Some(v) = simd::q4_1_dots(row, a) {
                out[i..i + 4].copy_from_slice(&v);
            }
            i += 4;
        }
        for k in i..acts.len() {
            out[k] = vec_dot(ty, row, &acts[k]);
        }
        return;
    }
    for (o, a) in out.iter_mut().zip(acts) {
        *o = vec_dot(ty, row, a);
    }
}

/// `out[j] = row(first + j) · a` for consecutive rows of the matrix `data` (rows of
/// `row_bytes` bytes), with exactly `vec_dot`'s results, dispatched once for all rows. Q4_1
/// runs four rows at a time: the activation block is loaded once for all four and their
/// accumulation chains interleave, where one row alone waits on its own additions.
pub fn vec_dot_rows(
    ty: GgmlType,
    data: &[u8],
    row_bytes: usize,
    first: usize,
    a: &Q8Act,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd::rows_dot(ty, data, row_bytes, first, a, out) {
        return;
    }
    for (j, o) in out.iter_mut().enumerate() {
        let r = first + j;
        *o = vec_dot(ty, &data[r * row_bytes..(r + 1) * row_bytes], a);
    }
}

/// `out[j * n + t] = row(first + j) · acts[t]` (`n = acts.len()`) for consecutive rows of
/// the matrix `data`, with exactly `vec_dot`'s results. Q4_1 runs in tiles of two rows by
/// four activations, sharing each unpacked weight block and each loaded activation block.
pub fn vec_dot_tile(
    ty: GgmlType,
    data: &[u8],
    row_bytes: usize,
    first: usize,
    acts: &[Q8Act],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd::tile_dot(ty, data, row_bytes, first, acts, out) {
        return;
    }
    let n = acts.len();
    for (j, row_out) in out.chunks_mut(n.max(1)).enumerate() {
        let r = first + j;
        vec_dot_many(ty, &data[r * row_bytes..(r + 1) * row_bytes], acts, row_out);
    }
}

/// Scalar reference dot product.
pub fn vec_dot_scalar(ty: GgmlType, row: &[u8], a: &Q8Act) -> f32 {
    match ty {
        GgmlType::F32 => row
            .chunks_exact(4)
            .zip(&a.f)
            .map(|(c, &x)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * x)
            .sum(),
        GgmlType::F16 => row
            .chunks_exact(2)
            .zip(&a.f)
            .map(|(c, &x)| f16::from_le_bytes([c[0], c[1]]).to_f32() * x)
            .sum(),
        GgmlType::BF16 => row
            .chunks_exact(2)
            .zip(&a.f)
            .map(|(c, &x)| bf16::from_le_bytes([c[0], c[1]]).to_f32() * x)
            .sum(),
        GgmlType::Q4_0 => {
            let mut acc = 0f32;
            for (b, x) in row.chunks_exact(18).enumerate() {
                let qa = &a.qs[b * QK..b * QK + QK];
                let qs = &x[2..18];
                let mut sumi = 0i32;
                for j in 0..16 {
                    sumi += (qs[j] & 0xF) as i32 * qa[j] as i32;
                    sumi += (qs[j] >> 4) as i32 * qa[j + 16] as i32;
                }
                acc += h(x, 0) * a.d[b] * (sumi - 8 * a.isum[b]) as f32;
            }
            acc
        }
        // Q4_1 and Q8_0 follow ggml's AVX2 order exactly (8 lanes of 4-product integer sums,
        // FMA per block, the same horizontal sum) so that results do not depend on whether
        // this machine has the SIMD path: the model amplifies any last-bit difference.
        GgmlType::Q4_1 => {
            let mut acc = [0f32; 8];
            let mut acc_m = 0f32;
            for (b, x) in row.chunks_exact(20).enumerate() {
                let qa = &a.qs[b * QK..b * QK + QK];
                let qs = &x[4..20];
                let d = h(x, 0) * a.d[b];
                for (l, al) in acc.iter_mut().enumerate() {
                    let mut sumi = 0i32;
                    for k in 4 * l..4 * l + 4 {
                        let w = if k < 16 { qs[k] & 0xF } else { qs[k - 16] >> 4 };
                        sumi += w as i32 * qa[k] as i32;
                    }
                    *al = d.mul_add(sumi as f32, *al);
                }
                acc_m += h(x, 2) * a.s[b];
            }
            hsum8(&acc) + acc_m
        }
        GgmlType::Q8_0 => {
            let mut acc = [0f32; 8];
            for (b, x) in row.chunks_exact(34).enumerate() {
                let qa = &a.qs[b * QK..b * QK + QK];
                let d = h(x, 0) * a.d[b];
                for (l, al) in acc.iter_mut().enumerate() {
                    let sumi: i32 = (4 * l..4 * l + 4)
                        .map(|k| x[2 + k] as i8 as i32 * qa[k] as i32)
                        .sum();
                    *al = d.mul_add(sumi as f32, *al);
                }
            }
            hsum8(&acc)
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let five = ty == GgmlType::Q5_K;
            let mut acc = 0f32;
            for (sb, x) in row.chunks_exact(ty.block_bytes()).enumerate() {
                let d = h(x, 0);
                let dmin = h(x, 2);
                let scales = &x[4..16];
                let (qh, qs) = if five {
                    (&x[16..48], &x[48..176])
                } else {
                    (&x[0..0], &x[16..144])
                };
                for j in 0..8 {
                    let b = sb * 8 + j;
                    let qa = &a.qs[b * QK..b * QK + QK];
                    let (sc, m) = scale_min_k4(j, scales);
                    let q = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
                    let mut sumi = 0i32;
                    for l in 0..32 {
                        let mut v = if j % 2 == 0 { q[l] & 0xF } else { q[l] >> 4 } as i32;
                        if five && (qh[l] >> j) & 1 != 0 {
                            v += 16;
                        }
                        sumi += v * qa[l] as i32;
                    }
                    acc += d * sc as f32 * a.d[b] * sumi as f32
                        - dmin * m as f32 * a.d[b] * a.isum[b] as f32;
                }
            }
            acc
        }
        GgmlType::Q6_K => {
            let mut acc = 0f32;
            for (sb, x) in row.chunks_exact(210).enumerate() {
                let d = h(x, 208);
                for n in 0..2 {
                    let ql = &x[64 * n..64 * n + 64];
                    let qh = &x[128 + 32 * n..128 + 32 * n + 32];
                    let sc = &x[192 + 8 * n..192 + 8 * n + 8];
                    for k in 0..4 {
                        let b = sb * 8 + n * 4 + k;
                        let qa = &a.qs[b * QK..b * QK + QK];
                        let mut s = [0i32; 2];
                        for l in 0..32 {
                            let v = q6(ql, qh, k, l);
                            s[l / 16] += v * qa[l] as i32;
                        }
                        acc += d
                            * a.d[b]
                            * ((sc[2 * k] as i8) as i32 * s[0]
                                + (sc[2 * k + 1] as i8) as i32 * s[1])
                                as f32;
                    }
                }
            }
            acc
        }
    }
}

/// ggml's `hsum_float_8`: upper and lower halves, then pairs, then the last two.
fn hsum8(v: &[f32; 8]) -> f32 {
    let t: [f32; 4] = std::array::from_fn(|i| v[i + 4] + v[i]);
    (t[0] + t[2]) + (t[1] + t[3])
}

/// Q6_K quant value for output position `32*k + l` of a 128-element half block.
#[inline]
fn q6(ql: &[u8], qh: &[u8], k: usize, l: usize) -> i32 {
    let lo = match k {
        0 => ql[l] & 0xF,
        1 => ql[l + 32] & 0xF,
        2 => ql[l] >> 4,
        _ => ql[l + 32] >> 4,
    };
    let hi = (qh[l] >> (2 * k)) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// AVX2 versions of the hot dot products.
///
/// `unsafe` here is only for the `core::arch` intrinsics: each function is
/// `#[target_feature(enable = "avx2,fma")]` and is called only after `available()` has
/// confirmed the CPU has both; all memory access goes through bounds-checked slices
/// converted to pointers with at least the loaded width remaining.
#[cfg(target_arch = "x86_64")]
pub mod simd {
    use super::{GgmlType, Q8Act, QK};
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    /// Whether the CPU supports the AVX2 paths (checked once).
    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::env::var_os("SWITCHYARD_NO_SIMD").is_none()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    /// An f16 field of a block, converted by the F16C instruction (the `half` crate's
    /// portable conversion costs more than the block's whole dot product).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hf(b: &[u8], at: usize) -> f32 {
        let v = u16::from_le_bytes([b[at], b[at + 1]]) as i32;
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(v)))
    }

    /// `None` for formats without a SIMD path (the caller uses the scalar one).
    pub fn vec_dot(ty: GgmlType, row: &[u8], a: &Q8Act) -> Option<f32> {
        if !available() {
            return None;
        }
        // SAFETY: `available()` confirmed avx2+fma; the callees index within `row`/`a`.
        unsafe {
            match ty {
                GgmlType::Q4_0 => Some(dot_q4(row, a, false)),
                GgmlType::Q4_1 => q4_1_dots(row, [a]).map(|[v]| v),
                GgmlType::Q8_0 => Some(dot_q8_0(row, a)),
                GgmlType::Q4_K => Some(dot_q4_k(row, a)),
                GgmlType::Q6_K => Some(dot_q6_k(row, a)),
                GgmlType::F32 => Some(dot_f32(row, a)),
                GgmlType::F16 => Some(dot_f16(row, a)),
                _ => None,
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum_i32(v: __m256i) -> i32 {
        let lo = _mm256_castsi256_si128(v);
        let hi = _mm256_extracti128_si256::<1>(v);
        let s = _mm_add_epi32(lo, hi);
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    /// 32 unsigned nibbles: low nibbles of 16 bytes then their high nibbles (ggml order).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(p: &[u8]) -> __m256i {
        debug_assert!(p.len() >= 16);
        // SAFETY: p has at least 16 bytes.
        let t = unsafe { _mm_loadu_si128(p.as_ptr() as *const __m128i) };
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(t), t);
        _mm256_and_si256(both, _mm256_set1_epi8(0xF))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load32(p: &[i8]) -> __m256i {
        debug_assert!(p.len() >= 32);
        // SAFETY: p has at least 32 bytes.
        unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) }
    }

    /// Sum of unsigned(u8) × signed(i8) products in i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_u8i8(u: __m256i, s: __m256i) -> __m256i {
        let p16 = _mm256_maddubs_epi16(u, s);
        _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
    }

    /// Whether the CPU has AVX-512 VNNI on 256-bit vectors (one `vpdpbusd` per block instead
    /// of two instructions; the integer lane sums, hence the results, are identical).
    fn has_vnni() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::env::var_os("SWITCHYARD_NO_VNNI").is_none()
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
        })
    }

    /// `R` Q4_1 rows times `N` activations at once: each block's nibbles are unpacked once for
    /// every activation and each activation block loaded once for every row, and the `R × N`
    /// accumulation chains interleave. Per (row, activation) the operations and their order
    /// are exactly ggml's (and `dot_q4`'s), so tiling changes no bit.
    macro_rules! q4_1_tile {
        ($name:ident, $features:literal, $dot:ident) => {
            #[target_feature(enable = $features)]
            unsafe fn $name<const R: usize, const N: usize>(
                rows: [&[u8]; R],
                a: [&Q8Act; N],
            ) -> [[f32; N]; R] {
                let nb = rows[0].len() / 20;
                let mut acc = [[_mm256_setzero_ps(); N]; R];
                let mut acc_m = [[0f32; N]; R];
                for b in 0..nb {
                    // SAFETY: 32 bytes per activation block.
                    let ys: [__m256i; N] =
                        std::array::from_fn(|k| unsafe { load32(&a[k].qs[b * QK..b * QK + QK]) });
                    let ds: [f32; N] = std::array::from_fn(|k| a[k].d[b]);
                    let ss: [f32; N] = std::array::from_fn(|k| a[k].s[b]);
                    for r in 0..R {
                        let x = &rows[r][b * 20..b * 20 + 20];
                        // SAFETY: 16 bytes of nibbles.
                        let w = unsafe { nibbles(&x[4..20]) };
                        let (d0, m) = (hf(x, 0), hf(x, 2));
                        for k in 0..N {
                            let sumi = $dot(w, ys[k]);
                            let d = d0 * ds[k];
                            acc[r][k] = _mm256_fmadd_ps(
                                _mm256_set1_ps(d),
                                _mm256_cvtepi32_ps(sumi),
                                acc[r][k],
                            );
                            acc_m[r][k] += m * ss[k];
                        }
                    }
                }
                std::array::from_fn(|r| std::array::from_fn(|k| hsum(acc[r][k]) + acc_m[r][k]))
            }
        };
    }
    q4_1_tile!(q4_1_tile_avx2, "avx2,fma,f16c", dot_u8i8);
    q4_1_tile!(
        q4_1_tile_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        dot_u8i8_vnni
    );

    /// `R × N` Q4_1 tile; the caller has checked `available()`.
    fn q4_1_tile<const R: usize, const N: usize>(
        rows: [&[u8]; R],
        a: [&Q8Act; N],
    ) -> [[f32; N]; R] {
        // SAFETY: `available()` (checked by every caller) and `has_vnni()` confirmed the
        // features each kernel enables; the kernels index within the rows and activations.
        unsafe {
            if has_vnni() {
                q4_1_tile_vnni(rows, a)
            } else {
                q4_1_tile_avx2(rows, a)
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    fn dot_u8i8_vnni(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }

    /// Q4_1 row times `N` activations; `None` without AVX2.
    pub fn q4_1_dots<const N: usize>(row: &[u8], a: [&Q8Act; N]) -> Option<[f32; N]> {
        if !available() {
            return None;
        }
        let [v] = q4_1_tile([row], a);
        Some(v)
    }

    /// `out[j * n + t] = row(first + j) · acts[t]` for Q4_1 (`n = acts.len()`), in 2 × 4
    /// tiles; false without AVX2 or for another format.
    pub fn tile_dot(
        ty: GgmlType,
        data: &[u8],
        rb: usize,
        first: usize,
        acts: &[Q8Act],
        out: &mut [f32],
    ) -> bool {
        if !available() || ty != GgmlType::Q4_1 {
            return false;
        }
        let n = acts.len();
        let rows = out.len() / n.max(1);
        let row = |r: usize| &data[(first + r) * rb..(first + r + 1) * rb];
        let mut j = 0;
        while j < rows {
            let pair = j + 2 <= rows;
            let mut t = 0;
            while t < n {
                let quad = t + 4 <= n;
                match (pair, quad) {
                    (true, true) => {
                        let a = [&acts[t], &acts[t + 1], &acts[t + 2], &acts[t + 3]];
                        let v = q4_1_tile([row(j), row(j + 1)], a);
                        for (r, vr) in v.iter().enumerate() {
                            out[(j + r) * n + t..(j + r) * n + t + 4].copy_from_slice(vr);
                        }
                    }
                    (true, false) => {
                        let v = q4_1_tile([row(j), row(j + 1)], [&acts[t]]);
                        out[j * n + t] = v[0][0];
                        out[(j + 1) * n + t] = v[1][0];
                    }
                    (false, true) => {
                        let a = [&acts[t], &acts[t + 1], &acts[t + 2], &acts[t + 3]];
                        let [v] = q4_1_tile([row(j)], a);
                        out[j * n + t..j * n + t + 4].copy_from_slice(&v);
                    }
                    (false, false) => {
                        let [[v]] = q4_1_tile([row(j)], [&acts[t]]);
                        out[j * n + t] = v;
                    }
                }
                t += if quad { 4 } else { 1 };
            }
            j += if pair { 2 } else { 1 };
        }
        true
    }

    /// `R` Q8_0 rows times one activation, as `q4_1_tile`; per row exactly `dot_q8_0` (used
    /// with one row: see `rows_dot`).
    macro_rules! q8_0_rows {
        ($name:ident, $features:literal, $dot:ident) => {
            #[target_feature(enable = $features)]
            unsafe fn $name<const R: usize>(rows: [&[u8]; R], a: &Q8Act) -> [f32; R] {
                let nb = rows[0].len() / 34;
                let mut acc = [_mm256_setzero_ps(); R];
                for b in 0..nb {
                    // SAFETY: 32 bytes per activation block.
                    let y = unsafe { load32(&a.qs[b * QK..b * QK + QK]) };
                    let ad = a.d[b];
                    for r in 0..R {
                        let x = &rows[r][b * 34..b * 34 + 34];
                        // SAFETY: x[2..34] has 32 bytes.
                        let w = unsafe { _mm256_loadu_si256(x[2..34].as_ptr() as *const __m256i) };
                        let sumi = $dot(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w));
                        let d = hf(x, 0) * ad;
                        acc[r] =
                            _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[r]);
                    }
                }
                std::array::from_fn(|r| hsum(acc[r]))
            }
        };
    }
    q8_0_rows!(q8_0_rows_avx2, "avx2,fma,f16c", dot_u8i8);
    q8_0_rows!(
        q8_0_rows_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        dot_u8i8_vnni
    );

    /// `quant::vec_dot_rows` for the formats with a multi-row kernel; false for the others
    /// (or without AVX2).
    pub fn rows_dot(
        ty: GgmlType,
        data: &[u8],
        rb: usize,
        first: usize,
        a: &Q8Act,
        out: &mut [f32],
    ) -> bool {
        if !available() || !matches!(ty, GgmlType::Q4_1 | GgmlType::Q8_0) {
            return false;
        }
        let row = |r: usize| &data[r * rb..(r + 1) * rb];
        let vnni = has_vnni();
        // SAFETY: `available()`/`has_vnni()` confirmed the features each kernel enables; the
        // kernels index within the rows and the activation.
        let four = |r: usize| -> [f32; 4] {
            let rows = [row(r), row(r + 1), row(r + 2), row(r + 3)];
            q4_1_tile(rows, [a]).map(|[v]| v)
        };
        let one = |r: usize| -> f32 {
            if ty == GgmlType::Q4_1 {
                return q4_1_tile([row(r)], [a])[0][0];
            }
            // SAFETY: `available()`/`has_vnni()` confirmed the features each kernel enables.
            let [v] = unsafe {
                if vnni {
                    q8_0_rows_vnni([row(r)], a)
                } else {
                    q8_0_rows_avx2([row(r)], a)
                }
            };
            v
        };
        let mut j = 0;
        // Q8_0 rows stay one at a time: measured, four interleaved Q8_0 rows streaming from
        // memory ran at half the speed of one (in cache they were faster); Q4_1 gained from
        // four either way.
        while ty == GgmlType::Q4_1 && j + 4 <= out.len() {
            out[j..j + 4].copy_from_slice(&four(first + j));
            j += 4;
        }
        for (k, o) in out[j..].iter_mut().enumerate() {
            *o = one(first + j + k);
        }
        true
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_q4(row: &[u8], a: &Q8Act, one: bool) -> f32 {
        let bb = if one { 20 } else { 18 };
        let nb = row.len() / bb;
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = 0f32;
        for b in 0..nb {
            let x = &row[b * bb..b * bb + bb];
            let qs = if one { &x[4..20] } else { &x[2..18] };
            // SAFETY: qs has 16 bytes, the activation block 32.
            let (w, y) = unsafe { (nibbles(qs), load32(&a.qs[b * QK..b * QK + QK])) };
            let mut sumi = dot_u8i8(w, y);
            let d = hf(x, 0) * a.d[b];
            if !one {
                // (q - 8)·y = q·y - 8·Σy, exact in integers.
                sumi =
                    _mm256_sub_epi32(sumi, _mm256_setr_epi32(8 * a.isum[b], 0, 0, 0, 0, 0, 0, 0));
            } else {
                acc_m += hf(x, 2) * a.s[b];
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc) + acc_m
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_q8_0(row: &[u8], a: &Q8Act) -> f32 {
        let nb = row.len() / 34;
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            let x = &row[b * 34..b * 34 + 34];
            // SAFETY: x[2..34] has 32 bytes, the activation block 32.
            let (w, y) = unsafe {
                (
                    _mm256_loadu_si256(x[2..34].as_ptr() as *const __m256i),
                    load32(&a.qs[b * QK..b * QK + QK]),
                )
            };
            // Signed × signed via the sign trick: |w| × (y with w's sign).
            let aw = _mm256_sign_epi8(w, w);
            let sy = _mm256_sign_epi8(y, w);
            let sumi = dot_u8i8(aw, sy);
            let d = hf(x, 0) * a.d[b];
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_q4_k(row: &[u8], a: &Q8Act) -> f32 {
        let mut acc = 0f32;
        for (sb, x) in row.chunks_exact(144).enumerate() {
            let d = hf(x, 0);
            let dmin = hf(x, 2);
            let scales = &x[4..16];
            let qs = &x[16..144];
            for p in 0..4 {
                let b0 = sb * 8 + 2 * p;
                // SAFETY: 32 bytes per pair, 32 per activation block.
                let (raw, y0, y1) = unsafe {
                    (
                        _mm256_loadu_si256(qs[p * 32..p * 32 + 32].as_ptr() as *const __m256i),
                        load32(&a.qs[b0 * QK..b0 * QK + QK]),
                        load32(&a.qs[(b0 + 1) * QK..(b0 + 1) * QK + QK]),
                    )
                };
                let m = _mm256_set1_epi8(0xF);
                let lo = _mm256_and_si256(raw, m);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m);
                let s0 = hsum_i32(dot_u8i8(lo, y0));
                let s1 = hsum_i32(dot_u8i8(hi, y1));
                let (sc0, m0) = super::scale_min_k4(2 * p, scales);
                let (sc1, m1) = super::scale_min_k4(2 * p + 1, scales);
                acc += d
                    * (sc0 as f32 * a.d[b0] * s0 as f32 + sc1 as f32 * a.d[b0 + 1] * s1 as f32)
                    - dmin
                        * (m0 as f32 * a.d[b0] * a.isum[b0] as f32
                            + m1 as f32 * a.d[b0 + 1] * a.isum[b0 + 1] as f32);
            }
        }
        acc
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_q6_k(row: &[u8], a: &Q8Act) -> f32 {
        let mut acc = 0f32;
        let m4 = _mm256_set1_epi8(0xF);
        let m2 = _mm256_set1_epi8(3);
        for (sb, x) in row.chunks_exact(210).enumerate() {
            let d = hf(x, 208);
            for n in 0..2 {
                let ql = &x[64 * n..64 * n + 64];
                let qh = &x[128 + 32 * n..128 + 32 * n + 32];
                let sc = &x[192 + 8 * n..192 + 8 * n + 8];
                // SAFETY: ql has 64 bytes, qh 32.
                let (l0, l1, hh) = unsafe {
                    (
                        _mm256_loadu_si256(ql[0..32].as_ptr() as *const __m256i),
                        _mm256_loadu_si256(ql[32..64].as_ptr() as *const __m256i),
                        _mm256_loadu_si256(qh.as_ptr() as *const __m256i),
                    )
                };
                let los = [
                    _mm256_and_si256(l0, m4),
                    _mm256_and_si256(l1, m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                ];
                let his = [
                    _mm256_and_si256(hh, m2),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(hh), m2),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(hh), m2),
                    _mm256_and_si256(_mm256_srli_epi16::<6>(hh), m2),
                ];
                for k in 0..4 {
                    let b = sb * 8 + n * 4 + k;
                    // Unsigned 0..63 values; subtract 32·Σy per 16-lane half afterwards.
                    let q = _mm256_or_si256(los[k], _mm256_slli_epi16::<4>(his[k]));
                    // SAFETY: 32 bytes per activation block.
                    let y = unsafe { load32(&a.qs[b * QK..b * QK + QK]) };
                    let p = dot_u8i8(q, y); // 8 lanes of 4 products: lanes 0-3 = l<16
                    let ysum16 = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(_mm256_set1_epi8(1), y),
                        _mm256_set1_epi16(1),
                    );
                    let v = _mm256_sub_epi32(p, _mm256_slli_epi32::<5>(ysum16));
                    let lo = _mm256_castsi256_si128(v);
                    let hi = _mm256_extracti128_si256::<1>(v);
                    let s0 = hsum_i32(_mm256_set_m128i(_mm_setzero_si128(), lo));
                    let s1 = hsum_i32(_mm256_set_m128i(_mm_setzero_si128(), hi));
                    acc += d
                        * a.d[b]
                        * ((sc[2 * k] as i8) as i32 * s0 + (sc[2 * k + 1] as i8) as i32 * s1)
                            as f32;
                }
            }
        }
        acc
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f32(row: &[u8], a: &Q8Act) -> f32 {
        let n = a.f.len().min(row.len() / 4);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i+8 <= n elements in both.
            let (w, x) = unsafe {
                (
                    _mm256_loadu_ps(row[i * 4..i * 4 + 32].as_ptr() as *const f32),
                    _mm256_loadu_ps(a.f[i..i + 8].as_ptr()),
                )
            };
            acc = _mm256_fmadd_ps(w, x, acc);
            i += 8;
        }
        let mut s = hsum(acc);
        for j in i..n {
            let c = &row[j * 4..j * 4 + 4];
            s += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * a.f[j];
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f16(row: &[u8], a: &Q8Act) -> f32 {
        let n = a.f.len().min(row.len() / 2);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i+8 <= n elements in both.
            let (w, x) = unsafe {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(
                        row[i * 2..i * 2 + 16].as_ptr() as *const __m128i
                    )),
                    _mm256_loadu_ps(a.f[i..i + 8].as_ptr()),
                )
            };
            acc = _mm256_fmadd_ps(w, x, acc);
            i += 8;
        }
        let mut s = hsum(acc);
        for j in i..n {
            s += hf(row, j * 2) * a.f[j];
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes and floats.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f(&mut self) -> f32 {
            (self.next() % 20001) as f32 / 10000.0 - 1.0
        }
    }

    /// Random but valid blocks: f16 scale fields get small normal values so that no NaN/inf
    /// appears; everything else is random bits.
    fn random_row(ty: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
        let mut b: Vec<u8> = (0..ty.row_bytes(n)).map(|_| rng.next() as u8).collect();
        let scale_at: &[usize] = match ty {
            GgmlType::Q4_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            GgmlType::Q6_K => &[208],
            _ => &[],
        };
        let bb = ty.block_bytes();
        match ty {
            GgmlType::F16 | GgmlType::BF16 | GgmlType::F32 => {
                let vals: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                b = match ty {
                    GgmlType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    GgmlType::F16 => vals
                        .iter()
                        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                        .collect(),
                    _ => vals
                        .iter()
                        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                        .collect(),
                };
            }
            _ => {
                for blk in b.chunks_exact_mut(bb) {
                    for &at in scale_at {
                        let v = f16::from_f32(rng.f() * 0.05);
                        blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        b
    }

    const ALL: [GgmlType; 9] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// The dot of each format, scalar and SIMD, against the dequantized row times the
    /// dequantized activation (the exact value the integer math should reproduce), per block.
    #[test]
    fn dot_matches_dequantized_reference_block_by_block() {
        let mut rng = Rng(0x9E3779B97F4A7C15);
        for ty in ALL {
            for _ in 0..20 {
                // One block (super-block for K formats) at a time.
                let n = QK_K;
                let row = random_row(ty, n, &mut rng);
                let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                let mut a = Q8Act::default();
                a.quantize(&x);
                let mut w = vec![0f32; n];
                dequantize_row(ty, &row, &mut w);
                let float_act = matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
                let xr: Vec<f32> = if float_act {
                    x.clone()
                } else {
                    (0..n).map(|i| a.qs[i] as f32 * a.d[i / QK]).collect()
                };
                let mut want = 0f64;
                for i in 0..n {
                    want += w[i] as f64 * xr[i] as f64;
                }
                // Q4_1's min term uses the f16-rounded block sum, as ggml does.
                let mut tol = 1e-3 * (1.0 + want.abs());
                if ty == GgmlType::Q4_1 {
                    tol += 0.02;
                }
                let got = vec_dot_scalar(ty, &row, &a) as f64;
                assert!((got - want).abs() <= tol, "{ty:?} scalar {got} vs {want}");
                if matches!(ty, GgmlType::Q4_1 | GgmlType::Q8_0) && simd_available() {
                    // Same operations in the same order: bit-identical.
                    assert_eq!(
                        vec_dot(ty, &row, &a),
                        vec_dot_scalar(ty, &row, &a),
                        "{ty:?}"
                    );
                }
                let mut many = [0f32; 5];
                let five = vec![a.clone(), a.clone(), a.clone(), a.clone(), a.clone()];
                vec_dot_many(ty, &row, &five, &mut many);
                assert!(
                    many.iter().all(|&m| m == vec_dot(ty, &row, &a)),
                    "{ty:?} many"
                );
                let fast = vec_dot(ty, &row, &a) as f64;
                assert!(
                    (fast - got).abs() <= 1e-3 * (1.0 + got.abs()),
                    "{ty:?} simd {fast} vs scalar {got}"
                );
            }
        }
    }

    #[test]
    fn many_rows_at_once_give_each_row_s_dot_to_the_bit() {
        let mut rng = Rng(0x2545F4914F6CDD1D);
        for ty in ALL {
            let n = 2 * QK_K;
            let rows = 11;
            let data: Vec<u8> = (0..rows)
                .flat_map(|_| random_row(ty, n, &mut rng))
                .collect();
            let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
            let mut a = Q8Act::default();
            a.quantize(&x);
            let rb = ty.row_bytes(n);
            for first in [0, 1, 3] {
                let mut out = vec![0f32; rows - first];
                vec_dot_rows(ty, &data, rb, first, &a, &mut out);
                for (j, o) in out.iter().enumerate() {
                    let r = first + j;
                    let want = vec_dot(ty, &data[r * rb..(r + 1) * rb], &a);
                    assert_eq!(o.to_bits(), want.to_bits(), "{ty:?} row {r}");
                }
            }
        }
    }

    #[test]
    fn tiles_of_rows_and_activations_give_each_dot_to_the_bit() {
        let mut rng = Rng(0x5851F42D4C957F2D);
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K] {
            let n = QK_K;
            let rows = 7;
            let data: Vec<u8> = (0..rows)
                .flat_map(|_| random_row(ty, n, &mut rng))
                .collect();
            let acts: Vec<Q8Act> = (0..6)
                .map(|_| {
                    let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                    let mut a = Q8Act::default();
                    a.quantize(&x);
                    a
                })
                .collect();
            let rb = ty.row_bytes(n);
            let first = 1;
            let mut out = vec![0f32; (rows - first) * acts.len()];
            vec_dot_tile(ty, &data, rb, first, &acts, &mut out);
            for j in 0..rows - first {
                let r = first + j;
                for (t, a) in acts.iter().enumerate() {
                    let want = vec_dot(ty, &data[r * rb..(r + 1) * rb], a);
                    let got = out[j * acts.len() + t];
                    assert_eq!(got.to_bits(), want.to_bits(), "{ty:?} row {r} act {t}");
                }
            }
        }
    }

    #[test]
    fn q4_0_dequant_known_block() {
        let mut blk = vec![0u8; 18];
        blk[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        blk[2] = 0x9F; // low nibble 15, high 9
        let mut out = vec![0f32; 32];
        dequantize_row(GgmlType::Q4_0, &blk, &mut out);
        assert_eq!(out[0], (15.0 - 8.0) * 0.5);
        assert_eq!(out[16], (9.0 - 8.0) * 0.5);
        assert_eq!(out[1], -4.0);
    }

    #[test]
    fn quantize_roundtrip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut a = Q8Act::default();
        a.quantize(&x);
        for (i, v) in x.iter().enumerate() {
            assert!((a.qs[i] as f32 * a.d[i / 32] - v).abs() < 0.01);
        }
    }
}

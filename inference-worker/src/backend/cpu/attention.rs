//! The CPU attention kernel over the paged KV cache: for every new token and query head,
//! softmax(q·K / √d)·V over the positions up to the token's own, read through the
//! sequence's block table.
//!
//! With the f16 cache this reproduces llama.cpp's CPU path with flash attention off, bit for
//! bit (tests/reference_parity.rs): Q converted to f16 times the f16 keys, scaled, ggml's
//! softmax (its `expf`, the sum in f64 per 16-lane reduction), the probabilities converted to
//! f16 times the f16 values. llama.cpp hands products of a multi-token batch to tinyBLAS and a
//! single token's to `ggml_vec_dot_f16`; their summation orders differ, so each token follows
//! the order of its own sequence's batch size (`Query::multi`), never the step's. Position `p`
//! accumulates in lane `p % 16` (tinyBLAS) or `p % 64` (`ggml_vec_dot_f16`'s four 16-lane
//! accumulators); see `numerics`.
//!
//! `head_f16_scalar` spells that out one value at a time and is the reference; `simd` does the
//! same operations 16 lanes at a time with AVX-512 (same roundings: every product here is of
//! two f16 values, exact in f32, so a fused multiply-add equals a multiply then an add), and a
//! test checks the two agree to the bit. The q8_0 cache has its own kernel with no llama.cpp
//! counterpart to match: integer q·k on quantized rows, f32 accumulation of dequantized values.

use std::cell::RefCell;

use half::f16;

use super::kv_pool::{KvPool, Rows, dequantize_q8_0};
use super::ops::chunks;
use super::team::Team;
use crate::kv::{BLOCK_TOKENS, BlockId};
use crate::numerics::{LANES, combine4, dot_f16_ggml, dot_f16_lanes, f16_round, reduce16, v_expf};
use crate::quant::{GgmlType, Q8Act, vec_dot};

/// One new token's attention query.
pub(crate) struct Query<'a> {
    /// Its queries, `n_head * head_dim`, after RoPE.
    pub q: &'a [f32],
    /// Its position: it attends to positions `0..=pos`.
    pub pos: usize,
    /// Its sequence's block table.
    pub blocks: &'a [BlockId],
    /// Whether its sequence feeds more than one token this step (tinyBLAS order).
    pub multi: bool,
}

/// Geometry of a layer's attention.
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

/// Per-thread buffers, reused across heads.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    acc: Vec<f32>,
    row: Vec<f32>,
    qa: Q8Act,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Writes each query's attention output (`n_head * head_dim` per query) into `out`, heads
/// spread over the team.
pub(crate) fn attend(
    team: &Team,
    pool: &KvPool,
    layer: usize,
    g: Heads,
    queries: &[Query<'_>],
    out: &mut [f32],
) {
    let hd = g.head_dim;
    let group = g.n_head / g.n_head_kv;
    let (keys, values) = (&pool.keys[layer], &pool.values[layer]);
    chunks(team, out, hd, |i, o| {
        let (t, h) = (i / g.n_head, i % g.n_head);
        let query = &queries[t];
        let task = Head {
            pool,
            kvh: h / group,
            q: &query.q[h * hd..(h + 1) * hd],
            pos: query.pos,
            blocks: query.blocks,
            multi: query.multi,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            match (keys, values) {
                (Rows::F16(k), Rows::F16(v)) => head_f16(&task, k, v, s, o),
                (Rows::Q8(k), Rows::Q8(v)) => head_q8(&task, k, v, s, o),
                _ => unreachable!("keys and values share one format"),
            }
        });
    });
}

/// One (token, query head) of the work.
struct Head<'a> {
    pool: &'a KvPool,
    /// The key/value head this query head reads.
    kvh: usize,
    q: &'a [f32],
    pos: usize,
    blocks: &'a [BlockId],
    multi: bool,
    scale: f32,
}

impl Head<'_> {
    /// The pool row of position `p`.
    #[inline]
    fn row(&self, p: usize) -> usize {
        self.pool
            .row(self.blocks[p / BLOCK_TOKENS], self.kvh, p % BLOCK_TOKENS)
    }

    /// Accumulator lanes per output value: tinyBLAS' 16, or ggml_vec_dot_f16's 4 × 16.
    fn slots(&self) -> usize {
        if self.multi { LANES } else { 4 * LANES }
    }
}

fn head_f16(t: &Head<'_>, k: &[u16], v: &[u16], s: &mut Scratch, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() && t.q.len().is_multiple_of(64) {
        // SAFETY: the CPU has the features `simd` enables (checked by `available`); the head
        // size is a multiple of 64, the only shape it handles; all indexing is bounds-checked.
        unsafe { simd::head_f16(t, k, v, s, out) };
        return;
    }
    head_f16_scalar(t, k, v, s, out);
}

/// The reference kernel: llama.cpp's order of operations, one value at a time.
fn head_f16_scalar(t: &Head<'_>, k: &[u16], v: &[u16], s: &mut Scratch, out: &mut [f32]) {
    let hd = t.q.len();
    let len = t.pos + 1;
    s.q.clear();
    s.q.extend(t.q.iter().map(|x| f16_round(*x)));
    s.scores.clear();
    s.row.resize(hd, 0.0);
    let mut max = f32::NEG_INFINITY;
    for p in 0..len {
        let r = t.row(p);
        for (o, b) in s.row.iter_mut().zip(&k[r * hd..(r + 1) * hd]) {
            *o = f16::from_bits(*b).to_f32();
        }
        let x = if t.multi {
            dot_f16_lanes(&s.q, &s.row)
        } else {
            dot_f16_ggml(&s.q, &s.row)
        } * t.scale;
        max = max.max(x);
        s.scores.push(x);
    }
    for x in s.scores.iter_mut() {
        *x = v_expf(*x - max);
    }
    let inv = inverse_sum(&s.scores);
    let slots = t.slots();
    s.acc.clear();
    s.acc.resize(slots * hd, 0.0);
    for p in 0..len {
        let w = f16_round(s.scores[p] * inv);
        let r = t.row(p);
        let slot = p % slots;
        for (a, b) in s.acc[slot * hd..(slot + 1) * hd]
            .iter_mut()
            .zip(&v[r * hd..(r + 1) * hd])
        {
            *a += w * f16::from_bits(*b).to_f32();
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        let lane =
            |k: usize| -> [f32; LANES] { std::array::from_fn(|i| s.acc[(k * LANES + i) * hd + j]) };
        *o = if t.multi {
            reduce16(&lane(0))
        } else {
            combine4(&[lane(0), lane(1), lane(2), lane(3)])
        };
    }
}

/// ggml's softmax normaliser: the sum in f64, one 16-lane reduction at a time, inverted.
fn inverse_sum(e: &[f32]) -> f32 {
    let mut sum = 0f64;
    for ch in e.chunks(LANES) {
        let mut l = [0f32; LANES];
        l[..ch.len()].copy_from_slice(ch);
        sum += reduce16(&l) as f64;
    }
    (1.0 / sum) as f32
}

/// The q8_0 cache: q quantized like an activation, integer dot products with the keys, and
/// the dequantized values summed in f32.
fn head_q8(t: &Head<'_>, k: &[u8], v: &[u8], s: &mut Scratch, out: &mut [f32]) {
    let hd = t.q.len();
    let rb = hd / 32 * 34;
    let len = t.pos + 1;
    s.qa.quantize(t.q);
    s.scores.clear();
    let mut max = f32::NEG_INFINITY;
    for p in 0..len {
        let r = t.row(p);
        let x = vec_dot(GgmlType::Q8_0, &k[r * rb..(r + 1) * rb], &s.qa) * t.scale;
        max = max.max(x);
        s.scores.push(x);
    }
    let mut sum = 0f32;
    for x in s.scores.iter_mut() {
        *x = v_expf(*x - max);
        sum += *x;
    }
    out.fill(0.0);
    s.row.resize(hd, 0.0);
    for p in 0..len {
        let r = t.row(p);
        dequantize_q8_0(&v[r * rb..(r + 1) * rb], &mut s.row);
        let w = s.scores[p] / sum;
        for (o, x) in out.iter_mut().zip(&s.row) {
            *o += w * x;
        }
    }
}

/// AVX-512 form of `head_f16_scalar`.
///
/// `unsafe` only for the `core::arch` intrinsics: each function enables the features
/// `available()` confirmed, and every load goes through a bounds-checked slice of at least
/// the loaded width.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{Head, Scratch};
    use crate::numerics::{LANES, v_expf};

    pub(super) fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::env::var_os("SWITCHYARD_NO_SIMD").is_none()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    /// 16 f16 values at `p[..16]` as f32.
    #[inline]
    #[target_feature(enable = "avx512f,fma,f16c")]
    fn load_f16(p: &[u16]) -> __m512 {
        assert!(p.len() >= 16);
        // SAFETY: 16 u16 = 32 bytes are in bounds (asserted).
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.as_ptr().cast()) })
    }

    #[inline]
    #[target_feature(enable = "avx512f,fma,f16c")]
    fn load(p: &[f32]) -> __m512 {
        assert!(p.len() >= 16);
        // SAFETY: 16 f32 are in bounds (asserted).
        unsafe { _mm512_loadu_ps(p.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,fma,f16c")]
    fn store(p: &mut [f32], v: __m512) {
        assert!(p.len() >= 16);
        // SAFETY: 16 f32 are in bounds (asserted).
        unsafe { _mm512_storeu_ps(p.as_mut_ptr(), v) }
    }

    /// `numerics::reduce16` on a vector.
    #[inline]
    #[target_feature(enable = "avx512f,fma,f16c")]
    fn reduce16(v: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let t3 = _mm256_add_ps(hi, lo);
        let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
        // (t6[0] + t6[2]), (t6[1] + t6[3]), then their sum.
        let s = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }

    /// Values rounded to f16 precision (nearest even), as `numerics::f16_round`.
    #[inline]
    #[target_feature(enable = "avx512f,fma,f16c")]
    fn f16_round(v: __m512) -> __m512 {
        _mm512_cvtph_ps(_mm512_cvtps_ph::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(v))
    }

    #[target_feature(enable = "avx512f,fma,f16c")]
    pub(super) fn head_f16(t: &Head<'_>, k: &[u16], v: &[u16], s: &mut Scratch, out: &mut [f32]) {
        let hd = t.q.len();
        let nv = hd / 16;
        let len = t.pos + 1;
        s.q.clear();
        s.q.resize(hd, 0.0);
        for c in 0..nv {
            store(&mut s.q[c * 16..], f16_round(load(&t.q[c * 16..])));
        }
        s.scores.clear();
        let mut max = f32::NEG_INFINITY;
        for p in 0..len {
            let r = t.row(p);
            let kr = &k[r * hd..(r + 1) * hd];
            let x = if t.multi {
                // One 16-lane accumulator across the row.
                let mut acc = _mm512_setzero_ps();
                for c in 0..nv {
                    acc = _mm512_fmadd_ps(load(&s.q[c * 16..]), load_f16(&kr[c * 16..]), acc);
                }
                reduce16(acc)
            } else {
                // Four accumulators over steps of 64, combined (0+2)+(1+3).
                let mut a = [_mm512_setzero_ps(); 4];
                for c in 0..nv {
                    let j = c % 4;
                    a[j] = _mm512_fmadd_ps(load(&s.q[c * 16..]), load_f16(&kr[c * 16..]), a[j]);
                }
                reduce16(_mm512_add_ps(
                    _mm512_add_ps(a[0], a[2]),
                    _mm512_add_ps(a[1], a[3]),
                ))
            } * t.scale;
            max = max.max(x);
            s.scores.push(x);
        }
        for x in s.scores.iter_mut() {
            *x = v_expf(*x - max);
        }
        // The softmax sum as `inverse_sum`, then the probabilities rounded to f16.
        let mut sum = 0f64;
        let full = len / 16 * 16;
        for c in (0..full).step_by(16) {
            sum += reduce16(load(&s.scores[c..])) as f64;
        }
        if full < len {
            let mut l = [0f32; LANES];
            l[..len - full].copy_from_slice(&s.scores[full..]);
            sum += reduce16(load(&l)) as f64;
        }
        let inv = (1.0 / sum) as f32;
        let vinv = _mm512_set1_ps(inv);
        s.scores.resize(full + if full < len { 16 } else { 0 }, 0.0);
        for c in (0..s.scores.len()).step_by(16) {
            let w = f16_round(_mm512_mul_ps(load(&s.scores[c..]), vinv));
            store(&mut s.scores[c..], w);
        }
        let slots = t.slots();
        s.acc.clear();
        s.acc.resize(slots * hd, 0.0);
        for p in 0..len {
            let w = _mm512_set1_ps(s.scores[p]);
            let r = t.row(p);
            let vr = &v[r * hd..(r + 1) * hd];
            let acc = &mut s.acc[(p % slots) * hd..];
            for c in 0..nv {
                let a = _mm512_fmadd_ps(w, load_f16(&vr[c * 16..]), load(&acc[c * 16..]));
                store(&mut acc[c * 16..], a);
            }
        }
        // Per output value, the lanes reduced in the kernel's order, 16 values at a time.
        let lane = |acc: &[f32], slot: usize, c: usize| load(&acc[slot * hd + c * 16..]);
        for c in 0..nv {
            let l: [__m512; LANES] = if t.multi {
                std::array::from_fn(|i| lane(&s.acc, i, c))
            } else {
                std::array::from_fn(|i| {
                    _mm512_add_ps(
                        _mm512_add_ps(lane(&s.acc, i, c), lane(&s.acc, 32 + i, c)),
                        _mm512_add_ps(lane(&s.acc, 16 + i, c), lane(&s.acc, 48 + i, c)),
                    )
                })
            };
            let t3: [__m512; 8] = std::array::from_fn(|i| _mm512_add_ps(l[i + 8], l[i]));
            let t6: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(t3[i + 4], t3[i]));
            let r = _mm512_add_ps(_mm512_add_ps(t6[0], t6[2]), _mm512_add_ps(t6[1], t6[3]));
            store(&mut out[c * 16..], r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::KvCacheType;
    use crate::model::Config;

    fn cfg(head_dim: usize) -> Config {
        Config {
            arch: "llama".into(),
            n_embd: 2 * head_dim,
            n_layer: 1,
            n_head: 2,
            n_head_kv: 1,
            head_dim,
            n_ff: 4,
            n_vocab: 4,
            n_ctx_train: 512,
            rms_eps: 1e-5,
            rope_base: 10000.0,
            n_rot: head_dim,
            rope_linear: 1.0,
            pooling: None,
            n_expert: 0,
            n_expert_used: 0,
        }
    }

    /// Pseudo-random values in [-2, 2).
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut r = crate::sampling::Rng::new(Some(seed));
        (0..n).map(|_| r.next_f32() * 4.0 - 2.0).collect()
    }

    #[test]
    fn simd_kernel_matches_the_scalar_reference_to_the_bit() {
        #[cfg(target_arch = "x86_64")]
        if !simd::available() {
            eprintln!("SKIPPED: no AVX-512 on this CPU; only the scalar kernel runs here");
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            eprintln!("SKIPPED: the SIMD kernel is x86-64 only");
            return;
        }
        for hd in [64, 128] {
            let c = cfg(hd);
            let kv = c.n_head_kv * hd;
            let mut pool = KvPool::new(
                &c,
                KvCacheType::F16,
                KvPool::block_bytes(&c, KvCacheType::F16) * 12,
            )
            .unwrap();
            // Blocks out of order, as a block table after reuse would have them.
            let blocks: Vec<BlockId> = vec![7, 2, 9, 0, 11, 4, 5, 1, 3, 6, 8, 10];
            let n = blocks.len() * BLOCK_TOKENS;
            let (k, v) = (noise(1, n * kv), noise(2, n * kv));
            for p in 0..n {
                let b = blocks[p / BLOCK_TOKENS];
                pool.write(
                    0,
                    b,
                    p % BLOCK_TOKENS,
                    &k[p * kv..(p + 1) * kv],
                    &v[p * kv..(p + 1) * kv],
                );
            }
            let q = noise(3, hd);
            let (Rows::F16(kr), Rows::F16(vr)) = (&pool.keys[0], &pool.values[0]) else {
                unreachable!()
            };
            for pos in [0, 1, 15, 16, 17, 63, 64, 65, 100, 150, n - 1] {
                for multi in [false, true] {
                    let t = Head {
                        pool: &pool,
                        kvh: 0,
                        q: &q,
                        pos,
                        blocks: &blocks,
                        multi,
                        scale: 0.125,
                    };
                    let (mut a, mut b) = (vec![0f32; hd], vec![0f32; hd]);
                    head_f16_scalar(&t, kr, vr, &mut Scratch::default(), &mut a);
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: available() was checked above.
                    unsafe {
                        simd::head_f16(&t, kr, vr, &mut Scratch::default(), &mut b)
                    };
                    let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&a), bits(&b), "hd {hd} pos {pos} multi {multi}");
                }
            }
        }
    }

    #[test]
    fn q8_cache_attends_like_the_f16_cache_within_quantization_error() {
        let c = cfg(64);
        let kv = 64;
        let n = 40;
        let (k, v) = (noise(4, n * kv), noise(5, n * kv));
        let q = noise(6, 64);
        let blocks: Vec<BlockId> = vec![1, 0, 2];
        let run = |ty| {
            let mut pool = KvPool::new(&c, ty, KvPool::block_bytes(&c, ty) * 3).unwrap();
            for p in 0..n {
                pool.write(
                    0,
                    blocks[p / 16],
                    p % 16,
                    &k[p * kv..(p + 1) * kv],
                    &v[p * kv..(p + 1) * kv],
                );
            }
            let mut out = vec![0f32; 128];
            let q2: Vec<f32> = q.iter().chain(&q).copied().collect();
            let g = Heads {
                n_head: 2,
                n_head_kv: 1,
                head_dim: 64,
            };
            let queries = [Query {
                q: &q2,
                pos: n - 1,
                blocks: &blocks,
                multi: false,
            }];
            attend(&Team::new(1), &pool, 0, g, &queries, &mut out);
            out
        };
        let (a, b) = (run(KvCacheType::F16), run(KvCacheType::Q8_0));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 0.05, "q8_0 vs f16 attention differ by {worst}");
        assert!(a.iter().any(|x| x.abs() > 0.05), "degenerate test data");
    }
}

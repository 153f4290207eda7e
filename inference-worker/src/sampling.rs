//! Choosing the next token from logits: penalties, top-k, top-p, min-p, temperature, seeded RNG.
//!
//! The order follows llama.cpp's default chain (penalties, then the truncations, then
//! temperature), so the same parameters mean the same thing as there. A request's `seed` seeds
//! its own generator, which makes a sampled completion reproducible. Log-probabilities reported
//! to clients are those of the model's raw distribution (log-softmax of the logits), as
//! OpenAI's are, not of the truncated one.

use std::collections::HashMap;

/// Sampling parameters of one request (already validated by the server).
#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means off.
    pub top_k: usize,
    pub min_p: f32,
    /// Multiplicative (llama.cpp `repeat_penalty`); 1 means off.
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
        }
    }
}

/// SplitMix64: tiny, fast, and good enough to draw one number per token.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: Option<u64>) -> Rng {
        let s = seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ (std::process::id() as u64).rotate_left(32)
        });
        Rng(s)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// The draw [`sample`] needs under `p`: one number per token, none when greedy.
    pub fn uniform_for(&mut self, p: &SamplingParams) -> f32 {
        if p.temperature > 0.0 {
            self.next_f32()
        } else {
            0.0
        }
    }
}

/// Log-softmax of `logits` at the given ids, and the top `n` (id, logprob) pairs.
pub fn logprobs(logits: &[f32], chosen: u32, n: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    let chosen_lp = logits
        .get(chosen as usize)
        .map_or(f32::NEG_INFINITY, |l| l - lse);
    let mut top = Vec::new();
    if n > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let n = n.min(idx.len());
        idx.select_nth_unstable_by(n - 1, |a, b| {
            logits[*b as usize].total_cmp(&logits[*a as usize])
        });
        idx.truncate(n);
        idx.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
        top = idx
            .into_iter()
            .map(|i| (i, logits[i as usize] - lse))
            .collect();
    }
    (chosen_lp, top)
}

/// Picks the next token. `history` is the ids generated (and prompted) so far, for penalties;
/// `uniform` is the sequence's next draw in [0, 1) ([`Rng::uniform_for`]: none when greedy).
///
/// Penalties, then greedy (temperature 0) or: top-k keeps the `k` highest logits (ties: lower
/// id first); top-p keeps the fewest of those, most likely first, whose probabilities
/// (renormalised over the top-k set) reach `top_p`; min-p keeps those at least `min_p` times as
/// likely as the best; the temperature applies to what is left and `uniform` picks from it,
/// walking ids in order.
///
/// Probabilities are weights `e^(logit - max)` in fixed point (units of 2^-30 of the best
/// token's, so tokens under a billionth of the best weigh nothing). Sums of integers do not
/// depend on their order, so the top-p cut is found without sorting the vocabulary: weights
/// are bucketed by magnitude and only the bucket the cut falls in is sorted ("most likely
/// first" is by weight, ties by lower id). The result is a function of the inputs alone, the
/// same in any batch or thread.
pub fn sample(logits: &[f32], p: &SamplingParams, history: &[u32], uniform: f32) -> u32 {
    let penalised;
    let l: &[f32] =
        if p.repetition_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            penalised = penalise(logits, p, history);
            &penalised
        } else {
            logits
        };
    if p.temperature <= 0.0 || l.is_empty() {
        return argmax(l);
    }
    let max = max_of(l);
    let top_k = p.top_k > 0 && p.top_k < l.len();
    if !top_k && p.top_p >= 1.0 && p.min_p <= 0.0 {
        return draw_all(l, max, 1.0 / p.temperature, uniform);
    }
    let mut w = vec![0u32; l.len()];
    fill_weights(l, max, 1.0, &mut w);
    // The ids still in, in id order (`None`: all of them).
    let mut kept: Option<Vec<u32>> = top_k.then(|| top_k_ids(l, p.top_k));
    if p.top_p < 1.0 {
        kept = Some(top_p_keep(&w, kept.as_deref(), p.top_p));
    }
    let kept = if p.min_p > 0.0 {
        let least = (f64::from(p.min_p) * f64::from(ONE)).ceil() as u32;
        match kept {
            Some(mut k) => {
                k.retain(|&i| w[i as usize] >= least);
                k
            }
            None => (0..l.len() as u32)
                .filter(|&i| w[i as usize] >= least)
                .collect(),
        }
    } else {
        kept.unwrap_or_default()
    };
    draw_kept(l, &kept, max, 1.0 / p.temperature, uniform)
}

/// The weight of the most likely token.
const ONE: u32 = 1 << 30;

/// `logits` with llama.cpp's repetition, frequency and presence penalties applied.
fn penalise(logits: &[f32], p: &SamplingParams, history: &[u32]) -> Vec<f32> {
    let mut l = logits.to_vec();
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &t in history {
        *counts.entry(t).or_default() += 1;
    }
    for (&t, &c) in &counts {
        let Some(v) = l.get_mut(t as usize) else {
            continue;
        };
        if p.repetition_penalty != 1.0 {
            *v = if *v > 0.0 {
                *v / p.repetition_penalty
            } else {
                *v * p.repetition_penalty
            };
        }
        *v -= c as f32 * p.frequency_penalty + p.presence_penalty;
    }
    l
}

/// The `k` ids with the highest logits (ties: lower ids first), in id order.
fn top_k_ids(l: &[f32], k: usize) -> Vec<u32> {
    // The k-th highest logit, by selection on the values alone; ids above it are in, ids at
    // it are in by id until there are k.
    let mut vals = l.to_vec();
    let (_, kth, _) = vals.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    let mut out: Vec<u32> = (0..l.len() as u32)
        .filter(|&i| l[i as usize].total_cmp(&kth).is_gt())
        .collect();
    let room = k - out.len();
    let ties = (0..l.len() as u32).filter(|&i| l[i as usize].total_cmp(&kth).is_eq());
    out.extend(ties.take(room));
    out.sort_unstable();
    out
}

/// Magnitude class of a weight, non-decreasing in it: the bit length and the next 3 bits.
#[inline]
fn bucket(w: u32) -> usize {
    let bits = 32 - w.leading_zeros() as usize;
    if bits <= 4 {
        w as usize
    } else {
        (bits << 3) | ((w >> (bits - 4)) & 7) as usize
    }
}

/// The ids top-p keeps from `pool` (`None`: every id), in id order: ranking by weight then
/// id, the shortest prefix whose weights reach `top_p` of the pool's.
///
/// Ids under `(total - goal) / pool size` cannot be in it (together they weigh less than
/// `total - goal`), and in a language model's distribution that is nearly all of them: they
/// are skipped 16 at a time. The rest are summed per magnitude bucket (exact integer sums);
/// walking buckets from the heaviest finds the one where the running sum reaches the goal,
/// and only its ids are sorted.
fn top_p_keep(w: &[u32], pool: Option<&[u32]>, top_p: f32) -> Vec<u32> {
    let (total, n): (u64, usize) = match pool {
        Some(ids) => (
            ids.iter().map(|&i| u64::from(w[i as usize])).sum(),
            ids.len(),
        ),
        None => (w.iter().map(|&x| u64::from(x)).sum(), w.len()),
    };
    let goal = ((f64::from(top_p) * total as f64).ceil() as u64).clamp(1, total.max(1));
    let line = u32::try_from((total - goal) / n.max(1) as u64).unwrap_or(u32::MAX);
    let mut cands: Vec<u32> = match pool {
        Some(ids) => ids
            .iter()
            .copied()
            .filter(|&i| w[i as usize] >= line)
            .collect(),
        None => heavy_ids(w, line),
    };
    let mut sums = [0u64; 34 << 3];
    for &i in &cands {
        sums[bucket(w[i as usize])] += u64::from(w[i as usize]);
    }
    let mut cum = 0u64;
    let mut at = 0;
    for b in (0..sums.len()).rev() {
        if cum + sums[b] >= goal {
            at = b;
            break;
        }
        cum += sums[b];
    }
    let mut edge: Vec<u32> = cands
        .iter()
        .copied()
        .filter(|&i| bucket(w[i as usize]) == at)
        .collect();
    edge.sort_unstable_by(|a, b| w[*b as usize].cmp(&w[*a as usize]).then(a.cmp(b)));
    // With exact sums the goal is reached in this bucket; the default keeps every candidate.
    let (cw, cid) = edge
        .iter()
        .find(|&&i| {
            cum += u64::from(w[i as usize]);
            cum >= goal
        })
        .map_or((0, u32::MAX), |&i| (w[i as usize], i));
    cands.retain(|&i| w[i as usize] > cw || (w[i as usize] == cw && i <= cid));
    cands
}

/// The ids whose weight is at least `line`, in order; 16-id chunks wholly below it are
/// skipped after one vectorised comparison, and the rest are compacted without branches.
fn heavy_ids(w: &[u32], line: u32) -> Vec<u32> {
    let mut out = vec![0u32; w.len() + 1];
    let mut k = 0;
    for (c, chunk) in w.chunks(16).enumerate() {
        if chunk.iter().fold(0, |m, &x| m.max(x)) < line {
            continue;
        }
        for (j, &x) in chunk.iter().enumerate() {
            out[k] = (c * 16 + j) as u32;
            k += usize::from(x >= line);
        }
    }
    out.truncate(k);
    out
}

/// Picks from `kept` (in id order) with weights `e^((l - max) / temperature)`.
fn draw_kept(l: &[f32], kept: &[u32], max: f32, inv_t: f32, uniform: f32) -> u32 {
    let w: Vec<u32> = kept
        .iter()
        .map(|&i| weight(l[i as usize], max, inv_t))
        .collect();
    let total: u64 = w.iter().map(|&x| u64::from(x)).sum();
    let target = (f64::from(uniform) * total as f64) as u64;
    let mut cum = 0u64;
    for (i, x) in kept.iter().zip(&w) {
        cum += u64::from(*x);
        if target < cum {
            return *i;
        }
    }
    kept.last().copied().unwrap_or(0)
}

/// Picks from the whole vocabulary with weights `e^((l - max) / temperature)`, walking ids in
/// order: first to the 64-id chunk whose running sum passes the target, then within it.
fn draw_all(l: &[f32], max: f32, inv_t: f32, uniform: f32) -> u32 {
    let mut w = vec![0u32; l.len()];
    fill_weights(l, max, inv_t, &mut w);
    let chunk_sums: Vec<u64> = w
        .chunks(64)
        .map(|c| c.iter().map(|&x| u64::from(x)).sum())
        .collect();
    let total: u64 = chunk_sums.iter().sum();
    let target = (f64::from(uniform) * total as f64) as u64;
    let mut cum = 0u64;
    for (ci, s) in chunk_sums.iter().enumerate() {
        if target < cum + s {
            for (j, x) in w[ci * 64..].iter().take(64).enumerate() {
                cum += u64::from(*x);
                if target < cum {
                    return (ci * 64 + j) as u32;
                }
            }
        }
        cum += s;
    }
    argmax(l)
}

/// A token's fixed-point weight: `e^((x - max) * inv_t)` in units of 2^-30 (0 for NaN).
#[inline(always)]
fn weight(x: f32, max: f32, inv_t: f32) -> u32 {
    let v = exp_fast((x - max) * inv_t) * ONE as f32;
    let v = if v > 0.0 { v.min(ONE as f32) } else { 0.0 };
    // SAFETY: `v` is finite and in [0, 2^30], so its truncation fits an i32. (The checked
    // conversion does not vectorise.)
    unsafe { v.to_int_unchecked::<i32>() as u32 }
}

/// `out[i] = weight(l[i], max, inv_t)`, with FMA instructions where the CPU has them (else
/// `mul_add` is a library call; the results are the same).
fn fill_weights(l: &[f32], max: f32, inv_t: f32, out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function enables.
        unsafe { fill_weights_avx2(l, max, inv_t, out) };
        return;
    }
    fill_weights_plain(l, max, inv_t, out);
}

#[inline(always)]
fn fill_weights_plain(l: &[f32], max: f32, inv_t: f32, out: &mut [u32]) {
    for (o, x) in out.iter_mut().zip(l) {
        *o = weight(*x, max, inv_t);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fill_weights_avx2(l: &[f32], max: f32, inv_t: f32, out: &mut [u32]) {
    fill_weights_plain(l, max, inv_t, out);
}

/// The largest logit.
fn max_of(l: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has the feature the function enables.
        return unsafe { max_of_avx2(l) };
    }
    max_of_plain(l)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_of_avx2(l: &[f32]) -> f32 {
    max_of_plain(l)
}

#[inline(always)]
fn max_of_plain(l: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    let mut it = l.chunks_exact(16);
    for c in &mut it {
        for (a, b) in m.iter_mut().zip(c) {
            *a = a.max(*b);
        }
    }
    it.remainder().iter().fold(
        m.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        |a, b| a.max(*b),
    )
}

/// `e^x` for `x <= 0`, to a few ulps, for the sampler: ggml's polynomial (`numerics::v_expf`)
/// with the out-of-range case as a select instead of a branch, so loops over it vectorise.
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    let r = f32::from_bits(0x4B40_0000);
    let z = x.mul_add(f32::from_bits(0x3FB8_AA3B), r);
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35BF_BE8E),
        (-n).mul_add(f32::from_bits(0x3F31_7200), x),
    );
    let u = b * b;
    let j = f32::from_bits(0x3C07_2010)
        .mul_add(b, f32::from_bits(0x3D2B_9F17))
        .mul_add(
            u,
            f32::from_bits(0x3E2A_AF33).mul_add(b, f32::from_bits(0x3EFF_FEDB)),
        )
        .mul_add(u, f32::from_bits(0x3F7F_FFF6).mul_add(b, 1.0));
    // 2^n from the bits of `z` (which hold `n` in its low mantissa bits), without a
    // float-to-int conversion; below 2^-126 the result is 0 here (the sampler's weights stop
    // at 2^-30 of the best).
    let p2 = f32::from_bits((z.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127)) << 23);
    if n < -126.0 { 0.0 } else { j * p2 }
}

pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in l.iter().enumerate() {
        if *v > l[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    /// `sample` with the sequence's next draw from `rng`, as the engine calls it.
    fn pick(l: &[f32], p: &SamplingParams, history: &[u32], rng: &mut Rng) -> u32 {
        let u = rng.uniform_for(p);
        sample(l, p, history, u)
    }

    #[test]
    fn greedy_takes_the_max() {
        let p = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(pick(&logits(), &p, &[], &mut Rng::new(Some(1))), 1);
    }

    #[test]
    fn penalties_change_the_choice() {
        let p = SamplingParams {
            temperature: 0.0,
            presence_penalty: 0.5,
            ..Default::default()
        };
        assert_eq!(pick(&logits(), &p, &[1], &mut Rng::new(Some(1))), 4);
        let p = SamplingParams {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Default::default()
        };
        assert_eq!(pick(&logits(), &p, &[1, 4], &mut Rng::new(Some(1))), 2);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let p = SamplingParams {
            top_k: 1,
            ..Default::default()
        };
        for s in 0..20 {
            assert_eq!(pick(&logits(), &p, &[], &mut Rng::new(Some(s))), 1);
        }
        let p = SamplingParams::default();
        let run = || -> Vec<u32> {
            let mut r = Rng::new(Some(7));
            (0..50).map(|_| pick(&logits(), &p, &[], &mut r)).collect()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.iter().any(|&x| x != a[0]), "temperature 1 should vary");
    }

    #[test]
    fn top_p_and_min_p_truncate() {
        // With top_p tiny only the best token survives.
        let p = SamplingParams {
            top_p: 0.01,
            ..Default::default()
        };
        for s in 0..20 {
            assert_eq!(pick(&logits(), &p, &[], &mut Rng::new(Some(s))), 1);
        }
        // min_p 0.95 keeps tokens within 5% of the best: 1 and 4 (3.0 vs 2.9 -> 0.905 < 0.95).
        let p = SamplingParams {
            min_p: 0.95,
            ..Default::default()
        };
        for s in 0..20 {
            assert_eq!(pick(&logits(), &p, &[], &mut Rng::new(Some(s))), 1);
        }
    }

    #[test]
    fn draws_follow_the_distribution() {
        // Two ids at logits ln 3 and 0: probabilities 3/4 and 1/4.
        let l = [3f32.ln(), 0.0];
        let p = SamplingParams::default();
        let mut r = Rng::new(Some(3));
        let n = 20_000;
        let zeros = (0..n).filter(|_| pick(&l, &p, &[], &mut r) == 0).count();
        let share = zeros as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.02, "{share}");
    }

    /// The sampler's definition spelled out with a sort of the whole pool.
    fn by_full_sort(l: &[f32], p: &SamplingParams, uniform: f32) -> u32 {
        let max = max_of(l);
        let w: Vec<u32> = l.iter().map(|x| weight(*x, max, 1.0)).collect();
        let mut pool: Vec<u32> = (0..l.len() as u32).collect();
        if p.top_k > 0 && p.top_k < l.len() {
            pool.sort_by(|a, b| l[*b as usize].total_cmp(&l[*a as usize]).then(a.cmp(b)));
            pool.truncate(p.top_k);
        }
        let mut kept = pool.clone();
        if p.top_p < 1.0 {
            let total: u64 = pool.iter().map(|&i| u64::from(w[i as usize])).sum();
            let goal = ((f64::from(p.top_p) * total as f64).ceil() as u64).clamp(1, total);
            kept.sort_by(|a, b| w[*b as usize].cmp(&w[*a as usize]).then(a.cmp(b)));
            let mut cum = 0u64;
            let n = kept
                .iter()
                .position(|&i| {
                    cum += u64::from(w[i as usize]);
                    cum >= goal
                })
                .unwrap()
                + 1;
            kept.truncate(n);
        }
        if p.min_p > 0.0 {
            kept.retain(|&i| f64::from(w[i as usize]) >= f64::from(p.min_p) * f64::from(ONE));
        }
        kept.sort();
        draw_kept(l, &kept, max, 1.0 / p.temperature, uniform)
    }

    #[test]
    fn partial_selection_picks_what_a_full_sort_picks() {
        let mut r = Rng::new(Some(11));
        for case in 0..400 {
            let n = 50 + (r.next_u64() % 3000) as usize;
            // Peaked, flat, and tied logits.
            let spread = [0.5f32, 4.0, 12.0][case % 3];
            let l: Vec<f32> = (0..n)
                .map(|_| {
                    let x = r.next_f32() * spread;
                    if case % 5 == 0 {
                        (x * 2.0).round() / 2.0
                    } else {
                        x
                    }
                })
                .collect();
            let p = SamplingParams {
                temperature: 0.3 + r.next_f32(),
                top_p: [1.0, 0.95, 0.5, 0.999][case % 4],
                top_k: [0, 0, 40, 1][(case / 4) % 4],
                min_p: [0.0, 0.0, 0.05][case % 3],
                ..Default::default()
            };
            if p.top_p == 1.0 && p.top_k == 0 && p.min_p == 0.0 {
                continue; // nothing truncates: no selection to check
            }
            for _ in 0..5 {
                let u = r.next_f32();
                let want = by_full_sort(&l, &p, u);
                assert_eq!(sample(&l, &p, &[], u), want, "case {case}: {p:?} u {u}");
            }
        }
    }

    #[test]
    fn exp_fast_is_close_to_exp() {
        for i in 0..2000 {
            let x = -(i as f32) * 0.05;
            let (a, b) = (exp_fast(x), x.exp());
            assert!(
                (a - b).abs() <= 4.0 * f32::EPSILON * b + 1e-37,
                "{x}: {a} vs {b}"
            );
        }
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(0.0), 1.0);
    }

    #[test]
    fn logprobs_are_log_softmax() {
        let (lp, top) = logprobs(&[0.0, 0.0], 0, 2);
        assert!((lp - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(top.len(), 2);
    }
}

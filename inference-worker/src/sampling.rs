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
/// Penalties, then greedy (temperature 0) or: top-k keeps the `k` highest logits; top-p keeps
/// the fewest of those, highest first, whose probabilities (renormalised over the top-k set)
/// reach `top_p`; min-p keeps those at least `min_p` times as likely as the best; then the
/// temperature applies to what is left and `uniform` picks from it. "Highest first" is by
/// logit, ties by the lower id, so the result is a function of the inputs alone: no sort of
/// the whole vocabulary, and the same in any batch or thread.
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
    let truncates = (p.top_k > 0 && p.top_k < l.len()) || p.top_p < 1.0 || p.min_p > 0.0;
    if !truncates {
        return draw_all(l, p.temperature, uniform);
    }
    let kept = truncate(l, p);
    draw_kept(l, &kept, p.temperature, uniform)
}

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

/// Whether id `a` ranks before id `b`: higher logit first, then lower id.
#[inline]
fn before(l: &[f32], a: u32, b: u32) -> std::cmp::Ordering {
    l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b))
}

/// The ids top-k, top-p and min-p keep, highest first.
fn truncate(l: &[f32], p: &SamplingParams) -> Vec<u32> {
    let max = max_of(l);
    // The top-k set, or every id: the set top-p's probabilities are normalised over.
    let pool: Vec<u32> = if p.top_k > 0 && p.top_k < l.len() {
        top_k(l, p.top_k)
    } else {
        (0..l.len() as u32).collect()
    };
    let total = sum_exp(l, &pool, max);
    let mut kept: Vec<u32> = if p.top_p < 1.0 {
        nucleus(l, &pool, max, total, p.top_p)
    } else {
        let mut v = pool;
        v.sort_unstable_by(|a, b| before(l, *a, *b));
        v
    };
    if p.min_p > 0.0 {
        // The best id's weight is exp(0) = 1: keep weights of at least min_p.
        let n = kept
            .iter()
            .take_while(|&&i| exp_fast(l[i as usize] - max) >= p.min_p)
            .count();
        kept.truncate(n.max(1));
    }
    kept
}

/// The `k` highest-ranked ids, in id order.
fn top_k(l: &[f32], k: usize) -> Vec<u32> {
    // The k-th highest logit, by selection on the values alone; ids above it are in, ids at
    // it are in by rank (lower ids first) until there are k.
    let mut vals = l.to_vec();
    let (_, kth, _) = vals.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    let mut out: Vec<u32> = (0..l.len() as u32)
        .filter(|&i| l[i as usize].total_cmp(&kth).is_gt())
        .collect();
    let ties = (0..l.len() as u32).filter(|&i| l[i as usize].total_cmp(&kth).is_eq());
    let room = k - out.len();
    out.extend(ties.take(room));
    out.sort_unstable();
    out
}

/// The fewest ids of `pool`, highest first, whose weights `exp(l - max)` reach `top_p` of
/// `total` (their sum over `pool`).
///
/// Ids whose weight is below `(1 - top_p) * total / pool.len()` can never be in it: together
/// they weigh less than `(1 - top_p) * total`, so the ids above that line reach `top_p` first.
/// Only those are sorted; if rounding keeps them from reaching it, the whole pool is.
fn nucleus(l: &[f32], pool: &[u32], max: f32, total: f32, top_p: f32) -> Vec<u32> {
    let goal = top_p * total;
    let walk = |sorted: &[u32]| -> Option<usize> {
        let mut cum = 0f32;
        for (n, &i) in sorted.iter().enumerate() {
            cum += exp_fast(l[i as usize] - max);
            if cum >= goal {
                return Some(n + 1);
            }
        }
        None
    };
    let line = (1.0 - top_p) * total / pool.len() as f32;
    let mut cands: Vec<u32> = pool
        .iter()
        .copied()
        .filter(|&i| exp_fast(l[i as usize] - max) >= line)
        .collect();
    cands.sort_unstable_by(|a, b| before(l, *a, *b));
    if let Some(n) = walk(&cands) {
        cands.truncate(n);
        return cands;
    }
    let mut all = pool.to_vec();
    all.sort_unstable_by(|a, b| before(l, *a, *b));
    let n = walk(&all).unwrap_or(all.len());
    all.truncate(n.max(1));
    all
}

/// Picks from `kept` (highest first) with weights `exp((l - max) / temperature)`.
fn draw_kept(l: &[f32], kept: &[u32], temperature: f32, uniform: f32) -> u32 {
    let max = l[kept[0] as usize];
    let w: Vec<f32> = kept
        .iter()
        .map(|&i| exp_fast((l[i as usize] - max) / temperature))
        .collect();
    let total: f32 = w.iter().sum();
    let target = uniform * total;
    let mut cum = 0f32;
    for (i, x) in kept.iter().zip(&w) {
        cum += x;
        if target < cum {
            return *i;
        }
    }
    kept[kept.len() - 1]
}

/// Picks from the whole vocabulary with weights `exp((l - max) / temperature)`, walking ids in
/// order: first to the 16-id chunk whose running sum passes the target, then within it.
fn draw_all(l: &[f32], temperature: f32, uniform: f32) -> u32 {
    let max = max_of(l);
    let inv_t = 1.0 / temperature;
    let mut w = vec![0f32; l.len()];
    for (o, x) in w.iter_mut().zip(l) {
        *o = exp_fast((x - max) * inv_t);
    }
    let chunk_sums: Vec<f32> = w.chunks(16).map(|c| c.iter().sum()).collect();
    let total: f32 = chunk_sums.iter().sum();
    let target = uniform * total;
    let mut cum = 0f32;
    for (ci, s) in chunk_sums.iter().enumerate() {
        if target < cum + s {
            for (j, x) in w[ci * 16..].iter().take(16).enumerate() {
                cum += x;
                if target < cum {
                    return (ci * 16 + j) as u32;
                }
            }
            return (ci * 16 + 15).min(l.len() - 1) as u32;
        }
        cum += s;
    }
    // Rounding put the target at the very end: the last id with any weight.
    w.iter().rposition(|x| *x > 0.0).unwrap_or(0) as u32
}

/// The largest logit.
fn max_of(l: &[f32]) -> f32 {
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

/// `sum(exp(l[i] - max))` over `ids` (in id order), in 16 running lanes then across them.
fn sum_exp(l: &[f32], ids: &[u32], max: f32) -> f32 {
    let mut acc = [0f32; 16];
    if ids.len() == l.len() {
        let mut it = l.chunks_exact(16);
        for c in &mut it {
            for (a, x) in acc.iter_mut().zip(c) {
                *a += exp_fast(x - max);
            }
        }
        for (a, x) in acc.iter_mut().zip(it.remainder()) {
            *a += exp_fast(x - max);
        }
    } else {
        for (n, &i) in ids.iter().enumerate() {
            acc[n % 16] += exp_fast(l[i as usize] - max);
        }
    }
    acc.iter().sum()
}

/// `e^x` for `x <= 0`, to a few ulps, for the sampler: ggml's polynomial (`numerics::v_expf`) with the
/// out-of-range cases as selects instead of a branch, so loops over it vectorise.
#[inline]
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
    // 2^n for n in [-126, 127] by its exponent bits; below that the result is 0 here (the
    // sampler never needs weights under 2^-126 of the best).
    let nc = n.clamp(-127.0, 127.0);
    let p2 = f32::from_bits(((nc as i32 + 127) as u32) << 23);
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

    /// The sampler's definition spelled out with a sort of the whole vocabulary.
    fn by_full_sort(l: &[f32], p: &SamplingParams, uniform: f32) -> u32 {
        let max = max_of(l);
        let mut order: Vec<u32> = (0..l.len() as u32).collect();
        order.sort_by(|a, b| l[*b as usize].total_cmp(&l[*a as usize]).then(a.cmp(b)));
        if p.top_k > 0 && p.top_k < l.len() {
            order.truncate(p.top_k);
        }
        let mut by_id = order.clone();
        by_id.sort();
        let total = sum_exp(l, &by_id, max);
        if p.top_p < 1.0 {
            let mut cum = 0f32;
            let n = order
                .iter()
                .position(|&i| {
                    cum += exp_fast(l[i as usize] - max);
                    cum >= p.top_p * total
                })
                .map_or(order.len(), |n| n + 1);
            order.truncate(n);
        }
        if p.min_p > 0.0 {
            let n = order
                .iter()
                .take_while(|&&i| exp_fast(l[i as usize] - max) >= p.min_p)
                .count();
            order.truncate(n.max(1));
        }
        draw_kept(l, &order, p.temperature, uniform)
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

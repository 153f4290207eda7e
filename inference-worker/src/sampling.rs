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

/// Picks the next token. `history` is the ids generated (and prompted) so far, for penalties.
pub fn sample(logits: &[f32], p: &SamplingParams, history: &[u32], rng: &mut Rng) -> u32 {
    let mut l = logits.to_vec();
    if p.repetition_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
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
    }
    if p.temperature <= 0.0 {
        return argmax(&l);
    }
    // Candidates sorted by logit, then truncated.
    let mut cand: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, v)| (i as u32, *v)).collect();
    let k = if p.top_k > 0 {
        p.top_k.min(cand.len())
    } else {
        cand.len()
    };
    if k < cand.len() {
        cand.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
        cand.truncate(k);
    }
    cand.sort_by(|a, b| b.1.total_cmp(&a.1));
    let softmax = |c: &[(u32, f32)]| -> Vec<f32> {
        let m = c[0].1;
        let e: Vec<f32> = c.iter().map(|x| (x.1 - m).exp()).collect();
        let s: f32 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect()
    };
    if p.top_p < 1.0 {
        let probs = softmax(&cand);
        let mut cum = 0.0;
        let mut keep = cand.len();
        for (i, pr) in probs.iter().enumerate() {
            cum += pr;
            if cum >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep.max(1));
    }
    if p.min_p > 0.0 {
        let probs = softmax(&cand);
        let cut = probs[0] * p.min_p;
        let keep = probs.iter().take_while(|&&x| x >= cut).count();
        cand.truncate(keep.max(1));
    }
    for c in cand.iter_mut() {
        c.1 /= p.temperature;
    }
    let probs = softmax(&cand);
    let r = rng.next_f32();
    let mut cum = 0.0;
    for (c, pr) in cand.iter().zip(&probs) {
        cum += pr;
        if r < cum {
            return c.0;
        }
    }
    cand[cand.len() - 1].0
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

    #[test]
    fn greedy_takes_the_max() {
        let p = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(sample(&logits(), &p, &[], &mut Rng::new(Some(1))), 1);
    }

    #[test]
    fn penalties_change_the_choice() {
        let p = SamplingParams {
            temperature: 0.0,
            presence_penalty: 0.5,
            ..Default::default()
        };
        assert_eq!(sample(&logits(), &p, &[1], &mut Rng::new(Some(1))), 4);
        let p = SamplingParams {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Default::default()
        };
        assert_eq!(sample(&logits(), &p, &[1, 4], &mut Rng::new(Some(1))), 2);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let p = SamplingParams {
            top_k: 1,
            ..Default::default()
        };
        for s in 0..20 {
            assert_eq!(sample(&logits(), &p, &[], &mut Rng::new(Some(s))), 1);
        }
        let p = SamplingParams::default();
        let a: Vec<u32> = {
            let mut r = Rng::new(Some(7));
            (0..50)
                .map(|_| sample(&logits(), &p, &[], &mut r))
                .collect()
        };
        let b: Vec<u32> = {
            let mut r = Rng::new(Some(7));
            (0..50)
                .map(|_| sample(&logits(), &p, &[], &mut r))
                .collect()
        };
        assert_eq!(a, b);
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
            assert_eq!(sample(&logits(), &p, &[], &mut Rng::new(Some(s))), 1);
        }
        // min_p 0.95 keeps tokens within 5% of the best: 1 and 4 (3.0 vs 2.9 -> 0.905 < 0.95).
        let p = SamplingParams {
            min_p: 0.95,
            ..Default::default()
        };
        for s in 0..20 {
            assert_eq!(sample(&logits(), &p, &[], &mut Rng::new(Some(s))), 1);
        }
    }

    #[test]
    fn logprobs_are_log_softmax() {
        let (lp, top) = logprobs(&[0.0, 0.0], 0, 2);
        assert!((lp - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(top.len(), 2);
    }
}

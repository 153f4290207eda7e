//! The `llama` architecture family (Llama 2/3/3.1, Mistral, SmolLM2): hyper-parameters,
//! weights and rotary position tables.
//!
//! Hyper-parameters come from GGUF metadata ([`Config`], shared by every backend); on the CPU
//! the weights stay memory-mapped in their file format, and RoPE follows ggml's arithmetic.
//! How the CPU multiplies them and strings the layers together over a batch of sequences and
//! the paged KV cache is the CPU backend's (`backend::cpu`).

use std::sync::Arc;

use crate::gguf::{Gguf, GgufError};
use crate::quant::{GgmlType, dequantize_row};

/// Model hyper-parameters.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: String,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub n_rot: usize,
    /// Divides positions (linear RoPE scaling).
    pub rope_linear: f32,
    /// `{arch}.pooling_type` for embeddings (llama.cpp's numbering: 1 mean, 2 cls, 3 last).
    pub pooling: Option<u32>,
    /// Experts per mixture-of-experts layer (0: a dense model).
    pub n_expert: usize,
    /// Experts each token is routed to.
    pub n_expert_used: usize,
}

/// A weight matrix: `rows` rows of `cols` elements, row-major, in its file format.
#[derive(Debug, Clone, Copy)]
pub struct Weight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    offset: usize,
    pub(crate) row_bytes: usize,
}

impl Weight {
    /// Rows `first..first + n` as a matrix of their own (one expert of a stacked tensor).
    pub(crate) fn sub_rows(&self, first: usize, n: usize) -> Weight {
        Weight {
            offset: self.offset + first * self.row_bytes,
            rows: n,
            ..*self
        }
    }
}

/// One transformer block's weights. In a mixture-of-experts model `w_gate`, `w_up` and
/// `w_down` hold every expert's matrix stacked (expert `e` is rows `e * n` to `(e + 1) * n`),
/// and `gate_inp` routes tokens to experts.
pub(crate) struct Layer {
    pub(crate) attn_norm: Vec<f32>,
    pub(crate) wq: Weight,
    pub(crate) wk: Weight,
    pub(crate) wv: Weight,
    pub(crate) wo: Weight,
    pub(crate) ffn_norm: Vec<f32>,
    pub(crate) w_gate: Weight,
    pub(crate) w_up: Weight,
    pub(crate) w_down: Weight,
    pub(crate) gate_inp: Option<Weight>,
}

/// A loaded model: its configuration and its weights, in place in the mapped file.
pub struct Model {
    pub cfg: Config,
    gguf: Arc<Gguf>,
    pub(crate) tok_embd: Weight,
    pub(crate) output_norm: Vec<f32>,
    pub(crate) output: Weight,
    pub(crate) layers: Vec<Layer>,
    /// Per rotary pair: llama3-style frequency divisors (1 when the model has none).
    rope_factors: Vec<f32>,
}

fn weight(g: &Gguf, name: &str, cols: usize, rows: Option<usize>) -> Result<Weight, GgufError> {
    let (info, _) = g.tensor(name)?;
    let c = info.dims[0] as usize;
    // A 3-D tensor (experts' matrices stacked) is its experts' rows one after another.
    let r = info.dims.iter().skip(1).product::<u64>().max(1) as usize;
    if c != cols || rows.is_some_and(|rr| rr != r) {
        return Err(GgufError::Bad(format!(
            "tensor `{name}` has shape {:?}, expected [{cols}, {}]",
            info.dims,
            rows.map_or("?".to_string(), |r| r.to_string())
        )));
    }
    Ok(Weight {
        ty: info.ty,
        rows: r,
        cols: c,
        offset: info.offset,
        row_bytes: info.ty.row_bytes(c),
    })
}

fn vector(g: &Gguf, name: &str, n: usize) -> Result<Vec<f32>, GgufError> {
    let (info, bytes) = g.tensor(name)?;
    if info.n_elements() as usize != n {
        return Err(GgufError::Bad(format!(
            "tensor `{name}` has {} elements, expected {n}",
            info.n_elements()
        )));
    }
    let mut out = vec![0f32; n];
    dequantize_row(info.ty, bytes, &mut out);
    Ok(out)
}

impl Model {
    /// Builds the model from an opened GGUF file.
    pub fn load(g: Arc<Gguf>) -> Result<Model, GgufError> {
        let arch = g
            .get_str("general.architecture")
            .ok_or_else(|| GgufError::MissingKey("general.architecture".into()))?
            .to_string();
        // Mistral 7B and SmolLM2 are stored as `llama` in GGUF.
        if !matches!(arch.as_str(), "llama" | "mistral") {
            return Err(GgufError::Bad(format!(
                "unsupported architecture `{arch}` (supported: llama family: Llama 2/3/3.1, Mistral, SmolLM2)"
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let req_u = |k: &str| -> Result<usize, GgufError> {
            g.get_u64(&key(k))
                .map(|v| v as usize)
                .ok_or_else(|| GgufError::MissingKey(key(k)))
        };
        let n_embd = req_u("embedding_length")?;
        let n_layer = req_u("block_count")?;
        let n_head = req_u("attention.head_count")?;
        let n_head_kv = g
            .get_u64(&key("attention.head_count_kv"))
            .map_or(n_head, |v| v as usize);
        let n_ff = req_u("feed_forward_length")?;
        if n_head == 0 || n_head_kv == 0 || n_embd % n_head != 0 || n_head % n_head_kv != 0 {
            return Err(GgufError::Bad(format!(
                "inconsistent heads: embedding {n_embd}, heads {n_head}, kv heads {n_head_kv}"
            )));
        }
        let head_dim = g
            .get_u64(&key("attention.key_length"))
            .map_or(n_embd / n_head, |v| v as usize);
        let n_rot = g
            .get_u64(&key("rope.dimension_count"))
            .map_or(head_dim, |v| v as usize)
            .min(head_dim);
        let (te_info, _) = g.tensor("token_embd.weight")?;
        let n_vocab = te_info.dims.get(1).copied().unwrap_or(0) as usize;
        let cfg = Config {
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_vocab,
            n_ctx_train: g
                .get_u64(&key("context_length"))
                .map_or(2048, |v| v as usize),
            rms_eps: g
                .get_f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_base: g.get_f32(&key("rope.freq_base")).unwrap_or(10000.0),
            n_rot,
            rope_linear: match g.get_str(&key("rope.scaling.type")) {
                Some("linear") => g.get_f32(&key("rope.scaling.factor")).unwrap_or(1.0),
                _ => 1.0,
            },
            pooling: g.get_u64(&key("pooling_type")).map(|v| v as u32),
            n_expert: g.get_u64(&key("expert_count")).map_or(0, |v| v as usize),
            n_expert_used: g
                .get_u64(&key("expert_used_count"))
                .map_or(0, |v| v as usize),
            arch: arch.clone(),
        };
        let tok_embd = weight(&g, "token_embd.weight", n_embd, Some(n_vocab))?;
        let output = if g.tensor_info("output.weight").is_some() {
            weight(&g, "output.weight", n_embd, Some(n_vocab))?
        } else {
            tok_embd // tied embeddings
        };
        let q_dim = n_head * head_dim;
        let kv_dim = n_head_kv * head_dim;
        let (n_exp, n_used) = (cfg.n_expert, cfg.n_expert_used);
        if n_exp > 0 && (n_used == 0 || n_used > n_exp || n_exp > 256) {
            return Err(GgufError::Bad(format!(
                "inconsistent experts: {n_exp} experts, {n_used} used per token"
            )));
        }
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            if n_exp > 0 {
                layers.push(Layer {
                    attn_norm: vector(&g, &n("attn_norm"), n_embd)?,
                    wq: weight(&g, &n("attn_q"), n_embd, Some(q_dim))?,
                    wk: weight(&g, &n("attn_k"), n_embd, Some(kv_dim))?,
                    wv: weight(&g, &n("attn_v"), n_embd, Some(kv_dim))?,
                    wo: weight(&g, &n("attn_output"), q_dim, Some(n_embd))?,
                    ffn_norm: vector(&g, &n("ffn_norm"), n_embd)?,
                    w_gate: weight(&g, &n("ffn_gate_exps"), n_embd, Some(n_ff * n_exp))?,
                    w_up: weight(&g, &n("ffn_up_exps"), n_embd, Some(n_ff * n_exp))?,
                    w_down: weight(&g, &n("ffn_down_exps"), n_ff, Some(n_embd * n_exp))?,
                    gate_inp: Some(weight(&g, &n("ffn_gate_inp"), n_embd, Some(n_exp))?),
                });
                continue;
            }
            layers.push(Layer {
                attn_norm: vector(&g, &n("attn_norm"), n_embd)?,
                wq: weight(&g, &n("attn_q"), n_embd, Some(q_dim))?,
                wk: weight(&g, &n("attn_k"), n_embd, Some(kv_dim))?,
                wv: weight(&g, &n("attn_v"), n_embd, Some(kv_dim))?,
                wo: weight(&g, &n("attn_output"), q_dim, Some(n_embd))?,
                ffn_norm: vector(&g, &n("ffn_norm"), n_embd)?,
                w_gate: weight(&g, &n("ffn_gate"), n_embd, Some(n_ff))?,
                w_up: weight(&g, &n("ffn_up"), n_embd, Some(n_ff))?,
                w_down: weight(&g, &n("ffn_down"), n_ff, Some(n_embd))?,
                gate_inp: None,
            });
        }
        for w in layers
            .iter()
            .flat_map(|l| [l.wq, l.wk, l.wv, l.wo, l.w_gate, l.w_up, l.w_down])
        {
            if w.cols % 32 != 0 {
                return Err(GgufError::Bad(format!(
                    "row length {} is not a multiple of 32",
                    w.cols
                )));
            }
        }
        let output_norm = vector(&g, "output_norm.weight", n_embd)?;
        // RoPE frequencies; Llama 3.1 GGUFs carry the llama3 scaling as per-pair factors.
        let factors = if g.tensor_info("rope_freqs.weight").is_some() {
            Some(vector(&g, "rope_freqs.weight", n_rot / 2)?)
        } else if g.get_str(&key("rope.scaling.type")) == Some("llama3") {
            Some(llama3_factors(&g, &arch, &cfg))
        } else {
            None
        };
        let rope_factors = (0..n_rot / 2)
            .map(|i| {
                factors
                    .as_ref()
                    .and_then(|v| v.get(i))
                    .copied()
                    .unwrap_or(1.0)
            })
            .collect();
        Ok(Model {
            cfg,
            gguf: g,
            tok_embd,
            output_norm,
            output,
            layers,
            rope_factors,
        })
    }

    /// The bytes of all rows of `w`.
    pub(crate) fn rows(&self, w: &Weight) -> &[u8] {
        &self.gguf.bytes()[w.offset..w.offset + w.rows * w.row_bytes]
    }

    /// Touches every weight page once so the first request does not pay for disk reads,
    /// calling `progress(done, total)` as it goes.
    pub fn warm_up(&self, mut progress: impl FnMut(usize, usize)) {
        let bytes = self.gguf.bytes();
        let total = bytes.len();
        let step = (total / 20).max(1);
        let mut acc = 0u8;
        let mut next = step;
        let mut i = 0;
        while i < total {
            acc = acc.wrapping_add(bytes[i]);
            if i >= next {
                progress(i, total);
                next += step;
            }
            i += 4096;
        }
        std::hint::black_box(acc);
        progress(total, total);
    }

    /// `(cos, sin)` per rotary pair at position `pos`, computed as ggml does: the angle starts
    /// at `pos` and is multiplied by `base^(-2/n_rot)` pair after pair (in f32, so the rounding
    /// matches llama.cpp's, not a per-pair `powf`), divided by the pair's factor, then scaled.
    pub(crate) fn rope_table(&self, pos: usize, out: &mut [(f32, f32)]) {
        let c = &self.cfg;
        let theta_scale = c.rope_base.powf(-2.0 / c.n_rot as f32);
        let freq_scale = 1.0 / c.rope_linear;
        let mut theta = pos as f32;
        for (o, ff) in out.iter_mut().zip(&self.rope_factors) {
            let (s, co) = (freq_scale * (theta / ff)).sin_cos();
            *o = (co, s);
            theta *= theta_scale;
        }
    }

    /// Rotates adjacent pairs (GGUF llama tensors are permuted for this "normal" RoPE).
    #[inline]
    pub(crate) fn rope(&self, v: &mut [f32], table: &[(f32, f32)]) {
        for head in v.chunks_exact_mut(self.cfg.head_dim) {
            for (i, &(c, s)) in table.iter().enumerate() {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                // GCC contracts ggml's `x0*cos - x1*sin` into one FMA; so do we.
                head[2 * i] = a.mul_add(c, -(b * s));
                head[2 * i + 1] = a.mul_add(s, b * c);
            }
        }
    }
}

/// llama3-style RoPE factors from metadata when the file has no `rope_freqs` tensor.
fn llama3_factors(g: &Gguf, arch: &str, cfg: &Config) -> Vec<f32> {
    let k = |s: &str| format!("{arch}.rope.scaling.{s}");
    let factor = g.get_f32(&k("factor")).unwrap_or(8.0);
    let low = g.get_f32(&k("low_freq_factor")).unwrap_or(1.0);
    let high = g.get_f32(&k("high_freq_factor")).unwrap_or(4.0);
    let orig = g.get_f32(&k("original_context_length")).unwrap_or(8192.0);
    let low_wl = orig / low;
    let high_wl = orig / high;
    (0..cfg.n_rot / 2)
        .map(|i| {
            let freq = cfg.rope_base.powf(-(2.0 * i as f32) / cfg.n_rot as f32);
            let wl = 2.0 * std::f32::consts::PI / freq;
            if wl < high_wl {
                1.0
            } else if wl > low_wl {
                factor
            } else {
                let smooth = (orig / wl - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

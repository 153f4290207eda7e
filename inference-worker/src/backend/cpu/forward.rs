//! The llama forward pass on the CPU over a batch of sequences and the paged KV cache.
//!
//! Every new token of every sequence in the step is one row of the activations, so all of
//! them share each pass over a weight matrix (what continuous batching buys on a CPU):
//!
//! ```text
//!   embed ─► for each layer: ┌ RMSNorm ─ Q K V ─ RoPE ─ K,V into the pool ─ attention ─ O ┐ + x
//!                            └ RMSNorm ─ gate, up ─ SwiGLU ─ down ─────────────────────────┘ + x
//!         ─► final RMSNorm ─► output matrix, only for the rows whose logits are wanted
//! ```
//!
//! The numerics follow llama.cpp's CPU path exactly (see `numerics` and `attention`).

use super::attention::{self, Heads, Query};
use super::kv_pool::KvPool;
use super::ops::{matmul, matmul_each, quantize_all, rms_norm, rope};
use super::team::Team;
use crate::backend::{BackendError, Output, SeqStep, Want};
use crate::kv::{BLOCK_TOKENS, blocks_for};
use crate::model::{Layer, Model};
use crate::numerics::swiglu;
use crate::quant::{Q8Act, dequantize_row};

/// Where each row of the step's activations comes from.
struct Rows<'a> {
    batch: &'a [SeqStep<'a>],
    /// The sequence of each row.
    owner: Vec<usize>,
    /// The position of each row.
    pos: Vec<usize>,
    ids: Vec<u32>,
}

/// The step's working buffers, `n` rows each.
struct Buffers {
    acts: Vec<Q8Act>,
    ff_acts: Vec<Q8Act>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Per row, `(cos, sin)` per rotary pair.
    rope: Vec<(f32, f32)>,
}

/// Runs the step; see `Backend::forward`.
pub(super) fn forward(
    (m, team): (&Model, &Team),
    pool: &mut KvPool,
    batch: &[SeqStep<'_>],
) -> Result<Vec<Output>, BackendError> {
    check(pool, batch)?;
    let rows = flatten(batch);
    let n = rows.ids.len();
    if n == 0 {
        return Ok(vec![Output::Nothing; batch.len()]);
    }
    let c = &m.cfg;
    let mut x = embed(m, &rows.ids);
    let mut b = Buffers {
        acts: vec![Q8Act::default(); n],
        ff_acts: vec![Q8Act::default(); n],
        xn: vec![0.0; n * c.n_embd],
        q: vec![0.0; n * c.n_head * c.head_dim],
        k: vec![0.0; n * c.n_head_kv * c.head_dim],
        v: vec![0.0; n * c.n_head_kv * c.head_dim],
        att: vec![0.0; n * c.n_head * c.head_dim],
        tmp: vec![0.0; n * c.n_embd],
        gate: vec![0.0; n * c.n_ff],
        up: vec![0.0; n * c.n_ff],
        rope: vec![(1.0, 0.0); n * (c.n_rot / 2)],
    };
    let half_rot = c.n_rot / 2;
    for (t, tab) in b.rope.chunks_exact_mut(half_rot.max(1)).enumerate() {
        m.rope_table(rows.pos[t], tab);
    }
    for (li, l) in m.layers.iter().enumerate() {
        attention_block((m, team), (li, l), &mut x, &mut b, pool, &rows);
        feed_forward_block((m, team), l, &mut x, &mut b);
    }
    Ok(logits((m, team), &x, batch))
}

/// Rejects a batch whose block tables do not cover its positions or name blocks outside the
/// pool: the kernels index the pool through them.
fn check(pool: &KvPool, batch: &[SeqStep<'_>]) -> Result<(), BackendError> {
    for (i, s) in batch.iter().enumerate() {
        let end = s.start + s.tokens.len();
        if s.blocks.len() < blocks_for(end) {
            return Err(BackendError::Step(format!(
                "sequence {i}: {} blocks cannot hold {end} positions",
                s.blocks.len()
            )));
        }
        if let Some(b) = s.blocks.iter().find(|b| **b as usize >= pool.n_blocks) {
            return Err(BackendError::Step(format!(
                "sequence {i}: block {b} is outside the pool of {}",
                pool.n_blocks
            )));
        }
    }
    Ok(())
}

/// Token `t` of the step belongs to sequence `owner[t]` at position `pos[t]`.
fn flatten<'a>(batch: &'a [SeqStep<'a>]) -> Rows<'a> {
    let n: usize = batch.iter().map(|s| s.tokens.len()).sum();
    let mut r = Rows {
        batch,
        owner: Vec::with_capacity(n),
        pos: Vec::with_capacity(n),
        ids: Vec::with_capacity(n),
    };
    for (i, s) in batch.iter().enumerate() {
        for (j, &t) in s.tokens.iter().enumerate() {
            r.owner.push(i);
            r.pos.push(s.start + j);
            r.ids.push(t);
        }
    }
    r
}

fn embed(m: &Model, ids: &[u32]) -> Vec<f32> {
    let c = &m.cfg;
    let d = c.n_embd;
    let mut x = vec![0f32; ids.len() * d];
    let emb = m.rows(&m.tok_embd);
    let rb = m.tok_embd.row_bytes;
    for (t, &id) in ids.iter().enumerate() {
        let id = (id as usize).min(c.n_vocab - 1);
        dequantize_row(
            m.tok_embd.ty,
            &emb[id * rb..(id + 1) * rb],
            &mut x[t * d..(t + 1) * d],
        );
    }
    x
}

/// `x += O · attention(RoPE(Q), K, V)` of RMSNorm(x); this layer's keys and values of the new
/// tokens go into the pool first.
fn attention_block(
    (m, team): (&Model, &Team),
    (li, l): (usize, &Layer),
    x: &mut [f32],
    b: &mut Buffers,
    pool: &mut KvPool,
    rows: &Rows<'_>,
) {
    let batch = rows.batch;
    let c = &m.cfg;
    let (d, hd) = (c.n_embd, c.head_dim);
    let (q_dim, kv_dim) = (c.n_head * hd, c.n_head_kv * hd);
    let half_rot = c.n_rot / 2;
    rms_norm(x, &l.attn_norm, c.rms_eps, &mut b.xn, d);
    quantize_all(team, &b.xn, d, &mut b.acts);
    matmul_each(
        team,
        m,
        &mut [(&l.wq, &mut b.q), (&l.wk, &mut b.k), (&l.wv, &mut b.v)],
        &b.acts,
    );
    for t in 0..rows.ids.len() {
        let tab = &b.rope[t * half_rot..(t + 1) * half_rot];
        rope(m, &mut b.q[t * q_dim..(t + 1) * q_dim], tab);
        rope(m, &mut b.k[t * kv_dim..(t + 1) * kv_dim], tab);
        let (s, p) = (&batch[rows.owner[t]], rows.pos[t]);
        pool.write(
            li,
            s.blocks[p / BLOCK_TOKENS],
            p % BLOCK_TOKENS,
            &b.k[t * kv_dim..(t + 1) * kv_dim],
            &b.v[t * kv_dim..(t + 1) * kv_dim],
        );
    }
    let queries: Vec<Query<'_>> = (0..rows.ids.len())
        .map(|t| {
            let s = &batch[rows.owner[t]];
            Query {
                q: &b.q[t * q_dim..(t + 1) * q_dim],
                pos: rows.pos[t],
                blocks: s.blocks,
                multi: s.tokens.len() > 1,
            }
        })
        .collect();
    let heads = Heads {
        n_head: c.n_head,
        n_head_kv: c.n_head_kv,
        head_dim: hd,
    };
    attention::attend(team, pool, li, heads, &queries, &mut b.att);
    quantize_all(team, &b.att, q_dim, &mut b.acts);
    matmul(team, m, &l.wo, &b.acts, &mut b.tmp);
    for (a, o) in x.iter_mut().zip(&b.tmp) {
        *a += o;
    }
}

/// `x += down(silu(gate(h)) * up(h))` with `h` = RMSNorm(x).
fn feed_forward_block((m, team): (&Model, &Team), l: &Layer, x: &mut [f32], b: &mut Buffers) {
    let c = &m.cfg;
    rms_norm(x, &l.ffn_norm, c.rms_eps, &mut b.xn, c.n_embd);
    quantize_all(team, &b.xn, c.n_embd, &mut b.acts);
    if let Some(router) = &l.gate_inp {
        return experts_block((m, team), l, router, x, b);
    }
    matmul_each(
        team,
        m,
        &mut [(&l.w_gate, &mut b.gate), (&l.w_up, &mut b.up)],
        &b.acts,
    );
    swiglu(&mut b.gate, &b.up);
    quantize_all(team, &b.gate, c.n_ff, &mut b.ff_acts);
    matmul(team, m, &l.w_down, &b.ff_acts, &mut b.tmp);
    for (a, o) in x.iter_mut().zip(&b.tmp) {
        *a += o;
    }
}

/// The mixture-of-experts feed-forward, as llama.cpp's `build_moe_ffn` computes it for
/// Mixtral: router logits, softmax over all experts, the top `n_expert_used` by probability
/// (ties: lower expert first), their probabilities renormalised to sum to one (which is the
/// softmax over the selected experts), each selected expert's SwiGLU feed-forward scaled by
/// its weight, summed in selection order, added to `x`.
fn experts_block(
    (m, team): (&Model, &Team),
    l: &Layer,
    router: &crate::model::Weight,
    x: &mut [f32],
    b: &mut Buffers,
) {
    let c = &m.cfg;
    let (d, ff, n_exp, k) = (c.n_embd, c.n_ff, c.n_expert, c.n_expert_used);
    let n = x.len() / d;
    let mut logits = vec![0f32; n * n_exp];
    matmul(team, m, router, &b.acts, &mut logits);
    // Per token: the selected experts and their weights.
    let mut chosen: Vec<(usize, f32)> = Vec::with_capacity(n * k);
    for row in logits.chunks_exact(n_exp) {
        let probs = softmax(row);
        let mut order: Vec<usize> = (0..n_exp).collect();
        order.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]).then(i.cmp(&j)));
        let sum = order[..k].iter().map(|&e| f64::from(probs[e])).sum::<f64>() as f32;
        chosen.extend(order[..k].iter().map(|&e| (e, probs[e] / sum)));
    }
    // Each expert runs once over the tokens routed to it.
    let mut out = vec![0f32; n * k * d];
    for e in 0..n_exp {
        let slots: Vec<usize> = (0..n * k).filter(|&s| chosen[s].0 == e).collect();
        if slots.is_empty() {
            continue;
        }
        let acts: Vec<Q8Act> = slots.iter().map(|&s| b.acts[s / k].clone()).collect();
        let r = slots.len();
        let (mut gate, mut up) = (vec![0f32; r * ff], vec![0f32; r * ff]);
        let (wg, wu) = (l.w_gate.sub_rows(e * ff, ff), l.w_up.sub_rows(e * ff, ff));
        matmul_each(team, m, &mut [(&wg, &mut gate), (&wu, &mut up)], &acts);
        swiglu(&mut gate, &up);
        let mut ff_acts = vec![Q8Act::default(); r];
        quantize_all(team, &gate, ff, &mut ff_acts);
        let mut down = vec![0f32; r * d];
        matmul(team, m, &l.w_down.sub_rows(e * d, d), &ff_acts, &mut down);
        for (i, &s) in slots.iter().enumerate() {
            let w = chosen[s].1;
            for (o, v) in out[s * d..(s + 1) * d]
                .iter_mut()
                .zip(&down[i * d..(i + 1) * d])
            {
                *o = v * w;
            }
        }
    }
    for t in 0..n {
        let sum = &mut b.tmp[t * d..(t + 1) * d];
        sum.copy_from_slice(&out[t * k * d..(t * k + 1) * d]);
        for j in 1..k {
            let s = t * k + j;
            for (a, v) in sum.iter_mut().zip(&out[s * d..(s + 1) * d]) {
                *a += v;
            }
        }
    }
    for (a, o) in x.iter_mut().zip(&b.tmp) {
        *a += o;
    }
}

/// ggml's row softmax: `exp(x - max)` (its vectorised `expf` over 16 lanes, the C library's
/// for the rest), the sum in f64 per 16-lane reduction, scaled by the sum's reciprocal.
fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut y = vec![0f32; x.len()];
    let mut sum = 0f64;
    let full = x.len() / 16 * 16;
    for (yc, xc) in y[..full]
        .chunks_exact_mut(16)
        .zip(x[..full].chunks_exact(16))
    {
        let mut lanes = [0f32; 16];
        for ((l, o), v) in lanes.iter_mut().zip(yc.iter_mut()).zip(xc) {
            *o = crate::numerics::v_expf(v - max);
            *l = *o;
        }
        sum += f64::from(crate::numerics::reduce16(&lanes));
    }
    for (o, v) in y[full..].iter_mut().zip(&x[full..]) {
        *o = (v - max).exp();
        sum += f64::from(*o);
    }
    let inv = (1.0 / sum) as f32;
    y.iter_mut().for_each(|v| *v *= inv);
    y
}

/// Logits for the rows each sequence wants (its last, or all of its rows), or the final
/// hidden states (after the output norm, as llama.cpp's embeddings take them).
fn logits((m, team): (&Model, &Team), x: &[f32], batch: &[SeqStep<'_>]) -> Vec<Output> {
    let c = &m.cfg;
    let d = c.n_embd;
    let mut want: Vec<usize> = Vec::new();
    let mut hidden: Vec<Option<Vec<f32>>> = Vec::with_capacity(batch.len());
    let mut t0 = 0;
    for s in batch {
        let n = s.tokens.len();
        hidden.push(None);
        if n > 0 {
            match s.want {
                Want::Hidden => {
                    let mut h = vec![0f32; n * d];
                    for t in 0..n {
                        let r = (t0 + t) * d;
                        rms_norm(
                            &x[r..r + d],
                            &m.output_norm,
                            c.rms_eps,
                            &mut h[t * d..(t + 1) * d],
                            d,
                        );
                    }
                    if let Some(last) = hidden.last_mut() {
                        *last = Some(h);
                    }
                }
                Want::Nothing => {}
                Want::All => want.extend(t0..t0 + n),
                Want::Last | Want::Token(_) => want.push(t0 + n - 1),
            }
        }
        t0 += n;
    }
    let mut fin = vec![0f32; want.len() * d];
    let mut acts = vec![Q8Act::default(); want.len()];
    for (j, &t) in want.iter().enumerate() {
        rms_norm(
            &x[t * d..(t + 1) * d],
            &m.output_norm,
            c.rms_eps,
            &mut fin[j * d..(j + 1) * d],
            d,
        );
    }
    let mut all = vec![0f32; want.len() * c.n_vocab];
    if !want.is_empty() {
        quantize_all(team, &fin, d, &mut acts);
        matmul(team, m, &m.output, &acts, &mut all);
    }
    let mut out = Vec::with_capacity(batch.len());
    let mut j = 0;
    for (s, h) in batch.iter().zip(hidden) {
        if let Some(h) = h {
            out.push(Output::Hidden(h));
            continue;
        }
        let rows = match (s.tokens.len(), s.want) {
            (0, _) | (_, Want::Nothing | Want::Hidden) => 0,
            (n, Want::All) => n,
            _ => 1,
        };
        out.push(if rows == 0 {
            Output::Nothing
        } else {
            Output::Logits(all[j * c.n_vocab..(j + rows) * c.n_vocab].to_vec())
        });
        j += rows;
    }
    out
}

//! The llama forward pass on a [`Gpu`]: weights repacked and uploaded once, the paged KV
//! pool and every working buffer allocated once at load, and per step only the token ids,
//! positions and block tables uploaded before the kernels of `cuda/` run (table in
//! `cuda/README.md`):
//!
//! ```text
//!   embed ─► per layer: rmsnorm_quant ─► QKV+RoPE+KV write ─► attn ─► combine ─► Wo (+x)
//!                       rmsnorm_quant ─► gate‖up+SwiGLU ─► down (+x)
//!         ─► rmsnorm_quant (wanted rows) ─► output ─► sample
//! ```
//!
//! `sample` picks each wanted row's token on the device (the argmax, or `sampling::sample`'s
//! draw with the sequence's uniform), so a decode step returns token ids only; penalties need
//! the history and go to the host with the logits.
//!
//! Up to 8 tokens run the fused GEMV kernels; more run the int8 GEMM (`mmq`) with the
//! epilogues as kernels of their own (`rope_kv`, `swiglu_quant`); formats without a GEMM
//! (Q6_K, F16) run the GEMV 8 tokens at a time.
//!
//! A decode step (every sequence one token, wanting its logits or its next token) is padded
//! to a batch-size bucket (1, 2, 4, ... up to the step capacity): the padding tokens write
//! into a sink block no sequence owns. Its launches depend only on the bucket and the
//! attention split (from the longest context rounded up to a power of two), never on the
//! step's data, which lives in persistent device buffers: so on a GPU each (bucket, split) is
//! captured once as a CUDA graph and replayed. The twin runs the same padded launches without
//! capture, which is how CI tests them.

use std::collections::HashMap;

use super::abi::{self, KvType};
use super::device::{DevPtr, Gpu, GpuError, GpuExt, GraphId};
use super::launch::{self, AttnShape, MMQ_FORMATS};
use super::repack::Repacked;
use crate::backend::{BackendError, KvCacheType, Output, SeqStep, Want};
use crate::kv::{BLOCK_TOKENS, blocks_for};
use crate::model::{Config, Model, Weight};
use crate::quant::GgmlType;

/// How to build a [`GpuModel`].
#[derive(Debug, Clone, Copy)]
pub struct GpuOptions {
    /// KV pool bytes; `None`: the free device memory after weights and buffers, less a
    /// reserve.
    pub kv_bytes: Option<usize>,
    pub kv_type: KvCacheType,
    /// Tokens one launch sequence takes at most (larger steps run in pieces).
    pub max_tokens: usize,
    /// Positions a sequence may reach (the RoPE table and block tables are this long).
    pub max_positions: usize,
    /// Capture decode steps as graphs where the device has them.
    pub graphs: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            kv_bytes: None,
            kv_type: KvCacheType::F16,
            max_tokens: 512,
            max_positions: 8192,
            graphs: true,
        }
    }
}

/// Memory kept free when the KV pool is sized from free memory: the CUDA context, graphs and
/// the driver's own allocations grow after load.
const RESERVE: usize = 768 << 20;

/// Decode batch-size buckets (each a graph).
const BUCKETS: [usize; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

fn err(e: GpuError) -> BackendError {
    BackendError::Device(e.to_string())
}

/// Quantized activations on the device (`abi::Act`), room for `cap` tokens of up to `n`.
#[derive(Debug, Clone, Copy)]
struct ActBuf {
    qs: DevPtr,
    d: DevPtr,
    isum: DevPtr,
    s: DevPtr,
    f: DevPtr,
}

impl ActBuf {
    fn new<G: Gpu>(g: &mut G, n: usize, cap: usize, what: &str) -> Result<ActBuf, GpuError> {
        let nb = n / 32 * cap;
        Ok(ActBuf {
            qs: g.alloc(n * cap, what)?,
            d: g.alloc(4 * nb, what)?,
            isum: g.alloc(4 * nb, what)?,
            s: g.alloc(4 * nb, what)?,
            f: g.alloc(4 * n * cap, what)?,
        })
    }

    /// Tokens `t0..t0 + n_tok` of vectors of `n` values.
    fn at(&self, n: usize, t0: usize, n_tok: usize) -> abi::Act {
        let b = (t0 * (n / 32) * 4) as u64;
        abi::Act {
            qs: self.qs + (t0 * n) as u64,
            d: self.d + b,
            isum: self.isum + b,
            s: self.s + b,
            f: self.f + (t0 * n * 4) as u64,
            n: n as u32,
            n_tok: n_tok as u32,
        }
    }
}

/// One run of equal formats of `[Wq; Wk; Wv]`.
struct QkvRun {
    mat: abi::Mat,
    ty: GgmlType,
    row0: usize,
    rows: usize,
}

struct GpuLayer {
    attn_norm: DevPtr,
    ffn_norm: DevPtr,
    qkv: Vec<QkvRun>,
    wo: (abi::Mat, GgmlType),
    gateup: (abi::Mat, GgmlType),
    down: (abi::Mat, GgmlType),
}

/// Per-step buffers, sized for `cap` tokens (and as many sequences).
struct Scratch {
    cap: usize,
    /// `[ids; pos; tok_seq]` of `cap` u32 each, then `tables` (`cap` rows of `stride`).
    meta: DevPtr,
    stride: usize,
    x: DevPtr,
    act: ActBuf,
    ff: ActBuf,
    q: DevPtr,
    part: DevPtr,
    y: DevPtr,
    logits: DevPtr,
    /// `abi::SampleRow` per wanted row, uploaded with the step.
    sample_rows: DevPtr,
    top_idx: DevPtr,
}

impl Scratch {
    fn ids(&self) -> DevPtr {
        self.meta
    }
    fn pos(&self) -> DevPtr {
        self.meta + 4 * self.cap as u64
    }
    fn tok_seq(&self) -> DevPtr {
        self.meta + 8 * self.cap as u64
    }
    fn tables(&self) -> DevPtr {
        self.meta + 12 * self.cap as u64
    }
}

/// A step laid out for the kernels: one row per token.
struct Plan {
    ids: Vec<u32>,
    pos: Vec<u32>,
    tok_seq: Vec<u32>,
    /// `n_seq` rows of `stride` block ids.
    tables: Vec<u32>,
    /// Rows whose final hidden state is needed (for logits, a token or `Hidden`), in order.
    wanted: Vec<usize>,
    /// The step is a decode step padded to its bucket: every row is wanted.
    bucket: Option<usize>,
    /// How the device picks each wanted row's token (greedy where no token is wanted or the
    /// host samples).
    sample: Vec<abi::SampleRow>,
    max_len: usize,
}

/// The model on a [`Gpu`]; see the module docs. `GpuBackend` wraps it as a `Backend`.
pub struct GpuModel<G: Gpu> {
    gpu: G,
    cfg: Config,
    layers: Vec<GpuLayer>,
    embd: (abi::Mat, GgmlType),
    out_norm: DevPtr,
    output: (abi::Mat, GgmlType),
    rope: DevPtr,
    max_positions: usize,
    kv: DevPtr,
    kv_type: KvType,
    /// Blocks the scheduler may use; block `n_blocks` is the padding tokens' sink.
    n_blocks: usize,
    layer_pool: usize,
    s: Scratch,
    graphs: HashMap<(usize, u32, u32), GraphId>,
    use_graphs: bool,
    target_blocks: usize,
}

fn check_shape(c: &Config) -> Result<(), BackendError> {
    let bad = |m: String| Err(BackendError::Load(format!("CUDA backend: {m}")));
    if c.n_expert > 0 {
        return bad("mixture-of-experts models are not supported (use --device cpu)".into());
    }
    if !launch::HEAD_DIMS.contains(&c.head_dim) {
        return bad(format!(
            "head size {} (kernels exist for {:?})",
            c.head_dim,
            launch::HEAD_DIMS
        ));
    }
    let qkv = (c.n_head + 2 * c.n_head_kv) * c.head_dim;
    if !c.n_embd.is_multiple_of(32) || !c.n_ff.is_multiple_of(32) || !qkv.is_multiple_of(32) {
        return bad(format!(
            "embedding {}, FFN {} and QKV {} widths must be multiples of 32",
            c.n_embd, c.n_ff, qkv
        ));
    }
    if !c.n_rot.is_multiple_of(2) {
        return bad(format!("odd RoPE dimension {}", c.n_rot));
    }
    Ok(())
}

/// Uploads rows `data` of a matrix in the kernels' layout.
fn upload_mat<G: Gpu>(
    g: &mut G,
    (ty, rows, cols, data): (GgmlType, usize, usize, &[u8]),
    what: &str,
) -> Result<(abi::Mat, GgmlType), BackendError> {
    let r = Repacked::new_or_f16(ty, rows, cols, data)
        .map_err(|e| BackendError::Load(format!("{what}: {e}")))?;
    upload_repacked(g, &r, what)
}

fn upload_repacked<G: Gpu>(
    g: &mut G,
    r: &Repacked,
    what: &str,
) -> Result<(abi::Mat, GgmlType), BackendError> {
    let p = g.alloc_with(&r.bytes, what).map_err(err)?;
    Ok((r.mat(p), r.ty))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl<G: Gpu> GpuModel<G> {
    /// Uploads `m`'s weights (reporting bytes done and in all to `progress`), allocates the
    /// step buffers and the KV pool.
    pub fn load(
        mut gpu: G,
        m: &Model,
        opts: &GpuOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<GpuModel<G>, BackendError> {
        let c = m.cfg.clone();
        check_shape(&c)?;
        debug_assert_eq!(BLOCK_TOKENS, abi::KV_BLOCK);
        let mats = |w: &Weight| w.rows * w.ty.row_bytes(w.cols);
        let total: usize = mats(&m.tok_embd)
            + mats(&m.output)
            + m.layers
                .iter()
                .map(|l| {
                    [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                        .iter()
                        .map(|w| mats(w))
                        .sum::<usize>()
                })
                .sum::<usize>();
        let mut done = 0usize;
        let up = |g: &mut G, w: &Weight, what: &str| {
            upload_mat(g, (w.ty, w.rows, w.cols, m.rows(w)), what)
        };
        let embd = up(&mut gpu, &m.tok_embd, "token_embd")?;
        done += mats(&m.tok_embd);
        progress(done, total);
        let mut layers = Vec::with_capacity(c.n_layer);
        for (li, l) in m.layers.iter().enumerate() {
            let name = |s: &str| format!("blk.{li}.{s}");
            let attn_norm = gpu
                .alloc_with(&f32_bytes(&l.attn_norm), &name("attn_norm"))
                .map_err(err)?;
            let ffn_norm = gpu
                .alloc_with(&f32_bytes(&l.ffn_norm), &name("ffn_norm"))
                .map_err(err)?;
            let qkv = qkv_runs(&mut gpu, m, l, &name)?;
            done += mats(&l.wq) + mats(&l.wk) + mats(&l.wv);
            let wo = up(&mut gpu, &l.wo, &name("attn_output"))?;
            done += mats(&l.wo);
            let gateup = {
                let rp = |w: &Weight, s: &str| {
                    Repacked::new_or_f16(w.ty, w.rows, w.cols, m.rows(w))
                        .map_err(|e| BackendError::Load(format!("{}: {e}", name(s))))
                };
                let (gate, upm) = (rp(&l.w_gate, "ffn_gate")?, rp(&l.w_up, "ffn_up")?);
                let s = Repacked::stack(&[&gate, &upm]).map_err(|_| {
                    BackendError::Load(format!(
                        "CUDA backend: {} is {:?} but {} is {:?}; the fused gate‖up kernel needs one format",
                        name("ffn_gate"),
                        l.w_gate.ty,
                        name("ffn_up"),
                        l.w_up.ty
                    ))
                })?;
                upload_repacked(&mut gpu, &s, &name("ffn_gate_up"))?
            };
            done += mats(&l.w_gate) + mats(&l.w_up);
            let down = up(&mut gpu, &l.w_down, &name("ffn_down"))?;
            done += mats(&l.w_down);
            layers.push(GpuLayer {
                attn_norm,
                ffn_norm,
                qkv,
                wo,
                gateup,
                down,
            });
            progress(done, total);
        }
        let out_norm = gpu
            .alloc_with(&f32_bytes(&m.output_norm), "output_norm")
            .map_err(err)?;
        let output = up(&mut gpu, &m.output, "output")?;
        progress(total, total);

        let max_positions = opts
            .max_positions
            .min(c.n_ctx_train.max(1))
            .max(BLOCK_TOKENS);
        let half = c.n_rot / 2;
        let mut rope = Vec::with_capacity(max_positions * half * 2);
        let mut row = vec![(1.0f32, 0.0f32); half];
        for p in 0..max_positions {
            m.rope_table(p, &mut row);
            rope.extend(row.iter().flat_map(|&(co, si)| [co, si]));
        }
        let rope = gpu
            .alloc_with(&f32_bytes(&rope), "RoPE table")
            .map_err(err)?;

        let cap = opts.max_tokens.clamp(1, 4096);
        let target_blocks = 2 * gpu.sm_count().max(1);
        let s = scratch(&mut gpu, &c, cap, max_positions, target_blocks).map_err(err)?;

        let kv_type = match opts.kv_type {
            KvCacheType::F16 => KvType::F16,
            KvCacheType::Q8_0 => KvType::Q8_0,
        };
        let layer_block = kv_type.block_bytes(c.n_head_kv, c.head_dim);
        let per_block = layer_block * c.n_layer;
        let bytes = match opts.kv_bytes {
            Some(b) => b,
            None => gpu.free_bytes().map_err(err)?.saturating_sub(RESERVE),
        };
        let n_blocks = (bytes / per_block).saturating_sub(1);
        if n_blocks < 2 {
            return Err(BackendError::Load(format!(
                "CUDA backend: {} MiB left for the KV cache holds no blocks of {} KiB (weights and buffers take the rest)",
                bytes >> 20,
                per_block >> 10
            )));
        }
        let layer_pool = (n_blocks + 1) * layer_block;
        let kv = gpu
            .alloc(layer_pool * c.n_layer, "KV cache pool")
            .map_err(err)?;
        Ok(GpuModel {
            gpu,
            cfg: c,
            layers,
            embd,
            out_norm,
            output,
            rope,
            max_positions,
            kv,
            kv_type,
            n_blocks,
            layer_pool,
            s,
            graphs: HashMap::new(),
            use_graphs: opts.graphs,
            target_blocks,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn gpu(&self) -> &G {
        &self.gpu
    }

    pub fn kv_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Bytes one block takes over all layers.
    pub fn kv_block_bytes(&self) -> usize {
        self.kv_type
            .block_bytes(self.cfg.n_head_kv, self.cfg.head_dim)
            * self.cfg.n_layer
    }

    pub fn describe(&self) -> String {
        format!(
            "{}, {} KV cache of {} blocks ({:.0} MiB, {} tokens), CUDA graphs {}",
            self.gpu.describe(),
            match self.kv_type {
                KvType::F16 => "f16",
                KvType::Q8_0 => "q8_0",
            },
            self.n_blocks,
            (self.n_blocks * self.kv_block_bytes()) as f64 / f64::from(1 << 20),
            self.n_blocks * BLOCK_TOKENS,
            if self.use_graphs { "on" } else { "off" }
        )
    }

    /// Runs a step; see `Backend::forward`. Steps over the capacity run in pieces.
    pub fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Output>, BackendError> {
        self.check(batch)?;
        let total: usize = batch.iter().map(|s| s.tokens.len()).sum();
        if total <= self.s.cap && batch.len() <= self.s.cap {
            return self.step(batch);
        }
        self.forward_in_pieces(batch)
    }

    fn check(&self, batch: &[SeqStep<'_>]) -> Result<(), BackendError> {
        for (i, s) in batch.iter().enumerate() {
            let end = s.start + s.tokens.len();
            if s.blocks.len() < blocks_for(end) {
                return Err(BackendError::Step(format!(
                    "sequence {i}: {} blocks cannot hold {end} positions",
                    s.blocks.len()
                )));
            }
            if let Some(b) = s.blocks.iter().find(|b| **b as usize >= self.n_blocks) {
                return Err(BackendError::Step(format!(
                    "sequence {i}: block {b} is outside the pool of {}",
                    self.n_blocks
                )));
            }
            if end > self.max_positions {
                return Err(BackendError::Step(format!(
                    "sequence {i}: position {} is past the CUDA backend's {} positions",
                    end - 1,
                    self.max_positions
                )));
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= self.cfg.n_vocab) {
                return Err(BackendError::Step(format!(
                    "sequence {i}: token {t} is outside the vocabulary of {}",
                    self.cfg.n_vocab
                )));
            }
        }
        Ok(())
    }

    /// Splits a step into pieces of at most `cap` tokens and sequences, in order (a piece's
    /// attention reads what earlier pieces wrote), and joins the outputs.
    fn forward_in_pieces(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Output>, BackendError> {
        let cap = self.s.cap;
        let mut outs: Vec<Vec<Output>> = vec![Vec::new(); batch.len()];
        let mut piece: Vec<(usize, SeqStep<'_>)> = Vec::new();
        let mut used = 0;
        let mut flush = |me: &mut Self, piece: &mut Vec<(usize, SeqStep<'_>)>| {
            let steps: Vec<SeqStep<'_>> = piece.iter().map(|(_, s)| *s).collect();
            let out = me.step(&steps)?;
            for ((i, _), o) in piece.drain(..).zip(out) {
                outs[i].push(o);
            }
            Ok::<(), BackendError>(())
        };
        for (i, s) in batch.iter().enumerate() {
            let mut at = 0;
            loop {
                if used == cap || piece.len() == cap {
                    flush(self, &mut piece)?;
                    used = 0;
                }
                let n = (s.tokens.len() - at).min(cap - used);
                let last = at + n == s.tokens.len();
                let want = match s.want {
                    Want::All | Want::Hidden => s.want,
                    w if last => w,
                    _ => Want::Nothing,
                };
                piece.push((
                    i,
                    SeqStep {
                        blocks: s.blocks,
                        start: s.start + at,
                        tokens: &s.tokens[at..at + n],
                        want,
                    },
                ));
                used += n;
                at += n;
                if last {
                    break;
                }
            }
        }
        if !piece.is_empty() {
            flush(self, &mut piece)?;
        }
        Ok(outs
            .into_iter()
            .map(|parts| {
                let mut it = parts.into_iter().filter(|o| *o != Output::Nothing);
                match it.next() {
                    None => Output::Nothing,
                    Some(Output::Logits(mut l)) => {
                        it.for_each(|o| {
                            if let Output::Logits(m) = o {
                                l.extend(m)
                            }
                        });
                        Output::Logits(l)
                    }
                    Some(Output::Hidden(mut h)) => {
                        it.for_each(|o| {
                            if let Output::Hidden(m) = o {
                                h.extend(m)
                            }
                        });
                        Output::Hidden(h)
                    }
                    Some(o) => o,
                }
            })
            .collect())
    }

    fn plan(&self, batch: &[SeqStep<'_>]) -> Plan {
        let stride = self.s.stride;
        let sink = self.n_blocks as u32;
        let decode = batch
            .iter()
            .all(|s| s.tokens.len() == 1 && matches!(s.want, Want::Last | Want::Token(_)))
            && !batch.is_empty();
        let n: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let bucket = if decode {
            BUCKETS.iter().copied().find(|&b| b >= n && b <= self.s.cap)
        } else {
            None
        };
        let rows = bucket.unwrap_or(n);
        let n_seq = if bucket.is_some() { rows } else { batch.len() };
        let mut p = Plan {
            ids: Vec::with_capacity(rows),
            pos: Vec::with_capacity(rows),
            tok_seq: Vec::with_capacity(rows),
            tables: vec![sink; n_seq * stride],
            wanted: Vec::new(),
            bucket,
            sample: Vec::new(),
            max_len: 1,
        };
        // (row of the step, how to sample it) for sequences whose token the device draws.
        let mut draws: Vec<(usize, abi::SampleRow)> = Vec::new();
        for (i, s) in batch.iter().enumerate() {
            p.tables[i * stride..i * stride + s.blocks.len().min(stride)]
                .copy_from_slice(&s.blocks[..s.blocks.len().min(stride)]);
            for (j, &t) in s.tokens.iter().enumerate() {
                p.ids.push(t);
                p.pos.push((s.start + j) as u32);
                p.tok_seq.push(i as u32);
            }
            p.max_len = p.max_len.max(s.start + s.tokens.len());
            let t0 = p.ids.len() - s.tokens.len();
            match s.want {
                _ if s.tokens.is_empty() => {}
                Want::Nothing => {}
                Want::All | Want::Hidden => p.wanted.extend(t0..p.ids.len()),
                Want::Token(a) if samples_on_device(a.params) => {
                    p.wanted.push(p.ids.len() - 1);
                    draws.push((p.ids.len() - 1, sample_row(a.params, a.uniform)));
                }
                Want::Last | Want::Token(_) => p.wanted.push(p.ids.len() - 1),
            }
        }
        // Padding rows: token 0 at position 0 of their own table row, all in the sink block.
        while p.ids.len() < rows {
            p.tok_seq.push(p.ids.len() as u32);
            p.ids.push(0);
            p.pos.push(0);
        }
        if bucket.is_some() {
            p.wanted = (0..rows).collect();
        }
        let greedy = abi::SampleRow {
            greedy: 1,
            ..Default::default()
        };
        p.sample = vec![greedy; p.wanted.len()];
        for (row, r) in draws {
            // `wanted` is increasing: a row's index in it is where it sorts.
            if let Ok(j) = p.wanted.binary_search(&row) {
                p.sample[j] = r;
            }
        }
        p
    }

    /// (splits, blocks per split) for `n_tok` tokens over contexts up to `max_len`: from the
    /// length rounded up to a power of two, so steps share graphs.
    fn split(&self, max_len: usize, n_tok: usize) -> (u32, u32) {
        let c = &self.cfg;
        let len = max_len
            .next_power_of_two()
            .clamp(BLOCK_TOKENS * 16, self.max_positions.next_power_of_two());
        let group = c.n_head / c.n_head_kv;
        let ctas = c.n_head_kv * (group / launch::attention_group(group));
        launch::attention_split(len, ctas, n_tok, self.target_blocks)
    }

    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Output>, BackendError> {
        let p = self.plan(batch);
        let n = p.ids.len();
        if n == 0 {
            return Ok(vec![Output::Nothing; batch.len()]);
        }
        let cap = self.s.cap;
        let mut meta = Vec::with_capacity(3 * cap + p.tables.len());
        for v in [&p.ids, &p.pos, &p.tok_seq] {
            meta.extend_from_slice(v);
            meta.resize(meta.len() + cap - v.len(), 0);
        }
        meta.extend_from_slice(&p.tables);
        self.gpu.upload_slice(self.s.meta, &meta).map_err(err)?;
        if !p.sample.is_empty() {
            self.gpu
                .upload_slice(self.s.sample_rows, &p.sample)
                .map_err(err)?;
        }
        let split = self.split(p.max_len, n);
        let m = p.wanted.len();
        match p.bucket {
            Some(b) if self.use_graphs => {
                let key = (b, split.0, split.1);
                let g = match self.graphs.get(&key) {
                    Some(&g) => g,
                    None => {
                        if self.gpu.begin_capture().map_err(err)? {
                            let recorded = self.launches(n, split, &p.wanted);
                            // End the capture whatever happened, so the stream runs again.
                            let g = self.gpu.end_capture().map_err(err);
                            recorded.map_err(err)?;
                            let g = g?;
                            self.graphs.insert(key, g);
                            g
                        } else {
                            self.use_graphs = false;
                            usize::MAX
                        }
                    }
                };
                if g == usize::MAX {
                    self.launches(n, split, &p.wanted).map_err(err)?;
                } else {
                    self.gpu.replay(g).map_err(err)?;
                }
            }
            _ => self.launches(n, split, &p.wanted).map_err(err)?,
        }
        self.outputs(batch, &p, m).map_err(err)
    }

    /// Every launch of a step of `n` rows whose final states `wanted` are needed.
    fn launches(&mut self, n: usize, split: (u32, u32), wanted: &[usize]) -> Result<(), GpuError> {
        let c = self.cfg.clone();
        let d = c.n_embd;
        let s = &self.s;
        // SAFETY (every launch below): parameter blocks point into buffers allocated at load
        // for `cap` >= n rows, the weights, the RoPE table and the KV pool, with the sizes the
        // kernels use for these shapes; block ids come from checked tables or the sink.
        unsafe {
            self.gpu.launch(
                &launch::embed(self.embd.1, n).map_err(bad)?,
                &abi::EmbedParams {
                    w: self.embd.0,
                    ids: s.ids(),
                    out: s.x,
                    n_tok: n as u32,
                    pad: 0,
                },
            )?;
        }
        for li in 0..self.layers.len() {
            self.layer(li, n, split)?;
        }
        // Final norm of the wanted rows into `act` (row j = wanted[j]).
        let m = wanted.len();
        if m == 0 {
            return Ok(());
        }
        let all = m == n && wanted.iter().enumerate().all(|(j, &t)| j == t);
        let runs: Vec<(usize, usize)> = if all {
            vec![(0, 0)]
        } else {
            wanted.iter().copied().enumerate().collect()
        };
        for (j, t) in runs {
            let rows = if all { n } else { 1 };
            // SAFETY: as above; row t of x and row j of act exist.
            unsafe {
                self.gpu.launch(
                    &launch::rmsnorm_quant(rows),
                    &abi::NormParams {
                        x: self.s.x + (t * d * 4) as u64,
                        g: self.out_norm,
                        out: self.s.act.at(d, j, rows),
                        x_stride: d as u32,
                        eps: c.rms_eps,
                        norm: 1,
                        pad: 0,
                    },
                )?;
            }
        }
        let a = self.s.act;
        let (logits, vocab) = (self.s.logits, c.n_vocab);
        self.matmul(self.output, (a, d), (logits, vocab, 0), m)?;
        // SAFETY: as above; `sample_rows` holds a row per wanted row (uploaded with the step).
        unsafe {
            self.gpu.launch(
                &launch::sample(m),
                &abi::SampleParams {
                    x: logits,
                    rows: self.s.sample_rows,
                    out_idx: self.s.top_idx,
                    n: vocab as u32,
                    stride: vocab as u32,
                },
            )
        }
    }

    fn layer(&mut self, li: usize, n: usize, (n_split, per): (u32, u32)) -> Result<(), GpuError> {
        let c = self.cfg.clone();
        let (d, hd) = (c.n_embd, c.head_dim);
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_head_kv * hd);
        let qkv_rows = q_dim + 2 * kv_dim;
        let (x, act, ff, y, q) = (self.s.x, self.s.act, self.s.ff, self.s.y, self.s.q);
        let l = &self.layers[li];
        let (attn_norm, ffn_norm) = (l.attn_norm, l.ffn_norm);
        let (wo, gateup, down) = (l.wo, l.gateup, l.down);
        let runs: Vec<(abi::Mat, GgmlType, usize, usize)> = l
            .qkv
            .iter()
            .map(|r| (r.mat, r.ty, r.row0, r.rows))
            .collect();
        let kv = abi::KvRef {
            kv: self.kv + (li * self.layer_pool) as u64,
            pos: self.s.pos(),
            tok_seq: self.s.tok_seq(),
            tables: self.s.tables(),
            table_stride: self.s.stride as u32,
            n_head_kv: c.n_head_kv as u32,
            head_dim: hd as u32,
            q8: self.kv_type.flag(),
        };
        let o = abi::QkvOut {
            kv,
            q_out: q,
            rope: self.rope,
            q_dim: q_dim as u32,
            kv_dim: kv_dim as u32,
            n_rot: c.n_rot as u32,
            pad: 0,
        };
        self.norm(x, attn_norm, act.at(d, 0, n), n)?;
        if n <= 8 {
            for (mat, ty, row0, rows) in runs {
                // SAFETY: as in `launches`.
                unsafe {
                    self.gpu.launch(
                        &launch::qkv(ty, rows, n).map_err(bad)?,
                        &abi::QkvParams {
                            w: mat,
                            a: act.at(d, 0, n),
                            o,
                            row0: row0 as u32,
                            pad: 0,
                        },
                    )?;
                }
            }
        } else {
            for (mat, ty, row0, _) in runs {
                self.matmul((mat, ty), (act, d), (y + (row0 * 4) as u64, qkv_rows, 0), n)?;
            }
            // SAFETY: as in `launches`.
            unsafe {
                self.gpu.launch(
                    &launch::rope_kv(qkv_rows, n),
                    &abi::RopeKvParams {
                        y,
                        o,
                        y_stride: qkv_rows as u32,
                        n_tok: n as u32,
                    },
                )?;
            }
        }
        let shape = AttnShape {
            head_dim: hd,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            kv: self.kv_type,
        };
        // SAFETY: as in `launches`; `part` holds n * n_head * n_split * (hd + 2) floats.
        unsafe {
            self.gpu.launch(
                &launch::attention(shape, n, n_split).map_err(bad)?,
                &abi::AttnParams {
                    q,
                    kv,
                    part: self.s.part,
                    n_head: c.n_head as u32,
                    n_split,
                    blocks_per_split: per,
                    scale: 1.0 / (hd as f32).sqrt(),
                },
            )?;
            self.gpu.launch(
                &launch::combine(hd, c.n_head, n).map_err(bad)?,
                &abi::CombineParams {
                    part: self.s.part,
                    out: act.at(q_dim, 0, n),
                    n_head: c.n_head as u32,
                    n_split,
                },
            )?;
        }
        self.matmul(wo, (act, q_dim), (x, d, 1), n)?;
        self.norm(x, ffn_norm, act.at(d, 0, n), n)?;
        if n <= 8 {
            // SAFETY: as in `launches`.
            unsafe {
                self.gpu.launch(
                    &launch::gateup(gateup.1, c.n_ff, n).map_err(bad)?,
                    &abi::GateUpParams {
                        w: gateup.0,
                        a: act.at(d, 0, n),
                        out: ff.at(c.n_ff, 0, n),
                    },
                )?;
            }
        } else {
            self.matmul(gateup, (act, d), (y, 2 * c.n_ff, 0), n)?;
            // SAFETY: as in `launches`.
            unsafe {
                self.gpu.launch(
                    &launch::swiglu_quant(c.n_ff, n),
                    &abi::SwigluParams {
                        y,
                        out: ff.at(c.n_ff, 0, n),
                        y_stride: (2 * c.n_ff) as u32,
                        pad: 0,
                    },
                )?;
            }
        }
        self.matmul(down, (ff, c.n_ff), (x, d, 1), n)
    }

    fn norm(&mut self, x: DevPtr, g: DevPtr, out: abi::Act, n: usize) -> Result<(), GpuError> {
        // SAFETY: as in `launches`.
        unsafe {
            self.gpu.launch(
                &launch::rmsnorm_quant(n),
                &abi::NormParams {
                    x,
                    g,
                    out,
                    x_stride: self.cfg.n_embd as u32,
                    eps: self.cfg.rms_eps,
                    norm: 1,
                    pad: 0,
                },
            )
        }
    }

    /// `out[t][..rows] (+)= W · a[t]` for `n` tokens (mode 1 adds): the GEMV up to 8 tokens,
    /// the GEMM beyond where the format has one, else the GEMV 8 tokens at a time.
    fn matmul(
        &mut self,
        (w, ty): (abi::Mat, GgmlType),
        (a, cols): (ActBuf, usize),
        (out, stride, mode): (DevPtr, usize, u32),
        n: usize,
    ) -> Result<(), GpuError> {
        let rows = w.rows as usize;
        let params = |t0: usize, k: usize| abi::MatmulParams {
            w,
            a: a.at(cols, t0, k),
            out: out + (t0 * stride * 4) as u64,
            out_stride: stride as u32,
            mode,
        };
        if n > 8 && MMQ_FORMATS.contains(&ty) {
            // SAFETY: as in `launches`.
            return unsafe {
                self.gpu
                    .launch(&launch::mmq(ty, rows, n).map_err(bad)?, &params(0, n))
            };
        }
        let mut t0 = 0;
        while t0 < n {
            let k = (n - t0).min(8);
            // SAFETY: as in `launches`.
            unsafe {
                self.gpu
                    .launch(&launch::gemv(ty, rows, k).map_err(bad)?, &params(t0, k))?;
            }
            t0 += k;
        }
        Ok(())
    }

    fn outputs(
        &mut self,
        batch: &[SeqStep<'_>],
        p: &Plan,
        m: usize,
    ) -> Result<Vec<Output>, GpuError> {
        let (d, vocab) = (self.cfg.n_embd, self.cfg.n_vocab);
        let needs = |f: &dyn Fn(&Want<'_>) -> bool| {
            batch.iter().any(|s| !s.tokens.is_empty() && f(&s.want))
        };
        let on_device = |w: &Want<'_>| match w {
            Want::Token(a) => samples_on_device(a.params),
            _ => false,
        };
        let tokens: Vec<u32> = if needs(&on_device) {
            self.gpu.download_vec(self.s.top_idx, m)?
        } else {
            Vec::new()
        };
        let want_logits = needs(&|w| {
            matches!(w, Want::Last | Want::All) || matches!(w, Want::Token(_)) && !on_device(w)
        });
        let logits: Vec<f32> = if want_logits {
            self.gpu.download_vec(self.s.logits, m * vocab)?
        } else {
            Vec::new()
        };
        let hidden: Vec<f32> = if needs(&|w| matches!(w, Want::Hidden)) {
            self.gpu.download_vec(self.s.act.f, m * d)?
        } else {
            Vec::new()
        };
        // Row j of the outputs is p.wanted[j]; sequences' rows come in order.
        let mut out = Vec::with_capacity(batch.len());
        let mut j = 0;
        let mut t0 = 0;
        for s in batch {
            let k = s.tokens.len();
            let rows = match s.want {
                _ if k == 0 => 0,
                Want::Nothing => 0,
                Want::All | Want::Hidden => k,
                Want::Last | Want::Token(_) => 1,
            };
            // With a bucket every row is wanted: this sequence's row is its own token's.
            if p.bucket.is_some() {
                j = t0 + k - rows;
            }
            out.push(match s.want {
                _ if rows == 0 => Output::Nothing,
                Want::Nothing => Output::Nothing,
                Want::Hidden => Output::Hidden(hidden[j * d..(j + rows) * d].to_vec()),
                Want::Last | Want::All => {
                    Output::Logits(logits[j * vocab..(j + rows) * vocab].to_vec())
                }
                Want::Token(a) if samples_on_device(a.params) => Output::Token(tokens[j]),
                Want::Token(a) => Output::Token(crate::sampling::sample(
                    &logits[j * vocab..(j + 1) * vocab],
                    a.params,
                    a.history,
                    a.uniform,
                )),
            });
            j += rows;
            t0 += k;
        }
        Ok(out)
    }
}

/// Without penalties (which need the sequence's history) the `sample` kernel picks what
/// `sampling::sample` would from the device's logits.
fn samples_on_device(p: &crate::sampling::SamplingParams) -> bool {
    p.repetition_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0
}

/// The kernel's parameters for `p` and the sequence's draw `uniform`.
pub fn sample_row(p: &crate::sampling::SamplingParams, uniform: f32) -> abi::SampleRow {
    abi::SampleRow {
        greedy: u32::from(p.temperature <= 0.0),
        inv_t: if p.temperature > 0.0 {
            1.0 / p.temperature
        } else {
            0.0
        },
        top_p: p.top_p,
        min_p: p.min_p,
        top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
        uniform,
        pad: [0; 2],
    }
}

fn bad(e: launch::LaunchError) -> GpuError {
    GpuError::Bad(e.to_string())
}

/// `[Wq; Wk; Wv]` as runs of equal formats, each stacked and uploaded.
fn qkv_runs<G: Gpu>(
    gpu: &mut G,
    m: &Model,
    l: &crate::model::Layer,
    name: &dyn Fn(&str) -> String,
) -> Result<Vec<QkvRun>, BackendError> {
    let parts = [(&l.wq, "attn_q"), (&l.wk, "attn_k"), (&l.wv, "attn_v")];
    let mut reps = Vec::new();
    for (w, s) in parts {
        reps.push(
            Repacked::new_or_f16(w.ty, w.rows, w.cols, m.rows(w))
                .map_err(|e| BackendError::Load(format!("{}: {e}", name(s))))?,
        );
    }
    let mut runs = Vec::new();
    let mut i = 0;
    let mut row0 = 0;
    while i < reps.len() {
        let mut j = i + 1;
        while j < reps.len() && reps[j].ty == reps[i].ty {
            j += 1;
        }
        let group: Vec<&Repacked> = reps[i..j].iter().collect();
        let stacked = Repacked::stack(&group)
            .map_err(|e| BackendError::Load(format!("{}: {e}", name("attn_qkv"))))?;
        let rows = stacked.rows;
        let (mat, ty) = upload_repacked(gpu, &stacked, &name("attn_qkv"))?;
        runs.push(QkvRun {
            mat,
            ty,
            row0,
            rows,
        });
        row0 += rows;
        i = j;
    }
    Ok(runs)
}

fn scratch<G: Gpu>(
    g: &mut G,
    c: &Config,
    cap: usize,
    max_positions: usize,
    target_blocks: usize,
) -> Result<Scratch, GpuError> {
    let q_dim = c.n_head * c.head_dim;
    let kv_dim = c.n_head_kv * c.head_dim;
    let stride = blocks_for(max_positions);
    let widest = c.n_embd.max(q_dim);
    let y_cols = if cap > 8 {
        (q_dim + 2 * kv_dim).max(2 * c.n_ff)
    } else {
        0
    };
    // n_tok * n_split <= n_tok + target_blocks + 1 for any split `attention_split` picks.
    let part = (cap + target_blocks + 1) * c.n_head * (c.head_dim + 2) * 4;
    Ok(Scratch {
        cap,
        meta: g.alloc(4 * (3 * cap + cap * stride), "step tables")?,
        stride,
        x: g.alloc(4 * cap * c.n_embd, "activations")?,
        act: ActBuf::new(g, widest, cap, "activations")?,
        ff: ActBuf::new(g, c.n_ff, cap, "FFN activations")?,
        q: g.alloc(4 * cap * q_dim, "queries")?,
        part: g.alloc(part, "attention partials")?,
        y: g.alloc(4 * cap * y_cols.max(1), "GEMM outputs")?,
        logits: g.alloc(4 * cap * c.n_vocab, "logits")?,
        sample_rows: g.alloc(size_of::<abi::SampleRow>() * cap, "sampling parameters")?,
        top_idx: g.alloc(4 * cap, "sampled tokens")?,
    })
}

/// A [`GpuModel`] as a `Backend`.
pub struct GpuBackend<G: Gpu>(pub GpuModel<G>);

impl<G: Gpu + Send> crate::backend::Backend for GpuBackend<G> {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn config(&self) -> &Config {
        self.0.config()
    }
    fn kv_blocks(&self) -> usize {
        self.0.kv_blocks()
    }
    fn kv_block_bytes(&self) -> usize {
        self.0.kv_block_bytes()
    }
    fn samples_on_device(&self) -> bool {
        true
    }
    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Output>, BackendError> {
        self.0.forward(batch)
    }
}

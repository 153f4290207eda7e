//! Launch geometry of every kernel: the kernel's name, grid and block for a given shape. The
//! CPU twin and the GPU backend launch through these same functions, so the twin tests also
//! test the geometry the GPU will use.
//!
//! One decode step of a layer (n tokens, `cuda/README.md` has the table):
//!
//! ```text
//!  rmsnorm_quant ─▶ qkv_F_cN ─▶ attn_hdD_gG ─▶ combine_hdD ─▶ gemv_F_cN (+x)
//!  ─▶ rmsnorm_quant ─▶ gateup_F_cN ─▶ gemv_F_cN (+x)                 = 8 launches
//! ```
//!
//! Prefill (more than 8 tokens) runs the int8 GEMM and the epilogues apart:
//!
//! ```text
//!  rmsnorm_quant ─▶ mmq_F ─▶ rope_kv ─▶ attn ─▶ combine ─▶ mmq_F (+x)
//!  ─▶ rmsnorm_quant ─▶ mmq_F ─▶ swiglu_quant ─▶ mmq_F (+x)              = 10 launches
//! ```

use crate::cuda::abi::KvType;
use crate::quant::GgmlType;

/// A kernel launch: name (as in the cubins and the twin), grid and block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LaunchError {
    #[error("no CUDA kernel for {0:?} weights")]
    Format(GgmlType),
    #[error("{0}")]
    Shape(String),
}

/// Weight formats with kernels, in kernel-name spelling.
pub const FORMATS: [(GgmlType, &str); 7] = [
    (GgmlType::Q4_0, "q4_0"),
    (GgmlType::Q4_1, "q4_1"),
    (GgmlType::Q8_0, "q8_0"),
    (GgmlType::Q4_K, "q4_k"),
    (GgmlType::Q5_K, "q5_k"),
    (GgmlType::Q6_K, "q6_k"),
    (GgmlType::F16, "f16"),
];
/// Formats the prefill GEMM (`mmq_F`) takes; the others run the GEMV 8 tokens at a time.
pub const MMQ_FORMATS: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
];
/// Token columns of the GEMV kernels.
pub const GEMV_COLS: [usize; 4] = [1, 2, 4, 8];
/// Head sizes of the attention kernels, and query heads per block.
pub const HEAD_DIMS: [usize; 2] = [64, 128];
pub const ATTN_GROUPS: [usize; 3] = [1, 2, 4];
/// Rows of one block of the fused QKV and gate‖up kernels.
pub const FUSED_ROWS: usize = 32;

const GEMV_WARPS: u32 = 4;
const MMQ_ROWS: u32 = 64;
const MMQ_TOKS: u32 = 32;

fn fmt(ty: GgmlType) -> Result<&'static str, LaunchError> {
    FORMATS
        .iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, n)| *n)
        .ok_or(LaunchError::Format(ty))
}

fn cols_for(n_tok: usize) -> Result<usize, LaunchError> {
    GEMV_COLS
        .iter()
        .copied()
        .find(|&c| c >= n_tok.max(1))
        .ok_or_else(|| LaunchError::Shape(format!("{n_tok} tokens: the GEMV takes at most 8")))
}

fn u(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn launch(kernel: String, grid: [usize; 3], threads: u32) -> Launch {
    Launch {
        kernel,
        grid: [u(grid[0]), u(grid[1]), u(grid[2])],
        block: [threads, 1, 1],
    }
}

/// `out (+)= W·a` for 1..=8 tokens.
pub fn gemv(ty: GgmlType, rows: usize, n_tok: usize) -> Result<Launch, LaunchError> {
    let c = cols_for(n_tok)?;
    Ok(launch(
        format!("gemv_{}_c{c}", fmt(ty)?),
        [rows.div_ceil(GEMV_WARPS as usize), 1, 1],
        32 * GEMV_WARPS,
    ))
}

fn fused(name: &str, ty: GgmlType, outputs: usize, n_tok: usize) -> Result<Launch, LaunchError> {
    if !outputs.is_multiple_of(FUSED_ROWS) {
        return Err(LaunchError::Shape(format!(
            "{name}: {outputs} outputs is not a multiple of {FUSED_ROWS}"
        )));
    }
    let c = cols_for(n_tok)?;
    Ok(launch(
        format!("{name}_{}_c{c}", fmt(ty)?),
        [outputs / FUSED_ROWS, 1, 1],
        32 * GEMV_WARPS,
    ))
}

/// QKV projection + RoPE + KV write over `rows` rows of `[Wq; Wk; Wv]` (all, or one run of
/// equal formats).
pub fn qkv(ty: GgmlType, rows: usize, n_tok: usize) -> Result<Launch, LaunchError> {
    fused("qkv", ty, rows, n_tok)
}

/// Gate‖up projection + SwiGLU + quantization, `n_ff` outputs.
pub fn gateup(ty: GgmlType, n_ff: usize, n_tok: usize) -> Result<Launch, LaunchError> {
    fused("gateup", ty, n_ff, n_tok)
}

/// Prefill GEMM, any number of tokens.
pub fn mmq(ty: GgmlType, rows: usize, n_tok: usize) -> Result<Launch, LaunchError> {
    if !MMQ_FORMATS.contains(&ty) {
        return Err(LaunchError::Format(ty));
    }
    Ok(launch(
        format!("mmq_{}", fmt(ty)?),
        [
            rows.div_ceil(MMQ_ROWS as usize),
            n_tok.div_ceil(MMQ_TOKS as usize),
            1,
        ],
        128,
    ))
}

/// RoPE and the KV write for `rows` rows of `[q; k; v]` per token (after `mmq`).
pub fn rope_kv(rows: usize, n_tok: usize) -> Launch {
    launch("rope_kv".into(), [rows.div_ceil(256), n_tok, 1], 128)
}

/// SwiGLU and quantization of `n_ff` outputs per token (after `mmq`).
pub fn swiglu_quant(n_ff: usize, n_tok: usize) -> Launch {
    launch("swiglu_quant".into(), [n_ff.div_ceil(128), n_tok, 1], 128)
}

/// RMSNorm + quantization (or quantization alone), one block per token.
pub fn rmsnorm_quant(n_tok: usize) -> Launch {
    launch("rmsnorm_quant".into(), [n_tok, 1, 1], 256)
}

/// Embedding rows for `n_tok` token ids.
pub fn embed(ty: GgmlType, n_tok: usize) -> Result<Launch, LaunchError> {
    Ok(launch(format!("embed_{}", fmt(ty)?), [n_tok, 1, 1], 128))
}

/// How attention splits a context of `max_len` positions: (splits, KV blocks per split), so
/// that `heads * n_tok * splits` blocks fill about `target_blocks` (a few per SM).
pub fn attention_split(
    max_len: usize,
    heads: usize,
    n_tok: usize,
    target_blocks: usize,
) -> (u32, u32) {
    let kv_blocks = max_len.div_ceil(crate::cuda::abi::KV_BLOCK).max(1);
    let want = target_blocks
        .div_ceil((heads * n_tok).max(1))
        .clamp(1, kv_blocks);
    let per = kv_blocks.div_ceil(want);
    (u(kv_blocks.div_ceil(per)), u(per))
}

/// Query heads per attention block for a group of `group` query heads per KV head.
pub fn attention_group(group: usize) -> usize {
    ATTN_GROUPS
        .iter()
        .rev()
        .copied()
        .find(|&g| group.is_multiple_of(g))
        .unwrap_or(1)
}

/// The shape of an attention launch.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub head_dim: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub kv: KvType,
}

/// Split-K flash-decode: one block per (KV head × head tile, token, split).
pub fn attention(shape: AttnShape, n_tok: usize, n_split: u32) -> Result<Launch, LaunchError> {
    let AttnShape {
        head_dim,
        n_head,
        n_head_kv,
        kv,
    } = shape;
    if !HEAD_DIMS.contains(&head_dim) || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
        return Err(LaunchError::Shape(format!(
            "attention: head_dim {head_dim}, {n_head} heads, {n_head_kv} KV heads"
        )));
    }
    let group = n_head / n_head_kv;
    let g = attention_group(group);
    Ok(launch(
        format!(
            "attn_hd{head_dim}_g{g}{}",
            if kv == KvType::Q8_0 { "_q8" } else { "" }
        ),
        [n_head_kv * (group / g), n_tok, n_split as usize],
        128,
    ))
}

/// Merge of the attention splits, one block per (head, token).
pub fn combine(head_dim: usize, n_head: usize, n_tok: usize) -> Result<Launch, LaunchError> {
    if !HEAD_DIMS.contains(&head_dim) {
        return Err(LaunchError::Shape(format!("combine: head_dim {head_dim}")));
    }
    Ok(launch(
        format!("combine_hd{head_dim}"),
        [n_head, n_tok, 1],
        u(head_dim),
    ))
}

/// Argmax per row.
pub fn argmax(rows: usize) -> Launch {
    launch("argmax".into(), [rows, 1, 1], 256)
}

/// Top-k per row.
pub fn topk(rows: usize) -> Launch {
    launch("topk".into(), [rows, 1, 1], 256)
}

/// `sampling::sample` per row (greedy rows take the argmax).
pub fn sample(rows: usize) -> Launch {
    launch("sample".into(), [rows, 1, 1], 256)
}

/// Every kernel name the functions above can produce (the twin's registry must equal it).
pub fn all_kernels() -> Vec<String> {
    let mut v: Vec<String> = [
        "rmsnorm_quant",
        "argmax",
        "topk",
        "sample",
        "rope_kv",
        "swiglu_quant",
    ]
    .map(String::from)
    .into();
    for (ty, f) in FORMATS {
        v.push(format!("embed_{f}"));
        for c in GEMV_COLS {
            for k in ["gemv", "qkv", "gateup"] {
                v.push(format!("{k}_{f}_c{c}"));
            }
        }
        if MMQ_FORMATS.contains(&ty) {
            v.push(format!("mmq_{f}"));
        }
    }
    for hd in HEAD_DIMS {
        v.push(format!("combine_hd{hd}"));
        for g in ATTN_GROUPS {
            v.push(format!("attn_hd{hd}_g{g}"));
            v.push(format!("attn_hd{hd}_g{g}_q8"));
        }
    }
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        let l = gemv(GgmlType::Q4_0, 4096, 3).expect("gemv");
        assert_eq!(l.kernel, "gemv_q4_0_c4");
        assert_eq!(l.grid, [1024, 1, 1]);
        assert!(gemv(GgmlType::Q4_0, 4096, 9).is_err());
        assert!(gemv(GgmlType::F32, 4096, 1).is_err());
        assert_eq!(
            qkv(GgmlType::Q8_0, 12288, 1).expect("qkv").grid,
            [384, 1, 1]
        );
        assert_eq!(
            mmq(GgmlType::Q4_K, 4096, 512).expect("mmq").grid,
            [64, 16, 1]
        );
        assert!(mmq(GgmlType::Q6_K, 4096, 512).is_err());
        // Llama-2-7B: 32 heads, 32 KV heads; Llama-3-8B: 32 / 8 (groups of 4).
        let shape = |head_dim, n_head, n_head_kv, kv| AttnShape {
            head_dim,
            n_head,
            n_head_kv,
            kv,
        };
        let a = attention(shape(128, 32, 32, KvType::F16), 1, 4).expect("attn");
        assert_eq!((a.kernel.as_str(), a.grid), ("attn_hd128_g1", [32, 1, 4]));
        let a = attention(shape(128, 32, 8, KvType::Q8_0), 2, 1).expect("attn");
        assert_eq!((a.kernel.as_str(), a.grid), ("attn_hd128_g4_q8", [8, 2, 1]));
        // SmolLM2-135M: 9 heads, 3 KV heads, groups of 3: one head per block.
        let a = attention(shape(64, 9, 3, KvType::F16), 1, 1).expect("attn");
        assert_eq!(a.grid, [9, 1, 1]);
        assert!(attention(shape(96, 8, 8, KvType::F16), 1, 1).is_err());
        assert_eq!(attention_split(512, 32, 1, 264), (8, 4));
        assert_eq!(attention_split(10, 32, 64, 264), (1, 1));
    }
}

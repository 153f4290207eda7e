//! Llama-shaped GGUF files with random weights, for runs that must not download a model: the
//! twin-device tests, and benchmarks on a GPU machine without network (a Llama-2-7B-shaped
//! file streams exactly the bytes a real one of its format does, which is all decode speed
//! depends on).
//!
//! Weights are random bytes in the tensor's own format, with every scale field set so that a
//! matrix keeps the RMS of its input (`gain` 1; the output matrix has gain 3 so logits have
//! clear gaps). The vocabulary is bytes: `<unk>`, `<s>`, `</s>`, the 256 byte tokens
//! `<0x00>`..`<0xFF>`, the word boundary `▁`, then unused fillers up to the shape's vocabulary size, so any text
//! tokenizes (byte fallback) and every token id decodes.

use std::io::{self, Write};

use half::{bf16, f16};

use crate::gguf::{Value, writer::Writer};
use crate::quant::{GgmlType, dequantize_row};

/// A model's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ctx: usize,
}

impl Shape {
    /// Small enough for the CPU twin, with every dimension a multiple of 256 (K-quant
    /// super-blocks), head_dim 64 and grouped-query attention.
    pub fn tiny() -> Shape {
        Shape {
            n_vocab: 512,
            n_embd: 256,
            n_ff: 512,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ctx: 256,
        }
    }

    /// Llama-2-7B: 32 layers, 4096 wide, 32 heads of 128, FFN 11008, vocabulary 32000.
    pub fn llama2_7b() -> Shape {
        Shape {
            n_vocab: 32000,
            n_embd: 4096,
            n_ff: 11008,
            n_layer: 32,
            n_head: 32,
            n_head_kv: 32,
            n_ctx: 4096,
        }
    }

    /// `tiny` or `7b`.
    pub fn named(name: &str) -> Option<Shape> {
        match name {
            "tiny" => Some(Shape::tiny()),
            "7b" | "llama2-7b" => Some(Shape::llama2_7b()),
            _ => None,
        }
    }
}

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub shape: Shape,
    /// The type of every matrix (norms are F32).
    pub ty: GgmlType,
    /// `attn_v` in another type (as llama.cpp's Q4_K_M keeps some in Q6_K), if any.
    pub v_ty: Option<GgmlType>,
    pub seed: u64,
}

/// The GGUF type names this module writes, as llama.cpp spells them.
pub fn type_named(name: &str) -> Option<GgmlType> {
    Some(match name.to_ascii_lowercase().as_str() {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        "bf16" => GgmlType::BF16,
        "q4_0" => GgmlType::Q4_0,
        "q4_1" => GgmlType::Q4_1,
        "q8_0" => GgmlType::Q8_0,
        "q4_k" => GgmlType::Q4_K,
        "q5_k" => GgmlType::Q5_K,
        "q6_k" => GgmlType::Q6_K,
        _ => return None,
    })
}

/// xorshift64: fast enough to stream gigabytes, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

/// Byte offsets of the f16 scale fields of one block: `d` (and `dmin`), which scale every
/// value of the block linearly.
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// Rows of random weights in `ty` whose values have RMS about `rms`.
struct Rows {
    ty: GgmlType,
    cols: usize,
    /// The f16 value every scale field gets.
    scale: f16,
    rms: f32,
}

impl Rows {
    fn new(ty: GgmlType, cols: usize, rms: f32, rng: &mut Rng) -> Rows {
        let mut r = Rows {
            ty,
            cols,
            scale: f16::ONE,
            rms,
        };
        if !scale_fields(ty).is_empty() {
            // Measure a row made with unit scales, then scale it to the target.
            let mut row = vec![0u8; ty.row_bytes(cols)];
            r.fill(&mut row, rng);
            let mut vals = vec![0f32; cols];
            dequantize_row(ty, &row, &mut vals);
            let got = (vals.iter().map(|v| f64::from(v * v)).sum::<f64>() / cols as f64).sqrt();
            r.scale = f16::from_f32((f64::from(rms) / got.max(1e-12)) as f32);
        }
        r
    }

    /// Fills whole rows.
    fn fill(&self, out: &mut [u8], rng: &mut Rng) {
        let amp = self.rms * 3f32.sqrt();
        match self.ty {
            GgmlType::F32 => out
                .chunks_exact_mut(4)
                .for_each(|c| c.copy_from_slice(&(amp * rng.f()).to_le_bytes())),
            GgmlType::F16 => out
                .chunks_exact_mut(2)
                .for_each(|c| c.copy_from_slice(&f16::from_f32(amp * rng.f()).to_le_bytes())),
            GgmlType::BF16 => out
                .chunks_exact_mut(2)
                .for_each(|c| c.copy_from_slice(&bf16::from_f32(amp * rng.f()).to_le_bytes())),
            ty => {
                rng.fill(out);
                let s = self.scale.to_le_bytes();
                for blk in out.chunks_exact_mut(ty.block_bytes()) {
                    for &at in scale_fields(ty) {
                        blk[at..at + 2].copy_from_slice(&s);
                    }
                }
            }
        }
        let _ = self.cols;
    }
}

/// The tensors of `spec` in file order: (name, [cols, rows], type, RMS of the values).
fn tensors(spec: &Spec) -> Vec<(String, Vec<u64>, GgmlType, f32)> {
    let s = &spec.shape;
    let hd = s.n_embd / s.n_head;
    let (q, kv) = (s.n_embd as u64, (s.n_head_kv * hd) as u64);
    let (d, ff, v) = (s.n_embd as u64, s.n_ff as u64, s.n_vocab as u64);
    let unit = |cols: u64| 1.0 / (cols as f32).sqrt();
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![d, v], spec.ty, 1.0),
        ("output_norm.weight".into(), vec![d], GgmlType::F32, 1.0),
        ("output.weight".into(), vec![d, v], spec.ty, 3.0 * unit(d)),
    ];
    for l in 0..s.n_layer {
        let n = |x: &str| format!("blk.{l}.{x}.weight");
        t.extend([
            (n("attn_norm"), vec![d], GgmlType::F32, 1.0),
            (n("attn_q"), vec![d, q], spec.ty, unit(d)),
            (n("attn_k"), vec![d, kv], spec.ty, unit(d)),
            (
                n("attn_v"),
                vec![d, kv],
                spec.v_ty.unwrap_or(spec.ty),
                unit(d),
            ),
            (n("attn_output"), vec![q, d], spec.ty, unit(q)),
            (n("ffn_norm"), vec![d], GgmlType::F32, 1.0),
            (n("ffn_gate"), vec![d, ff], spec.ty, unit(d)),
            (n("ffn_up"), vec![d, ff], spec.ty, unit(d)),
            (n("ffn_down"), vec![ff, d], spec.ty, unit(ff)),
        ]);
    }
    t
}

fn metadata(spec: &Spec) -> Writer {
    let s = &spec.shape;
    let u = |v: usize| Value::U32(v as u32);
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![2i32, 3, 3];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    // SentencePiece's word boundary, so spaces decode as spaces.
    tokens.push("\u{2581}".into());
    types.push(1);
    while tokens.len() < s.n_vocab {
        tokens.push(format!("<unused{}>", tokens.len()));
        types.push(5);
    }
    tokens.truncate(s.n_vocab);
    types.truncate(s.n_vocab);
    Writer::default()
        .kv("general.architecture", Value::Str("llama".into()))
        .kv("general.name", Value::Str("random".into()))
        .kv("general.alignment", Value::U32(32))
        .kv("llama.context_length", u(s.n_ctx))
        .kv("llama.embedding_length", u(s.n_embd))
        .kv("llama.block_count", u(s.n_layer))
        .kv("llama.feed_forward_length", u(s.n_ff))
        .kv("llama.attention.head_count", u(s.n_head))
        .kv("llama.attention.head_count_kv", u(s.n_head_kv))
        .kv("llama.rope.dimension_count", u(s.n_embd / s.n_head))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .kv("tokenizer.ggml.model", Value::Str("llama".into()))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::Str).collect()),
        )
        .kv(
            "tokenizer.ggml.scores",
            Value::Array(vec![Value::F32(0.0); types.len()]),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        )
        .kv("tokenizer.ggml.bos_token_id", Value::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(2))
        .kv("tokenizer.ggml.unknown_token_id", Value::U32(0))
        .kv("tokenizer.ggml.add_space_prefix", Value::Bool(false))
        .kv(
            "tokenizer.chat_template",
            Value::Str(
                "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
                    .into(),
            ),
        )
}

/// Checks that `spec`'s matrices have whole blocks of their types.
pub fn check(spec: &Spec) -> Result<(), String> {
    for (name, dims, ty, _) in tensors(spec) {
        if !(dims[0] as usize).is_multiple_of(ty.block_len()) {
            return Err(format!(
                "{name}: {} columns is not a multiple of {ty:?}'s block of {}",
                dims[0],
                ty.block_len()
            ));
        }
    }
    if spec.shape.n_head == 0 || !spec.shape.n_embd.is_multiple_of(spec.shape.n_head) {
        return Err("the embedding width must be a multiple of the head count".into());
    }
    Ok(())
}

/// Streams the file to `out` (rows generated a chunk at a time), calling `progress(done,
/// total)` with bytes; returns the bytes written.
pub fn write(
    spec: &Spec,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<u64> {
    check(spec).map_err(io::Error::other)?;
    let list = tensors(spec);
    let mut w = metadata(spec);
    for (name, dims, ty, _) in &list {
        w = w.declare(name, dims, *ty);
    }
    let header = w.header();
    out.write_all(&header)?;
    let sizes: Vec<u64> = list
        .iter()
        .map(|(_, dims, ty, _)| {
            (ty.row_bytes(dims[0] as usize) as u64 * dims.iter().skip(1).product::<u64>())
                .div_ceil(32)
                * 32
        })
        .collect();
    let total = header.len() as u64 + sizes.iter().sum::<u64>();
    let mut done = header.len() as u64;
    let mut rng = Rng(spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut buf = Vec::new();
    for ((_, dims, ty, rms), padded) in list.iter().zip(&sizes) {
        let cols = dims[0] as usize;
        let rows: usize = dims.iter().skip(1).product::<u64>().max(1) as usize;
        let rb = ty.row_bytes(cols);
        let rows_gen = Rows::new(*ty, cols, *rms, &mut rng);
        // Norm weights: around 1, not around 0.
        let norm = dims.len() == 1;
        let per = (4 << 20) / rb.max(1) + 1;
        let mut r = 0;
        while r < rows {
            let n = per.min(rows - r);
            buf.resize(n * rb, 0);
            if norm {
                for c in buf.chunks_exact_mut(4) {
                    c.copy_from_slice(&(1.0 + 0.2 * rng.f()).to_le_bytes());
                }
            } else {
                rows_gen.fill(&mut buf, &mut rng);
            }
            out.write_all(&buf)?;
            done += buf.len() as u64;
            progress(done, total);
            r += n;
        }
        let pad = (*padded - (rows * rb) as u64) as usize;
        out.write_all(&vec![0u8; pad])?;
        done += pad as u64;
    }
    progress(total, total);
    Ok(total)
}

/// The whole file in memory (small shapes).
pub fn bytes(spec: &Spec) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    write(spec, &mut v, &mut |_, _| {})?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Gguf;
    use crate::model::Model;
    use std::sync::Arc;

    #[test]
    fn tiny_files_load_in_every_format_with_the_asked_rms() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::F16,
            GgmlType::F32,
            GgmlType::BF16,
        ] {
            let spec = Spec {
                shape: Shape::tiny(),
                ty,
                v_ty: None,
                seed: 1,
            };
            let g = Arc::new(Gguf::from_bytes(bytes(&spec).unwrap()).unwrap());
            let m = Model::load(g.clone()).unwrap();
            assert_eq!(m.cfg.n_vocab, 512);
            assert_eq!(m.cfg.head_dim, 64);
            let (info, data) = g.tensor("blk.1.ffn_up.weight").unwrap();
            assert_eq!(info.ty, ty);
            let mut row = vec![0f32; 256];
            let rb = ty.row_bytes(256);
            dequantize_row(ty, &data[5 * rb..6 * rb], &mut row);
            let rms = (row.iter().map(|v| v * v).sum::<f32>() / 256.0).sqrt();
            // Target 1/16; random rows vary around it.
            assert!((0.03..0.12).contains(&rms), "{ty:?}: rms {rms}");
        }
    }

    #[test]
    fn the_byte_vocabulary_round_trips_text() {
        let spec = Spec {
            shape: Shape::tiny(),
            ty: GgmlType::Q8_0,
            v_ty: None,
            seed: 2,
        };
        let g = Gguf::from_bytes(bytes(&spec).unwrap()).unwrap();
        let t = crate::tokenizer::Tokenizer::from_gguf(&g).unwrap();
        let ids = t.encode("héllo, world", false, false);
        assert!(!ids.is_empty());
        assert_eq!(t.decode(&ids), "héllo, world");
    }
}

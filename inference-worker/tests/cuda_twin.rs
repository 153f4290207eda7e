//! Every CUDA kernel run on the CPU twin (feature `cuda-twin`) with the launch geometry the GPU
//! will use, against the CPU code for the same operation: `quant::vec_dot_scalar`,
//! `quant::dequantize_row`, `quant::Q8Act::quantize`, `numerics::silu`, `sampling::argmax`, and
//! in this file the CPU model's RMSNorm and RoPE formulas (private to `model.rs`) and a plain
//! f64 attention.
//!
//! Integer results (quantized activations, indices, dequantized weights) must be equal; float
//! results within 1e-5 relative to the larger of the value and the RMS of its output vector
//! (summation orders differ from the CPU's), f16 KV entries within half an f16 ulp more.
//!
//! `SWITCHYARD_TWIN_SANITIZE=1 cargo test -p switchyard-worker --features cuda-twin --test
//! cuda_twin` runs the same under ASan and UBSan.
#![cfg(feature = "cuda-twin")]

use half::f16;
use switchyard_worker::cuda::abi::{self, KvType};
use switchyard_worker::cuda::launch::{self, FORMATS, GEMV_COLS, Launch, MMQ_FORMATS};
use switchyard_worker::cuda::repack::Repacked;
use switchyard_worker::cuda::twin;
use switchyard_worker::numerics::silu;
use switchyard_worker::quant::{GgmlType, Q8Act, QK, dequantize_row, vec_dot_scalar};
use switchyard_worker::sampling;

// ---------------------------------------------------------------------------------------------
// Test data and "device" memory.

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1].
    fn f(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

/// Random GGUF rows; f16 scale fields hold small normal values, F16 rows values in [-1, 1].
fn random_rows(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    if ty == GgmlType::F16 {
        return (0..rows * cols)
            .flat_map(|_| f16::from_f32(rng.f()).to_le_bytes())
            .collect();
    }
    let mut b: Vec<u8> = (0..ty.row_bytes(cols) * rows)
        .map(|_| rng.next() as u8)
        .collect();
    let halves: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        _ => &[208],
    };
    for blk in b.chunks_exact_mut(ty.block_bytes()) {
        for &at in halves {
            let v = f16::from_f32(rng.f() * 0.05);
            blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    b
}

/// Memory the kernels read and write: 16-byte aligned, as device allocations are.
struct Buf {
    words: Vec<u128>,
    len: usize,
}
impl Buf {
    fn zeroed(bytes: usize) -> Buf {
        Buf {
            words: vec![0; bytes.div_ceil(16).max(1)],
            len: bytes,
        }
    }
    fn of<T: Copy>(v: &[T]) -> Buf {
        let bytes = std::mem::size_of_val(v);
        let mut b = Buf::zeroed(bytes);
        // SAFETY: both regions are at least `bytes` long and do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                v.as_ptr().cast::<u8>(),
                b.words.as_mut_ptr().cast::<u8>(),
                bytes,
            )
        };
        b
    }
    fn addr(&mut self) -> u64 {
        self.words.as_mut_ptr() as u64
    }
    fn get<T: Copy + Default>(&self) -> Vec<T> {
        let n = self.len / std::mem::size_of::<T>();
        let mut out = vec![T::default(); n];
        // SAFETY: `out` holds n * size_of::<T>() <= len bytes; plain-old-data types only.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.words.as_ptr().cast::<u8>(),
                out.as_mut_ptr().cast::<u8>(),
                n * std::mem::size_of::<T>(),
            )
        };
        out
    }
}

/// Quantized activations of `n_tok` tokens of `n` values, in the kernels' `Act` layout.
struct ActBufs {
    qs: Buf,
    d: Buf,
    isum: Buf,
    s: Buf,
    f: Buf,
    n: usize,
    n_tok: usize,
}
impl ActBufs {
    fn zeroed(n: usize, n_tok: usize) -> ActBufs {
        let nb = n / QK * n_tok;
        ActBufs {
            qs: Buf::zeroed(n * n_tok),
            d: Buf::zeroed(4 * nb),
            isum: Buf::zeroed(4 * nb),
            s: Buf::zeroed(4 * nb),
            f: Buf::zeroed(4 * n * n_tok),
            n,
            n_tok,
        }
    }
    fn of(acts: &[Q8Act]) -> ActBufs {
        let cat = |f: &dyn Fn(&Q8Act) -> Vec<u8>| acts.iter().flat_map(f).collect::<Vec<u8>>();
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        ActBufs {
            qs: Buf::of(&cat(&|a| a.qs.iter().map(|&q| q as u8).collect())),
            d: Buf::of(&cat(&|a| le(&a.d))),
            isum: Buf::of(&cat(&|a| {
                a.isum.iter().flat_map(|x| x.to_le_bytes()).collect()
            })),
            s: Buf::of(&cat(&|a| le(&a.s))),
            f: Buf::of(&cat(&|a| le(&a.f))),
            n: acts[0].f.len(),
            n_tok: acts.len(),
        }
    }
    fn abi(&mut self) -> abi::Act {
        abi::Act {
            qs: self.qs.addr(),
            d: self.d.addr(),
            isum: self.isum.addr(),
            s: self.s.addr(),
            f: self.f.addr(),
            n: self.n as u32,
            n_tok: self.n_tok as u32,
        }
    }
    /// Token `t` read back as a `Q8Act`.
    fn token(&self, t: usize) -> Q8Act {
        let nb = self.n / QK;
        let qs: Vec<u8> = self.qs.get();
        let (d, isum, s, f): (Vec<f32>, Vec<i32>, Vec<f32>, Vec<f32>) =
            (self.d.get(), self.isum.get(), self.s.get(), self.f.get());
        Q8Act {
            f: f[t * self.n..(t + 1) * self.n].to_vec(),
            qs: qs[t * self.n..(t + 1) * self.n]
                .iter()
                .map(|&q| q as i8)
                .collect(),
            d: d[t * nb..(t + 1) * nb].to_vec(),
            isum: isum[t * nb..(t + 1) * nb].to_vec(),
            s: s[t * nb..(t + 1) * nb].to_vec(),
        }
    }
}

fn quantized(x: &[f32]) -> Q8Act {
    let mut a = Q8Act::default();
    a.quantize(x);
    a
}

fn run<P: Copy>(l: &Launch, p: &P) {
    // SAFETY: every address in the parameter blocks of this file points into a live `Buf` of
    // the size the kernel uses for the launch's shape.
    unsafe { twin::launch(l, p) }.unwrap_or_else(|e| panic!("{e}"));
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| (x * x) as f64).sum::<f64>() / v.len().max(1) as f64).sqrt() as f32
}

/// Float results within 1e-5 of the larger of |want| and the RMS of `want`, plus `extra`
/// relative (f16 storage).
fn assert_close(got: &[f32], want: &[f32], extra: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = rms(want);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * w.abs().max(scale) + extra * w.abs();
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: {g} vs {w} (tolerance {tol})"
        );
    }
}

/// The quantized blocks of `a` are exactly what `Q8Act::quantize` makes of its f32 values.
fn assert_quantized_consistently(a: &Q8Act, what: &str) {
    let want = quantized(&a.f);
    assert_eq!(a.qs, want.qs, "{what}: qs");
    assert_eq!(a.d, want.d, "{what}: d");
    assert_eq!(a.isum, want.isum, "{what}: isum");
    assert_eq!(a.s, want.s, "{what}: s");
}

/// The CPU model's RMSNorm (`model.rs`): squares in f32 summed in f64, mean rounded to f32.
fn rms_norm(x: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
    let ms = (x.iter().map(|v| (v * v) as f64).sum::<f64>() / x.len() as f64) as f32;
    let s = 1.0 / (ms + eps).sqrt();
    x.iter().zip(g).map(|(v, w)| v * s * w).collect()
}

/// The CPU model's RoPE table for one position (`Model::rope_table`, no scaling factors).
fn rope_table(pos: usize, n_rot: usize, base: f32) -> Vec<(f32, f32)> {
    let theta_scale = base.powf(-2.0 / n_rot as f32);
    let mut theta = pos as f32;
    (0..n_rot / 2)
        .map(|_| {
            let (s, c) = theta.sin_cos();
            theta *= theta_scale;
            (c, s)
        })
        .collect()
}

/// The CPU model's rotation of adjacent pairs (`Model::rope`).
fn rope(v: &mut [f32], head_dim: usize, table: &[(f32, f32)]) {
    for head in v.chunks_exact_mut(head_dim) {
        for (i, &(c, s)) in table.iter().enumerate() {
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a.mul_add(c, -(b * s));
            head[2 * i + 1] = a.mul_add(s, b * c);
        }
    }
}

fn matvec(ty: GgmlType, data: &[u8], rows: usize, cols: usize, a: &Q8Act) -> Vec<f32> {
    let rb = ty.row_bytes(cols);
    (0..rows)
        .map(|r| vec_dot_scalar(ty, &data[r * rb..(r + 1) * rb], a))
        .collect()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn twin_has_exactly_the_kernels_the_launch_table_names() {
    assert_eq!(twin::kernels(), launch::all_kernels());
    let bad = Launch {
        kernel: "no_such_kernel".into(),
        grid: [1, 1, 1],
        block: [32, 1, 1],
    };
    // SAFETY: the kernel does not exist, nothing runs.
    assert!(unsafe { twin::launch(&bad, &0u32) }.is_err());
    let wrong_size = launch::argmax(1);
    // SAFETY: refused before running: the parameter block has the wrong size.
    assert_eq!(
        unsafe { twin::launch(&wrong_size, &0u32) },
        Err(twin::TwinError::ParamsSize("argmax".into()))
    );
}

#[test]
fn rmsnorm_quant_equals_cpu_norm_then_quantize() {
    let mut rng = Rng(11);
    let (n, n_tok, eps) = (576, 3, 1e-5f32);
    let x: Vec<f32> = (0..n * n_tok).map(|_| rng.f() * 3.0).collect();
    let g = rng.vec(n);
    for norm in [1u32, 0] {
        let (mut xb, mut gb) = (Buf::of(&x), Buf::of(&g));
        let mut out = ActBufs::zeroed(n, n_tok);
        let p = abi::NormParams {
            x: xb.addr(),
            g: gb.addr(),
            out: out.abi(),
            x_stride: n as u32,
            eps,
            norm,
            pad: 0,
        };
        run(&launch::rmsnorm_quant(n_tok), &p);
        for t in 0..n_tok {
            let xr = &x[t * n..(t + 1) * n];
            let want = if norm == 1 {
                quantized(&rms_norm(xr, &g, eps))
            } else {
                quantized(xr)
            };
            let got = out.token(t);
            assert_eq!(got.f, want.f, "norm {norm} token {t}: f32 values");
            assert_quantized_consistently(&got, "rmsnorm");
            assert_eq!(got.qs, want.qs);
        }
    }
}

#[test]
fn embed_equals_dequantize_row() {
    let mut rng = Rng(12);
    for (ty, _) in FORMATS {
        let (rows, cols) = (7, 512);
        let data = random_rows(ty, rows, cols, &mut rng);
        let m = Repacked::new(ty, rows, cols, &data).expect("repack");
        let mut w = Buf::of(&m.bytes);
        let ids = [3u32, 0, 6, 99]; // 99 is clamped to the last row, as the CPU model does
        let mut idb = Buf::of(&ids);
        let mut out = Buf::zeroed(4 * cols * ids.len());
        let p = abi::EmbedParams {
            w: m.mat(w.addr()),
            ids: idb.addr(),
            out: out.addr(),
            n_tok: ids.len() as u32,
            pad: 0,
        };
        run(&launch::embed(ty, ids.len()).expect("embed"), &p);
        let got: Vec<f32> = out.get();
        let rb = ty.row_bytes(cols);
        for (t, &id) in ids.iter().enumerate() {
            let r = (id as usize).min(rows - 1);
            let mut want = vec![0f32; cols];
            dequantize_row(ty, &data[r * rb..(r + 1) * rb], &mut want);
            assert_eq!(&got[t * cols..(t + 1) * cols], &want[..], "{ty:?} id {id}");
        }
    }
}

#[test]
fn gemv_equals_vec_dot_for_every_format_and_width() {
    let mut rng = Rng(13);
    // 18 super-blocks: more chunks than one unrolled pass of the warp; 14 rows: a partial block.
    let (rows, cols) = (14, 4608);
    for (ty, _) in FORMATS {
        let data = random_rows(ty, rows, cols, &mut rng);
        let m = Repacked::new(ty, rows, cols, &data).expect("repack");
        let mut w = Buf::of(&m.bytes);
        for nc in GEMV_COLS {
            // Fewer tokens than columns where possible: the unused columns are masked.
            let n_tok = if nc > 2 { nc - 1 } else { nc };
            let acts: Vec<Q8Act> = (0..n_tok).map(|_| quantized(&rng.vec(cols))).collect();
            let mut a = ActBufs::of(&acts);
            let base: Vec<f32> = rng.vec(rows * n_tok);
            for mode in [0u32, 1] {
                let mut out = Buf::of(&base);
                let p = abi::MatmulParams {
                    w: m.mat(w.addr()),
                    a: a.abi(),
                    out: out.addr(),
                    out_stride: rows as u32,
                    mode,
                };
                let l = launch::gemv(ty, rows, n_tok).expect("gemv");
                assert!(l.kernel.ends_with(&format!("_c{nc}")));
                run(&l, &p);
                let got: Vec<f32> = out.get();
                for (t, act) in acts.iter().enumerate() {
                    let mut want = matvec(ty, &data, rows, cols, act);
                    if mode == 1 {
                        for (wv, b) in want.iter_mut().zip(&base[t * rows..]) {
                            *wv += b;
                        }
                    }
                    let what = format!("{ty:?} c{nc} mode {mode} token {t}");
                    assert_close(&got[t * rows..(t + 1) * rows], &want, 0.0, &what);
                }
            }
        }
    }
}

#[test]
fn mmq_equals_vec_dot() {
    let mut rng = Rng(14);
    // 80 rows and 40 tokens: partial tiles both ways; 768 columns: 24 blocks, 6 stages.
    let (rows, cols, n_tok) = (80, 768, 40);
    let acts: Vec<Q8Act> = (0..n_tok).map(|_| quantized(&rng.vec(cols))).collect();
    let mut a = ActBufs::of(&acts);
    for ty in MMQ_FORMATS {
        let data = random_rows(ty, rows, cols, &mut rng);
        let m = Repacked::new(ty, rows, cols, &data).expect("repack");
        let mut w = Buf::of(&m.bytes);
        let mut out = Buf::zeroed(4 * rows * n_tok);
        let p = abi::MatmulParams {
            w: m.mat(w.addr()),
            a: a.abi(),
            out: out.addr(),
            out_stride: rows as u32,
            mode: 0,
        };
        run(&launch::mmq(ty, rows, n_tok).expect("mmq"), &p);
        let got: Vec<f32> = out.get();
        for (t, act) in acts.iter().enumerate() {
            let want = matvec(ty, &data, rows, cols, act);
            // Q4_1's offset term is per block in f16 on both sides; the others as the GEMV.
            let what = format!("{ty:?} token {t}");
            assert_close(&got[t * rows..(t + 1) * rows], &want, 0.0, &what);
        }
    }
}

/// A small paged KV layout: sequences' block tables over scattered physical blocks.
struct Pages {
    tables: Vec<u32>,
    stride: usize,
    n_blocks: usize,
}
impl Pages {
    fn new(lens: &[usize], rng: &mut Rng) -> Pages {
        let stride = lens
            .iter()
            .map(|l| l.div_ceil(abi::KV_BLOCK))
            .max()
            .unwrap_or(1);
        let n_blocks = stride * lens.len() + 3;
        // A permutation of the physical blocks, so no table is contiguous.
        let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        Pages {
            tables: ids[..stride * lens.len()].to_vec(),
            stride,
            n_blocks,
        }
    }
    fn slot(&self, seq: usize, pos: usize) -> (usize, usize) {
        (
            self.tables[seq * self.stride + pos / abi::KV_BLOCK] as usize,
            pos % abi::KV_BLOCK,
        )
    }
}

/// A layer's KV pool as the tests see it.
#[derive(Clone, Copy)]
struct Pool {
    kv: KvType,
    n_head_kv: usize,
    hd: usize,
}
impl Pool {
    fn bytes(&self, n_blocks: usize) -> usize {
        n_blocks * self.kv.block_bytes(self.n_head_kv, self.hd)
    }
    /// Byte offset of the K (which = 0) or V (1) tile of `head` in `block` (common.cuh).
    fn tile(&self, block: usize, which: usize, head: usize) -> usize {
        ((block * 2 + which) * self.n_head_kv + head) * self.kv.tile_bytes(self.hd)
    }
    /// K or V of `head` at (block, slot), dequantized.
    fn read(
        &self,
        pool: &[u8],
        (block, slot): (usize, usize),
        which: usize,
        head: usize,
    ) -> Vec<f32> {
        let (t, hd) = (self.tile(block, which, head), self.hd);
        (0..hd)
            .map(|d| match self.kv {
                KvType::F16 => {
                    let at = t + 2 * (slot * hd + d);
                    f16::from_le_bytes([pool[at], pool[at + 1]]).to_f32()
                }
                KvType::Q8_0 => {
                    let (q, s) = self.q8_at(pool, t, slot, d);
                    q as f32 * s
                }
            })
            .collect()
    }
    /// A q8_0 entry: (quant, scale) of dim `d` at `slot` of the tile at `t`.
    fn q8_at(&self, pool: &[u8], t: usize, slot: usize, d: usize) -> (i8, f32) {
        let hd = self.hd;
        let s = t + abi::KV_BLOCK * hd + 2 * (slot * (hd / 32) + d / 32);
        (
            pool[t + slot * hd + d] as i8,
            f16::from_le_bytes([pool[s], pool[s + 1]]).to_f32(),
        )
    }
    /// Random contents: f16 values in [-1, 1], or random quants with scales near 1/127.
    fn random(&self, n_blocks: usize, rng: &mut Rng) -> Vec<u8> {
        let mut b: Vec<u8> = (0..self.bytes(n_blocks))
            .map(|_| rng.next() as u8)
            .collect();
        let tile = self.kv.tile_bytes(self.hd);
        for t in b.chunks_exact_mut(tile) {
            let halves = match self.kv {
                KvType::F16 => &mut t[..],
                KvType::Q8_0 => &mut t[abi::KV_BLOCK * self.hd..],
            };
            let scale = self.kv == KvType::Q8_0;
            for h in halves.chunks_exact_mut(2) {
                let v = if scale {
                    (1.0 + rng.f() * 0.5) / 127.0
                } else {
                    rng.f()
                };
                h.copy_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        b
    }
    fn kv_ref(&self, bufs: &mut [Buf; 4], table_stride: usize) -> abi::KvRef {
        let [kv, pos, seq, tab] = bufs;
        abi::KvRef {
            kv: kv.addr(),
            pos: pos.addr(),
            tok_seq: seq.addr(),
            tables: tab.addr(),
            table_stride: table_stride as u32,
            n_head_kv: self.n_head_kv as u32,
            head_dim: self.hd as u32,
            q8: self.kv.flag(),
        }
    }
}

/// K or V as written: f16 within half an f16 ulp of `want`, q8_0 within one quantization step
/// of its 32-dim block (plus the float tolerance: the projections differ in the last bits).
fn assert_kv_close(kv: KvType, got: &[f32], want: &[f32], what: &str) {
    match kv {
        KvType::F16 => assert_close(got, want, 1.0 / 2048.0, what),
        KvType::Q8_0 => {
            let scale = rms(want);
            for (gb, wb) in got.chunks(32).zip(want.chunks(32)) {
                let step = wb.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for (g, w) in gb.iter().zip(wb) {
                    assert!(
                        (g - w).abs() <= step * 1.01 + 1e-5 * scale,
                        "{what}: {g} vs {w} (step {step})"
                    );
                }
            }
        }
    }
}

#[test]
fn qkv_equals_matvec_rope_and_fills_the_pages() {
    let mut rng = Rng(15);
    let (hd, n_head, n_head_kv, cols) = (64, 2, 1, 256);
    let (q_dim, kv_dim) = (n_head * hd, n_head_kv * hd);
    let rows = q_dim + 2 * kv_dim;
    // Three tokens: sequence 0 at position 17, sequence 1 at positions 5 and 6.
    let (tok_seq, pos) = ([0u32, 1, 1], [17u32, 5, 6]);
    let pages = Pages::new(&[18, 7], &mut rng);
    let acts: Vec<Q8Act> = (0..3).map(|_| quantized(&rng.vec(cols))).collect();
    let mut cases: Vec<(GgmlType, usize, KvType)> = FORMATS
        .iter()
        .map(|&(ty, _)| (ty, hd, KvType::F16))
        .collect();
    // Partial rotation (n_rot < head_dim) once; the q8_0 pool for two formats.
    cases.push((GgmlType::Q4_0, hd / 2, KvType::F16));
    cases.push((GgmlType::Q8_0, hd, KvType::Q8_0));
    cases.push((GgmlType::Q6_K, hd / 2, KvType::Q8_0));
    for (ty, n_rot, kvt) in cases {
        let pool = Pool {
            kv: kvt,
            n_head_kv,
            hd,
        };
        let data = random_rows(ty, rows, cols, &mut rng);
        let rope_tab: Vec<f32> = (0..32)
            .flat_map(|p| rope_table(p, n_rot, 10000.0))
            .flat_map(|(c, s)| [c, s])
            .collect();
        // Two launches when V has its own format: [Wq; Wk] and then Wv with row0.
        let parts: Vec<(usize, usize)> = if ty == GgmlType::Q4_K {
            vec![(0, q_dim + kv_dim), (q_dim + kv_dim, kv_dim)]
        } else {
            vec![(0, rows)]
        };
        let mut a = ActBufs::of(&acts);
        let mut bufs = [
            Buf::zeroed(pool.bytes(pages.n_blocks)),
            Buf::of(&pos),
            Buf::of(&tok_seq),
            Buf::of(&pages.tables),
        ];
        let mut ropeb = Buf::of(&rope_tab);
        let mut q_out = Buf::zeroed(4 * q_dim * 3);
        let rb = ty.row_bytes(cols);
        for (row0, n) in parts {
            let m = Repacked::new(ty, n, cols, &data[row0 * rb..(row0 + n) * rb]).expect("repack");
            let mut w = Buf::of(&m.bytes);
            let p = abi::QkvParams {
                w: m.mat(w.addr()),
                a: a.abi(),
                o: abi::QkvOut {
                    kv: pool.kv_ref(&mut bufs, pages.stride),
                    q_out: q_out.addr(),
                    rope: ropeb.addr(),
                    q_dim: q_dim as u32,
                    kv_dim: kv_dim as u32,
                    n_rot: n_rot as u32,
                    pad: 0,
                },
                row0: row0 as u32,
                pad: 0,
            };
            run(&launch::qkv(ty, n, 3).expect("qkv"), &p);
        }
        let (got_q, got_kv): (Vec<f32>, Vec<u8>) = (q_out.get(), bufs[0].get());
        for t in 0..3 {
            let mut y = matvec(ty, &data, rows, cols, &acts[t]);
            let tab = rope_table(pos[t] as usize, n_rot, 10000.0);
            rope(&mut y[..q_dim], hd, &tab);
            rope(&mut y[q_dim..q_dim + kv_dim], hd, &tab);
            let what = format!("{ty:?} n_rot {n_rot} {kvt:?} token {t}");
            assert_close(
                &got_q[t * q_dim..(t + 1) * q_dim],
                &y[..q_dim],
                0.0,
                &format!("{what} q"),
            );
            let at = pages.slot(tok_seq[t] as usize, pos[t] as usize);
            for which in 0..2 {
                let got: Vec<f32> = (0..n_head_kv)
                    .flat_map(|h| pool.read(&got_kv, at, which, h))
                    .collect();
                let want = &y[q_dim + which * kv_dim..q_dim + (which + 1) * kv_dim];
                assert_kv_close(kvt, &got, want, &format!("{what} kv {which}"));
            }
        }
    }
}

#[test]
fn gateup_equals_silu_gate_times_up_quantized() {
    let mut rng = Rng(16);
    let (n_ff, cols, n_tok) = (64, 512, 3);
    let acts: Vec<Q8Act> = (0..n_tok).map(|_| quantized(&rng.vec(cols))).collect();
    for (ty, _) in FORMATS {
        let data = random_rows(ty, 2 * n_ff, cols, &mut rng);
        let m = Repacked::new(ty, 2 * n_ff, cols, &data).expect("repack");
        let mut w = Buf::of(&m.bytes);
        let mut a = ActBufs::of(&acts);
        let mut out = ActBufs::zeroed(n_ff, n_tok);
        let p = abi::GateUpParams {
            w: m.mat(w.addr()),
            a: a.abi(),
            out: out.abi(),
        };
        run(&launch::gateup(ty, n_ff, n_tok).expect("gateup"), &p);
        for (t, act) in acts.iter().enumerate() {
            let y = matvec(ty, &data, 2 * n_ff, cols, act);
            let want: Vec<f32> = (0..n_ff).map(|i| silu(y[i]) * y[n_ff + i]).collect();
            let got = out.token(t);
            assert_close(&got.f, &want, 0.0, &format!("{ty:?} token {t}"));
            assert_quantized_consistently(&got, "gateup");
        }
    }
}

#[test]
fn rope_kv_after_the_gemm_equals_cpu_rope_exactly() {
    let mut rng = Rng(19);
    let (hd, n_head, n_head_kv) = (128, 4, 2);
    let (q_dim, kv_dim) = (n_head * hd, n_head_kv * hd);
    let rows = q_dim + 2 * kv_dim;
    let (tok_seq, pos) = ([0u32, 0, 1], [30u32, 31, 2]);
    let pages = Pages::new(&[32, 3], &mut rng);
    let n_rot = 96;
    let y: Vec<f32> = (0..3 * rows).map(|_| rng.f() * 4.0).collect();
    let rope_tab: Vec<f32> = (0..32)
        .flat_map(|p| rope_table(p, n_rot, 500000.0))
        .flat_map(|(c, s)| [c, s])
        .collect();
    for kvt in [KvType::F16, KvType::Q8_0] {
        let pool = Pool {
            kv: kvt,
            n_head_kv,
            hd,
        };
        let (mut yb, mut ropeb) = (Buf::of(&y), Buf::of(&rope_tab));
        let mut bufs = [
            Buf::zeroed(pool.bytes(pages.n_blocks)),
            Buf::of(&pos),
            Buf::of(&tok_seq),
            Buf::of(&pages.tables),
        ];
        let mut q_out = Buf::zeroed(4 * q_dim * 3);
        let p = abi::RopeKvParams {
            y: yb.addr(),
            o: abi::QkvOut {
                kv: pool.kv_ref(&mut bufs, pages.stride),
                q_out: q_out.addr(),
                rope: ropeb.addr(),
                q_dim: q_dim as u32,
                kv_dim: kv_dim as u32,
                n_rot: n_rot as u32,
                pad: 0,
            },
            y_stride: rows as u32,
            n_tok: 3,
        };
        run(&launch::rope_kv(rows, 3), &p);
        let (got_q, got_kv): (Vec<f32>, Vec<u8>) = (q_out.get(), bufs[0].get());
        for t in 0..3 {
            let mut want = y[t * rows..(t + 1) * rows].to_vec();
            let tab = rope_table(pos[t] as usize, n_rot, 500000.0);
            rope(&mut want[..q_dim], hd, &tab);
            rope(&mut want[q_dim..q_dim + kv_dim], hd, &tab);
            // The same inputs and the same FMAs: equal, not close.
            assert_eq!(
                &got_q[t * q_dim..(t + 1) * q_dim],
                &want[..q_dim],
                "q token {t}"
            );
            let (block, slot) = pages.slot(tok_seq[t] as usize, pos[t] as usize);
            for which in 0..2 {
                for h in 0..n_head_kv {
                    let from = q_dim + which * kv_dim + h * hd;
                    let w = &want[from..from + hd];
                    let what = format!("{kvt:?} kv {which} head {h} token {t}");
                    match kvt {
                        KvType::F16 => {
                            let got = pool.read(&got_kv, (block, slot), which, h);
                            let w16: Vec<f32> =
                                w.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
                            assert_eq!(got, w16, "{what}");
                        }
                        KvType::Q8_0 => {
                            // Quantized per 32 dims exactly as `Q8Act::quantize` does.
                            let q = quantized(w);
                            let tile = pool.tile(block, which, h);
                            for d in 0..hd {
                                let (qv, sc) = pool.q8_at(&got_kv, tile, slot, d);
                                assert_eq!((qv, sc), (q.qs[d], q.d[d / 32]), "{what} dim {d}");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn swiglu_quant_equals_cpu_silu_and_quantize_exactly() {
    let mut rng = Rng(20);
    let (n_ff, n_tok) = (352, 3);
    let y: Vec<f32> = (0..n_tok * 2 * n_ff).map(|_| rng.f() * 12.0).collect();
    let mut yb = Buf::of(&y);
    let mut out = ActBufs::zeroed(n_ff, n_tok);
    let p = abi::SwigluParams {
        y: yb.addr(),
        out: out.abi(),
        y_stride: (2 * n_ff) as u32,
        pad: 0,
    };
    run(&launch::swiglu_quant(n_ff, n_tok), &p);
    for t in 0..n_tok {
        let yt = &y[t * 2 * n_ff..(t + 1) * 2 * n_ff];
        let h: Vec<f32> = (0..n_ff).map(|i| silu(yt[i]) * yt[n_ff + i]).collect();
        let want = quantized(&h);
        let got = out.token(t);
        // `sy_expf` is `numerics::v_expf` operation for operation: bit-identical SiLU.
        assert_eq!(got.f, want.f, "token {t}");
        assert_eq!(
            (got.qs, got.d, got.isum, got.s),
            (want.qs, want.d, want.isum, want.s)
        );
    }
}

/// softmax(q·k * scale)·v over positions 0..=pos, in f64.
fn attention_reference(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], scale: f32) -> Vec<f32> {
    let s: Vec<f64> = keys
        .iter()
        .map(|k| {
            q.iter()
                .zip(k)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
                * scale as f64
        })
        .collect();
    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
    let sum: f64 = e.iter().sum();
    (0..q.len())
        .map(|d| {
            (e.iter()
                .zip(values)
                .map(|(w, v)| w * v[d] as f64)
                .sum::<f64>()
                / sum) as f32
        })
        .collect()
}

#[test]
fn paged_flash_decode_equals_softmax_attention() {
    let mut rng = Rng(17);
    // (head_dim, heads, KV heads): MHA, groups of 2 and 4, and 3 (one head per block).
    let shapes = [(128, 2, 2), (64, 4, 2), (128, 8, 2), (64, 6, 2)];
    for (hd, n_head, n_head_kv) in shapes {
        for kvt in [KvType::F16, KvType::Q8_0] {
            let pool = Pool {
                kv: kvt,
                n_head_kv,
                hd,
            };
            let lens = [37usize, 5];
            let pages = Pages::new(&lens, &mut rng);
            // Tokens: sequence 0 at 36 and 20 (two queries of one sequence), sequence 1 at 4.
            let (tok_seq, pos) = ([0u32, 0, 1], [36u32, 20, 4]);
            let n_tok = 3;
            let data = pool.random(pages.n_blocks, &mut rng);
            let q: Vec<f32> = (0..n_tok * n_head * hd).map(|_| rng.f()).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            for n_split in [1u32, 3] {
                let per = lens[0].div_ceil(abi::KV_BLOCK).div_ceil(n_split as usize) as u32;
                let mut qb = Buf::of(&q);
                let mut bufs = [
                    Buf::of(&data),
                    Buf::of(&pos),
                    Buf::of(&tok_seq),
                    Buf::of(&pages.tables),
                ];
                let mut part = Buf::zeroed(4 * n_tok * n_head * n_split as usize * (hd + 2));
                let p = abi::AttnParams {
                    q: qb.addr(),
                    kv: pool.kv_ref(&mut bufs, pages.stride),
                    part: part.addr(),
                    n_head: n_head as u32,
                    n_split,
                    blocks_per_split: per,
                    scale,
                };
                let shape = launch::AttnShape {
                    head_dim: hd,
                    n_head,
                    n_head_kv,
                    kv: kvt,
                };
                run(&launch::attention(shape, n_tok, n_split).expect("attn"), &p);
                let mut out = ActBufs::zeroed(n_head * hd, n_tok);
                let c = abi::CombineParams {
                    part: part.addr(),
                    out: out.abi(),
                    n_head: n_head as u32,
                    n_split,
                };
                run(&launch::combine(hd, n_head, n_tok).expect("combine"), &c);
                let group = n_head / n_head_kv;
                for t in 0..n_tok {
                    let got = out.token(t);
                    assert_quantized_consistently(&got, "combine");
                    let mut want = Vec::new();
                    for h in 0..n_head {
                        let read = |which: usize| -> Vec<Vec<f32>> {
                            (0..=pos[t] as usize)
                                .map(|p| {
                                    let at = pages.slot(tok_seq[t] as usize, p);
                                    pool.read(&data, at, which, h / group)
                                })
                                .collect()
                        };
                        let qh = &q[(t * n_head + h) * hd..(t * n_head + h + 1) * hd];
                        // A q8_0 K is read with q quantized as the CPU backend (and
                        // llama.cpp) quantize it: the reference takes q's 8-bit values.
                        let qh: Vec<f32> = match kvt {
                            KvType::F16 => qh.to_vec(),
                            KvType::Q8_0 => {
                                let a = quantized(qh);
                                (0..hd).map(|i| a.qs[i] as f32 * a.d[i / 32]).collect()
                            }
                        };
                        want.extend(attention_reference(&qh, &read(0), &read(1), scale));
                    }
                    let what = format!(
                        "hd {hd} heads {n_head}/{n_head_kv} {kvt:?} splits {n_split} token {t}"
                    );
                    assert_close(&got.f, &want, 0.0, &what);
                }
            }
        }
    }
}

#[test]
fn argmax_and_topk_equal_a_sort() {
    let mut rng = Rng(18);
    let (rows, n, stride) = (3, 1000, 1003);
    let mut x: Vec<f32> = (0..rows * stride).map(|_| rng.f() * 10.0).collect();
    // Ties, including at the top and around the k-th value; -0 and +0.
    x[5] = 50.0;
    x[700] = 50.0;
    for i in (100..900).step_by(97) {
        x[stride + i] = 1.25;
    }
    x[2 * stride + 3] = -0.0;
    x[2 * stride + 4] = 0.0;
    let mut xb = Buf::of(&x);
    for k in [1u32, 5, 40, 256] {
        let mut vals = Buf::zeroed(4 * rows * k as usize);
        let mut idx = Buf::zeroed(4 * rows * k as usize);
        let p = abi::TopKParams {
            x: xb.addr(),
            out_val: vals.addr(),
            out_idx: idx.addr(),
            n: n as u32,
            stride: stride as u32,
            k,
            pad: 0,
        };
        run(&launch::topk(rows), &p);
        let (gv, gi): (Vec<f32>, Vec<u32>) = (vals.get(), idx.get());
        for r in 0..rows {
            let row = &x[r * stride..r * stride + n];
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            let k = k as usize;
            assert_eq!(&gi[r * k..(r + 1) * k], &order[..k], "top-{k} row {r}");
            let want_v: Vec<f32> = order[..k].iter().map(|&i| row[i as usize]).collect();
            assert_eq!(
                &gv[r * k..(r + 1) * k],
                &want_v[..],
                "top-{k} row {r} values"
            );
        }
        if k == 1 {
            let mut av = Buf::zeroed(4 * rows);
            let mut ai = Buf::zeroed(4 * rows);
            let p = abi::TopKParams {
                out_val: av.addr(),
                out_idx: ai.addr(),
                ..p
            };
            run(&launch::argmax(rows), &p);
            let got: Vec<u32> = ai.get();
            for r in 0..rows {
                let row = &x[r * stride..r * stride + n];
                assert_eq!(got[r], sampling::argmax(row), "argmax row {r}");
            }
        }
    }
}

#[test]
fn sample_picks_what_the_cpu_sampler_picks() {
    use sampling::SamplingParams;
    use switchyard_worker::cuda::forward::sample_row;
    let mut rng = Rng(19);
    let n = 300;
    let base = SamplingParams {
        temperature: 0.8,
        ..Default::default()
    };
    // Every way `sampling::sample` cuts, alone and together, and greedy; temperatures that
    // flatten and sharpen.
    let params: Vec<SamplingParams> = vec![
        base.clone(),
        SamplingParams {
            temperature: 0.0,
            ..base.clone()
        },
        SamplingParams {
            temperature: 3.0,
            ..base.clone()
        },
        SamplingParams {
            temperature: 0.05,
            ..base.clone()
        },
        SamplingParams {
            top_k: 1,
            ..base.clone()
        },
        SamplingParams {
            top_k: 40,
            ..base.clone()
        },
        SamplingParams {
            top_p: 0.9,
            ..base.clone()
        },
        SamplingParams {
            top_p: 0.3,
            temperature: 1.5,
            ..base.clone()
        },
        SamplingParams {
            min_p: 0.05,
            ..base.clone()
        },
        SamplingParams {
            top_k: 50,
            top_p: 0.8,
            min_p: 0.02,
            ..base.clone()
        },
        SamplingParams {
            top_k: 500,
            top_p: 0.95,
            ..base.clone()
        },
    ];
    // Rows: spread logits, a peaked one, and one with ties at the top and around the cuts.
    let mut rows: Vec<Vec<f32>> = (0..2)
        .map(|r| (0..n).map(|_| rng.f() * (4.0 + 6.0 * r as f32)).collect())
        .collect();
    let mut tied: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 * 0.5).collect();
    tied[3] = 9.0;
    tied[200] = 9.0;
    rows.push(tied);
    let stride = n + 5;
    let mut checked = 0;
    let mut distinct = std::collections::HashSet::new();
    for row in &rows {
        for p in &params {
            // 6 draws of one configuration in one launch, one per row of the logits.
            let draws = 6;
            let uniforms: Vec<f32> = (0..draws)
                .map(|i| {
                    if i == 0 {
                        0.0
                    } else if i == 1 {
                        1.0 - f32::EPSILON
                    } else {
                        ((rng.f() + 1.0) / 2.0).min(1.0 - f32::EPSILON)
                    }
                })
                .collect();
            let mut x = vec![0f32; draws * stride];
            for d in 0..draws {
                x[d * stride..d * stride + n].copy_from_slice(row);
            }
            let args: Vec<abi::SampleRow> = uniforms.iter().map(|&u| sample_row(p, u)).collect();
            let (mut xb, mut ab) = (Buf::of(&x), Buf::of(&args));
            let mut out = Buf::zeroed(4 * draws);
            let sp = abi::SampleParams {
                x: xb.addr(),
                rows: ab.addr(),
                out_idx: out.addr(),
                n: n as u32,
                stride: stride as u32,
            };
            run(&launch::sample(draws), &sp);
            let got: Vec<u32> = out.get();
            for (d, &u) in uniforms.iter().enumerate() {
                let want = sampling::sample(row, p, &[], u);
                assert_eq!(got[d], want, "{p:?} uniform {u}");
                distinct.insert((checked / (draws * params.len()), want));
            }
            checked += draws;
        }
    }
    // The draws did draw: many different tokens, not one per row.
    assert!(distinct.len() > 20, "{} distinct tokens", distinct.len());
}

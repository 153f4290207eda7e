//! The CPU's building blocks of the forward pass, spread over the backend's [`Team`]:
//! matrix times activations in the weights' own formats, RMSNorm, activation quantization,
//! RoPE, and the chunked parallel loop they share.

use std::sync::Mutex;

use super::team::Team;
use crate::model::{Model, Weight};
use crate::quant::{Q8Act, vec_dot_rows, vec_dot_tile};

/// `f(index, chunk)` over `size`-element chunks of `data`, across the team.
pub(crate) fn chunks<T: Send>(
    team: &Team,
    data: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if team.threads() == 1 {
        data.chunks_mut(size.max(1))
            .enumerate()
            .for_each(|(i, c)| f(i, c));
        return;
    }
    // Each chunk behind its own (uncontended) lock: a task takes exactly its chunk.
    let parts: Vec<Mutex<&mut [T]>> = data.chunks_mut(size.max(1)).map(Mutex::new).collect();
    team.run(parts.len(), &|i| {
        let mut c = parts[i].lock().unwrap_or_else(|p| p.into_inner());
        f(i, &mut c);
    });
}

/// Rows of `rows` per task: a few tasks per member keep the team balanced without paying
/// per-task overhead for every row, and a task's weights stay in cache while every token of
/// the step uses them.
fn rows_per_task(team: &Team, rows: usize) -> usize {
    (rows / (team.threads() * 4)).clamp(16, 512)
}

/// `out[t][r] = W[r] · acts[t]` for every token `t`.
pub(crate) fn matmul(team: &Team, m: &Model, w: &Weight, acts: &[Q8Act], out: &mut [f32]) {
    matmul_each(team, m, &mut [(w, out)], acts);
}

/// [`matmul`] of several weights by the same activations, as one parallel loop: one fork
/// and join instead of one per matrix (a token of a small model is hundreds of matrices, each
/// a few microseconds).
pub(crate) fn matmul_each(
    team: &Team,
    m: &Model,
    jobs: &mut [(&Weight, &mut [f32])],
    acts: &[Q8Act],
) {
    let n = acts.len();
    if n == 0 {
        return;
    }
    let total: usize = jobs.iter().map(|(w, _)| w.rows).sum();
    let block = rows_per_task(team, total);
    // Several tokens: each task fills a row-major (rows × tokens) tile, transposed after.
    let mut tiles: Vec<Vec<f32>> = if n > 1 {
        jobs.iter().map(|(w, _)| vec![0f32; w.rows * n]).collect()
    } else {
        Vec::new()
    };
    {
        let mut tasks: Vec<(&Weight, usize, &mut [f32])> = Vec::new();
        if n == 1 {
            for (w, out) in jobs.iter_mut() {
                for (bi, o) in out[..w.rows].chunks_mut(block).enumerate() {
                    tasks.push((w, bi * block, o));
                }
            }
        } else {
            for ((w, _), tile) in jobs.iter().zip(tiles.iter_mut()) {
                for (bi, o) in tile.chunks_mut(block * n).enumerate() {
                    tasks.push((w, bi * block, o));
                }
            }
        }
        let run = |(w, first, o): &mut (&Weight, usize, &mut [f32])| {
            if n == 1 {
                vec_dot_rows(w.ty, m.rows(w), w.row_bytes, *first, &acts[0], o);
            } else {
                vec_dot_tile(w.ty, m.rows(w), w.row_bytes, *first, acts, o);
            }
        };
        if team.threads() == 1 {
            tasks.iter_mut().for_each(run);
        } else {
            let tasks: Vec<Mutex<(&Weight, usize, &mut [f32])>> =
                tasks.into_iter().map(Mutex::new).collect();
            team.run(tasks.len(), &|i| {
                run(&mut tasks[i].lock().unwrap_or_else(|p| p.into_inner()));
            });
        }
    }
    for ((w, out), tile) in jobs.iter_mut().zip(&tiles) {
        for r in 0..w.rows {
            for t in 0..n {
                out[t * w.rows + r] = tile[r * n + t];
            }
        }
    }
}

/// Row-wise RMSNorm of `x` (rows of `d`) scaled by `w`, into `out`.
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], d: usize) {
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        // As ggml: squares in f32, summed in f64, the mean rounded to f32.
        let ms = (xr.iter().map(|v| (v * v) as f64).sum::<f64>() / d as f64) as f32;
        let s = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * s * g;
        }
    }
}

/// Quantizes each row of `x` (rows of `d`) into `acts`.
pub(crate) fn quantize_all(team: &Team, x: &[f32], d: usize, acts: &mut [Q8Act]) {
    // A few rows are not worth a fork and join.
    if team.threads() == 1 || acts.len() < 4 {
        acts.iter_mut()
            .zip(x.chunks(d))
            .for_each(|(a, r)| a.quantize(r));
        return;
    }
    let per = acts.len().div_ceil(team.threads() * 2);
    chunks(team, acts, per, |i, a| {
        for (k, act) in a.iter_mut().enumerate() {
            let r = i * per + k;
            act.quantize(&x[r * d..(r + 1) * d]);
        }
    });
}

/// `Model::rope` with FMA instructions where the CPU has them (`mul_add` is otherwise a
/// library call; the results are the same).
pub(crate) fn rope(m: &Model, v: &mut [f32], table: &[(f32, f32)]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the feature the function enables.
        unsafe { rope_fma(m, v, table) };
        return;
    }
    m.rope(v, table);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn rope_fma(m: &Model, v: &mut [f32], table: &[(f32, f32)]) {
    m.rope(v, table);
}

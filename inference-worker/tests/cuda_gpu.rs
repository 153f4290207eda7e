//! The CUDA backend on a real GPU (feature `cuda`). The GPU tests run only with
//! `SWITCHYARD_GPU=1` and otherwise print that they skipped; `scripts/gpu_acceptance.sh` runs
//! this file's test binary on a GPU machine.
//!
//! - model parity: the GPU forward (CUDA graphs on) against the CPU backend on tiny random
//!   models in every format and both KV cache types: the same greedy tokens, close logits;
//! - kernel parity (with `cuda-twin` too): the GPU and the CPU twin run the same kernels with
//!   the same roundings (`cuda/README.md`), so their logits must agree to float noise; this is
//!   what checks the tensor-core GEMM's fragment layout and the inline PTX;
//! - sampling: the `sample` kernel on the GPU picks `sampling::sample`'s token for seeded draws
//!   of every cut over a 32000-token vocabulary (bit-exact: fixed-point weights);
//! - without a driver: `--device cuda:0` exits non-zero with a message naming the device and
//!   the missing driver, and no panic (runs wherever libcuda is absent, e.g. CI).
#![cfg(feature = "cuda")]
// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used)]

#[path = "support/gpu.rs"]
mod support;

use support::{FORMATS, greedy_run};
use switchyard_worker::backend::KvCacheType;
use switchyard_worker::cuda::driver::{CudaGpu, probe};
use switchyard_worker::synth::{Shape, Spec};

fn gpu_or_skip(what: &str) -> Option<CudaGpu> {
    if std::env::var("SWITCHYARD_GPU").as_deref() != Ok("1") {
        eprintln!("{what}: skipped (set SWITCHYARD_GPU=1 on a machine with an NVIDIA GPU)");
        return None;
    }
    Some(CudaGpu::new(0).unwrap_or_else(|e| panic!("SWITCHYARD_GPU=1 but cuda:0: {e}")))
}

fn spec(ty: switchyard_worker::quant::GgmlType, seed: u64) -> Spec {
    Spec {
        shape: Shape::tiny(),
        ty,
        v_ty: None,
        seed,
    }
}

#[test]
fn gpu_forward_matches_the_cpu_backend_in_every_format() {
    if gpu_or_skip("gpu_forward_matches_the_cpu_backend_in_every_format").is_none() {
        return;
    }
    for ty in FORMATS {
        for kv in [KvCacheType::F16, KvCacheType::Q8_0] {
            greedy_run(&spec(ty, 3), kv, 8, CudaGpu::new(0).unwrap());
        }
    }
    let mixed = Spec {
        v_ty: Some(switchyard_worker::quant::GgmlType::Q6_K),
        ..spec(switchyard_worker::quant::GgmlType::Q4_K, 4)
    };
    greedy_run(&mixed, KvCacheType::F16, 8, CudaGpu::new(0).unwrap());
}

#[cfg(feature = "cuda-twin")]
#[test]
fn gpu_kernels_agree_with_the_twin() {
    use switchyard_worker::backend::{Backend, Solo, Want};
    use switchyard_worker::cuda::twin::TwinGpu;
    use switchyard_worker::kv::BlockAllocator;
    if gpu_or_skip("gpu_kernels_agree_with_the_twin").is_none() {
        return;
    }
    for ty in FORMATS {
        let s = spec(ty, 7);
        let (_, mut twin) = support::backends(&s, KvCacheType::F16, 64, TwinGpu::new(1 << 30));
        let (_, mut gpu) = support::backends(&s, KvCacheType::F16, 64, CudaGpu::new(0).unwrap());
        // 40 tokens (the GEMM path), then 3 single tokens (the GEMV path).
        let p = support::prompt(40, 5);
        let mut outs = Vec::new();
        for be in [&mut twin as &mut dyn Backend, &mut gpu] {
            let mut a = BlockAllocator::new(be.kv_blocks());
            let mut solo = Solo::default();
            let mut all = solo.feed(be, &mut a, &p, Want::All).unwrap();
            for t in [7u32, 8, 9] {
                all.extend(solo.feed(be, &mut a, &[t], Want::Last).unwrap());
            }
            outs.push(all);
        }
        let (t, g) = (&outs[0], &outs[1]);
        assert_eq!(t.len(), g.len());
        let scale = t.iter().map(|v| v.abs()).fold(0f32, f32::max);
        let diff = t
            .iter()
            .zip(g)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let equal = t.iter().zip(g).filter(|(a, b)| a == b).count();
        eprintln!(
            "{ty:?}: GPU vs twin: {equal} of {} logits bit-equal, largest difference {diff}",
            t.len()
        );
        assert!(
            diff <= 1e-4 * scale,
            "{ty:?}: GPU and twin differ by {diff} (scale {scale})"
        );
    }
}

#[test]
fn cuda_device_without_a_driver_is_a_clear_error() {
    if probe(0).is_ok() {
        eprintln!(
            "cuda_device_without_a_driver_is_a_clear_error: skipped (this machine has a GPU)"
        );
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard-worker"))
        .args(["--model", "/nonexistent.gguf", "--device", "cuda:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--device cuda:0"), "{err}");
    assert!(
        err.contains("no CUDA driver") || err.contains("cuInit"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn gpu_sampling_picks_what_the_cpu_sampler_picks() {
    let Some(mut dev) = gpu_or_skip("gpu_sampling_picks_what_the_cpu_sampler_picks") else {
        return;
    };
    // Logits of a 32000-token vocabulary (Llama's), a different spread per row.
    let draws = support::seeded_draws(48, 11);
    let rows: Vec<Vec<f32>> = (0..draws.len())
        .map(|r| {
            (0..32000u32)
                .map(|i| {
                    ((i.wrapping_mul(2654435761) >> 7) % 1000) as f32 * 0.01 * (1 + r % 4) as f32
                })
                .collect()
        })
        .collect();
    let got = support::device_sample(&mut dev, &rows, &draws);
    for (r, (p, u)) in draws.iter().enumerate() {
        let want = switchyard_worker::sampling::sample(&rows[r], p, &[], *u);
        assert_eq!(got[r], want, "row {r}: {p:?} uniform {u}");
    }
}

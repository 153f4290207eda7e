//! The CUDA backend's whole forward pass (`cuda::forward`, graphs aside) on the CPU twin of
//! the kernels, against the CPU backend on tiny random-weight models in every weight format
//! and both KV cache types: the same greedy tokens, and close logits, through prefill (the
//! int8 GEMM path, > 8 tokens), short prompts (the fused GEMV path), batched decode padded
//! to a bucket, and steps larger than the launch capacity (run in pieces); and seeded sampling
//! on the device, which returns only token ids and picks the host sampler's tokens.
//!
//! Run with `cargo test -p switchyard-worker --features cuda-twin --test cuda_forward`
//! (`cargo xtask cuda-test` runs it too).
#![cfg(feature = "cuda-twin")]
// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used)]

#[path = "support/gpu.rs"]
mod support;

use support::{FORMATS, assert_close, backends, greedy_run, prompt};
use switchyard_worker::backend::{Backend, KvCacheType, Solo, Want};
use switchyard_worker::cuda::twin::TwinGpu;
use switchyard_worker::kv::BlockAllocator;
use switchyard_worker::quant::GgmlType;
use switchyard_worker::synth::{Shape, Spec};

fn twin() -> TwinGpu {
    TwinGpu::new(1 << 30)
}

#[test]
fn twin_forward_matches_the_cpu_backend_in_every_format() {
    for ty in FORMATS {
        let spec = Spec {
            shape: Shape::tiny(),
            ty,
            v_ty: None,
            seed: 3,
        };
        greedy_run(&spec, KvCacheType::F16, 3, twin());
    }
}

#[test]
fn twin_forward_with_mixed_formats() {
    // Q4_K_M-style: Wv in Q6_K (two QKV runs).
    let spec = Spec {
        shape: Shape::tiny(),
        ty: GgmlType::Q4_K,
        v_ty: Some(GgmlType::Q6_K),
        seed: 4,
    };
    greedy_run(&spec, KvCacheType::F16, 3, twin());
}

// The q8_0 pool: the attention kernel quantizes q as the CPU backend does (an f32 q against
// the 8-bit keys moved the logits by its rounding; the kernel test
// `paged_flash_decode_equals_softmax_attention` pins that exactly).
#[test]
fn twin_forward_with_a_q8_0_cache() {
    let spec = Spec {
        shape: Shape::tiny(),
        ty: GgmlType::Q8_0,
        v_ty: None,
        seed: 4,
    };
    greedy_run(&spec, KvCacheType::Q8_0, 3, twin());
}

#[test]
fn steps_over_the_capacity_run_in_pieces_with_every_logit() {
    let spec = Spec {
        shape: Shape::tiny(),
        ty: GgmlType::Q8_0,
        v_ty: None,
        seed: 5,
    };
    // Capacity 16: a 40-token prompt wanting every logit runs as 16 + 16 + 8.
    let (mut cpu, mut gpu) = backends(&spec, KvCacheType::F16, 16, twin());
    let mut ac = BlockAllocator::new(cpu.kv_blocks());
    let mut ag = BlockAllocator::new(gpu.kv_blocks());
    let p = prompt(40, 3);
    let c = Solo::default()
        .feed(&mut cpu, &mut ac, &p, Want::All)
        .unwrap();
    let g = Solo::default()
        .feed(&mut gpu, &mut ag, &p, Want::All)
        .unwrap();
    assert_eq!(c.len(), 40 * 512);
    assert_eq!(g.len(), c.len());
    for t in [0, 15, 16, 31, 39] {
        assert_close(
            &c[t * 512..(t + 1) * 512],
            &g[t * 512..(t + 1) * 512],
            &format!("token {t}"),
        );
    }
}

#[test]
fn bad_steps_are_errors() {
    let spec = Spec {
        shape: Shape::tiny(),
        ty: GgmlType::Q4_0,
        v_ty: None,
        seed: 6,
    };
    let (_, mut gpu) = backends(&spec, KvCacheType::F16, 16, twin());
    let n = gpu.kv_blocks() as u32;
    let step = switchyard_worker::backend::SeqStep {
        blocks: &[n],
        start: 0,
        tokens: &[1, 2],
        want: Want::Last,
    };
    let e = gpu.forward(&[step]).unwrap_err().to_string();
    assert!(e.contains("outside the pool"), "{e}");
    let step = switchyard_worker::backend::SeqStep {
        blocks: &[0],
        start: 0,
        tokens: &[600],
        want: Want::Last,
    };
    let e = gpu.forward(&[step]).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}

#[test]
fn seeded_sampling_runs_on_the_device_and_equals_the_host_sampler() {
    use support::{logits, seeded_draws};
    use switchyard_worker::backend::{Output, SampleArgs};
    use switchyard_worker::sampling::{argmax, sample};
    let spec = Spec {
        shape: Shape::tiny(),
        ty: GgmlType::Q4_0,
        v_ty: None,
        seed: 8,
    };
    // Two copies of the same twin forward: one samples on the device, one hands its logits to
    // the host sampler. The twin is deterministic, so their logits are the same bits.
    let (_, mut dev) = backends(&spec, KvCacheType::F16, 16, twin());
    let (_, mut host) = backends(&spec, KvCacheType::F16, 16, twin());
    let mut ad = BlockAllocator::new(dev.kv_blocks());
    let mut ah = BlockAllocator::new(host.kv_blocks());
    let mut ds = [Solo::default(), Solo::default()];
    let mut hs = [Solo::default(), Solo::default()];
    let prompts = [prompt(9, 1), prompt(4, 2)];
    let mut next = Vec::new();
    for i in 0..2 {
        ds[i]
            .feed(&mut dev, &mut ad, &prompts[i], Want::Last)
            .unwrap();
        let l = hs[i]
            .feed(&mut host, &mut ah, &prompts[i], Want::Last)
            .unwrap();
        next.push(argmax(&l));
    }
    let draws = seeded_draws(6, 21);
    let mut not_greedy = 0;
    for (p, u) in &draws {
        let (n0, n1) = ([next[0]], [next[1]]);
        let args = SampleArgs {
            params: p,
            history: &[],
            uniform: *u,
        };
        let before = dev.0.gpu().downloaded_bytes();
        let (a, b) = ds.split_at_mut(1);
        let got = Solo::step(
            &mut dev,
            &mut ad,
            &mut [(&mut a[0], &n0[..]), (&mut b[0], &n1[..])],
            Want::Token(args),
        )
        .unwrap();
        // Only the two sampled token ids came back.
        assert_eq!(dev.0.gpu().downloaded_bytes() - before, 8, "{p:?}");
        let (a, b) = hs.split_at_mut(1);
        let out = Solo::step(
            &mut host,
            &mut ah,
            &mut [(&mut a[0], &n0[..]), (&mut b[0], &n1[..])],
            Want::Last,
        )
        .unwrap();
        for i in 0..2 {
            let l = logits(&out[i]);
            let want = sample(l, p, &[], *u);
            assert_eq!(
                got[i],
                Output::Token(want),
                "{p:?} uniform {u}, sequence {i}"
            );
            not_greedy += usize::from(want != argmax(l));
            next[i] = want;
        }
    }
    // The draws sampled: some picked other tokens than the argmax.
    assert!(not_greedy > 0);
}

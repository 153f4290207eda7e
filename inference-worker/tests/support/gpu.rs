//! Shared by the tests of the CUDA forward pass: tiny random models, the CPU backend beside a
//! `GpuModel` on any device (the twin in CI, the GPU with SWITCHYARD_GPU=1), and the checks.
#![allow(dead_code)]

use std::sync::Arc;

use switchyard_worker::backend::cpu::CpuBackend;
use switchyard_worker::backend::{Backend, KvCacheType, Output, SampleArgs, Solo, Want};
use switchyard_worker::cuda::device::Gpu;
use switchyard_worker::cuda::forward::{GpuBackend, GpuModel, GpuOptions};
use switchyard_worker::gguf::Gguf;
use switchyard_worker::kv::BlockAllocator;
use switchyard_worker::model::Model;
use switchyard_worker::quant::GgmlType;
use switchyard_worker::sampling::{SamplingParams, argmax};
use switchyard_worker::synth::{self, Spec};

/// Every weight format with kernels.
pub const FORMATS: [GgmlType; 7] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::F16,
];

pub fn model(spec: &Spec) -> Model {
    let g = Arc::new(Gguf::from_bytes(synth::bytes(spec).unwrap()).unwrap());
    Model::load(g).unwrap()
}

pub fn backends<G: Gpu + Send>(
    spec: &Spec,
    kv: KvCacheType,
    max_tokens: usize,
    gpu: G,
) -> (CpuBackend, GpuBackend<G>) {
    let cpu = CpuBackend::new(model(spec), kv, 4 << 20).unwrap();
    let opts = GpuOptions {
        kv_bytes: Some(4 << 20),
        kv_type: kv,
        max_tokens,
        max_positions: 256,
        graphs: true,
    };
    let mut seen = Vec::new();
    let gpu = GpuModel::load(gpu, &model(spec), &opts, &mut |d, t| seen.push((d, t))).unwrap();
    // Load progress: increasing, ending at the total.
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    assert!(seen.last().is_some_and(|&(d, t)| d == t && t > 0));
    (cpu, GpuBackend(gpu))
}

pub fn logits(o: &Output) -> &[f32] {
    match o {
        Output::Logits(l) => l,
        other => panic!("expected logits, got {other:?}"),
    }
}

/// The logits' tolerance as a fraction of their spread.
pub const LOGIT_TOLERANCE: f32 = 0.02;

/// Logits agree to within 2 % of their spread (summation orders differ; 8-bit activation
/// rounding can amplify a last-bit difference), and pick the same token.
pub fn assert_close(cpu: &[f32], gpu: &[f32], what: &str) {
    assert_eq!(cpu.len(), gpu.len(), "{what}: length");
    let (lo, hi) = cpu
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let diff = cpu
        .iter()
        .zip(gpu)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff <= LOGIT_TOLERANCE * (hi - lo),
        "{what}: logits differ by {diff} (spread {})",
        hi - lo
    );
    assert_eq!(argmax(cpu), argmax(gpu), "{what}: greedy token");
}

pub fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 3 + (i * 37 + salt * 11) % 500)
        .collect()
}

pub const GREEDY: SamplingParams = SamplingParams {
    temperature: 0.0,
    top_p: 1.0,
    top_k: 0,
    min_p: 0.0,
    repetition_penalty: 1.0,
    frequency_penalty: 0.0,
    presence_penalty: 0.0,
    seed: None,
};

/// The device's greedy token `got` for CPU logits `cpu`: the CPU's argmax, or a near tie of it
/// (within the logits' tolerance, where the two backends' roundings may order them apart: one
/// 8-bit activation rounded the other way moves a tiny random model's logits by ~0.5 % of their
/// spread, and its top two can be closer than that).
pub fn assert_greedy(cpu: &[f32], got: u32, what: &str) {
    let want = argmax(cpu);
    if got == want {
        return;
    }
    let (lo, hi) = cpu
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let gap = cpu[want as usize] - cpu.get(got as usize).copied().unwrap_or(f32::MIN);
    assert!(
        gap <= LOGIT_TOLERANCE * (hi - lo),
        "{what}: device token {got} is {gap} below the CPU's {want} (spread {})",
        hi - lo
    );
}

/// Two sequences (a 21-token and a 5-token prompt) decoded greedily together for `steps`
/// steps; the CPU samples from its logits, the twin on the device. Both go on with the CPU's
/// tokens.
pub fn greedy_run<G: Gpu + Send>(spec: &Spec, kv: KvCacheType, steps: usize, dev: G) {
    let what = format!("{:?} (attn_v {:?}) KV {kv}", spec.ty, spec.v_ty);
    let (mut cpu, mut gpu) = backends(spec, kv, 16, dev);
    let mut ac = BlockAllocator::new(cpu.kv_blocks());
    let mut ag = BlockAllocator::new(gpu.kv_blocks());
    let prompts = [prompt(21, 1), prompt(5, 2)];
    let mut cs = [Solo::default(), Solo::default()];
    let mut gs = [Solo::default(), Solo::default()];
    let mut last = Vec::new();
    let mut prompt_logits = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let c = cs[i].feed(&mut cpu, &mut ac, p, Want::Last).unwrap();
        let g = gs[i].feed(&mut gpu, &mut ag, p, Want::Last).unwrap();
        assert_close(&c, &g, &format!("{what}: prompt {i}"));
        last.push(argmax(&c));
        prompt_logits.push(g);
    }
    let mut toks = [vec![last[0]], vec![last[1]]];
    for step in 0..steps {
        let (a, b) = cs.split_at_mut(1);
        let (n0, n1) = ([toks[0][step]], [toks[1][step]]);
        let out = Solo::step(
            &mut cpu,
            &mut ac,
            &mut [(&mut a[0], &n0[..]), (&mut b[0], &n1[..])],
            Want::Last,
        )
        .unwrap();
        let want: Vec<u32> = out.iter().map(|o| argmax(logits(o))).collect();
        let (ga, gb) = gs.split_at_mut(1);
        let args = SampleArgs {
            params: &GREEDY,
            history: &[],
            uniform: 0.0,
        };
        let got = Solo::step(
            &mut gpu,
            &mut ag,
            &mut [(&mut ga[0], &n0[..]), (&mut gb[0], &n1[..])],
            Want::Token(args),
        )
        .unwrap();
        let got: Vec<u32> = got
            .iter()
            .map(|o| match o {
                Output::Token(t) => *t,
                other => panic!("{what}: expected a token, got {other:?}"),
            })
            .collect();
        for (i, o) in out.iter().enumerate() {
            assert_greedy(
                logits(o),
                got[i],
                &format!("{what}: step {step}, sequence {i}"),
            );
        }
        toks[0].push(want[0]);
        toks[1].push(want[1]);
    }
    // The two prompts' logits differ: a forward that ignored its input would agree on them.
    assert!(
        toks[0] != toks[1] || prompt_logits[0] != prompt_logits[1],
        "{what}: both sequences got the same answers"
    );
}

/// Runs the `sample` kernel on `dev` for `rows` (one row of logits per draw) and the draws'
/// parameters: the tokens it picks.
pub fn device_sample<G: Gpu>(
    dev: &mut G,
    rows: &[Vec<f32>],
    draws: &[(SamplingParams, f32)],
) -> Vec<u32> {
    use switchyard_worker::cuda::device::GpuExt;
    use switchyard_worker::cuda::{abi, forward::sample_row, launch};
    let n = rows[0].len();
    let x: Vec<f32> = rows.iter().flatten().copied().collect();
    let args: Vec<abi::SampleRow> = draws.iter().map(|(p, u)| sample_row(p, *u)).collect();
    let xb = dev.alloc(4 * x.len(), "logits").unwrap();
    dev.upload_slice(xb, &x).unwrap();
    let ab = dev.alloc(size_of_val(&args[..]), "rows").unwrap();
    dev.upload_slice(ab, &args).unwrap();
    let out = dev.alloc(4 * rows.len(), "tokens").unwrap();
    let p = abi::SampleParams {
        x: xb,
        rows: ab,
        out_idx: out,
        n: n as u32,
        stride: n as u32,
    };
    // SAFETY: the buffers hold `rows.len()` rows of `n` logits, a `SampleRow` and a token each.
    unsafe { dev.launch(&launch::sample(rows.len()), &p).unwrap() };
    dev.download_vec(out, rows.len()).unwrap()
}

/// Seeded draws of every kind of cut for `device_sample` tests: (parameters, uniform).
pub fn seeded_draws(count: usize, seed: u64) -> Vec<(SamplingParams, f32)> {
    let kinds = [
        (1.0, 0, 1.0, 0.0),
        (0.7, 40, 1.0, 0.0),
        (0.9, 0, 0.9, 0.0),
        (1.3, 0, 1.0, 0.05),
        (0.8, 20, 0.8, 0.01),
        (0.0, 0, 1.0, 0.0),
    ];
    let mut rng = switchyard_worker::sampling::Rng::new(Some(seed));
    (0..count)
        .map(|i| {
            let (temperature, top_k, top_p, min_p) = kinds[i % kinds.len()];
            let p = SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                seed: Some(seed),
                ..GREEDY
            };
            let u = rng.uniform_for(&p);
            (p, u)
        })
        .collect()
}

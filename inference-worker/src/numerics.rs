//! Scalar arithmetic that reproduces llama.cpp's CPU results bit for bit.
//!
//! SmolLM2-class models quantize every activation to 8 bits before each matmul, which makes
//! them chaotic: a one-ulp difference anywhere can move a value across a rounding boundary of
//! the quantizer, and the change grows layer by layer until the logits differ by ~1 (llama.cpp
//! itself moves by up to 1.9 between its f16 and f32 KV-cache settings). Agreement with
//! llama.cpp to a tight tolerance therefore needs the *same* floating-point operations in the
//! same order, not merely accurate ones. These helpers spell out the orders ggml's x86 build
//! uses (AVX-512 lanes of 16, FMA, GCC contracting `a*b+c` into one FMA) so the forward pass
//! can follow them; tests/reference_parity.rs checks the result against llama.cpp's logits.

/// Lanes of ggml's AVX-512 accumulators.
pub const LANES: usize = 16;

#[inline]
fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// `x * 2^n` for integral `n`, rounded once (`vscalefps` for the range used here), including
/// results in the subnormal range.
#[inline]
fn scalef(x: f32, n: f32) -> f32 {
    let n = n as i32;
    let p2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    if n > 127 {
        x * p2(64) * p2(n - 64)
    } else if n < -126 {
        x * p2(-64) * p2(n + 64)
    } else {
        x * p2(n)
    }
}

/// ggml's vectorised `expf` (`ggml_v_expf`, its AVX-512 form of Arm's optimized-routines
/// polynomial), one lane at a time; ggml's softmax and SiLU use it.
#[inline]
pub fn v_expf(x: f32) -> f32 {
    let r = c(0x4B40_0000); // 0x1.8p23
    let z = x.mul_add(c(0x3FB8_AA3B), r); // log2(e)
    let n = z - r;
    // b = x - n*ln2_hi - n*ln2_lo
    let b = (-n).mul_add(c(0x35BF_BE8E), (-n).mul_add(c(0x3F31_7200), x));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = c(0x3C07_2010)
        .mul_add(b, c(0x3D2B_9F17))
        .mul_add(u, c(0x3E2A_AF33).mul_add(b, c(0x3EFF_FEDB)))
        .mul_add(u, c(0x3F7F_FFF6).mul_add(b, 1.0));
    scalef(j, n)
}

/// ggml's SiLU: `x / (1 + exp(-x))` with `v_expf`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + v_expf(0.0 - x))
}

/// `gate[i] = silu(gate[i]) * up[i]` (ggml's fused SwiGLU), with the FMAs as instructions
/// when the CPU has them (`mul_add` is otherwise a library call; the results are the same).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, the only feature the function enables.
        unsafe { swiglu_fma(gate, up) };
        return;
    }
    swiglu_plain(gate, up);
}

#[inline]
fn swiglu_plain(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn swiglu_fma(gate: &mut [f32], up: &[f32]) {
    swiglu_plain(gate, up);
}

/// Sum of 16 lanes in the order GCC's `_mm512_reduce_add_ps` adds them.
#[inline]
pub fn reduce16(l: &[f32; LANES]) -> f32 {
    let mut t3 = [0f32; 8];
    for i in 0..8 {
        t3[i] = l[i + 8] + l[i];
    }
    let mut t6 = [0f32; 4];
    for i in 0..4 {
        t6[i] = t3[i + 4] + t3[i];
    }
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

/// Dot product of two f16-valued vectors as llamafile's tinyBLAS computes it on AVX-512
/// (ggml's CPU matmul for f16 operands): lane `i % 16` accumulates element `i` with FMA, then
/// the lanes are reduced. A product of two f16 values is exact in f32, so a plain multiply and
/// add equals the FMA here. Elements past a multiple of 16 count as zero (tinyBLAS only runs
/// on such lengths; llama.cpp's padding of the KV cache supplies the zeros).
#[inline]
pub fn dot_f16_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (ca, cb) in a.chunks(LANES).zip(b.chunks(LANES)) {
        for i in 0..ca.len().min(cb.len()) {
            acc[i] += ca[i] * cb[i];
        }
    }
    reduce16(&acc)
}

/// Dot product of two f16-valued vectors as `ggml_vec_dot_f16` computes it on AVX-512 (what
/// ggml's matmul uses when tinyBLAS does not take the product, e.g. for one query token):
/// four 16-lane accumulators over steps of 64, combined pairwise, then reduced; leftover
/// elements are added one by one in f64.
#[inline]
pub fn dot_f16_ggml(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let np = n / 64 * 64;
    let mut acc = [[0f32; LANES]; 4];
    for i in (0..np).step_by(64) {
        for (j, aj) in acc.iter_mut().enumerate() {
            let o = i + j * LANES;
            for l in 0..LANES {
                aj[l] += a[o + l] * b[o + l];
            }
        }
    }
    let mut sum = combine4(&acc) as f64;
    for i in np..n {
        sum += (a[i] * b[i]) as f64;
    }
    sum as f32
}

/// ggml's reduction of four 16-lane accumulators: `(x0 + x2) + (x1 + x3)` lane by lane, then
/// the 16 lanes.
#[inline]
pub fn combine4(acc: &[[f32; LANES]; 4]) -> f32 {
    let mut l = [0f32; LANES];
    for i in 0..LANES {
        l[i] = (acc[0][i] + acc[2][i]) + (acc[1][i] + acc[3][i]);
    }
    reduce16(&l)
}

/// Round to f16 precision (round to nearest even), as ggml's f32 → f16 conversions do.
#[inline]
pub fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_expf_is_close_to_exp() {
        // ggml's version overflows above 88.38 where expf reaches f32::MAX.
        for i in -2000..1760 {
            let x = i as f32 * 0.05;
            let (a, b) = (v_expf(x), x.exp());
            // A few ulps; subnormal results have coarser absolute steps.
            assert!(
                (a - b).abs() <= 4.0 * f32::EPSILON * b + 1e-44,
                "{x}: {a} vs {b}"
            );
        }
        assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(v_expf(-150.0), 0.0);
        assert!(v_expf(100.0).is_infinite());
    }

    #[test]
    fn swiglu_dispatch_matches_plain() {
        let g0: Vec<f32> = (0..100).map(|i| i as f32 * 0.3 - 15.0).collect();
        let up: Vec<f32> = (0..100).map(|i| 1.0 + i as f32 * 0.01).collect();
        let (mut a, mut b) = (g0.clone(), g0);
        swiglu(&mut a, &up);
        swiglu_plain(&mut b, &up);
        assert_eq!(a, b);
    }

    #[test]
    fn reduce16_sums() {
        let l: [f32; 16] = std::array::from_fn(|i| i as f32);
        assert_eq!(reduce16(&l), 120.0);
        assert_eq!(dot_f16_lanes(&[1.0; 40], &[2.0; 40]), 80.0);
        assert_eq!(dot_f16_ggml(&[1.0; 70], &[2.0; 70]), 140.0);
    }
}

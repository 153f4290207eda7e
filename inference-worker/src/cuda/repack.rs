//! Weights repacked at load into the planes the CUDA kernels stream (layout table in
//! `cuda/common.cuh`).
//!
//! A GGUF block interleaves scales and quants in 18, 20, 34 or 210 bytes, so quants never sit on
//! 16-byte boundaries. Repacking splits every block into its fields and stores each field as
//! its own row-major plane `[rows][blocks][field bytes]`:
//!
//! ```text
//!  GGUF row:  |d|qs 16B|d|qs 16B|d|qs 16B| ...            (Q4_0, 18 B per block)
//!  plane 0:   |qs 16B|qs 16B|qs 16B| ...                   16-byte chunks, one per lane
//!  plane 1:   |d|d|d| ...
//! ```
//!
//! Nothing is converted or padded: bytes per weight stay GGUF's, and `unpack_row` restores a
//! row's GGUF bytes exactly (the tests dequantize both with `quant::dequantize_row`; the twin
//! tests also check the kernels' own reading of the planes).

use std::ops::Range;

use crate::cuda::abi;
use crate::quant::GgmlType;

/// Plane starts are aligned to this many bytes.
pub const PLANE_ALIGN: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RepackError {
    #[error("the CUDA kernels have no {0:?} path (`Repacked::new_or_f16` converts it)")]
    Unsupported(GgmlType),
    #[error("row length {cols} is not a multiple of {need} for {ty:?}")]
    RowLength {
        ty: GgmlType,
        cols: usize,
        need: usize,
    },
    #[error("{got} bytes for {rows} rows of {cols} {ty:?} values (want {want})")]
    Size {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        got: usize,
        want: usize,
    },
    #[error("cannot stack matrices of different formats or row lengths")]
    Mismatch,
}

/// F16's one "block" is one element.
const F16_FIELD: Range<usize> = 0..2;

/// The byte range of a GGUF block that each plane takes, in plane order (quants first).
fn fields(ty: GgmlType) -> Result<&'static [Range<usize>], RepackError> {
    Ok(match ty {
        GgmlType::Q4_0 => &[2..18, 0..2],
        GgmlType::Q4_1 => &[4..20, 0..4],
        GgmlType::Q8_0 => &[2..34, 0..2],
        GgmlType::Q4_K => &[16..144, 0..16],
        GgmlType::Q5_K => &[48..176, 16..48, 0..16],
        GgmlType::Q6_K => &[0..128, 128..192, 192..208, 208..210],
        GgmlType::F16 => &[F16_FIELD],
        GgmlType::F32 | GgmlType::BF16 => return Err(RepackError::Unsupported(ty)),
    })
}

/// Elements a row length must be a multiple of: a block, and whole 16-byte chunks of plane 0.
pub fn row_multiple(ty: GgmlType) -> usize {
    match ty {
        GgmlType::F16 => 8,
        t => t.block_len(),
    }
}

/// A matrix in the kernels' layout: `bytes` holds the planes, plane `k` starting at
/// `offset[k]` (a multiple of [`PLANE_ALIGN`]) with `stride[k]` bytes per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repacked {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub offset: Vec<usize>,
    pub stride: Vec<usize>,
    pub bytes: Vec<u8>,
}

fn layout(ty: GgmlType, rows: usize, cols: usize) -> Result<(Vec<usize>, Vec<usize>), RepackError> {
    let f = fields(ty)?;
    let need = row_multiple(ty);
    if cols == 0 || !cols.is_multiple_of(need) {
        return Err(RepackError::RowLength { ty, cols, need });
    }
    let blocks = cols / ty.block_len();
    let stride: Vec<usize> = f.iter().map(|r| r.len() * blocks).collect();
    let mut offset = Vec::with_capacity(f.len());
    let mut at = 0;
    for s in &stride {
        offset.push(at);
        at += (s * rows).next_multiple_of(PLANE_ALIGN);
    }
    offset.push(at);
    Ok((offset, stride))
}

impl Repacked {
    /// Repacks `rows` rows of `cols` elements of type `ty` from their GGUF bytes.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Repacked, RepackError> {
        let (mut offset, stride) = layout(ty, rows, cols)?;
        let want = ty.row_bytes(cols) * rows;
        if data.len() != want {
            return Err(RepackError::Size {
                ty,
                rows,
                cols,
                got: data.len(),
                want,
            });
        }
        let total = offset.pop().unwrap_or(0);
        let mut bytes = vec![0u8; total];
        let f = fields(ty)?;
        let bb = ty.block_bytes();
        for (r, row) in data.chunks_exact(ty.row_bytes(cols)).enumerate() {
            for (b, block) in row.chunks_exact(bb).enumerate() {
                for (k, range) in f.iter().enumerate() {
                    let at = offset[k] + r * stride[k] + b * range.len();
                    bytes[at..at + range.len()].copy_from_slice(&block[range.clone()]);
                }
            }
        }
        Ok(Repacked {
            ty,
            rows,
            cols,
            offset,
            stride,
            bytes,
        })
    }

    /// [`Repacked::new`], except that F32 and BF16 matrices (which have no kernels) are
    /// converted to F16 first, rounding to nearest (BF16 values outside F16's range become
    /// infinite; F32 loses precision). Every other format is repacked unchanged.
    pub fn new_or_f16(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Repacked, RepackError> {
        if !matches!(ty, GgmlType::F32 | GgmlType::BF16) {
            return Repacked::new(ty, rows, cols, data);
        }
        let rb = ty.row_bytes(cols);
        if data.len() != rb * rows {
            return Err(RepackError::Size {
                ty,
                rows,
                cols,
                got: data.len(),
                want: rb * rows,
            });
        }
        let mut row = vec![0f32; cols];
        let mut halves = Vec::with_capacity(rows * cols * 2);
        for r in data.chunks_exact(rb) {
            crate::quant::dequantize_row(ty, r, &mut row);
            halves.extend(
                row.iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
            );
        }
        Repacked::new(GgmlType::F16, rows, cols, &halves)
    }

    /// The matrices stacked row-wise (`[Wq; Wk; Wv]`, `[Wgate; Wup]`): same format and length.
    pub fn stack(parts: &[&Repacked]) -> Result<Repacked, RepackError> {
        let first = parts.first().ok_or(RepackError::Mismatch)?;
        if parts
            .iter()
            .any(|p| p.ty != first.ty || p.cols != first.cols)
        {
            return Err(RepackError::Mismatch);
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let (mut offset, stride) = layout(first.ty, rows, first.cols)?;
        let total = offset.pop().unwrap_or(0);
        let mut bytes = vec![0u8; total];
        for (k, &start) in offset.iter().enumerate() {
            let mut at = start;
            for p in parts {
                let n = p.stride[k] * p.rows;
                bytes[at..at + n].copy_from_slice(&p.bytes[p.offset[k]..p.offset[k] + n]);
                at += n;
            }
        }
        Ok(Repacked {
            ty: first.ty,
            rows,
            cols: first.cols,
            offset,
            stride,
            bytes,
        })
    }

    /// Row `r` in GGUF's block layout again.
    pub fn unpack_row(&self, r: usize) -> Vec<u8> {
        let bb = self.ty.block_bytes();
        let blocks = self.cols / self.ty.block_len();
        let mut out = vec![0u8; blocks * bb];
        let Ok(f) = fields(self.ty) else { return out };
        for (b, block) in out.chunks_exact_mut(bb).enumerate() {
            for (k, range) in f.iter().enumerate() {
                let at = self.offset[k] + r * self.stride[k] + b * range.len();
                block[range.clone()].copy_from_slice(&self.bytes[at..at + range.len()]);
            }
        }
        out
    }

    /// Row `r` dequantized (through its GGUF bytes and `quant::dequantize_row`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        crate::quant::dequantize_row(self.ty, &self.unpack_row(r), out);
    }

    /// The kernels' view of this matrix once `bytes` is at device address `base`.
    pub fn mat(&self, base: u64) -> abi::Mat {
        let mut m = abi::Mat {
            rows: self.rows as u32,
            cols: self.cols as u32,
            fmt: self.ty as u32,
            ..Default::default()
        };
        for k in 0..self.stride.len() {
            m.p[k] = base + self.offset[k] as u64;
            m.stride[k] = self.stride[k] as u32;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize_row;
    use half::f16;

    /// Random GGUF rows whose f16 scale fields hold small normal values.
    pub fn random_rows(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut b: Vec<u8> = (0..ty.row_bytes(cols) * rows)
            .map(|_| next() as u8)
            .collect();
        let halves: &[usize] = match ty {
            GgmlType::Q4_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            GgmlType::Q6_K => &[208],
            _ => &[0],
        };
        for blk in b.chunks_exact_mut(ty.block_bytes()) {
            for &at in halves {
                let v = f16::from_f32(((next() % 2001) as f32 / 1000.0 - 1.0) * 0.05);
                blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        b
    }

    const KINDS: [GgmlType; 7] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::F16,
    ];

    #[test]
    fn repacked_rows_dequantize_as_gguf_rows() {
        for ty in KINDS {
            let (rows, cols) = (5, 512);
            let data = random_rows(ty, rows, cols, 7 + ty as u64);
            let m = Repacked::new(ty, rows, cols, &data).expect("repack");
            let rb = ty.row_bytes(cols);
            for r in 0..rows {
                assert_eq!(
                    m.unpack_row(r),
                    &data[r * rb..(r + 1) * rb],
                    "{ty:?} row {r}"
                );
                let (mut want, mut got) = (vec![0f32; cols], vec![0f32; cols]);
                dequantize_row(ty, &data[r * rb..(r + 1) * rb], &mut want);
                m.dequantize_row(r, &mut got);
                assert_eq!(want, got, "{ty:?} row {r}");
            }
            for (k, off) in m.offset.iter().enumerate() {
                assert_eq!(off % PLANE_ALIGN, 0, "{ty:?} plane {k}");
            }
            // Plane 0 rows hold whole 16-byte chunks; no bytes are added.
            assert_eq!(m.stride[0] % 16, 0);
            assert_eq!(m.stride.iter().sum::<usize>(), rb, "{ty:?}");
        }
    }

    #[test]
    fn stacking_keeps_rows_in_order() {
        let ty = GgmlType::Q4_K;
        let a = random_rows(ty, 3, 256, 1);
        let b = random_rows(ty, 2, 256, 2);
        let ra = Repacked::new(ty, 3, 256, &a).expect("a");
        let rb = Repacked::new(ty, 2, 256, &b).expect("b");
        let s = Repacked::stack(&[&ra, &rb]).expect("stack");
        assert_eq!(s.rows, 5);
        assert_eq!(s.unpack_row(1), ra.unpack_row(1));
        assert_eq!(s.unpack_row(4), rb.unpack_row(1));
        let other = Repacked::new(
            GgmlType::Q8_0,
            1,
            256,
            &random_rows(GgmlType::Q8_0, 1, 256, 3),
        )
        .expect("q8");
        assert_eq!(Repacked::stack(&[&ra, &other]), Err(RepackError::Mismatch));
    }

    #[test]
    fn f32_and_bf16_become_f16() {
        let vals: Vec<f32> = (0..64).map(|i| i as f32 * 0.25 - 8.0).collect();
        let f32_bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bf16_bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        for (ty, data) in [(GgmlType::F32, f32_bytes), (GgmlType::BF16, bf16_bytes)] {
            let m = Repacked::new_or_f16(ty, 2, 32, &data).expect("convert");
            assert_eq!(m.ty, GgmlType::F16);
            let mut out = vec![0f32; 32];
            m.dequantize_row(1, &mut out);
            // Quarter steps up to 8 are exact in f16 and bf16.
            assert_eq!(out, vals[32..]);
        }
        let q = random_rows(GgmlType::Q4_0, 2, 64, 9);
        assert_eq!(
            Repacked::new_or_f16(GgmlType::Q4_0, 2, 64, &q),
            Repacked::new(GgmlType::Q4_0, 2, 64, &q)
        );
    }

    #[test]
    fn rejects_what_the_kernels_cannot_read() {
        assert_eq!(
            Repacked::new(GgmlType::F32, 1, 32, &[0; 128]).map(|_| ()),
            Err(RepackError::Unsupported(GgmlType::F32))
        );
        assert!(matches!(
            Repacked::new(GgmlType::Q4_K, 1, 32, &[0; 18]),
            Err(RepackError::RowLength { .. })
        ));
        assert!(matches!(
            Repacked::new(GgmlType::Q4_0, 2, 32, &[0; 18]),
            Err(RepackError::Size { .. })
        ));
    }
}

//! GGUF reader: metadata and the tensor table of a v2/v3 GGUF file, over a read-only mmap.
//!
//! The file is never copied: tensors are handed out as byte slices of the mapping, and the
//! quantized formats in `quant` work on those slices directly. Every way a file can be wrong
//! (bad magic, old version, truncated header or data, unknown value or tensor type) is a
//! `GgufError` that says what and where, because users point the worker at files they made.

use std::collections::HashMap;
use std::path::Path;

use crate::quant::GgmlType;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic {0:?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    Version(u32),
    #[error("truncated GGUF file: {0}")]
    Truncated(String),
    #[error("bad GGUF metadata: {0}")]
    Bad(String),
    #[error(
        "tensor `{name}` has unsupported type {ty} (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K)"
    )]
    UnsupportedTensorType { name: String, ty: String },
    #[error("missing metadata key `{0}`")]
    MissingKey(String),
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// Integer value of any integer type (and bool), for keys whose width varies by writer.
    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(v) => v as u64,
            Value::I8(v) => u64::try_from(v).ok()?,
            Value::U16(v) => v as u64,
            Value::I16(v) => u64::try_from(v).ok()?,
            Value::U32(v) => v as u64,
            Value::I32(v) => u64::try_from(v).ok()?,
            Value::U64(v) => v,
            Value::I64(v) => u64::try_from(v).ok()?,
            Value::Bool(v) => v as u64,
            _ => return None,
        })
    }
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::I8(v) => v as i64,
            Value::I16(v) => v as i64,
            Value::I32(v) => v as i64,
            Value::I64(v) => v,
            _ => return self.as_u64().and_then(|v| i64::try_from(v).ok()),
        })
    }
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => self.as_i64().map(|v| v as f32),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => self.as_u64().map(|v| v != 0),
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute offset into the file.
    pub offset: usize,
    pub size: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Checked when the file was read: the product fits.
        self.dims.iter().fold(1u64, |n, &d| n.wrapping_mul(d))
    }
}

/// Where the bytes come from: a file mapping, or a buffer (tests build files in memory).
enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// An opened GGUF file.
pub struct Gguf {
    backing: Backing,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated(format!(
                "file ends at byte {} while reading {what} ({n} bytes at offset {})",
                self.buf.len(),
                self.pos
            ))),
        }
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn len(&mut self, what: &str) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        // A length can never exceed what is left of the file; catching it here turns a
        // corrupt header into an error instead of a giant allocation.
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(GgufError::Truncated(format!(
                "{what} claims {n} items/bytes but only {left} bytes remain"
            )));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.len(what)?;
        let b = self.take(n, what)?;
        // Some converters wrote invalid UTF-8 in vocabularies; keep them readable.
        Ok(String::from_utf8_lossy(b).into_owned())
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>(key)?[0]),
            1 => Value::I8(self.arr::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(key)?)),
            7 => Value::Bool(self.arr::<1>(key)?[0] != 0),
            8 => Value::Str(self.string(key)?),
            9 => {
                if depth > 4 {
                    return Err(GgufError::Bad(format!("`{key}`: arrays nested too deep")));
                }
                let ety = self.u32(key)?;
                let n = self.len(key)?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(key)?)),
            t => {
                return Err(GgufError::Bad(format!(
                    "`{key}` has unknown value type {t}"
                )));
            }
        })
    }
}

impl Gguf {
    /// Maps and parses a file.
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let open_err = |source| GgufError::Open {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(open_err)?;
        // SAFETY: mapping is unsafe only because another process could change the file while
        // it is mapped; model files are read-only inputs and must not be modified while served.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(open_err)?;
        Self::parse(Backing::Mmap(mmap))
    }

    /// Parses a file image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(backing: Backing) -> Result<Gguf, GgufError> {
        let buf: &[u8] = match &backing {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        };
        let mut c = Cursor { buf, pos: 0 };
        let magic = c.arr::<4>("magic")?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic(magic));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| GgufError::Bad(format!("general.alignment {v:?}")))?
                as usize,
            None => 32,
        };
        let mut raw = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let nd = c.u32(&name)?;
            if nd == 0 || nd > 4 {
                return Err(GgufError::Bad(format!(
                    "tensor `{name}` has {nd} dimensions"
                )));
            }
            let mut dims = Vec::with_capacity(nd as usize);
            for _ in 0..nd {
                dims.push(c.u64(&name)?);
            }
            let ty = c.u32(&name)?;
            let off = c.u64(&name)?;
            raw.push((name, dims, ty, off));
        }
        let data_start = c
            .pos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| GgufError::Bad(format!("general.alignment {alignment} overflows")))?;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut index = HashMap::new();
        for (name, dims, ty, off) in raw {
            let ty = GgmlType::from_id(ty).ok_or_else(|| GgufError::UnsupportedTensorType {
                name: name.clone(),
                ty: crate::quant::ggml_type_name(ty),
            })?;
            // Dimensions come from the file: a product or size that overflows is a bad file,
            // never a wrapped small size that would pass the bounds check below.
            let n = dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .ok_or_else(|| {
                    GgufError::Bad(format!("tensor `{name}`: dimensions {dims:?} overflow"))
                })?;
            if dims[0] % ty.block_len() as u64 != 0 {
                return Err(GgufError::Bad(format!(
                    "tensor `{name}`: row length {} is not a multiple of the {ty:?} block size",
                    dims[0]
                )));
            }
            let size = usize::try_from(n / ty.block_len() as u64)
                .ok()
                .and_then(|blocks| blocks.checked_mul(ty.block_bytes()))
                .ok_or_else(|| {
                    GgufError::Bad(format!("tensor `{name}`: {n} elements overflow its size"))
                })?;
            let offset = data_start
                .checked_add(usize::try_from(off).unwrap_or(usize::MAX))
                .ok_or_else(|| GgufError::Bad(format!("tensor `{name}` offset overflows")))?;
            if offset.checked_add(size).is_none_or(|e| e > buf.len()) {
                return Err(GgufError::Truncated(format!(
                    "tensor `{name}` needs bytes {offset}..{} but the file has {}",
                    offset.saturating_add(size),
                    buf.len()
                )));
            }
            index.insert(name.clone(), tensors.len());
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }
        Ok(Gguf {
            backing,
            version,
            metadata,
            tensors,
            index,
        })
    }

    /// The whole file image.
    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    pub fn req(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(Value::as_f32)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8]), GgufError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        Ok((info, &self.bytes()[info.offset..info.offset + info.size]))
    }
}

/// Builds GGUF images in memory: used by tests (and handy for tools) to make small files.
pub mod writer {
    use super::Value;
    use crate::quant::GgmlType;

    #[derive(Default)]
    pub struct Writer {
        kv: Vec<(String, Value)>,
        tensors: Vec<Entry>,
    }

    /// A tensor to write: `data` is empty for one only declared ([`Writer::declare`]), whose
    /// `len` bytes the caller streams after [`Writer::header`].
    struct Entry {
        name: String,
        dims: Vec<u64>,
        ty: GgmlType,
        data: Vec<u8>,
        len: usize,
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::Str(s) => put_str(out, s),
            Value::Array(a) => {
                let ety = a.first().map_or(4, type_id);
                out.extend_from_slice(&ety.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for x in a {
                    put_value(out, x);
                }
            }
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        }
    }

    impl Writer {
        pub fn kv(mut self, k: &str, v: Value) -> Self {
            self.kv.push((k.to_string(), v));
            self
        }
        pub fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
            self.tensors.push(Entry {
                name: name.to_string(),
                dims: dims.to_vec(),
                ty,
                len: data.len(),
                data,
            });
            self
        }
        /// A tensor whose bytes are streamed after [`Writer::header`] (files too large to hold
        /// in memory), in declaration order, each padded to 32 bytes.
        pub fn declare(mut self, name: &str, dims: &[u64], ty: GgmlType) -> Self {
            let rows: u64 = dims.iter().skip(1).product();
            let len = ty.row_bytes(dims.first().copied().unwrap_or(0) as usize) * rows as usize;
            self.tensors.push(Entry {
                name: name.to_string(),
                dims: dims.to_vec(),
                ty,
                data: Vec::new(),
                len,
            });
            self
        }
        /// Everything before the first tensor's bytes (metadata, tensor table, alignment).
        pub fn header(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend_from_slice(&3u32.to_le_bytes());
            out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
            for (k, v) in &self.kv {
                put_str(&mut out, k);
                out.extend_from_slice(&type_id(v).to_le_bytes());
                put_value(&mut out, v);
            }
            let mut off = 0u64;
            for t in &self.tensors {
                put_str(&mut out, &t.name);
                out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
                for d in &t.dims {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.extend_from_slice(&(t.ty as u32).to_le_bytes());
                out.extend_from_slice(&off.to_le_bytes());
                off += (t.len as u64).div_ceil(32) * 32;
            }
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
            out
        }
        pub fn finish(self) -> Vec<u8> {
            let mut out = self.header();
            for t in &self.tensors {
                out.extend_from_slice(&t.data);
                while !out.len().is_multiple_of(32) {
                    out.push(0);
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::writer::Writer;
    use super::*;

    fn sample() -> Vec<u8> {
        Writer::default()
            .kv("general.architecture", Value::Str("llama".into()))
            .kv("llama.block_count", Value::U32(2))
            .kv(
                "tokenizer.ggml.tokens",
                Value::Array(vec![Value::Str("a".into()), Value::Str("b".into())]),
            )
            .tensor(
                "w",
                &[4, 2],
                GgmlType::F32,
                (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect(),
            )
            .finish()
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let g = Gguf::from_bytes(sample()).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get_str("general.architecture"), Some("llama"));
        assert_eq!(g.get_u64("llama.block_count"), Some(2));
        let (info, bytes) = g.tensor("w").unwrap();
        assert_eq!(info.dims, vec![4, 2]);
        assert_eq!(bytes.len(), 32);
        assert_eq!(f32::from_le_bytes(bytes[4..8].try_into().unwrap()), 1.0);
    }

    #[test]
    fn bad_magic_is_named() {
        let mut b = sample();
        b[0] = b'X';
        let e = Gguf::from_bytes(b).err().unwrap().to_string();
        assert!(e.contains("not a GGUF file"), "{e}");
    }

    #[test]
    fn truncation_anywhere_is_an_error_not_a_panic() {
        let b = sample();
        for cut in [3, 10, 30, 60, b.len() - 40, b.len() - 1] {
            let e = Gguf::from_bytes(b[..cut].to_vec())
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("truncated"), "cut {cut}: {e}");
        }
    }

    #[test]
    fn unsupported_tensor_type_is_named() {
        let mut b = Writer::default()
            .tensor("blk.0.attn_q.weight", &[256], GgmlType::F32, vec![0; 1024])
            .finish();
        // Patch the type id (after name, n_dims, dim) to Q2_K (10).
        let pos = 24 + 8 + "blk.0.attn_q.weight".len() + 4 + 8;
        b[pos..pos + 4].copy_from_slice(&10u32.to_le_bytes());
        let e = Gguf::from_bytes(b).err().unwrap().to_string();
        assert!(
            e.contains("blk.0.attn_q.weight") && e.contains("Q2_K"),
            "{e}"
        );
    }

    #[test]
    fn old_version_rejected() {
        let mut b = sample();
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        let e = Gguf::from_bytes(b).err().unwrap().to_string();
        assert!(e.contains("version 1"), "{e}");
    }
}

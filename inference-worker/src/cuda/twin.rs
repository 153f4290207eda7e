//! The CPU twin (feature `cuda-twin`): the kernels of `cuda/*.cu` compiled for the CPU against
//! `cuda/twin/twin.hpp` by build.rs, launched by name with the geometry of [`super::launch`].
//! Device addresses in the parameter blocks are host addresses here.

use std::ffi::{CStr, CString, c_char, c_void};

use super::device::{DevPtr, Gpu, GpuError};
use super::launch::Launch;

unsafe extern "C" {
    fn sy_twin_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        params: *const c_void,
        params_size: u32,
    ) -> i32;
    fn sy_twin_kernel_name(i: u32) -> *const c_char;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TwinError {
    #[error("the twin has no kernel `{0}`")]
    NoKernel(String),
    #[error("kernel `{0}` takes a parameter block of another size")]
    ParamsSize(String),
    #[error("kernel `{0}`: empty grid or a block that is not whole warps")]
    Geometry(String),
}

/// Runs `l` on the CPU with `params` (the kernel's parameter block, `#[repr(C)]` from `abi`).
///
/// # Safety
/// Every address in `params` must point to host memory of the size the kernel reads or writes
/// for this launch, as it would have to on the GPU.
pub unsafe fn launch<P: Copy>(l: &Launch, params: &P) -> Result<(), TwinError> {
    let name =
        CString::new(l.kernel.as_str()).map_err(|_| TwinError::NoKernel(l.kernel.clone()))?;
    // SAFETY: the name, grid and block outlive the call; `params` points to
    // `size_of::<P>()` bytes, which the twin checks against the kernel's own parameter size;
    // the caller vouches for the addresses inside it.
    let rc = unsafe {
        sy_twin_launch(
            name.as_ptr(),
            l.grid.as_ptr(),
            l.block.as_ptr(),
            (params as *const P).cast(),
            std::mem::size_of::<P>() as u32,
        )
    };
    match rc {
        0 => Ok(()),
        -1 => Err(TwinError::NoKernel(l.kernel.clone())),
        -2 => Err(TwinError::ParamsSize(l.kernel.clone())),
        _ => Err(TwinError::Geometry(l.kernel.clone())),
    }
}

/// Names of the kernels the twin has, sorted.
pub fn kernels() -> Vec<String> {
    let mut v = Vec::new();
    for i in 0.. {
        // SAFETY: returns a static NUL-terminated name or null past the last.
        let p = unsafe { sy_twin_kernel_name(i) };
        if p.is_null() {
            break;
        }
        // SAFETY: non-null, NUL-terminated, static.
        v.push(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
    }
    v.sort();
    v
}

/// The twin as a [`Gpu`]: allocations are host memory, launches run the kernels' source on
/// CPU threads, in order, to completion.
#[derive(Default)]
pub struct TwinGpu {
    /// Live allocations by start address (16-byte aligned words, as device memory is).
    bufs: std::collections::BTreeMap<u64, Vec<u128>>,
    /// Bytes allocated so far.
    used: usize,
    /// The memory the twin pretends to have.
    capacity: usize,
    /// Bytes copied back to the host so far (what would cross PCIe).
    downloaded: usize,
}

impl TwinGpu {
    /// A twin "device" of `capacity` bytes.
    pub fn new(capacity: usize) -> TwinGpu {
        TwinGpu {
            capacity,
            ..Default::default()
        }
    }

    /// Bytes downloaded so far.
    pub fn downloaded_bytes(&self) -> usize {
        self.downloaded
    }

    /// The allocation holding `[p, p + n)`, or an error naming the range.
    fn range(&mut self, p: u64, n: usize) -> Result<*mut u8, GpuError> {
        let (start, buf) = self
            .bufs
            .range_mut(..=p)
            .next_back()
            .ok_or_else(|| GpuError::Bad(format!("twin: {p:#x} is not device memory")))?;
        let off = (p - start) as usize;
        if off + n > buf.len() * 16 {
            return Err(GpuError::Bad(format!(
                "twin: [{p:#x}, +{n}) runs past its allocation of {} bytes",
                buf.len() * 16
            )));
        }
        // SAFETY: `off + n` is within the allocation.
        Ok(unsafe { buf.as_mut_ptr().cast::<u8>().add(off) })
    }
}

impl Gpu for TwinGpu {
    fn describe(&self) -> String {
        format!("CPU twin ({} MiB)", self.capacity >> 20)
    }

    fn sm_count(&self) -> usize {
        8
    }

    fn free_bytes(&self) -> Result<usize, GpuError> {
        Ok(self.capacity.saturating_sub(self.used))
    }

    fn alloc(&mut self, bytes: usize, what: &str) -> Result<DevPtr, GpuError> {
        if self.used + bytes > self.capacity {
            return Err(GpuError::OutOfMemory {
                what: what.into(),
                bytes,
            });
        }
        let mut v = vec![0u128; bytes.div_ceil(16).max(1)];
        let p = v.as_mut_ptr() as u64;
        self.bufs.insert(p, v);
        self.used += bytes;
        Ok(p)
    }

    fn upload(&mut self, dst: DevPtr, src: &[u8]) -> Result<(), GpuError> {
        let d = self.range(dst, src.len())?;
        // SAFETY: `d` has room for `src.len()` bytes (checked) and host memory never
        // overlaps a twin allocation the caller borrows immutably.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), d, src.len()) };
        Ok(())
    }

    fn download(&mut self, src: DevPtr, dst: &mut [u8]) -> Result<(), GpuError> {
        let s = self.range(src, dst.len())?;
        // SAFETY: as in `upload`.
        unsafe { std::ptr::copy_nonoverlapping(s, dst.as_mut_ptr(), dst.len()) };
        self.downloaded += dst.len();
        Ok(())
    }

    unsafe fn launch_raw(&mut self, l: &Launch, params: &[u8]) -> Result<(), GpuError> {
        // The kernel reads its block as its struct: give it 8-byte alignment.
        let mut words = vec![0u64; params.len().div_ceil(8)];
        // SAFETY: `words` holds at least `params.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                params.as_ptr(),
                words.as_mut_ptr().cast::<u8>(),
                params.len(),
            )
        };
        let name = CString::new(l.kernel.as_str())
            .map_err(|_| GpuError::Bad(format!("kernel name {:?}", l.kernel)))?;
        // SAFETY: the caller vouches for the addresses in the block; the twin checks its size.
        let rc = unsafe {
            sy_twin_launch(
                name.as_ptr(),
                l.grid.as_ptr(),
                l.block.as_ptr(),
                words.as_ptr().cast(),
                params.len() as u32,
            )
        };
        match rc {
            0 => Ok(()),
            -1 => Err(GpuError::Bad(
                TwinError::NoKernel(l.kernel.clone()).to_string(),
            )),
            -2 => Err(GpuError::Bad(
                TwinError::ParamsSize(l.kernel.clone()).to_string(),
            )),
            _ => Err(GpuError::Bad(
                TwinError::Geometry(l.kernel.clone()).to_string(),
            )),
        }
    }
}

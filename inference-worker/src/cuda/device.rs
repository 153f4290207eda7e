//! The device the CUDA forward pass runs on: allocate, copy, launch, and (on a GPU) capture
//! launches into graphs. Two implementations: the GPU through the driver API (`driver`,
//! feature `cuda`) and the CPU twin (`twin::TwinGpu`, feature `cuda-twin`), which runs the same
//! kernels' source on threads, so the whole forward of `forward` is tested in CI on the
//! twin, graphs aside.

use super::launch::Launch;

/// A device address (under the twin, a host address).
pub type DevPtr = u64;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{0}")]
    Driver(String),
    #[error("out of device memory: {what} needs {bytes} bytes")]
    OutOfMemory { what: String, bytes: usize },
    #[error("{0}")]
    Bad(String),
}

/// A captured sequence of launches, replayed as one (a CUDA graph).
pub type GraphId = usize;

/// See the module docs. Work is ordered as issued (one stream).
pub trait Gpu {
    /// The device in words (name, memory, compute capability).
    fn describe(&self) -> String;

    /// Streaming multiprocessors (the twin reports a nominal count): sizes attention splits.
    fn sm_count(&self) -> usize;

    /// Bytes free on the device now.
    fn free_bytes(&self) -> Result<usize, GpuError>;

    /// `bytes` of zeroed memory, 256-byte aligned, alive as long as the device; `what` names
    /// it in an out-of-memory error.
    fn alloc(&mut self, bytes: usize, what: &str) -> Result<DevPtr, GpuError>;

    /// Copies `src` to `dst`; `src` may be reused once this returns.
    fn upload(&mut self, dst: DevPtr, src: &[u8]) -> Result<(), GpuError>;

    /// Waits for the work issued so far, then copies `dst.len()` bytes from `src`.
    fn download(&mut self, src: DevPtr, dst: &mut [u8]) -> Result<(), GpuError>;

    /// Launches `l` with the kernel's parameter block `params`.
    ///
    /// # Safety
    /// `params` must be the kernel's parameter block (an `abi` struct's bytes) and every
    /// address in it must point to device memory of the size the kernel uses for `l`.
    unsafe fn launch_raw(&mut self, l: &Launch, params: &[u8]) -> Result<(), GpuError>;

    /// Starts recording launches into a graph instead of running them; `false` when the
    /// device has no graphs (the caller then just runs them).
    fn begin_capture(&mut self) -> Result<bool, GpuError> {
        Ok(false)
    }

    /// Ends the recording begun by [`Gpu::begin_capture`].
    fn end_capture(&mut self) -> Result<GraphId, GpuError> {
        Err(GpuError::Bad("this device has no graphs".into()))
    }

    /// Runs a recorded graph.
    fn replay(&mut self, _g: GraphId) -> Result<(), GpuError> {
        Err(GpuError::Bad("this device has no graphs".into()))
    }
}

/// The bytes of a parameter block (`abi` structs are `repr(C)` plain data).
pub fn param_bytes<P: Copy>(p: &P) -> &[u8] {
    // SAFETY: `P` is a `repr(C)` struct of integers with no padding (`abi` asserts the sizes
    // of every parameter block against `common.cuh`), so all its bytes are initialised.
    unsafe { std::slice::from_raw_parts((p as *const P).cast::<u8>(), std::mem::size_of::<P>()) }
}

/// Typed helpers over [`Gpu`].
pub trait GpuExt: Gpu {
    /// Launches `l` with the parameter block `p`.
    ///
    /// # Safety
    /// As [`Gpu::launch_raw`].
    unsafe fn launch<P: Copy>(&mut self, l: &Launch, p: &P) -> Result<(), GpuError> {
        // SAFETY: forwarded to the caller.
        unsafe { self.launch_raw(l, param_bytes(p)) }
    }

    /// Uploads plain values.
    fn upload_slice<T: Copy>(&mut self, dst: DevPtr, v: &[T]) -> Result<(), GpuError> {
        // SAFETY: plain-old-data slices (u32, f32) have no padding.
        let b = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), size_of_val(v)) };
        self.upload(dst, b)
    }

    /// Downloads `n` plain values.
    fn download_vec<T: Copy + Default>(
        &mut self,
        src: DevPtr,
        n: usize,
    ) -> Result<Vec<T>, GpuError> {
        let mut v = vec![T::default(); n];
        // SAFETY: `v` holds n values of a plain-old-data type (u32, f32): any bytes are valid.
        let b = unsafe {
            std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), size_of_val(&v[..]))
        };
        self.download(src, b)?;
        Ok(v)
    }

    /// Allocates and fills.
    fn alloc_with(&mut self, bytes: &[u8], what: &str) -> Result<DevPtr, GpuError> {
        let p = self.alloc(bytes.len(), what)?;
        self.upload(p, bytes)?;
        Ok(p)
    }
}

impl<G: Gpu + ?Sized> GpuExt for G {}

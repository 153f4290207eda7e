//! The GPU as a [`Gpu`] (feature `cuda`): the CUDA driver API through cudarc, loaded at run
//! time (`dynamic-loading`: the build needs no toolkit, and a machine without a driver gets an
//! error, never a panic: cudarc panics when it first touches a missing libcuda, so
//! [`probe`] checks for the library before anything else calls into it).
//!
//! One primary context and one non-blocking stream per device; every call makes the context
//! current on the calling thread first (the engine thread steps, another thread may load).
//! The kernels are the cubins embedded by build.rs (`kernels`): sm_90 on 9.0, sm_80 on 8.x,
//! else the compute_80 PTX, which the driver compiles at load.

use std::collections::HashMap;
use std::ffi::{CString, c_void};

use cudarc::driver::{result, sys};

use super::device::{DevPtr, Gpu, GpuError, GraphId};
use super::kernels;
use super::launch::Launch;

fn drv(what: &str) -> impl Fn(result::DriverError) -> GpuError + '_ {
    move |e| GpuError::Driver(format!("{what}: {e:?}"))
}

/// Whether GPU `ordinal` can be driven: the driver library is present, initialises, and
/// has that device. The message says which of these failed.
pub fn probe(ordinal: usize) -> Result<(), GpuError> {
    // SAFETY: only tries to open the library by its usual names.
    if !unsafe { sys::is_culib_present() } {
        return Err(GpuError::Driver(
            "no CUDA driver on this machine (libcuda.so could not be loaded; is the NVIDIA driver installed?)"
                .into(),
        ));
    }
    result::init().map_err(drv("cuInit (is a GPU visible to this process?)"))?;
    let n = result::device::get_count().map_err(drv("cuDeviceGetCount"))?;
    if ordinal >= n.max(0) as usize {
        return Err(GpuError::Driver(format!(
            "no CUDA device {ordinal}: this machine has {n}"
        )));
    }
    Ok(())
}

/// See the module docs.
pub struct CudaGpu {
    ordinal: usize,
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    name: String,
    cc: (i32, i32),
    sms: usize,
    total: usize,
    modules: Vec<sys::CUmodule>,
    funcs: HashMap<String, sys::CUfunction>,
    allocs: Vec<sys::CUdeviceptr>,
    graphs: Vec<(sys::CUgraph, sys::CUgraphExec)>,
    capturing: bool,
}

// SAFETY: the handles are process-wide driver objects; every method takes `&mut self` (or
// only reads plain fields) and makes the context current on the calling thread first.
unsafe impl Send for CudaGpu {}

impl CudaGpu {
    /// Opens GPU `ordinal` and loads the kernels.
    pub fn new(ordinal: usize) -> Result<CudaGpu, GpuError> {
        probe(ordinal)?;
        let dev = result::device::get(ordinal as i32).map_err(drv("cuDeviceGet"))?;
        // SAFETY: `dev` is a valid device from cuDeviceGet.
        let ctx =
            unsafe { result::primary_ctx::retain(dev) }.map_err(drv("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: `ctx` was just retained.
        unsafe { result::ctx::set_current(ctx) }.map_err(drv("cuCtxSetCurrent"))?;
        let attr = |a| {
            // SAFETY: valid device and attribute.
            unsafe { result::device::get_attribute(dev, a) }.map_err(drv("cuDeviceGetAttribute"))
        };
        use sys::CUdevice_attribute as A;
        let cc = (
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as usize;
        if cc.0 < 8 {
            return Err(GpuError::Driver(format!(
                "CUDA device {ordinal} has compute capability {}.{}; the kernels need 8.0 or newer",
                cc.0, cc.1
            )));
        }
        let name = result::device::get_name(dev).unwrap_or_else(|_| "CUDA device".into());
        // SAFETY: valid device.
        let total = unsafe { result::device::total_mem(dev) }.map_err(drv("cuDeviceTotalMem"))?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(drv("cuStreamCreate"))?;
        let mut g = CudaGpu {
            ordinal,
            dev,
            ctx,
            stream,
            name,
            cc,
            sms,
            total,
            modules: Vec::new(),
            funcs: HashMap::new(),
            allocs: Vec::new(),
            graphs: Vec::new(),
            capturing: false,
        };
        for m in kernels::MODULES {
            let image = kernels::image(m, cc.0 as u32, cc.1 as u32);
            // The driver reads the image as a NUL-terminated string (PTX) or an ELF (cubin):
            // an 8-byte aligned copy with a trailing NUL serves both.
            let mut words = vec![0u64; image.len() / 8 + 1];
            // SAFETY: `words` holds image.len() + 1 or more bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    image.as_ptr(),
                    words.as_mut_ptr().cast::<u8>(),
                    image.len(),
                )
            };
            // SAFETY: a complete cubin or PTX image, NUL-terminated.
            let module = unsafe { result::module::load_data(words.as_ptr().cast()) }
                .map_err(drv(&format!("loading kernels `{}`", m.name)))?;
            g.modules.push(module);
        }
        // Every kernel up front: a missing one is a load error, and no module lookup happens
        // later (some driver calls are not allowed while a graph is being captured).
        for k in super::launch::all_kernels() {
            g.function(&k)?;
        }
        Ok(g)
    }

    fn current(&self) -> Result<(), GpuError> {
        // SAFETY: the context stays retained while `self` lives.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(drv("cuCtxSetCurrent"))
    }

    fn function(&mut self, name: &str) -> Result<sys::CUfunction, GpuError> {
        if let Some(&f) = self.funcs.get(name) {
            return Ok(f);
        }
        let c = CString::new(name).map_err(|_| GpuError::Bad(format!("kernel name {name:?}")))?;
        for &m in &self.modules {
            // SAFETY: `m` is a loaded module.
            if let Ok(f) = unsafe { result::module::get_function(m, c.clone()) } {
                self.funcs.insert(name.to_string(), f);
                return Ok(f);
            }
        }
        Err(GpuError::Bad(format!(
            "no kernel `{name}` in the embedded cubins"
        )))
    }

    /// Waits for everything issued.
    pub fn synchronize(&mut self) -> Result<(), GpuError> {
        self.current()?;
        // SAFETY: our stream.
        unsafe { result::stream::synchronize(self.stream) }.map_err(drv("kernel execution"))
    }

    /// Device-to-device copy of `bytes` (the bandwidth probe).
    pub fn copy(&mut self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), GpuError> {
        self.current()?;
        // SAFETY: both ranges were allocated by `alloc` with at least `bytes` bytes.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream) }
            .map_err(drv("cuMemcpyDtoDAsync"))
    }

    /// Milliseconds `f` takes on the stream, timed by events.
    pub fn time<R>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<R, GpuError>,
    ) -> Result<(R, f32), GpuError> {
        self.current()?;
        let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
        let a = result::event::create(flags).map_err(drv("cuEventCreate"))?;
        let b = result::event::create(flags).map_err(drv("cuEventCreate"))?;
        // SAFETY: events and stream are valid; destroyed below.
        let out = unsafe {
            result::event::record(a, self.stream).map_err(drv("cuEventRecord"))?;
            let r = f(self)?;
            result::event::record(b, self.stream).map_err(drv("cuEventRecord"))?;
            result::event::synchronize(b).map_err(drv("kernel execution"))?;
            let ms = result::event::elapsed(a, b).map_err(drv("cuEventElapsedTime"))?;
            let _ = result::event::destroy(a);
            let _ = result::event::destroy(b);
            (r, ms)
        };
        Ok(out)
    }
}

impl Gpu for CudaGpu {
    fn describe(&self) -> String {
        format!(
            "cuda:{} {} ({:.0} GiB, sm_{}{}, {} SMs)",
            self.ordinal,
            self.name,
            self.total as f64 / f64::from(1u32 << 30),
            self.cc.0,
            self.cc.1,
            self.sms
        )
    }

    fn sm_count(&self) -> usize {
        self.sms
    }

    fn free_bytes(&self) -> Result<usize, GpuError> {
        self.current()?;
        Ok(result::mem_get_info().map_err(drv("cuMemGetInfo"))?.0)
    }

    fn alloc(&mut self, bytes: usize, what: &str) -> Result<DevPtr, GpuError> {
        self.current()?;
        // SAFETY: plain allocation; freed in Drop.
        let p = unsafe { result::malloc_sync(bytes.max(256)) }.map_err(|e| {
            if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                GpuError::OutOfMemory {
                    what: what.into(),
                    bytes,
                }
            } else {
                GpuError::Driver(format!("cuMemAlloc for {what}: {e:?}"))
            }
        })?;
        self.allocs.push(p);
        // SAFETY: `p` holds `bytes` bytes.
        unsafe { result::memset_d8_async(p, 0, bytes.max(256), self.stream) }
            .map_err(drv("cuMemsetD8Async"))?;
        Ok(p)
    }

    fn upload(&mut self, dst: DevPtr, src: &[u8]) -> Result<(), GpuError> {
        self.current()?;
        // SAFETY: `dst` is device memory of at least src.len() bytes (the caller's layout). A
        // copy from pageable memory returns once `src` has been staged, so it may be reused.
        unsafe { result::memcpy_htod_async(dst, src, self.stream) }
            .map_err(drv("cuMemcpyHtoDAsync"))
    }

    fn download(&mut self, src: DevPtr, dst: &mut [u8]) -> Result<(), GpuError> {
        self.current()?;
        // SAFETY: `src` holds dst.len() bytes; the stream is synchronised before `dst` is read.
        unsafe {
            result::memcpy_dtoh_async(dst, src, self.stream).map_err(drv("cuMemcpyDtoHAsync"))?;
            result::stream::synchronize(self.stream).map_err(drv("kernel execution"))
        }
    }

    unsafe fn launch_raw(&mut self, l: &Launch, params: &[u8]) -> Result<(), GpuError> {
        self.current()?;
        let f = self.function(&l.kernel)?;
        let mut words = vec![0u64; params.len().div_ceil(8)];
        // SAFETY: `words` holds params.len() bytes or more.
        unsafe {
            std::ptr::copy_nonoverlapping(
                params.as_ptr(),
                words.as_mut_ptr().cast::<u8>(),
                params.len(),
            )
        };
        // One parameter: the block, by value (the driver copies it at the call).
        let mut args = [words.as_mut_ptr().cast::<c_void>()];
        // SAFETY: the caller vouches for the block's addresses; the geometry is the kernel's.
        unsafe {
            result::launch_kernel(
                f,
                (l.grid[0], l.grid[1], l.grid[2]),
                (l.block[0], l.block[1], l.block[2]),
                0,
                self.stream,
                &mut args,
            )
        }
        .map_err(|e| GpuError::Driver(format!("launching {}: {e:?}", l.kernel)))
    }

    fn begin_capture(&mut self) -> Result<bool, GpuError> {
        self.current()?;
        // SAFETY: our stream, not capturing.
        unsafe {
            result::stream::begin_capture(
                self.stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .map_err(drv("cuStreamBeginCapture"))?;
        self.capturing = true;
        Ok(true)
    }

    fn end_capture(&mut self) -> Result<GraphId, GpuError> {
        self.current()?;
        self.capturing = false;
        // SAFETY: the stream is capturing; the graph and its instance are destroyed in Drop.
        unsafe {
            let graph =
                result::stream::end_capture(self.stream).map_err(drv("cuStreamEndCapture"))?;
            let exec = result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0))
                .map_err(drv("cuGraphInstantiate"))?;
            result::graph::upload(exec, self.stream).map_err(drv("cuGraphUpload"))?;
            self.graphs.push((graph, exec));
        }
        Ok(self.graphs.len() - 1)
    }

    fn replay(&mut self, g: GraphId) -> Result<(), GpuError> {
        self.current()?;
        let &(_, exec) = self
            .graphs
            .get(g)
            .ok_or_else(|| GpuError::Bad(format!("no graph {g}")))?;
        // SAFETY: an instantiated graph of this context.
        unsafe { result::graph::launch(exec, self.stream) }.map_err(drv("cuGraphLaunch"))
    }
}

impl Drop for CudaGpu {
    fn drop(&mut self) {
        if self.current().is_err() {
            return;
        }
        // SAFETY: every handle below was created by this value and is released once.
        unsafe {
            if self.capturing {
                let _ = result::stream::end_capture(self.stream);
            }
            let _ = result::stream::synchronize(self.stream);
            for (g, e) in self.graphs.drain(..) {
                let _ = result::graph::exec_destroy(e);
                let _ = result::graph::destroy(g);
            }
            for p in self.allocs.drain(..) {
                let _ = result::free_sync(p);
            }
            for m in self.modules.drain(..) {
                let _ = result::module::unload(m);
            }
            let _ = result::stream::destroy(self.stream);
            let _ = result::primary_ctx::release(self.dev);
        }
    }
}

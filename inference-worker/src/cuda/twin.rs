//! The CPU twin (feature `cuda-twin`): the kernels of `cuda/*.cu` compiled for the CPU against
//! `cuda/twin/twin.hpp` by build.rs, launched by name with the geometry of [`super::launch`].
//! Device addresses in the parameter blocks are host addresses here.

use std::ffi::{CStr, CString, c_char, c_void};

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

//! The kernels compiled ahead of time (feature `cuda`): per `cuda/*.cu` module, cubins for
//! sm_80 and sm_90 and compute_80 PTX for anything newer (the driver JITs it), built by
//! build.rs with NVRTC so the worker never compiles kernels at run time.

/// One compiled `.cu` file.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    pub name: &'static str,
    pub sm80: &'static [u8],
    pub sm90: &'static [u8],
    pub ptx80: &'static [u8],
}

/// Every module, by file name without `.cu`.
pub const MODULES: &[Module] = include!(concat!(env!("OUT_DIR"), "/modules.rs"));

/// The image to load on a device of compute capability `major.minor`: the exact cubin for
/// 8.x (x >= 0, binary-compatible within a major) and 9.0, else the PTX.
pub fn image(m: &Module, major: u32, minor: u32) -> &'static [u8] {
    match (major, minor) {
        (8, _) => m.sm80,
        (9, 0) => m.sm90,
        _ => m.ptx80,
    }
}

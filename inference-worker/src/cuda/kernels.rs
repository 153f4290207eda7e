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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_is_embedded() {
        assert!(MODULES.len() >= 5);
        for m in MODULES {
            // ELF cubins and PTX text naming its target.
            assert_eq!(&m.sm80[..4], b"\x7fELF", "{}", m.name);
            assert_eq!(&m.sm90[..4], b"\x7fELF", "{}", m.name);
            let ptx = String::from_utf8_lossy(m.ptx80);
            assert!(ptx.contains(".target sm_80"), "{}", m.name);
        }
    }
}

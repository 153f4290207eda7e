//! The kernels embedded by feature `cuda` (build.rs, NVRTC): every module carries an sm_80 and
//! an sm_90 cubin and compute_80 PTX, and together they define every kernel the launch table
//! names.
#![cfg(feature = "cuda")]

use switchyard_worker::cuda::kernels::{MODULES, image};
use switchyard_worker::cuda::launch;

#[test]
fn every_module_has_both_cubins_and_ptx() {
    assert!(MODULES.len() >= 5);
    for m in MODULES {
        assert_eq!(&m.sm80[..4], b"\x7fELF", "{}", m.name);
        assert_eq!(&m.sm90[..4], b"\x7fELF", "{}", m.name);
        let ptx = String::from_utf8_lossy(m.ptx80);
        assert!(ptx.contains(".target sm_80"), "{}", m.name);
        assert_eq!(image(m, 8, 6).as_ptr(), m.sm80.as_ptr());
        assert_eq!(image(m, 9, 0).as_ptr(), m.sm90.as_ptr());
        assert_eq!(image(m, 10, 0).as_ptr(), m.ptx80.as_ptr());
    }
}

#[test]
fn the_ptx_defines_every_kernel_of_the_launch_table() {
    let ptx: String = MODULES
        .iter()
        .map(|m| String::from_utf8_lossy(m.ptx80).into_owned())
        .collect();
    for k in launch::all_kernels() {
        assert!(
            ptx.contains(&format!(".entry {k}(")),
            "no kernel `{k}` in the embedded PTX"
        );
    }
}

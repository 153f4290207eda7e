//! What the CUDA backend needs besides a GPU: kernel parameter blocks (`abi`), weights repacked
//! into the kernels' 16-byte-aligned planes (`repack`), launch geometry and kernel names
//! (`launch`), the CPU twin that runs the kernels' own source without a GPU (`twin`, feature
//! `cuda-twin`) and the kernels compiled ahead of time for the GPU (`kernels`, feature `cuda`).
//!
//! The kernels live in `inference-worker/cuda/` (see its README for the list, the layouts and
//! the bytes each decode step moves); `abi`, `repack` and `launch` are plain Rust and build and
//! test everywhere.

pub mod abi;
pub mod device;
#[cfg(feature = "cuda")]
pub mod driver;
pub mod forward;
#[cfg(feature = "cuda")]
pub mod kernels;
pub mod launch;
pub mod repack;
#[cfg(feature = "cuda-twin")]
pub mod twin;

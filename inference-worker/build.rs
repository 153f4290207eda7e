//! Build script: nothing for the default build (no CUDA toolkit needed). With feature
//! `cuda-twin` it compiles the CPU twin of the kernels (`cuda/twin/launch.cpp`, C++20), with
//! ASan/UBSan when `SWITCHYARD_TWIN_SANITIZE=1`. With feature `cuda` it compiles every
//! `cuda/*.cu` with NVRTC (the pinned wheels of `cargo xtask cuda-tools`, found through
//! `SWITCHYARD_CUDA_TOOLS` or `<workspace>/target/cuda-tools`) into cubins for sm_80 and sm_90
//! and compute_80 PTX, embedded by `src/cuda/kernels.rs`.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let cuda = manifest.join("cuda");
    let sources = kernel_sources(&cuda);
    // NVRTC runs in its own process while the twin compiles.
    #[cfg(feature = "cuda")]
    let nvrtc = start_nvrtc(&manifest, &cuda, &sources);
    #[cfg(feature = "cuda-twin")]
    twin(&cuda, &sources);
    #[cfg(feature = "cuda")]
    finish_nvrtc(nvrtc, &sources);
    let _ = (&manifest, &cuda, &sources);
}

fn kernel_sources(cuda: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cuda)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(any(feature = "cuda", feature = "cuda-twin"))]
fn rerun_on_sources(cuda: &Path, sources: &[PathBuf]) {
    for p in sources {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    for h in [
        "common.cuh",
        "formats.cuh",
        "twin/twin.hpp",
        "twin/launch.cpp",
    ] {
        println!("cargo:rerun-if-changed={}", cuda.join(h).display());
    }
}

#[cfg(feature = "cuda-twin")]
fn twin(cuda: &Path, sources: &[PathBuf]) {
    rerun_on_sources(cuda, sources);
    println!("cargo:rerun-if-env-changed=SWITCHYARD_TWIN_SANITIZE");
    let sanitize = std::env::var("SWITCHYARD_TWIN_SANITIZE").is_ok_and(|v| v == "1");
    let mut b = cc::Build::new();
    b.cpp(true)
        .file(cuda.join("twin/launch.cpp"))
        .std("c++20")
        .define("SY_TWIN", None)
        // The GPU build does not contract a*b+c either (NVRTC --fmad=false): same roundings.
        .flag("-ffp-contract=off")
        .flag("-pthread")
        .flag_if_supported("-Wno-unknown-pragmas")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .opt_level(2);
    if sanitize {
        b.flag("-fsanitize=address,undefined")
            .flag("-fno-sanitize-recover=all")
            .flag("-fno-omit-frame-pointer")
            .opt_level(1);
        // Rust links with -nodefaultlibs: name the sanitizer runtimes.
        println!("cargo:rustc-link-lib=dylib=asan");
        println!("cargo:rustc-link-lib=dylib=ubsan");
    }
    b.compile("switchyard_cuda_twin");
    println!("cargo:rustc-link-lib=stdc++");
}

#[cfg(feature = "cuda")]
fn start_nvrtc(manifest: &Path, cuda: &Path, sources: &[PathBuf]) -> std::process::Child {
    rerun_on_sources(cuda, sources);
    println!("cargo:rerun-if-env-changed=SWITCHYARD_CUDA_TOOLS");
    let tools = std::env::var_os("SWITCHYARD_CUDA_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/cuda-tools"));
    let python = tools.join("bin/python");
    if !python.exists() {
        panic!(
            "feature `cuda` compiles the kernels with NVRTC from {}: run `cargo xtask cuda-tools` \
             first (or set SWITCHYARD_CUDA_TOOLS to such a venv)",
            tools.display()
        );
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    std::process::Command::new(&python)
        .arg(cuda.join("nvrtc_build.py"))
        .args([
            "--arch",
            "sm_80",
            "--arch",
            "sm_90",
            "--arch",
            "compute_80",
            "--out",
        ])
        .arg(&out)
        .args(sources)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", python.display()))
}

#[cfg(feature = "cuda")]
fn finish_nvrtc(mut child: std::process::Child, sources: &[PathBuf]) {
    match child.wait() {
        Ok(s) if s.success() => {}
        other => panic!("NVRTC failed ({other:?}); `cargo xtask cuda-check` shows the log"),
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    // kernels.rs includes this list of (module, sm_80 cubin, sm_90 cubin, compute_80 PTX).
    let mut list = String::from("&[\n");
    for s in sources {
        let stem = s.file_stem().and_then(|x| x.to_str()).unwrap_or_default();
        list += &format!(
            "    Module {{ name: {stem:?}, sm80: include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.sm_80.cubin\")), \
             sm90: include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.sm_90.cubin\")), \
             ptx80: include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.compute_80.ptx\")) }},\n"
        );
    }
    list += "]\n";
    if let Err(e) = std::fs::write(out.join("modules.rs"), list) {
        panic!("writing modules.rs: {e}");
    }
}

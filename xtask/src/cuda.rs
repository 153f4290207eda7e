//! The CUDA kernels' toolchain without a GPU or a CUDA install.
//!
//! - `cuda-tools`: a venv at `target/cuda-tools` (or `$SWITCHYARD_CUDA_TOOLS`) with the pinned
//!   PyPI wheels: NVRTC 12.9 (compiler), nvcc's wheel (ptxas, used by NVRTC for cubins) and the
//!   runtime headers. 12.9 emits PTX that the lent machines' driver (580, CUDA 13.0) can JIT.
//! - `cuda-check`: compiles every `inference-worker/cuda/*.cu` for sm_80 and sm_90 with
//!   NVRTC (`--ptxas-options=-v`, through `cuda/nvrtc_build.py`), parses each kernel's
//!   registers, stack, spills and shared memory, prints the table and fails on any kernel over
//!   `cuda/budgets.toml`. Then it proves that it can fail: the same check on the attention
//!   kernels squeezed to 32 registers (`-DSY_SQUEEZE=16`) must find spills.
//! - `cuda-test [--sanitize]`: the worker built with features `cuda` (embedded cubins) and
//!   `cuda-twin` (the kernels on the CPU), linted like `cargo xtask test` does (clippy-driver
//!   as the workspace wrapper, warnings denied), running `tests/cuda_twin.rs` and
//!   `tests/cuda_kernels.rs`; `--sanitize` runs the twin tests alone (feature `cuda-twin`)
//!   with the twin built with ASan and UBSan. `--workspace`
//!   keeps dependency features as in the main build, so only the worker is compiled again.

use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

/// The pinned wheels.
pub const WHEELS: [&str; 3] = [
    "nvidia-cuda-nvrtc-cu12==12.9.86",
    "nvidia-cuda-nvcc-cu12==12.9.86",
    "nvidia-cuda-runtime-cu12==12.9.79",
];
const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

fn tools_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_CUDA_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target/cuda-tools"))
}

fn cuda_dir() -> PathBuf {
    crate::root().join("inference-worker/cuda")
}

/// `cargo xtask cuda-tools`: creates the venv (once) and installs the pinned wheels (a no-op
/// when they are there).
pub fn tools() -> Result<(), String> {
    let dir = tools_dir();
    let python = dir.join("bin/python");
    if !python.exists() {
        let mut c = Command::new("python3");
        c.arg("-m").arg("venv").arg(&dir);
        crate::run(c, "python3 -m venv")?;
    }
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .args(WHEELS);
    crate::run(pip, "pip install (CUDA wheels)")?;
    println!("cuda-tools: {} ready", dir.display());
    Ok(())
}

/// `cargo xtask cuda-test [--sanitize]`.
pub fn test(args: &[String]) -> Result<(), String> {
    let sanitize = match args {
        [] => false,
        [a] if a == "--sanitize" => true,
        _ => return Err(format!("cuda-test: unexpected arguments {args:?}")),
    };
    let mut c = crate::cargo();
    c.args(["test", "--workspace"]);
    if sanitize {
        // The twin alone: NVRTC has nothing to do with the sanitizers.
        c.args([
            "--features",
            "switchyard-worker/cuda-twin",
            "--test",
            "cuda_twin",
        ])
        .env("SWITCHYARD_TWIN_SANITIZE", "1");
    } else {
        tools()?;
        c.args([
            "--features",
            "switchyard-worker/cuda,switchyard-worker/cuda-twin",
            "--test",
            "cuda_twin",
            "--test",
            "cuda_kernels",
            // The whole CUDA forward on the twin against the CPU backend, and the GPU tests
            // (which skip without SWITCHYARD_GPU=1 but for the no-driver error).
            "--test",
            "cuda_forward",
            "--test",
            "cuda_gpu",
        ]);
    }
    if let Some(d) = crate::clippy_driver() {
        crate::lint(&mut c, &d);
    }
    crate::run(c, "cargo test (CUDA twin and embedded kernels)")
}

/// ptxas' report for one kernel and architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelReport {
    pub kernel: String,
    pub arch: String,
    pub registers: u32,
    pub stack: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub smem: u32,
}

/// The number just before `unit` in `line` ("... 16 bytes spill stores" → 16).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let at = line.find(unit)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

/// Parses ptxas' `-v` lines (as NVRTC logs them) into one report per compiled kernel.
pub fn parse(log: &str) -> Vec<KernelReport> {
    let mut out: Vec<KernelReport> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let kernel = parts.next().unwrap_or_default().to_string();
            let arch = parts.nth(1).unwrap_or_default().to_string();
            out.push(KernelReport {
                kernel,
                arch,
                registers: 0,
                stack: 0,
                spill_stores: 0,
                spill_loads: 0,
                smem: 0,
            });
        } else if let Some(k) = out.last_mut() {
            if line.contains("bytes stack frame") {
                k.stack = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used ") && line.contains("registers") {
                k.registers = line
                    .split("Used ")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                k.smem = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limit {
    registers: Option<u32>,
    smem: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternLimit {
    pattern: String,
    registers: Option<u32>,
    smem: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    default: Limit,
    #[serde(default)]
    kernel: Vec<PatternLimit>,
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
        }
    }
}

impl Budgets {
    pub fn parse(text: &str) -> Result<Budgets, String> {
        toml::from_str(text).map_err(|e| format!("budgets.toml: {e}"))
    }

    /// (register cap, shared memory cap) for `kernel`.
    pub fn caps(&self, kernel: &str) -> (u32, u32) {
        let best = self
            .kernel
            .iter()
            .filter(|p| glob(&p.pattern, kernel))
            .max_by_key(|p| p.pattern.len());
        let reg = best
            .and_then(|p| p.registers)
            .or(self.default.registers)
            .unwrap_or(255);
        let smem = best
            .and_then(|p| p.smem)
            .or(self.default.smem)
            .unwrap_or(49152);
        (reg, smem)
    }

    /// Every way the reports break the budget (empty: within it).
    pub fn violations(&self, reports: &[KernelReport]) -> Vec<String> {
        let mut v = Vec::new();
        for r in reports {
            let (reg, smem) = self.caps(&r.kernel);
            let at = format!("{} ({})", r.kernel, r.arch);
            if r.spill_stores > 0 || r.spill_loads > 0 {
                v.push(format!(
                    "{at}: spills {} bytes stored, {} loaded",
                    r.spill_stores, r.spill_loads
                ));
            }
            if r.stack > 0 {
                v.push(format!("{at}: {} bytes of stack", r.stack));
            }
            if r.registers > reg {
                v.push(format!("{at}: {} registers, cap {reg}", r.registers));
            }
            if r.smem > smem {
                v.push(format!("{at}: {} bytes shared memory, cap {smem}", r.smem));
            }
        }
        v
    }
}

/// Compiles `files` for `archs` with NVRTC; the log and whether every file compiled.
fn compile(files: &[PathBuf], archs: &[&str], extra: &[&str]) -> Result<(String, bool), String> {
    let python = tools_dir().join("bin/python");
    if !python.exists() {
        return Err(format!(
            "{} is missing: run `cargo xtask cuda-tools` first",
            python.display()
        ));
    }
    let mut c = Command::new(&python);
    c.arg(cuda_dir().join("nvrtc_build.py"));
    for a in archs {
        c.args(["--arch", a]);
    }
    for o in extra {
        c.arg(format!("--opt={o}"));
    }
    c.args(files);
    let out = c
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
    log.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((log, out.status.success()))
}

fn sources() -> Result<Vec<PathBuf>, String> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cuda_dir())
        .map_err(|e| format!("{}: {e}", cuda_dir().display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    v.sort();
    Ok(v)
}

/// `cargo xtask cuda-check`.
pub fn check() -> Result<(), String> {
    let budgets_path = cuda_dir().join("budgets.toml");
    let budgets = Budgets::parse(
        &std::fs::read_to_string(&budgets_path)
            .map_err(|e| format!("{}: {e}", budgets_path.display()))?,
    )?;
    let files = sources()?;
    let (log, ok) = compile(&files, &ARCHS, &[])?;
    if !ok {
        eprintln!("{log}");
        return Err("NVRTC could not compile the kernels (log above)".into());
    }
    let reports = parse(&log);
    if reports.is_empty() {
        return Err("NVRTC compiled but ptxas reported no kernels".into());
    }
    print_table(&reports, &budgets);
    let bad = budgets.violations(&reports);
    if !bad.is_empty() {
        for b in &bad {
            eprintln!("over budget: {b}");
        }
        return Err(format!("{} kernel budget violations", bad.len()));
    }
    let kernels = reports.len() / ARCHS.len();
    println!(
        "cuda-check: {kernels} kernels x {} archs within budget (no spills, no stack)",
        ARCHS.len()
    );

    // The check must be able to fail: squeezed to 32 registers, the attention kernels spill.
    let attention = [cuda_dir().join("attention.cu")];
    let (log, ok) = compile(&attention, &["sm_90"], &["-DSY_SQUEEZE=16"])?;
    let squeezed = budgets.violations(&parse(&log));
    if !ok || !squeezed.iter().any(|v| v.contains("spills")) {
        return Err(
            "self-test: attention kernels squeezed to 32 registers did not fail the \
                    budget with spills; the check cannot be trusted"
                .into(),
        );
    }
    println!(
        "cuda-check self-test: squeezed attention kernels fail as they must ({} violations, e.g. {})",
        squeezed.len(),
        squeezed[0]
    );
    Ok(())
}

/// One line per kernel: registers and shared memory on each arch, and the caps.
fn print_table(reports: &[KernelReport], budgets: &Budgets) {
    let mut names: Vec<&str> = reports.iter().map(|r| r.kernel.as_str()).collect();
    names.sort();
    names.dedup();
    println!(
        "{:<18} {:>8} {:>8} {:>8} {:>9}",
        "kernel", "regs 80", "regs 90", "smem B", "caps"
    );
    for n in names {
        let get = |arch: &str| reports.iter().find(|r| r.kernel == n && r.arch == arch);
        let (a, b) = (get("sm_80"), get("sm_90"));
        let regs =
            |r: Option<&KernelReport>| r.map_or("-".to_string(), |r| r.registers.to_string());
        let smem = a.or(b).map_or(0, |r| r.smem);
        let (rc, sc) = budgets.caps(n);
        println!(
            "{n:<18} {:>8} {:>8} {smem:>8} {:>9}",
            regs(a),
            regs(b),
            format!("{rc}/{sc}")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "== gemv.cu sm_90
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'gemv_q4_0_c1' for 'sm_90'
ptxas info    : Function properties for gemv_q4_0_c1
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 49 registers, used 0 barriers
ptxas info    : Compiling entry function 'attn_hd128_g4' for 'sm_90'
ptxas info    : Function properties for attn_hd128_g4
ptxas         .     376 bytes stack frame, 700 bytes spill stores, 852 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 376 bytes cumulative stack size, 16640 bytes smem
== end
";

    #[test]
    fn parses_ptxas_reports() {
        let r = parse(LOG);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelReport {
                kernel: "gemv_q4_0_c1".into(),
                arch: "sm_90".into(),
                registers: 49,
                stack: 0,
                spill_stores: 0,
                spill_loads: 0,
                smem: 0
            }
        );
        assert_eq!(
            (r[1].stack, r[1].spill_stores, r[1].spill_loads),
            (376, 700, 852)
        );
        assert_eq!((r[1].registers, r[1].smem), (32, 16640));
    }

    #[test]
    fn budgets_take_the_most_specific_pattern_and_catch_spills() {
        let b = Budgets::parse(
            "[default]\nregisters = 128\nsmem = 49152\n\
             [[kernel]]\npattern = \"gemv_*\"\nregisters = 96\n\
             [[kernel]]\npattern = \"gemv_*_c1\"\nregisters = 48\n",
        )
        .expect("parse");
        assert_eq!(b.caps("gemv_q4_0_c1"), (48, 49152));
        assert_eq!(b.caps("gemv_q4_0_c8"), (96, 49152));
        assert_eq!(b.caps("topk"), (128, 49152));
        let v = b.violations(&parse(LOG));
        assert!(
            v.iter()
                .any(|s| s.contains("gemv_q4_0_c1") && s.contains("49 registers"))
        );
        assert!(
            v.iter()
                .any(|s| s.contains("attn_hd128_g4") && s.contains("spills"))
        );
        assert!(v.iter().any(|s| s.contains("376 bytes of stack")));
        // The repository's own budget file parses.
        let own = std::fs::read_to_string(cuda_dir().join("budgets.toml")).expect("read");
        Budgets::parse(&own).expect("budgets.toml");
    }

    #[test]
    fn glob_matches_runs() {
        assert!(glob("attn_*_g1", "attn_hd128_g1"));
        assert!(!glob("attn_*_g1", "attn_hd128_g2"));
        assert!(glob("topk", "topk"));
        assert!(!glob("topk", "topk2"));
        assert!(glob("*", ""));
    }
}

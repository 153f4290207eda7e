//! End-to-end test support: the mock upstream, the real `switchyard` binary as a child
//! process, and a small HTTP client that keeps stream frames as they arrived.
//!
//! Tests start the same binary users run, with a config written to a temp dir, listening on
//! `127.0.0.1:0`; the harness reads the address from the ready line the gateway prints.

pub mod browser;
pub mod client;
pub mod mock;
pub mod otlp;
pub mod plugins;
pub mod postgres;
pub mod redis;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root (where the target directory lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Path to a workspace binary in the profile tests were built with, building it if it is
/// missing (`cargo test -p switchyard-tests` alone does not build other packages' bins).
///
/// Tests (debug) build every binary of the workspace, as `cargo xtask test` does before
/// them: `cargo build -p <package>` unifies dependency features for that package alone, so
/// its artifacts differ from the workspace build's and it would compile the gateway a second
/// time (minutes, on CI) instead of finding it fresh. The benchmark (release) builds just
/// the binary, as the README's `cargo build --release -p switchyard -p switchyard-tests`.
pub fn binary(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target_dir().join(profile).join(name);
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().expect("lock");
    // In debug one build makes every binary.
    let key = if profile == "debug" { "*" } else { name };
    if !built.iter().any(|b| b == key) {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace_root()).args(["build", "--quiet"]);
        if profile == "debug" {
            cmd.args(["--workspace", "--bins"]);
        } else {
            cmd.args(["-p", package, "--bin", name]);
        }
        // Cargo sets per-package variables for the test process; some build scripts (ring's)
        // track them, so passing them on would rebuild dependencies on every run. Settings
        // that are part of a build's fingerprint (the target folder, incremental, profile
        // overrides) pass on, or the binaries just built would be rebuilt.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            let keep = matches!(
                k.as_ref(),
                "CARGO_HOME" | "CARGO_TARGET_DIR" | "CARGO_INCREMENTAL"
            ) || k.starts_with("CARGO_BUILD_")
                || k.starts_with("CARGO_REGISTRIES_")
                || k.starts_with("CARGO_NET_")
                || k.starts_with("CARGO_PROFILE_");
            if (k.starts_with("CARGO_") && !keep) || k == "OUT_DIR" {
                cmd.env_remove(k.as_ref());
            }
        }
        if profile == "release" {
            cmd.arg("--release");
        }
        // A first (or stale) release build of the gateway takes minutes; say so instead of
        // looking hung. Test harnesses capture this line; the benchmark shows it.
        eprintln!("building {package}/{name} ({profile}) if stale ...");
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build for {package}/{name} failed");
        built.push(key.to_string());
    }
    path
}

/// True when `SWITCHYARD_CI=1`: optional prerequisites become mandatory.
pub fn ci() -> bool {
    std::env::var("SWITCHYARD_CI").is_ok_and(|v| v == "1")
}

/// Skip (return true after printing why) unless in CI, where a missing prerequisite fails.
pub fn skip_unless(available: bool, what: &str) -> bool {
    if available {
        return false;
    }
    assert!(!ci(), "SWITCHYARD_CI=1 but {what} is not available");
    eprintln!("SKIPPED: {what} is not available (set SWITCHYARD_CI=1 to make this a failure)");
    true
}

/// A running gateway process. Killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub scheme: &'static str,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Gateway {
    /// Start `switchyard serve` with `config` (TOML text).
    pub fn start(config: &str) -> Gateway {
        Self::start_with_env(config, &[])
    }

    /// Start with extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("switchyard.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut cmd = Command::new(binary("switchyard", "switchyard"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("SWITCHYARD_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env_remove("SWITCHYARD_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchyard");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("SWITCHYARD_TEST_ECHO").is_some() {
                    eprintln!("[gateway] {line}");
                }
                let mut l = log2.lock().expect("lock");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(rest) = line.strip_prefix("switchyard listening on ") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "gateway did not become ready; its log:\n{}",
                    log.lock().expect("lock")
                );
            }
        };
        let (scheme, hostport) = url.split_once("://").expect("scheme");
        Gateway {
            child,
            addr: hostport.parse().expect("addr"),
            scheme: if scheme == "https" { "https" } else { "http" },
            dir,
            config_path,
            log,
        }
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// The JSON access log lines so far (`[telemetry] log_format = "json"`), in order.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .collect()
    }

    /// Wait until the log contains `needle` (logs arrive asynchronously).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Wait for exit up to `timeout`; the exit status if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `switchyard <args>` to completion: (exit code, stdout, stderr).
pub fn run_switchyard(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(binary("switchyard", "switchyard"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("SWITCHYARD_CONFIG")
        .env("SWITCHYARD_LOG_FORMAT", "text")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run switchyard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A minimal config with one backend named `mock` and the given routes appended. The
/// backend forwards the client's `x-mock` header (the mock's per-request behaviour).
pub fn config_with(backend_url: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[[backends]]
name = "mock"
url = "{backend_url}"
forward_headers = ["x-mock"]
first_byte_timeout_secs = 5
timeout_secs = 10

{extra}"#
    )
}

/// SmolLM2's GGUF in the model cache (`cargo xtask fetch-models` puts it there), or `None`
/// after saying the test is skipped (a failure under `SWITCHYARD_CI=1`).
pub fn smollm2() -> Option<PathBuf> {
    use switchyard_worker::models_dir::{SMOLLM2, test_model};
    test_model(SMOLLM2)
}

/// A running `switchyard-worker` process. Killed when dropped.
pub struct Worker {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Worker {
    /// Start `switchyard-worker --model <model> --port 0 <args>` and wait for its ready line.
    pub fn start(model: &Path, args: &[&str]) -> Worker {
        let mut child = Command::new(binary("switchyard-worker", "switchyard-worker"))
            .arg("--model")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn switchyard-worker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(rest) = line.strip_prefix("switchyard-worker listening on http://") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(120)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("switchyard-worker did not become ready (its log is above)");
        };
        Worker {
            child,
            addr: addr.parse().expect("addr"),
        }
    }

    /// `http://127.0.0.1:PORT/v1`, as a backend URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

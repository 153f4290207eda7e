//! Built plugin components for the tests: the first-party plugins (`plugins/*.wasm`), the
//! hostile fixtures (`target/plugin-fixtures/*.wasm`) and the example policies. Missing ones
//! are built once per test process with `cargo xtask plugins`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::workspace_root;

static BUILD: Mutex<bool> = Mutex::new(false);

fn ensure_built(path: &Path) {
    if path.exists() {
        return;
    }
    let mut built = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if !*built && !path.exists() {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace_root()).args(["xtask", "plugins"]);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_") && k != "CARGO_HOME" || k == "OUT_DIR" {
                cmd.env_remove(k.as_ref());
            }
        }
        let status = cmd.status().expect("run cargo xtask plugins");
        assert!(status.success(), "cargo xtask plugins failed");
        *built = true;
    }
    assert!(path.exists(), "{} was not built", path.display());
}

/// A first-party plugin, e.g. `complexity-router`.
pub fn first_party(name: &str) -> PathBuf {
    let p = workspace_root()
        .join("plugins")
        .join(format!("{name}.wasm"));
    ensure_built(&p);
    p
}

/// A test fixture plugin, e.g. `hostile`.
pub fn fixture(name: &str) -> PathBuf {
    let p = workspace_root()
        .join("target")
        .join("plugin-fixtures")
        .join(format!("{name}.wasm"));
    ensure_built(&p);
    p
}

/// An example policy (`python-router`, `js-router`), if its toolchain built it.
pub fn example(dir: &str) -> Option<PathBuf> {
    let p = workspace_root()
        .join("examples")
        .join(dir)
        .join("router.wasm");
    p.exists().then_some(p)
}

/// Copy `from` into `dir` as `name.wasm`, atomically (the gateway never sees half a file).
pub fn install(from: &Path, dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("plugin dir");
    let to = dir.join(format!("{name}.wasm"));
    let tmp = dir.join(format!(".{name}.wasm.tmp"));
    std::fs::copy(from, &tmp).expect("copy plugin");
    std::fs::rename(&tmp, &to).expect("rename plugin");
    to
}

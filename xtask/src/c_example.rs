//! The C example policy (`examples/c-router`): C bindings generated from `wit/` with
//! wit-bindgen's C generator, the policy compiled by clang to a core WebAssembly module
//! against wasi-libc, and that module made a component (with the WASI preview 1 adapter)
//! by wit-component: what `wit-bindgen c` and `wasm-tools component new` do, done here so
//! the only tools to install are Debian's `clang`, `lld` and `wasi-libc`.

use std::path::Path;
use std::process::Command;

use wit_bindgen_core::Files;
use wit_component::ComponentEncoder;
use wit_parser::Resolve;

use crate::run;

/// The clang that targets `wasm32-wasi` (`$SWITCHYARD_CLANG`, else `clang`), if it can
/// compile and link against wasi-libc here.
pub fn clang() -> Option<String> {
    let cc = std::env::var("SWITCHYARD_CLANG").unwrap_or_else(|_| "clang".into());
    let dir = std::env::temp_dir().join(format!("switchyard-clang-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let src = dir.join("probe.c");
    std::fs::write(
        &src,
        "#include <string.h>\nint probe(const char *s) { return (int)strlen(s); }\n",
    )
    .ok()?;
    let ok = Command::new(&cc)
        .args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2"])
        .arg(&src)
        .arg("-o")
        .arg(dir.join("probe.wasm"))
        .output()
        .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    ok.then_some(cc)
}

/// Build `<example>/router.wasm` from `<example>/router.c` for world `classifier`.
pub fn build(cc: &str, wit: &Path, example: &Path, work: &Path) -> Result<(), String> {
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    // 1. Bindings: classifier.h, classifier.c and the component-type object.
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_path(wit)
        .map_err(|e| format!("reading {}: {e:#}", wit.display()))?;
    let world = resolve
        .select_world(&[pkg], Some("classifier"))
        .map_err(|e| format!("world classifier: {e:#}"))?;
    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| format!("generating C bindings: {e:#}"))?;
    let mut sources = vec![example.join("router.c")];
    for (name, contents) in files.iter() {
        let path = work.join(name);
        std::fs::write(&path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
        if name.ends_with(".c") || name.ends_with(".o") {
            sources.push(path);
        }
    }
    // 2. The core module (a reactor: no `main`, exports called by the host).
    let module = work.join("router.core.wasm");
    let mut c = Command::new(cc);
    c.args([
        "--target=wasm32-wasi",
        "-mexec-model=reactor",
        "-O2",
        "-Wall",
        "-Werror",
        "-Wno-unused-function",
    ])
    .arg("-I")
    .arg(work)
    .args(&sources)
    .arg("-o")
    .arg(&module);
    run(c, "clang (examples/c-router)")?;
    // 3. The component.
    let bytes = std::fs::read(&module).map_err(|e| format!("{}: {e}", module.display()))?;
    let component = ComponentEncoder::default()
        .module(&bytes)
        .and_then(|e| {
            e.adapter(
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| format!("making the component (examples/c-router): {e:#}"))?;
    let out = example.join("router.wasm");
    let tmp = out.with_extension("wasm.tmp");
    std::fs::write(&tmp, component).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))
}

//! deploy/: the health command the images use, a config updated the way Kubernetes updates a
//! ConfigMap, the manifests and compose file against the Kubernetes schema and the gateway's
//! config (deploy/check.py), and the gateway image built from the static binary (podman).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use switchyard_tests::{Gateway, binary, run_switchyard, skip_unless, workspace_root};

const ROUTES: &str = r#"
[[backends]]
name = "mock"
url = "http://127.0.0.1:9/v1"

[[routes]]
model = "first"
targets = [{ backend = "mock" }]
"#;

/// GET `path` over plain HTTP/1.1: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

#[test]
fn health_answers_zero_for_a_running_gateway_and_names_the_url_when_it_is_down() {
    let gw = Gateway::start(&format!("[server]\nlisten = \"127.0.0.1:0\"\n{ROUTES}"));
    let url = format!("http://{}", gw.addr);
    let (code, out, err) = run_switchyard(&["health", "--url", &url], gw.dir.path(), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{url}/healthz: 200")), "{out}");
    let (code, out, err) =
        run_switchyard(&["health", "--ready", "--url", &url], gw.dir.path(), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/readyz: 200"), "{out}");

    // Nothing listens there any more: a failure that says where it asked.
    let addr = gw.addr;
    drop(gw);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}");
    let (code, _out, err) = run_switchyard(&["health", "--url", &url], dir.path(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{url}/healthz")), "{err}");
}

#[test]
fn health_finds_the_gateway_from_the_configs_listen_address() {
    // The image's HEALTHCHECK runs `switchyard health` with no flags: the config (from
    // $SWITCHYARD_CONFIG) says where to ask, and 0.0.0.0 is asked on loopback.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = format!(
        "[server]\nlisten = \"0.0.0.0:{port}\"\n[auth]\nallow_unauthenticated = true\n{ROUTES}"
    );
    let gw = Gateway::start(&config);
    let config_path = gw.config_path.to_string_lossy().into_owned();
    let (code, out, err) = run_switchyard(
        &["health"],
        gw.dir.path(),
        &[("SWITCHYARD_CONFIG", &config_path)],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("http://127.0.0.1:{port}/healthz: 200")),
        "{out}"
    );
}

/// Lay out `dir` as the kubelet lays out a mounted ConfigMap: the file is a link through
/// `..data`, a link to a timestamped folder, swapped atomically on every update.
fn configmap_update(dir: &Path, version: &str, text: &str) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("switchyard.toml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let file = dir.join("switchyard.toml");
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink("..data/switchyard.toml", &file).unwrap();
    }
}

#[test]
fn a_config_updated_like_a_configmap_is_reloaded_live() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("config");
    std::fs::create_dir(&mount).unwrap();
    let first = format!("[server]\nlisten = \"127.0.0.1:0\"\n{ROUTES}");
    configmap_update(&mount, "2026_12_07_v1", &first);
    // Gateway::start writes its own file; point a second gateway at the mounted layout.
    let mut cmd = Command::new(binary("switchyard", "switchyard"));
    cmd.args(["serve", "--config"])
        .arg(mount.join("switchyard.toml"))
        .current_dir(dir.path())
        .env_remove("SWITCHYARD_CONFIG")
        .env("SWITCHYARD_LOG_FORMAT", "text")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let addr: SocketAddr = loop {
        let mut line = String::new();
        use std::io::BufRead;
        if stdout.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("the gateway exited before listening");
        }
        if let Some(rest) = line.trim().strip_prefix("switchyard listening on http://") {
            break rest.parse().unwrap();
        }
    };
    let models = |addr| get(addr, "/v1/models").1;
    assert!(models(addr).contains("\"first\""), "{}", models(addr));

    let second = first.replace("model = \"first\"", "model = \"second\"");
    configmap_update(&mount, "2026_12_07_v2", &second);
    let start = Instant::now();
    let mut seen = models(addr);
    while !seen.contains("\"second\"") && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        seen = models(addr);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains("\"second\"") && !seen.contains("\"first\""),
        "the swapped ConfigMap was not reloaded: {seen}"
    );
}

fn python_has(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_deploy_files_validate_and_agree_with_the_gateway_config() {
    if skip_unless(
        python_has("kubernetes_validate, yaml"),
        "python3 with kubernetes-validate (pip install kubernetes-validate==1.37.0)",
    ) {
        return;
    }
    let out = Command::new("python3")
        .arg(workspace_root().join("deploy/check.py"))
        .arg("--switchyard")
        .arg(binary("switchyard", "switchyard"))
        .output()
        .expect("run deploy/check.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "deploy/check.py found problems:\n{text}"
    );
    assert!(text.contains(", 0 problem(s)"), "{text}");
}

#[test]
fn the_deploy_check_catches_a_probe_on_the_wrong_path_and_a_short_grace_period() {
    if skip_unless(
        python_has("kubernetes_validate, yaml"),
        "python3 with kubernetes-validate (pip install kubernetes-validate==1.37.0)",
    ) {
        return;
    }
    // The checker on a copy of deploy/ with two mistakes a user could make.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("deploy");
    copy_tree(&workspace_root().join("deploy"), &copy);
    let gateway = copy.join("kubernetes/gateway.yaml");
    let text = std::fs::read_to_string(&gateway).unwrap();
    let broken = text
        .replace("path: /readyz", "path: /ready")
        .replace(
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriodSeconds: 30",
        )
        .replace(
            "\"http://worker-llama-1.worker-llama.switchyard.svc.cluster.local:9001/v1\",\n",
            "",
        );
    assert_ne!(text, broken);
    std::fs::write(&gateway, broken).unwrap();
    let out = Command::new("python3")
        .arg(copy.join("check.py"))
        .arg("--switchyard")
        .arg(binary("switchyard", "switchyard"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("readinessProbe asks /ready, not /readyz"),
        "{text}"
    );
    assert!(
        text.contains("terminationGracePeriodSeconds 30 must exceed"),
        "{text}"
    );
    assert!(text.contains("StatefulSet worker-llama runs"), "{text}");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The static gateway binary `.ci/run` builds for the image, if it is there.
fn static_binary() -> Option<PathBuf> {
    let dir = workspace_root().join("target/x86_64-unknown-linux-musl");
    ["release", "debug"]
        .iter()
        .map(|p| dir.join(p).join("switchyard"))
        .find(|p| p.exists())
}

#[test]
fn the_gateway_image_builds_from_scratch_with_the_static_binary() {
    let podman = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if skip_unless(podman, "podman (apt install podman)") {
        return;
    }
    let Some(bin) = static_binary() else {
        skip_unless(
            false,
            "the static gateway binary (cargo build --target x86_64-unknown-linux-musl -p switchyard --no-default-features)",
        );
        return;
    };
    // A build context of its own: deploy/ and the binary (the checkout's target/ is large,
    // and a context is read whole).
    let ctx = tempfile::tempdir().unwrap();
    copy_tree(&workspace_root().join("deploy"), &ctx.path().join("deploy"));
    std::fs::copy(&bin, ctx.path().join("switchyard")).unwrap();
    let tag = format!("localhost/switchyard-test:{}", std::process::id());
    let build = Command::new("podman")
        .current_dir(ctx.path())
        .args([
            "build",
            "--quiet",
            "--format",
            "docker",
            "-f",
            "deploy/gateway.Dockerfile",
        ])
        .args(["--build-arg", "BINARY_FROM=prebuilt"])
        .args(["--build-arg", "PREBUILT=switchyard"])
        .args(["-t", &tag, "."])
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "podman build: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let inspect = |format: &str| {
        let o = Command::new("podman")
            .args(["image", "inspect", "--format", format, &tag])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let user = inspect("{{.Config.User}}");
    let health = inspect("{{json .HealthCheck.Test}}");
    let volumes = inspect("{{json .Config.Volumes}}");
    let ports = inspect("{{json .Config.ExposedPorts}}");
    // Containers cannot run on this machine (no cgroup delegation for crun), so the image's
    // files are checked by mounting it, and its binary run from there.
    let mount = Command::new("podman")
        .args(["image", "mount", &tag])
        .output()
        .unwrap();
    let rootfs = PathBuf::from(String::from_utf8_lossy(&mount.stdout).trim());
    let result = std::panic::catch_unwind(|| {
        assert_eq!(user, "10001:10001");
        assert_eq!(health, r#"["CMD","/switchyard","health"]"#);
        assert!(
            volumes.contains("/etc/switchyard") && volumes.contains("/var/lib/switchyard"),
            "{volumes}"
        );
        assert!(ports.contains("8080/tcp"), "{ports}");
        use std::os::unix::fs::MetadataExt;
        let state = std::fs::metadata(rootfs.join("var/lib/switchyard")).unwrap();
        assert_eq!((state.uid(), state.gid()), (10001, 10001));
        // Static: an ELF without a program interpreter (PT_INTERP) needs no libc at all.
        let elf = std::fs::read(rootfs.join("switchyard")).unwrap();
        assert!(
            !has_interpreter(&elf),
            "the image's binary is dynamically linked"
        );
        // The image's binary serves, and its health check says so.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("switchyard.toml");
        std::fs::write(
            &config,
            format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{ROUTES}"),
        )
        .unwrap();
        let mut child = Command::new(rootfs.join("switchyard"))
            .arg("serve")
            .env("SWITCHYARD_CONFIG", &config)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let ok = loop {
            let o = Command::new(rootfs.join("switchyard"))
                .arg("health")
                .env("SWITCHYARD_CONFIG", &config)
                .output()
                .unwrap();
            if o.status.success() || start.elapsed() > Duration::from_secs(30) {
                break o.status.success();
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(ok, "the image's binary did not become healthy");
    });
    let _ = Command::new("podman")
        .args(["image", "unmount", &tag])
        .output();
    let _ = Command::new("podman")
        .args(["rmi", "--force", &tag])
        .output();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let h = phoff + i * phentsize;
        u32::from_le_bytes(elf[h..h + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

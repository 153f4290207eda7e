//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`), for
//! the console's tests in a real browser.
//!
//! The W3C WebDriver protocol is a handful of JSON calls over HTTP; the few this suite
//! needs are spoken here with the suite's own HTTP client rather than through a WebDriver
//! crate, whose dependency tree would cost CI's two cores more to compile than this file.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use http::Method;
use serde_json::{Value, json};

use crate::client::Client;

/// The first of `names` found on `PATH`.
fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Chromium and its WebDriver, when both are installed.
pub fn find() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("SWITCHYARD_CHROMIUM")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| which(&["chromium", "chromium-browser", "google-chrome"]))?;
    let driver = which(&["chromedriver"])?;
    Some((chromium, driver))
}

/// A headless Chromium session. The browser and its driver end when this is dropped.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    client: Client,
    _profile: tempfile::TempDir,
    /// Where downloads land.
    pub downloads: tempfile::TempDir,
}

/// The WebDriver id of an element.
pub type Element = String;

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Start chromedriver and a headless Chromium, or `None` after saying why the test is
    /// skipped (a failure under `SWITCHYARD_CI=1`).
    pub async fn start() -> Option<Browser> {
        let found = find();
        if crate::skip_unless(
            found.is_some(),
            "chromium and chromedriver (apt-get install chromium chromium-driver)",
        ) {
            return None;
        }
        let (chromium, driver_bin) = found?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver_bin.display()));
        let stdout = driver.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = driver.kill();
            panic!("chromedriver did not start on port {port}");
        }
        let profile = tempfile::tempdir().expect("tempdir");
        let downloads = tempfile::tempdir().expect("tempdir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            },
        }}});
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            client: Client::new(),
            _profile: profile,
            downloads,
        };
        let v = b.call(Method::POST, "/session", Some(caps)).await;
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_string();
        // Headless Chromium only downloads where it is told to over CDP.
        let dir = b.downloads.path().display().to_string();
        b.cdp(
            "Browser.setDownloadBehavior",
            json!({"behavior": "allow", "downloadPath": dir}),
        )
        .await;
        Some(b)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let r = self
            .client
            .send(
                method.clone(),
                &url,
                body,
                &[("content-type", "application/json")],
            )
            .await;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        assert!(
            r.status == 200,
            "WebDriver {method} {path}: {} {}",
            r.status,
            r.text()
        );
        v["value"].clone()
    }

    async fn session_call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        self.call(method, &p, body).await
    }

    /// A Chrome DevTools command through chromedriver.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.session_call(
            Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": cmd, "params": params})),
        )
        .await
    }

    pub async fn goto(&self, url: &str) {
        self.session_call(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Run `script` (a function body; `arguments` holds `args`) and return its value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.session_call(
            Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Poll `script` until it returns something other than `false`/`null`, for at most
    /// `timeout`; that value. Panics with `what` after the timeout.
    pub async fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.execute(script, json!([])).await;
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            if start.elapsed() > timeout {
                let text = self
                    .execute("return document.body.innerText", json!([]))
                    .await;
                panic!("timed out waiting for {what}; the page says:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn find(&self, css: &str) -> Element {
        let v = self
            .session_call(
                Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.session_call(
            Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.session_call(
            Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await;
        self.session_call(
            Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Set the viewport to `width` × `height` CSS pixels (a phone at 375 px wide too).
    pub async fn viewport(&self, width: u32, height: u32) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await;
    }

    /// The whole page (not just the viewport) as PNG, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self
            .cdp(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot folder");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// The browser's console and network log since the last call (chromedriver's
    /// `goog:loggingPrefs`): `(level, message)`.
    pub async fn logs(&self) -> Vec<(String, String)> {
        let v = self
            .session_call(Method::POST, "/se/log", Some(json!({"type": "browser"})))
            .await;
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or("").to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session (which closes Chromium) before the driver: a plain blocking
        // request, since drop cannot await.
        if !self.session.is_empty()
            && let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port))
        {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                self.session
            );
            let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

//! A throwaway PostgreSQL server on a free port in a temporary folder, for tests of what
//! replicas share (`[state] postgres`).
//!
//! Debian's `postgresql` package keeps its programs in `/usr/lib/postgresql/<version>/bin`
//! (`SWITCHYARD_PG_BIN` names another folder). PostgreSQL refuses to run as root; under
//! root the server runs as the `postgres` user (else `nobody`) through `setpriv`, in a
//! folder handed to that user. Password authentication is on, so a gateway proves it sends
//! the password from `postgres_password_env`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::skip_unless;

/// The superuser the server is made with, and its password.
pub const USER: &str = "switchyard";
pub const PASSWORD: &str = "pg-test-password-42";

pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    run_as: Option<(u32, u32)>,
    /// TLS on: the certificate and key files the server presents.
    tls: Option<(PathBuf, PathBuf)>,
    _dir: tempfile::TempDir,
}

/// The newest Debian PostgreSQL programs folder, or `SWITCHYARD_PG_BIN`.
fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SWITCHYARD_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

impl Postgres {
    /// Start one, or `None` after saying the test is skipped (a failure under
    /// `SWITCHYARD_CI=1`) where PostgreSQL is not installed.
    pub fn start() -> Option<Postgres> {
        Postgres::start_inner(None)
    }

    /// [`Postgres::start`] with TLS on (`ssl = on`), presenting `cert_pem` (its key
    /// `key_pem`); clients may still connect without TLS.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Option<Postgres> {
        Postgres::start_inner(Some((cert_pem, key_pem)))
    }

    fn start_inner(tls: Option<(&str, &str)>) -> Option<Postgres> {
        let bin = bin_dir();
        if skip_unless(
            bin.as_ref().is_some_and(|b| b.join("initdb").exists()),
            "PostgreSQL (apt-get install postgresql)",
        ) {
            return None;
        }
        let bin = bin?;
        let dir = tempfile::tempdir().expect("tempdir");
        let run_as = if id(&["-u"]) == Some(0) {
            let user = if id(&["-u", "postgres"]).is_some() {
                "postgres"
            } else {
                "nobody"
            };
            let ids = (
                id(&["-u", user]).expect("uid"),
                id(&["-g", user]).expect("gid"),
            );
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1)).expect("chown");
            Some(ids)
        } else {
            None
        };
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("pwfile");
        if let Some((u, g)) = run_as {
            std::os::unix::fs::chown(&pwfile, Some(u), Some(g)).expect("chown");
        }
        let tls = tls.map(|(cert, key)| {
            let files = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&files.0, cert).expect("cert file");
            std::fs::write(&files.1, key).expect("key file");
            // The server refuses a key others can read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&files.1, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
            if let Some((u, g)) = run_as {
                for f in [&files.0, &files.1] {
                    std::os::unix::fs::chown(f, Some(u), Some(g)).expect("chown");
                }
            }
            files
        });
        let data = dir.path().join("data");
        let mut pg = Postgres {
            child: None,
            port: 0,
            bin,
            data,
            run_as,
            tls,
            _dir: dir,
        };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        pg.resume();
        Some(pg)
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        match self.run_as {
            Some((u, g)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={u}"))
                    .arg(format!("--regid={g}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    /// `postgres://switchyard@127.0.0.1:PORT/postgres` (the password goes by env).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// Start the server (again, after [`Postgres::stop`]) and wait until it takes
    /// connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let sockets: &Path = self.data.parent().expect("folder");
        let mut tls_args = Vec::new();
        if let Some((cert, key)) = &self.tls {
            tls_args.extend([
                "-c".to_string(),
                "ssl=on".to_string(),
                "-c".to_string(),
                format!("ssl_cert_file={}", cert.display()),
                "-c".to_string(),
                format!("ssl_key_file={}", key.display()),
            ]);
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(sockets)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(&tls_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "postgres did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the server (fast shutdown: open connections are closed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// Run SQL with `psql`; its output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", "postgres", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

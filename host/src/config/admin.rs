//! `[admin]`, validated: the admin API's token (kept as its SHA-256 only), where it listens,
//! how many config versions are kept for rollback, and whether the config file is watched.

use std::net::{SocketAddr, ToSocketAddrs};

use super::Problem;
use super::schema::AdminSection;
use crate::base::digest::sha256;

/// Versions kept for rollback when `[admin] keep_versions` is not set.
pub const DEFAULT_KEEP_VERSIONS: usize = 10;

/// `[admin]`, validated.
#[derive(Clone)]
pub struct AdminSettings {
    /// SHA-256 of the token; `None` when the variable is unset or too short (reported).
    token_sha256: Option<[u8; 32]>,
    pub keep_versions: usize,
    pub watch: bool,
    /// `[admin] listen`: the admin API's own listener. `None`: it is served on the main
    /// listener, to loopback clients only.
    pub listen: Option<SocketAddr>,
}

impl std::fmt::Debug for AdminSettings {
    // Hand-written so the token never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("token", &self.token_sha256.map(|_| "<redacted>"))
            .field("keep_versions", &self.keep_versions)
            .field("watch", &self.watch)
            .field("listen", &self.listen)
            .finish()
    }
}

impl AdminSettings {
    /// The token's digest, `None` when the admin API is off.
    pub fn token_sha256(&self) -> Option<&[u8; 32]> {
        self.token_sha256.as_ref()
    }

    pub fn from_section(s: Option<&AdminSection>, problems: &mut Vec<Problem>) -> Option<Self> {
        let s = s?;
        let token_sha256 = s
            .token_env
            .as_deref()
            .and_then(|var| match std::env::var(var) {
                Ok(v) if v.trim().len() >= 16 => Some(sha256(v.trim().as_bytes())),
                Ok(_) => {
                    problems.push(Problem::new(
                        "admin.token_env",
                        format!(
                            "environment variable {var} must hold a token of at least 16 characters"
                        ),
                    ));
                    None
                }
                Err(_) => {
                    problems.push(Problem::new(
                        "admin.token_env",
                        format!("environment variable {var} is not set"),
                    ));
                    None
                }
            });
        let keep_versions = s.keep_versions.unwrap_or(DEFAULT_KEEP_VERSIONS);
        if keep_versions < 2 {
            problems.push(Problem::new(
                "admin.keep_versions",
                "must be at least 2 (the current version and one to roll back to)",
            ));
        }
        let listen = s.listen.as_deref().and_then(|text| {
            match text.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(addr)) => Some(addr),
                Ok(None) | Err(_) => {
                    problems.push(Problem::new(
                        "admin.listen",
                        format!("\"{text}\" is not a host:port address"),
                    ));
                    None
                }
            }
        });
        Some(AdminSettings {
            token_sha256,
            keep_versions,
            watch: s.watch.unwrap_or(true),
            listen,
        })
    }
}

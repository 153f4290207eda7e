//! `[local_worker]`, validated: the model, address and sizes of an inference worker the
//! gateway runs in its own process.

use std::net::SocketAddr;

use super::Problem;
use super::schema::LocalWorkerSection;

/// `[local_worker]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalWorkerSettings {
    pub model: String,
    pub listen: SocketAddr,
    pub served_model_name: Option<String>,
    pub ctx_size: Option<usize>,
    pub max_batch: usize,
}

impl LocalWorkerSettings {
    pub(super) fn from_section(
        s: Option<&LocalWorkerSection>,
        problems: &mut Vec<Problem>,
    ) -> Option<LocalWorkerSettings> {
        let s = s?;
        if !cfg!(feature = "local-worker") {
            problems.push(Problem::new(
                "local_worker",
                "this gateway was built without the `local-worker` feature: run \
                 `switchyard-worker` as its own process and point a backend's url at it",
            ));
            return None;
        }
        let model = match s.model.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => {
                problems.push(Problem::new(
                    "local_worker.model",
                    "is required: a GGUF file or a known model name (smollm2)",
                ));
                return None;
            }
        };
        let listen = match s.listen.as_deref().unwrap_or("127.0.0.1:9001").parse() {
            Ok(a) => a,
            Err(_) => {
                problems.push(Problem::new(
                    "local_worker.listen",
                    "must be an address and port such as \"127.0.0.1:9001\"",
                ));
                return None;
            }
        };
        if s.ctx_size.is_some_and(|n| n < 16) {
            problems.push(Problem::new(
                "local_worker.ctx_size",
                "must be at least 16 tokens",
            ));
        }
        if s.max_batch == Some(0) {
            problems.push(Problem::new("local_worker.max_batch", "must be at least 1"));
        }
        Some(LocalWorkerSettings {
            model,
            listen,
            served_model_name: s.served_model_name.clone(),
            ctx_size: s.ctx_size,
            max_batch: s.max_batch.unwrap_or(8).max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::LocalWorkerSection;

    fn settings(toml_text: &str) -> (Option<LocalWorkerSettings>, Vec<Problem>) {
        let s: LocalWorkerSection = toml::from_str(toml_text).unwrap();
        let mut problems = Vec::new();
        (
            LocalWorkerSettings::from_section(Some(&s), &mut problems),
            problems,
        )
    }

    #[test]
    fn defaults_listen_on_the_worker_port() {
        let (s, p) = settings("model = \"smollm2\"");
        assert!(p.is_empty());
        let s = s.unwrap();
        assert_eq!(s.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(s.max_batch, 8);
    }

    #[test]
    fn problems_name_their_keys() {
        let (_, p) = settings("listen = \"nowhere\"");
        assert_eq!(p[0].path, "local_worker.model");
        let (_, p) = settings("model = \"m.gguf\"\nlisten = \"nowhere\"");
        assert_eq!(p[0].path, "local_worker.listen");
        let (_, p) = settings("model = \"m.gguf\"\nctx_size = 4\nmax_batch = 0");
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["local_worker.ctx_size", "local_worker.max_batch"]);
    }
}

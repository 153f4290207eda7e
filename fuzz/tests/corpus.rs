//! Every committed corpus input through its target, then a short deterministic mutation run
//! from it: the suite's guard that a parser change did not bring back an input that once
//! failed. The long runs are `cargo xtask fuzz`.

use std::path::Path;
use std::time::Duration;

use switchyard_fuzz::{Budget, check, corpus, fuzz, targets};

fn run(name: &str) {
    let t = targets::ALL
        .iter()
        .find(|t| t.name == name)
        .expect("a target of that name");
    if name == "tokenizer" && !targets::tokenizer_ready() {
        let ci = std::env::var("SWITCHYARD_CI").is_ok_and(|v| v == "1");
        assert!(
            !ci,
            "SWITCHYARD_CI=1 but llama.cpp's vocab files are missing"
        );
        eprintln!("SKIPPED: llama.cpp's vocab files are missing (cargo xtask fetch-models)");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let seeds = corpus(&dir, name).expect("the target's corpus folder");
    assert!(seeds.len() >= 3, "{name}: a corpus of at least 3 inputs");
    for (i, s) in seeds.iter().enumerate() {
        if let Err(m) = check(t, s) {
            panic!("{name}: corpus input {i} fails: {m}");
        }
    }
    let (stats, crash) = fuzz(
        t,
        &seeds,
        7,
        Budget {
            inputs: 3000,
            time: Duration::from_secs(3600),
        },
        None,
    );
    if let Some(c) = crash {
        panic!(
            "{name}: a mutated input fails: {}\ninput: {:?}",
            c.message,
            String::from_utf8_lossy(&c.input)
        );
    }
    assert!(stats.accepted > 0, "{name}: no input was accepted");
}

#[test]
fn request_corpus() {
    run("request");
}

#[test]
fn sse_corpus() {
    run("sse");
}

#[test]
fn config_corpus() {
    run("config");
}

#[test]
fn wit_corpus() {
    run("wit");
}

#[test]
fn gguf_corpus() {
    run("gguf");
}

#[test]
fn tokenizer_corpus() {
    run("tokenizer");
}

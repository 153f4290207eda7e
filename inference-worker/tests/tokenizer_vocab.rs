//! The tokenizers reproduce llama.cpp's expected ids for every line of its vocab test files
//! (`ggml-vocab-llama-{spm,bpe}.gguf.inp/.out`, from the llama-cpp-python source package).

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used)]

use switchyard_worker::gguf::Gguf;
use switchyard_worker::models_dir::{models_dir, test_model};
use switchyard_worker::tokenizer::Tokenizer;

fn check(vocab: &str) {
    let Some(path) = test_model(vocab) else {
        return;
    };
    let g = Gguf::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let inp = std::fs::read_to_string(models_dir().join(format!("{vocab}.inp"))).unwrap();
    let out = std::fs::read_to_string(models_dir().join(format!("{vocab}.out"))).unwrap();
    // Every case is followed by the separator (llama.cpp's test reader splits the same way).
    let mut cases: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if cases.last() == Some(&"") {
        cases.pop();
    }
    let expected: Vec<&str> = out.split('\n').collect();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let text = *case;
        let want: Vec<u32> = expected[i]
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect();
        let got = tok.encode(text, false, false);
        if got != want {
            failures.push(format!("{text:?}\n   want {want:?}\n    got {got:?}"));
        }
        // Decoding gives the text back (SPM adds a leading space).
        let back = tok.decode(&got);
        let back = if tok.add_space_prefix {
            back.strip_prefix(' ').unwrap_or(&back).to_string()
        } else {
            back
        };
        if back != text && !text.contains('\u{FFFD}') {
            failures.push(format!("roundtrip {text:?} -> {back:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{vocab}: {} of {} failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_spm_vocab_matches_llama_cpp_every_line() {
    check("ggml-vocab-llama-spm.gguf");
}

#[test]
fn llama_bpe_vocab_matches_llama_cpp_every_line() {
    check("ggml-vocab-llama-bpe.gguf");
}

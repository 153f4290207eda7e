//! The engine over the fake backend (SmolLM2's tokenizer for text): sampling on the device
//! gives the tokens of sampling on the host, and a client that goes away frees its blocks.

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchyard_worker::backend::fake::FakeBackend;
use switchyard_worker::engine::{Engine, EngineOptions, Event, GenRequest};
use switchyard_worker::gguf::Gguf;
use switchyard_worker::models_dir::{SMOLLM2, test_model};
use switchyard_worker::sampling::SamplingParams;
use switchyard_worker::tokenizer::Tokenizer;

fn tokenizer() -> Option<Arc<Tokenizer>> {
    let path = test_model(SMOLLM2)?;
    let g = Gguf::open(&path).unwrap();
    Some(Arc::new(Tokenizer::from_gguf(&g).unwrap()))
}

fn request(
    prompt: Vec<u32>,
    seed: u64,
    max_tokens: usize,
) -> (GenRequest, tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let req = GenRequest {
        prompt,
        params: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            seed: Some(seed),
            ..Default::default()
        },
        max_tokens,
        stop: Vec::new(),
        logprobs: None,
        events: tx,
        arrived: Instant::now(),
        constraint: None,
        special_text: false,
    };
    (req, rx)
}

/// The text of each of four seeded requests run together.
fn texts(tok: &Arc<Tokenizer>, backend: FakeBackend) -> Vec<String> {
    let engine = Engine::start(Box::new(backend), tok.clone(), EngineOptions::new(512, 4));
    let rxs: Vec<_> = (0..4u64)
        .map(|i| {
            let prompt = tok.encode(&format!("Request number {i} says hello"), true, false);
            let (req, rx) = request(prompt, i, 24);
            assert!(engine.submit(req));
            rx
        })
        .collect();
    rxs.into_iter()
        .map(|mut rx| {
            let mut text = String::new();
            while let Some(ev) = rx.blocking_recv() {
                match ev {
                    Event::Token { text: t, .. } => text.push_str(&t),
                    Event::Done { .. } => break,
                }
            }
            text
        })
        .collect()
}

#[test]
fn sampling_on_the_device_gives_the_text_of_host_sampling() {
    let Some(tok) = tokenizer() else { return };
    let v = tok.vocab_size();
    let host = texts(&tok, FakeBackend::new(64, v));
    let device = texts(&tok, FakeBackend::new(64, v).sampling_on_device());
    assert!(host.iter().all(|t| !t.is_empty()), "{host:?}");
    assert_eq!(device, host);
    // And the seeds matter: different requests, different text.
    assert_ne!(host[0], host[1]);
}

#[test]
fn a_client_that_goes_away_frees_its_blocks() {
    let Some(tok) = tokenizer() else { return };
    // A step of 2 ms: the 900 tokens asked for would take seconds, the client leaves after 5.
    let engine = Engine::start(
        Box::new(FakeBackend::new(64, tok.vocab_size()).with_step_time(Duration::from_millis(2))),
        tok.clone(),
        EngineOptions::new(1000, 4),
    );
    let prompt = tok.encode(&"a long prompt ".repeat(40), true, false);
    let (req, mut rx) = request(prompt, 1, 900);
    assert!(engine.submit(req));
    // Wait for some output, so the request holds blocks.
    let mut seen = 0;
    while seen < 5 {
        if let Some(Event::Token { .. }) = rx.blocking_recv() {
            seen += 1;
        }
    }
    let m = &engine.metrics;
    assert!(m.kv_blocks_used.load(Ordering::Relaxed) > 0);
    drop(rx);
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.kv_blocks_used.load(Ordering::Relaxed) > 0 || m.active.load(Ordering::Relaxed) > 0 {
        assert!(
            Instant::now() < deadline,
            "blocks still held after the client left"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(m.cancelled.load(Ordering::Relaxed), 1);
}

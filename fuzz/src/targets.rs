//! The targets: each takes raw bytes from outside, runs the code that reads them, and
//! asserts what must hold for every input.

use std::sync::OnceLock;

use bytes::Bytes;
use switchyard::base::Endpoint;
use switchyard::base::openai::RequestBody;
use switchyard::base::sse::{ScanProblem, SseScanner, event_end, is_usage_only_event};
use switchyard_worker::gguf::Gguf;
use switchyard_worker::tokenizer::{StreamDecoder, Tokenizer};

use crate::{Target, Verdict};

pub const ALL: &[Target] = &[
    Target {
        name: "request",
        dictionary: JSON_WORDS,
        max_len: 1 << 16,
        run: request,
    },
    Target {
        name: "sse",
        dictionary: SSE_WORDS,
        max_len: 1 << 16,
        run: sse,
    },
    Target {
        name: "config",
        dictionary: TOML_WORDS,
        max_len: 1 << 14,
        run: config,
    },
    Target {
        name: "wit",
        dictionary: JSON_WORDS,
        max_len: 1 << 16,
        run: wit,
    },
    Target {
        name: "gguf",
        dictionary: GGUF_WORDS,
        max_len: 1 << 16,
        run: gguf,
    },
    Target {
        name: "tokenizer",
        dictionary: TEXT_WORDS,
        max_len: 1 << 12,
        run: tokenizer,
    },
];

const JSON_WORDS: &[&[u8]] = &[
    b"\"model\":",
    b"\"messages\":",
    b"\"prompt\":",
    b"\"input\":",
    b"\"stream\":true",
    b"\"stream_options\":{\"include_usage\":false}",
    b"\"role\":\"user\"",
    b"\"content\":",
    b"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}]",
    b"\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]",
    b"\"response_format\":{\"type\":\"json_object\"}",
    b"\"max_tokens\":18446744073709551615",
    b"\"choices\":[{\"message\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]",
    b"\\u0000",
    b"\\ud800",
    b"1e999",
    b"-0",
    b"null",
    b"[[[[[[[[",
    b"\"\"",
];

const SSE_WORDS: &[&[u8]] = &[
    b"data: ",
    b"data:",
    b"data: [DONE]\n\n",
    b"\n\n",
    b"\r\n",
    b"event: x\n",
    b": comment\n",
    b"\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}",
    b"\"usage\":null",
    b"\"choices\":[]",
    b"\"finish_reason\":\"stop\"",
    b"\"model\":\"m\"",
    b"\"content\":\"x\"",
    b"\"arguments\":\"{\"",
];

const TOML_WORDS: &[&[u8]] = &[
    b"[server]\n",
    b"[[backends]]\n",
    b"[[routes]]\n",
    b"[plugins]\n",
    b"[telemetry]\n",
    b"[state]\n",
    b"[governance]\n",
    b"name = \"b\"\n",
    b"url = \"http://127.0.0.1:1/v1\"\n",
    b"model = \"*\"\n",
    b"targets = [{ backend = \"b\", model = \"m\", weight = 0 }]\n",
    b"weight = 18446744073709551615",
    b"timeout_ms = -1",
    b"sample = 1e400",
    b"= { }",
    b"\"\"\"",
];

const GGUF_WORDS: &[&[u8]] = &[
    b"GGUF",
    b"\x03\x00\x00\x00",
    b"general.architecture",
    b"general.alignment",
    b"tokenizer.ggml.tokens",
    b"llama.block_count",
    b"\x09\x00\x00\x00",
    b"\x08\x00\x00\x00",
    b"\xff\xff\xff\xff\xff\xff\xff\xff",
];

const TEXT_WORDS: &[&[u8]] = &[
    b" ",
    b"  ",
    b"\n",
    b"\t",
    b"'s",
    b"Hello",
    b" world",
    b"<s>",
    b"</s>",
    b"<|begin_of_text|>",
    "\u{00e9}".as_bytes(),
    "\u{4e2d}\u{6587}".as_bytes(),
    "\u{1f600}".as_bytes(),
    b"\xf0\x9f",
    b"123456789",
];

const ENDPOINTS: [Endpoint; 3] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Embeddings,
];

/// A client body: parsed for each endpoint; when accepted, the body sent upstream with
/// another model (and the usage chunk asked for) must parse again, name that model, and keep
/// the stream flag.
fn request(input: &[u8]) -> Verdict {
    let mut verdict = Verdict::Rejected;
    for endpoint in ENDPOINTS {
        let Ok(body) = RequestBody::parse(Bytes::copy_from_slice(input), endpoint) else {
            continue;
        };
        verdict = Verdict::Accepted;
        for (model, force_usage) in [("upstream-model", true), ("m\"\\\u{1}", false)] {
            let spliced = body.upstream_body(model, force_usage);
            let again = RequestBody::parse(spliced.clone(), endpoint).unwrap_or_else(|e| {
                panic!(
                    "the spliced body no longer parses ({e:?}): {}",
                    String::from_utf8_lossy(&spliced)
                )
            });
            assert_eq!(again.model, model, "the spliced body names another model");
            assert_eq!(again.stream, body.stream, "the splice changed `stream`");
            if force_usage && body.stream {
                assert!(
                    again.client_include_usage,
                    "a stream's spliced body does not ask for usage"
                );
            }
        }
    }
    verdict
}

/// An upstream event stream: whatever the split into frames, the scanner reports the same;
/// the event framing helpers stay inside the buffer.
fn sse(input: &[u8]) -> Verdict {
    let whole = scan(std::iter::once(input));
    // Split at positions derived from the input, so a failure replays exactly.
    let step = 1 + input.first().map_or(0, |&b| usize::from(b % 7));
    let split = scan(input.chunks(step));
    assert_eq!(
        whole, split,
        "the scanner's report depends on where frames split"
    );
    let bytewise = scan(input.chunks(1));
    assert_eq!(whole, bytewise, "byte-by-byte feeding changes the report");
    let mut rest = input;
    while let Some(end) = event_end(rest) {
        assert!(end > 0 && end <= rest.len(), "event_end outside the buffer");
        let _ = is_usage_only_event(&rest[..end]);
        rest = &rest[end..];
    }
    if whole.1 > 0 {
        Verdict::Accepted
    } else {
        Verdict::Rejected
    }
}

type Report = (
    bool,
    u64,
    u64,
    Option<String>,
    Vec<String>,
    Option<(u64, u64)>,
    Option<ScanProblem>,
);

fn scan<'a>(frames: impl Iterator<Item = &'a [u8]>) -> Report {
    let mut s = SseScanner::default();
    for f in frames {
        s.feed(f);
    }
    (
        s.saw_done,
        s.events,
        s.content_events,
        s.model.clone(),
        s.finish_reasons.clone(),
        s.usage
            .as_ref()
            .map(|u| (u.prompt_tokens, u.completion_tokens)),
        s.problem.clone(),
    )
}

/// A config file: parsed and validated without a panic; a rejection says something.
fn config(input: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(input) else {
        return Verdict::Rejected;
    };
    match switchyard::config::load_str(text, switchyard::config::ConfigSource::Embedded) {
        Ok(_) => Verdict::Accepted,
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.trim().is_empty(), "a config error with no message");
            if switchyard::config::parse(text).is_ok() {
                Verdict::Accepted
            } else {
                Verdict::Rejected
            }
        }
    }
}

/// A client body through the WIT records plugins see and back; the JSON that comes back is
/// JSON the gateway can parse and send.
fn wit(input: &[u8]) -> Verdict {
    let mut verdict = Verdict::Rejected;
    for endpoint in ENDPOINTS {
        let Ok(body) = RequestBody::parse(Bytes::copy_from_slice(input), endpoint) else {
            continue;
        };
        verdict = Verdict::Accepted;
        if let Ok(json) = switchyard::services::plugins::fuzz_convert(&body, endpoint, input) {
            let back =
                RequestBody::parse(Bytes::from(json.clone()), endpoint).unwrap_or_else(|e| {
                    panic!(
                        "the body rebuilt from the WIT record does not parse ({e:?}): {}",
                        String::from_utf8_lossy(&json)
                    )
                });
            assert_eq!(back.model, body.model, "the round trip changed the model");
        }
    }
    verdict
}

/// A GGUF file: read without a panic; every tensor it lists lies inside the file and reads
/// back at its stated size.
fn gguf(input: &[u8]) -> Verdict {
    let Ok(g) = Gguf::from_bytes(input.to_vec()) else {
        return Verdict::Rejected;
    };
    for t in &g.tensors {
        let _ = t.n_elements();
        if let Ok((info, bytes)) = g.tensor(&t.name) {
            assert_eq!(bytes.len(), info.size, "tensor {} reads short", info.name);
        }
    }
    for v in g.metadata.values() {
        let _ = (
            v.as_u64(),
            v.as_i64(),
            v.as_str(),
            v.as_array().map(<[_]>::len),
        );
    }
    let _ = Tokenizer::from_gguf(&g);
    Verdict::Accepted
}

/// Vocab-only GGUFs of llama.cpp's tests (`cargo xtask fetch-models`): byte-level BPE and
/// SentencePiece.
fn tokenizers() -> &'static [(bool, Tokenizer)] {
    static T: OnceLock<Vec<(bool, Tokenizer)>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = switchyard_worker::models_dir::models_dir();
        [
            ("ggml-vocab-llama-bpe.gguf", true),
            ("ggml-vocab-llama-spm.gguf", false),
        ]
        .iter()
        .filter_map(|(name, bpe)| {
            let g = Gguf::open(&dir.join(name)).ok()?;
            Some((*bpe, Tokenizer::from_gguf(&g).ok()?))
        })
        .collect()
    })
}

/// Whether the tokenizer target has its vocab files.
pub fn tokenizer_ready() -> bool {
    tokenizers().len() == 2
}

/// Text through each tokenizer: ids inside the vocab; byte-level BPE gives the text back
/// exactly; streamed detokenizing equals decoding at once; arbitrary ids decode.
fn tokenizer(input: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(input);
    for (bpe, tok) in tokenizers() {
        for parse_special in [false, true] {
            let ids = tok.encode(&text, false, parse_special);
            assert!(
                ids.iter().all(|&i| (i as usize) < tok.vocab_size()),
                "an id outside the vocab"
            );
            let once = tok.decode(&ids);
            if *bpe && !parse_special {
                assert_eq!(once, text, "byte-level BPE does not give the text back");
            }
            let mut d = StreamDecoder::default();
            let mut streamed: String = ids.iter().map(|&i| d.push(tok, i)).collect();
            streamed.push_str(&d.finish());
            assert_eq!(streamed, once, "streamed detokenizing differs from decode");
        }
        let raw: Vec<u32> = input
            .chunks(2)
            .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
            .collect();
        let _ = tok.decode(&raw);
    }
    Verdict::Accepted
}

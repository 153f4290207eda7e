//! Comparing a served answer with its shadow: what "the new model agrees" means.
//!
//! Three measures, each answering a different question a migrating team asks:
//! - exact match: the answer text is identical (after trimming), as with greedy decoding;
//! - JSON-structural equality: both answers are JSON and equal as values (key order and
//!   whitespace ignored): what matters for structured output and tool calls;
//! - similarity: 1 − normalised Levenshtein distance over word tokens, 0.0 to 1.0: how
//!   close two free-text answers are, robust to small rewordings.
//!
//! Tool calls are compared as structure, not text: two answers that call tools agree when
//! they call the same functions in the same order with equal argument JSON (ids, key order
//! and whitespace ignored), whether the answers came whole or streamed as `delta.tool_calls`.
//!
//! A pair *agrees* when it matches exactly, is JSON-equal, or its similarity reaches
//! [`AGREE_SIMILARITY`]. The report counts agreement from these stored columns only, so
//! its figures can be recomputed from the table.

use serde::Deserialize;
use serde_json::Value;

use crate::base::loose::{Loose, LooseSeq, LooseStr, LooseU64};

/// Similarity at or above which two free-text answers count as agreeing.
pub const AGREE_SIMILARITY: f64 = 0.9;

/// Longest token sequence compared (the distance is quadratic; answers beyond this are
/// compared on their first tokens).
const MAX_TOKENS: usize = 2048;

/// The comparable content of an answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// The answer text: message contents (chat), texts (completions), joined.
    pub text: String,
    /// The tool calls, in order, each `{"name": ..., "arguments": <parsed JSON>}` (arguments
    /// that are not JSON stay a string); empty when the answer called none.
    pub tool_calls: Vec<Value>,
    /// Embeddings: the vectors, compared as JSON.
    pub json: Option<Value>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

impl Extracted {
    /// The answer as stored for reading: its text, then each tool call's JSON on a line.
    pub fn answer_text(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.text.is_empty() || self.tool_calls.is_empty() {
            parts.push(self.text.clone());
        }
        parts.extend(self.tool_calls.iter().map(Value::to_string));
        parts.join("\n")
    }
}

/// The members of a complete answer that are compared; the rest is skipped, not copied.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(default)]
    usage: Loose<Counts>,
    #[serde(borrow, default)]
    choices: LooseSeq<Loose<Choice<'a>>>,
    #[serde(default)]
    data: LooseSeq<Loose<Embedding>>,
}

#[derive(Deserialize)]
struct Counts {
    #[serde(default)]
    prompt_tokens: LooseU64,
    #[serde(default)]
    completion_tokens: LooseU64,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    message: Loose<Message<'a>>,
    /// Completions put the answer here.
    #[serde(borrow, default)]
    text: LooseStr<'a>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: LooseStr<'a>,
    #[serde(borrow, default)]
    tool_calls: LooseSeq<Loose<Call<'a>>>,
}

#[derive(Deserialize)]
struct Call<'a> {
    #[serde(borrow, default)]
    function: Loose<Function<'a>>,
}

/// A called function; `name` and `arguments` are kept as they came (any JSON) because the
/// comparison takes them as structure.
#[derive(Deserialize)]
struct Function<'a> {
    #[serde(default)]
    name: Value,
    #[serde(borrow, default)]
    arguments: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct Embedding {
    #[serde(default)]
    embedding: Value,
}

/// Read what is compared out of an OpenAI answer body; `None` when it is not JSON. Members
/// of an unexpected type read as absent, as indexing a `Value` would.
pub fn extract(body: &[u8]) -> Option<Extracted> {
    let Loose(answer) = serde_json::from_slice::<Loose<Answer<'_>>>(body).ok()?;
    let Some(a) = answer else {
        return Some(Extracted::default());
    };
    let counts = a.usage.0.as_ref();
    let mut out = Extracted {
        prompt_tokens: counts.and_then(|u| u.prompt_tokens.0),
        completion_tokens: counts.and_then(|u| u.completion_tokens.0),
        ..Extracted::default()
    };
    if let Some(choices) = &a.choices.0 {
        let mut first = true;
        for c in choices.iter().filter_map(|c| c.0.as_ref()) {
            let message = c.message.0.as_ref();
            let content = message.and_then(|m| m.content.as_deref());
            if let Some(t) = content.or(c.text.as_deref()) {
                if !first {
                    out.text.push('\n');
                }
                out.text.push_str(t);
                first = false;
            }
            for call in message.into_iter().flat_map(|m| m.tool_calls.iter()) {
                let f = call.0.as_ref().and_then(|c| c.function.0.as_ref());
                let name = f.map_or(&Value::Null, |f| &f.name);
                let arguments = f
                    .and_then(|f| f.arguments)
                    .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
                    .unwrap_or(Value::Null);
                out.tool_calls.push(structural_call(name, &arguments));
            }
        }
    } else if let Some(data) = &a.data.0 {
        out.json = Some(Value::Array(
            data.iter()
                .map(|d| d.0.as_ref().map_or(Value::Null, |d| d.embedding.clone()))
                .collect(),
        ));
    }
    Some(out)
}

/// A call as compared: its function and its arguments parsed (ids are random per answer;
/// the function and its arguments are the answer).
fn structural_call(name: &Value, arguments: &Value) -> Value {
    let args: Value = arguments
        .as_str()
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_else(|| arguments.clone());
    serde_json::json!({"name": name, "arguments": args})
}

/// One event of a streamed answer, as far as it is compared.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default)]
    usage: Loose<Counts>,
    #[serde(borrow, default)]
    choices: LooseSeq<Loose<ChunkChoice<'a>>>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(borrow, default)]
    delta: Loose<Delta<'a>>,
    #[serde(borrow, default)]
    text: LooseStr<'a>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: LooseStr<'a>,
    #[serde(borrow, default)]
    tool_calls: LooseSeq<Loose<CallPiece<'a>>>,
}

#[derive(Deserialize)]
struct CallPiece<'a> {
    #[serde(default)]
    index: LooseU64,
    #[serde(borrow, default)]
    function: Loose<FunctionPiece<'a>>,
}

#[derive(Deserialize)]
struct FunctionPiece<'a> {
    #[serde(borrow, default)]
    name: LooseStr<'a>,
    #[serde(borrow, default)]
    arguments: LooseStr<'a>,
}

/// The text and tool calls of a streamed answer, from its SSE bytes (a call's `arguments`
/// arrive in pieces under its `index`).
pub fn extract_stream(sse: &[u8]) -> Extracted {
    let mut out = Extracted::default();
    // Per call index: name and the arguments text so far, in order of first appearance.
    let mut calls: Vec<(u64, String, String)> = Vec::new();
    for line in sse.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        let Ok(Loose(Some(chunk))) = serde_json::from_slice::<Loose<Chunk<'_>>>(data) else {
            continue;
        };
        for c in chunk.choices.iter().filter_map(|c| c.0.as_ref()) {
            let delta = c.delta.0.as_ref();
            if let Some(t) = delta
                .and_then(|d| d.content.as_deref())
                .or(c.text.as_deref())
            {
                out.text.push_str(t);
            }
            for tc in delta.into_iter().flat_map(|d| d.tool_calls.iter()) {
                let Some(tc) = &tc.0 else {
                    // Indexing a non-object gives index 0 and no name or arguments.
                    if !calls.iter().any(|(i, ..)| *i == 0) {
                        calls.push((0, String::new(), String::new()));
                    }
                    continue;
                };
                let index = tc.index.0.unwrap_or(0);
                let at = match calls.iter().position(|(i, ..)| *i == index) {
                    Some(at) => at,
                    None => {
                        calls.push((index, String::new(), String::new()));
                        calls.len() - 1
                    }
                };
                let f = tc.function.0.as_ref();
                if let Some(n) = f.and_then(|f| f.name.as_deref()) {
                    calls[at].1.push_str(n);
                }
                if let Some(a) = f.and_then(|f| f.arguments.as_deref()) {
                    calls[at].2.push_str(a);
                }
            }
        }
        if let Some(u) = &chunk.usage.0
            && let Some(p) = u.prompt_tokens.0
        {
            out.prompt_tokens = Some(p);
            out.completion_tokens = u.completion_tokens.0;
        }
    }
    out.tool_calls = calls
        .into_iter()
        .map(|(_, name, args)| structural_call(&Value::String(name), &Value::String(args)))
        .collect();
    out
}

/// How a pair compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub exact: bool,
    /// `None` when either answer is not JSON.
    pub json_equal: Option<bool>,
    pub similarity: f64,
    pub agree: bool,
}

/// Compare a served answer with its shadow.
pub fn compare(a: &Extracted, b: &Extracted) -> Comparison {
    if let (Some(x), Some(y)) = (&a.json, &b.json) {
        let eq = x == y;
        return Comparison {
            exact: eq,
            json_equal: Some(eq),
            similarity: if eq { 1.0 } else { 0.0 },
            agree: eq,
        };
    }
    let (ta, tb) = (a.text.trim(), b.text.trim());
    if !a.tool_calls.is_empty() || !b.tool_calls.is_empty() {
        // Calling tools is the answer: the same calls agree whatever text comes with them.
        let eq = a.tool_calls == b.tool_calls;
        return Comparison {
            exact: eq && ta == tb,
            json_equal: Some(eq),
            similarity: if eq { 1.0 } else { 0.0 },
            agree: eq,
        };
    }
    let exact = ta == tb;
    let json_equal = match (
        serde_json::from_str::<Value>(ta),
        serde_json::from_str::<Value>(tb),
    ) {
        (Ok(x), Ok(y)) if x.is_object() || x.is_array() => Some(x == y),
        _ => None,
    };
    let similarity = if exact { 1.0 } else { similarity(ta, tb) };
    Comparison {
        exact,
        json_equal,
        similarity,
        agree: exact || json_equal == Some(true) || similarity >= AGREE_SIMILARITY,
    }
}

/// 1 − normalised Levenshtein distance over lower-cased word tokens.
pub fn similarity(a: &str, b: &str) -> f64 {
    let ta: Vec<String> = tokens(a);
    let tb: Vec<String> = tokens(b);
    let (n, m) = (ta.len(), tb.len());
    if n == 0 && m == 0 {
        return 1.0;
    }
    let mut prev: Vec<usize> = (0..=m).collect();
    let mut cur = vec![0; m + 1];
    for i in 1..=n {
        cur[0] = i;
        for j in 1..=m {
            let cost = usize::from(ta[i - 1] != tb[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    1.0 - prev[m] as f64 / n.max(m) as f64
}

fn tokens(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .take(MAX_TOKENS)
        .map(str::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str) -> Extracted {
        Extracted {
            text: t.into(),
            ..Extracted::default()
        }
    }

    #[test]
    fn exact_json_and_similar() {
        let c = compare(&text("Paris."), &text(" Paris. "));
        assert!(c.exact && c.agree);
        let c = compare(
            &text(r#"{"a":1,"b":[1,2]}"#),
            &text(r#"{ "b": [1,2], "a": 1 }"#),
        );
        assert!(!c.exact);
        assert_eq!(c.json_equal, Some(true));
        assert!(c.agree);
        let c = compare(&text(r#"{"a":1}"#), &text(r#"{"a":2}"#));
        assert_eq!(c.json_equal, Some(false));
        let c = compare(
            &text("The capital of France is Paris, a city on the Seine river"),
            &text("The capital of France is Paris, a city on the Seine"),
        );
        assert!(c.similarity > 0.85 && c.similarity < 1.0, "{c:?}");
        let c = compare(&text("yes"), &text("no, absolutely not"));
        assert!(c.similarity < 0.2 && !c.agree, "{c:?}");
    }

    #[test]
    fn tool_calls_compare_as_structure_whole_or_streamed() {
        let whole = br#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[
            {"id":"call_a","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\", \"unit\": \"c\"}"}},
            {"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{}"}}]}}]}"#;
        let a = extract(whole).unwrap();
        // Other ids, key order and spacing; the first call's arguments in three pieces.
        let sse = [
            r#"{"choices":[{"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"x","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"unit\":\"c\","}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"city\":\"Paris\""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"y","function":{"name":"get_time","arguments":"{ }"}}]},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ]
        .iter()
        .map(|d| format!("data: {d}\n\n"))
        .collect::<String>();
        let b = extract_stream(sse.as_bytes());
        assert_eq!(b.tool_calls.len(), 2, "{b:?}");
        let c = compare(&a, &b);
        assert_eq!(c.json_equal, Some(true), "{a:?} vs {b:?}");
        assert!(c.agree && c.exact, "{c:?}");

        // Another argument value, another function, or a missing call disagree.
        let other_city = extract(
            &String::from_utf8_lossy(whole)
                .replace("Paris", "Lyon")
                .into_bytes(),
        )
        .unwrap();
        assert!(!compare(&a, &other_city).agree);
        let other_fn = extract(
            &String::from_utf8_lossy(whole)
                .replace("get_time", "get_date")
                .into_bytes(),
        )
        .unwrap();
        assert!(!compare(&a, &other_fn).agree);
        let text_only =
            extract(br#"{"choices":[{"message":{"content":"It is sunny in Paris."}}]}"#).unwrap();
        let c = compare(&a, &text_only);
        assert!(!c.agree && c.json_equal == Some(false), "{c:?}");
    }

    #[test]
    fn extracts_chat_completion_and_stream_text() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"Hi there"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
        let e = extract(body).unwrap();
        assert_eq!(e.text, "Hi there");
        assert_eq!(e.completion_tokens, Some(2));
        let sse = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi \"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"there\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        let s = extract_stream(sse);
        assert_eq!(s.text, "Hi there");
        assert_eq!(s.prompt_tokens, Some(3));
        assert!(compare(&e, &s).exact);
    }

    /// What the readers must equal: the same questions asked of a `serde_json::Value`.
    fn extract_by_value(body: &[u8]) -> Option<Extracted> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let mut out = Extracted {
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64(),
            completion_tokens: v["usage"]["completion_tokens"].as_u64(),
            ..Extracted::default()
        };
        if let Some(choices) = v["choices"].as_array() {
            let mut parts = Vec::new();
            for c in choices {
                if let Some(t) = c["message"]["content"].as_str() {
                    parts.push(t.to_string());
                } else if let Some(t) = c["text"].as_str() {
                    parts.push(t.to_string());
                }
                for call in c["message"]["tool_calls"].as_array().into_iter().flatten() {
                    let f = &call["function"];
                    out.tool_calls
                        .push(structural_call(&f["name"], &f["arguments"]));
                }
            }
            out.text = parts.join("\n");
        } else if let Some(data) = v["data"].as_array() {
            out.json = Some(Value::Array(
                data.iter().map(|d| d["embedding"].clone()).collect(),
            ));
        }
        Some(out)
    }

    fn extract_stream_by_value(sse: &[u8]) -> Extracted {
        let mut out = Extracted::default();
        let mut calls: Vec<(u64, String, String)> = Vec::new();
        for line in sse.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            let Ok(v) = serde_json::from_slice::<Value>(data) else {
                continue;
            };
            for c in v["choices"].as_array().into_iter().flatten() {
                if let Some(t) = c["delta"]["content"].as_str() {
                    out.text.push_str(t);
                } else if let Some(t) = c["text"].as_str() {
                    out.text.push_str(t);
                }
                for tc in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                    let index = tc["index"].as_u64().unwrap_or(0);
                    let at = match calls.iter().position(|(i, ..)| *i == index) {
                        Some(at) => at,
                        None => {
                            calls.push((index, String::new(), String::new()));
                            calls.len() - 1
                        }
                    };
                    if let Some(n) = tc["function"]["name"].as_str() {
                        calls[at].1.push_str(n);
                    }
                    if let Some(a) = tc["function"]["arguments"].as_str() {
                        calls[at].2.push_str(a);
                    }
                }
            }
            if let Some(p) = v["usage"]["prompt_tokens"].as_u64() {
                out.prompt_tokens = Some(p);
                out.completion_tokens = v["usage"]["completion_tokens"].as_u64();
            }
        }
        out.tool_calls = calls
            .into_iter()
            .map(|(_, name, args)| structural_call(&Value::String(name), &Value::String(args)))
            .collect();
        out
    }

    #[test]
    fn typed_readers_read_what_a_value_tree_reads_even_from_odd_answers() {
        let bodies: &[&str] = &[
            r#"{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#,
            r#"{"choices":[{"message":{"content":"a\"b\\c\u00e9"}},{"text":"second"},7,{"message":null,"text":"third"}]}"#,
            r#"{"choices":[{"message":{"content":null,"tool_calls":[{"function":{"name":"f","arguments":"{\"x\": [1, 2]}"}},{"function":{"name":"g","arguments":{"y":1}}},{"function":{"name":3,"arguments":"not json"}},"odd",{"function":[]}]}}]}"#,
            r#"{"choices":{"message":{"content":"not an array"}},"data":[{"embedding":[0.1,0.2]},{"embedding":"b64"},1,{"other":1}]}"#,
            r#"{"data":[{"embedding":[1,2,3]}],"usage":{"prompt_tokens":-1,"completion_tokens":2.5}}"#,
            r#"{"usage":"none","choices":[{"message":{"content":["part"]},"text":{"no":1}}]}"#,
            r#"[1,2,3]"#,
            r#""a string""#,
            r#"{"choices":[]}"#,
        ];
        for b in bodies {
            assert_eq!(extract(b.as_bytes()), extract_by_value(b.as_bytes()), "{b}");
        }
        assert_eq!(extract(b"{not json"), None);

        let events: &[&str] = &[
            r#"{"choices":[{"delta":{"role":"assistant","content":"Hel"}}]}"#,
            r#"{"choices":[{"delta":{"content":"lo \"q\""},"text":"ignored"}]}"#,
            r#"{"choices":[{"text":"legacy"},5,{"delta":null,"text":"t"}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"name":"f","arguments":"{\"a\""}},"junk",{"function":{"arguments":":1}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"arguments":":2}"}},{"index":-1,"function":{"name":7}}]}}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}"#,
            r#"{"choices":"x","usage":{"prompt_tokens":"9"}}"#,
            r#"[DONE]"#,
            r#"42"#,
        ];
        let sse = events
            .iter()
            .map(|d| format!("data: {d}\r\n\n"))
            .collect::<String>();
        assert_eq!(
            extract_stream(sse.as_bytes()),
            extract_stream_by_value(sse.as_bytes())
        );
        assert_eq!(extract_stream(sse.as_bytes()).text, "Hello \"q\"legacyt");
    }
}

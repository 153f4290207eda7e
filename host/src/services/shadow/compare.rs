//! Comparing a served answer with its shadow: what "the new model agrees" means.
//!
//! Three measures, each answering a different question a migrating team asks:
//! - exact match: the answer text is identical (after trimming), as with greedy decoding;
//! - JSON-structural equality: both answers are JSON and equal as values (key order and
//!   whitespace ignored): what matters for structured output and tool calls;
//! - similarity: 1 − normalised Levenshtein distance over word tokens, 0.0 to 1.0: how
//!   close two free-text answers are, robust to small rewordings.
//!
//! A pair *agrees* when it matches exactly, is JSON-equal, or its similarity reaches
//! [`AGREE_SIMILARITY`]. The report counts agreement from these stored columns only, so
//! its figures can be recomputed from the table.

use serde_json::Value;

/// Similarity at or above which two free-text answers count as agreeing.
pub const AGREE_SIMILARITY: f64 = 0.9;

/// Longest token sequence compared (the distance is quadratic; answers beyond this are
/// compared on their first tokens).
const MAX_TOKENS: usize = 2048;

/// The comparable content of an answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// The answer text: message contents (chat), texts (completions), joined; tool calls
    /// as their JSON.
    pub text: String,
    /// Embeddings: the vectors, compared as JSON.
    pub json: Option<Value>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// Read what is compared out of an OpenAI answer body.
pub fn extract(body: &[u8]) -> Option<Extracted> {
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
            if let Some(calls) = c["message"]["tool_calls"].as_array() {
                for call in calls {
                    // Ids are random per answer; the function and its arguments are the answer.
                    let f = &call["function"];
                    let args: Value = f["arguments"]
                        .as_str()
                        .and_then(|a| serde_json::from_str(a).ok())
                        .unwrap_or_else(|| f["arguments"].clone());
                    parts.push(
                        serde_json::json!({"name": f["name"], "arguments": args}).to_string(),
                    );
                }
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

/// The text of a streamed answer, from its SSE bytes.
pub fn extract_stream(sse: &[u8]) -> Extracted {
    let mut out = Extracted::default();
    for line in sse.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            continue;
        };
        if let Some(choices) = v["choices"].as_array() {
            for c in choices {
                if let Some(t) = c["delta"]["content"].as_str() {
                    out.text.push_str(t);
                } else if let Some(t) = c["text"].as_str() {
                    out.text.push_str(t);
                }
            }
        }
        if let Some(p) = v["usage"]["prompt_tokens"].as_u64() {
            out.prompt_tokens = Some(p);
            out.completion_tokens = v["usage"]["completion_tokens"].as_u64();
        }
    }
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
}

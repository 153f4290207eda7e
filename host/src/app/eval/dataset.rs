//! The dataset `switchyard eval` replays: one JSON object per line,
//! `{"id": "...", "messages": [...], "expected": "...", "metric": "..."}` plus any other
//! chat-completions request fields, which are sent as given.

use std::path::Path;

use serde_json::{Map, Value};

use super::score::Metric;

/// Fields of a dataset line that are the eval's own, not the request's.
const OWN_FIELDS: [&str; 3] = ["id", "expected", "metric"];

/// One example.
#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    /// The request as sent (without `id`, `expected`, `metric`; `model` and `stream` are
    /// set per target).
    pub request: Map<String, Value>,
    /// The reference answer; `None`: the baseline's answer is the reference.
    pub expected: Option<String>,
    /// This example's own metric (else the run's).
    pub metric: Option<Metric>,
    /// The last user message, shown to a judge as the question.
    pub question: String,
}

/// Read the dataset; an error names the file and line.
pub fn load(path: &Path) -> Result<Vec<Example>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the dataset: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        out.push(parse_line(line, i + 1).map_err(|e| format!("{at}: {e}"))?);
    }
    if out.is_empty() {
        return Err(format!("{}: the dataset has no examples", path.display()));
    }
    let mut seen = std::collections::HashSet::new();
    for e in &out {
        if !seen.insert(e.id.as_str()) {
            return Err(format!(
                "{}: the id \"{}\" is used by more than one example",
                path.display(),
                e.id
            ));
        }
    }
    Ok(out)
}

fn parse_line(line: &str, number: usize) -> Result<Example, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut request) = v else {
        return Err("a line must be a JSON object".into());
    };
    let id = match request.get("id") {
        None => format!("{number}"),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => return Err(format!("id: must be a string, got {other}")),
    };
    let expected = match request.get("expected") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        // An extraction task's expected object, written as JSON rather than as a string.
        Some(other) => Some(other.to_string()),
    };
    let metric = match request.get("metric") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Metric::parse(s).map_err(|e| format!("metric: {e}"))?),
        Some(other) => return Err(format!("metric: must be a string, got {other}")),
    };
    for k in OWN_FIELDS {
        request.remove(k);
    }
    let messages = match request.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(_) => return Err("messages: must be a non-empty array".into()),
        None => return Err("messages: is required".into()),
    };
    let question = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| content_text(&m["content"]))
        .unwrap_or_default();
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err("stream: eval reads whole answers; leave stream out".into());
    }
    Ok(Example {
        id,
        request,
        expected,
        metric,
        question,
    })
}

/// A message's text: a string, or the text parts of a content array.
fn content_text(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_dataset_loads_with_its_metrics() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/eval");
        let ex = load(&root.join("dataset.jsonl")).unwrap();
        assert_eq!(ex.len(), 17);
        let count = |m: Metric| ex.iter().filter(|e| e.metric == Some(m)).count();
        assert_eq!(
            (
                count(Metric::Label),
                count(Metric::Json),
                count(Metric::RougeL),
                count(Metric::Judge)
            ),
            (10, 3, 2, 2)
        );
        // Extraction answers are written as JSON objects; they are kept as JSON text.
        let inv = ex.iter().find(|e| e.id == "invoice-1").unwrap();
        assert!(serde_json::from_str::<Value>(inv.expected.as_deref().unwrap()).is_ok());
        assert!(inv.request.contains_key("response_format"));
        assert!(!inv.request.contains_key("expected") && !inv.request.contains_key("metric"));
        let text = std::fs::read_to_string(root.join("switchyard.toml")).unwrap();
        crate::config::parse(&text).unwrap();
        let rubric = std::fs::read_to_string(root.join("rubric.txt")).unwrap();
        crate::services::judge::check_rubric(&rubric).unwrap();
    }
}

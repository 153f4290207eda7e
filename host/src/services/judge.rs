//! An LLM judge: a rubric template filled with the question, the reference answer and the
//! answer under test, sent to a judge model, whose reply must carry a score from 1 to 10.
//!
//! Shared by `switchyard eval` (metric `judge`) and the shadow judge (`routes[].shadow.judge`).
//! A reply without a readable score is a judge error, never a score: a judge that rambles
//! must not drag a candidate's quality toward zero (or lift it).

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};

use super::upstream::{Upstream, client};
use crate::base::Endpoint;
use crate::base::openai::Usage;

/// The rubric used when none is given (config data: `shadow.judge` defaults to it too).
pub use crate::config::route::DEFAULT_JUDGE_RUBRIC as DEFAULT_RUBRIC;

/// The placeholders a rubric template may use.
const PLACEHOLDERS: [&str; 3] = ["{question}", "{reference}", "{answer}"];

/// Largest judge reply read.
const MAX_REPLY: usize = 4 * 1024 * 1024;

/// Check a rubric template: it must show the judge the answer.
pub fn check_rubric(template: &str) -> Result<(), String> {
    if !template.contains("{answer}") {
        return Err(
            "the rubric has no {answer} placeholder: the judge would not see the answer".into(),
        );
    }
    Ok(())
}

/// Fill the template's placeholders in one pass, so that text inside the answer that looks
/// like a placeholder stays as written.
pub fn render(template: &str, question: &str, reference: &str, answer: &str) -> String {
    let mut out =
        String::with_capacity(template.len() + question.len() + reference.len() + answer.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        match PLACEHOLDERS.iter().position(|p| tail.starts_with(p)) {
            Some(i) => {
                out.push_str([question, reference, answer][i]);
                rest = &tail[PLACEHOLDERS[i].len()..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A judge's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// 1 to 10.
    pub score: f64,
    /// The judge's reason (its `reason` field, else its whole reply), at most 500 chars.
    pub reason: String,
}

/// Read the score from a judge's reply: a JSON object with `score` (anywhere in the reply),
/// else `SCORE: N`. The score must be a number from 1 to 10.
pub fn parse_verdict(reply: &str) -> Result<Verdict, String> {
    let short = |s: &str| s.trim().chars().take(500).collect::<String>();
    let in_range = |v: f64| {
        if (1.0..=10.0).contains(&v) {
            Ok(v)
        } else {
            Err(format!("the judge's score {v} is not between 1 and 10"))
        }
    };
    // The first JSON object in the reply that has a `score`.
    for (at, _) in reply.match_indices('{') {
        let mut de =
            serde_json::Deserializer::from_str(&reply[at..]).into_iter::<serde_json::Value>();
        let Some(Ok(serde_json::Value::Object(o))) = de.next() else {
            continue;
        };
        let Some(s) = o.get("score") else { continue };
        let v = match s {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(t) => t.trim().parse::<f64>().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("the judge's score is not a number: {s}"))?;
        let reason = o
            .get("reason")
            .and_then(|r| r.as_str())
            .map(short)
            .unwrap_or_else(|| short(reply));
        return Ok(Verdict {
            score: in_range(v)?,
            reason,
        });
    }
    let lower = reply.to_ascii_lowercase();
    if let Some(at) = lower.find("score:") {
        let after = reply[at + "score:".len()..].trim_start();
        let num: String = after
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        if let Ok(v) = num.trim_end_matches('.').parse::<f64>() {
            return Ok(Verdict {
                score: in_range(v)?,
                reason: short(reply),
            });
        }
    }
    Err(format!(
        "no score in the judge's reply (want {{\"score\": N}} or SCORE: N): {}",
        crate::base::error::snippet(reply.as_bytes(), 160)
    ))
}

/// A chat completions request asking `model` for `prompt`, deterministic where the
/// upstream allows.
pub fn request_body(model: &str, prompt: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
        })
        .to_string(),
    )
}

/// One answered call: the reply's text and the tokens the upstream reported.
#[derive(Debug, Clone, Default)]
pub struct Called {
    pub status: u16,
    pub body: Bytes,
    pub latency_ms: f64,
}

/// Send one request to `upstream` (a URL its pool picks; no retries) and read the answer
/// whole. An error says what failed: connection, timeout, or the upstream's status.
pub async fn call(
    upstream: &Upstream,
    endpoint: Endpoint,
    body: Bytes,
    headers: &HeaderMap,
) -> Result<Called, String> {
    let backend = &upstream.backend;
    let idx = upstream.pick(&[], std::time::Instant::now()).unwrap_or(0);
    let Some(url) = backend.urls.get(idx) else {
        return Err(format!("backend {} has no URL", backend.name));
    };
    let req = client::build_request(backend, url.uri(endpoint), body, headers)
        .map_err(|e| e.to_string())?;
    let sent = std::time::Instant::now();
    let resp = client::send(upstream, url, req)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let read = tokio::time::timeout(
        backend.timeout,
        Limited::new(resp.into_body(), MAX_REPLY).collect(),
    )
    .await;
    let bytes = match read {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) => return Err(format!("reading the answer: {e}")),
        Err(_) => return Err("timed out reading the answer".into()),
    };
    let latency_ms = sent.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        return Err(format!(
            "HTTP {}: {}",
            status.as_u16(),
            crate::base::error::snippet(&bytes, 200)
        ));
    }
    Ok(Called {
        status: status.as_u16(),
        body: bytes,
        latency_ms,
    })
}

/// The text of a chat completion (first choice): its content, or, for an answer that calls
/// tools, the calls as JSON (`[{"name": ..., "arguments": ...}]`, arguments parsed when they
/// are JSON), so extraction tasks can score them. And the usage it reported.
pub fn answer_text(body: &[u8]) -> Result<(String, Option<Usage>), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the answer is not JSON ({e}): {}",
            crate::base::error::snippet(body, 120)
        )
    })?;
    let usage = v
        .get("usage")
        .and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok());
    let choice = &v["choices"][0];
    let msg = &choice["message"];
    if let Some(calls) = msg["tool_calls"].as_array()
        && !calls.is_empty()
        && msg["content"].as_str().is_none_or(str::is_empty)
    {
        let calls: Vec<serde_json::Value> = calls
            .iter()
            .map(|c| {
                let args = &c["function"]["arguments"];
                let args = args
                    .as_str()
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or_else(|| args.clone());
                serde_json::json!({"name": c["function"]["name"], "arguments": args})
            })
            .collect();
        return Ok((serde_json::Value::Array(calls).to_string(), usage));
    }
    let text = msg["content"]
        .as_str()
        .or(choice["text"].as_str())
        .ok_or_else(|| {
            format!(
                "the answer has no choices[0].message.content: {}",
                crate::base::error::snippet(body, 120)
            )
        })?;
    Ok((text.to_string(), usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_once_and_in_place() {
        let t = "Q={question} R={reference} A={answer} {other}";
        assert_eq!(
            render(t, "q", "{answer}", "a"),
            "Q=q R={answer} A=a {other}"
        );
    }

    #[test]
    fn scores_are_read_from_json_or_a_score_line() {
        let v = parse_verdict("Sure. {\"score\": 8, \"reason\": \"close\"}").unwrap();
        assert_eq!(v.score, 8.0);
        assert_eq!(v.reason, "close");
        assert_eq!(parse_verdict("looks fine\nSCORE: 7").unwrap().score, 7.0);
        assert_eq!(parse_verdict("score: 10.").unwrap().score, 10.0);
        assert!(parse_verdict("I think it is good").is_err());
        assert!(parse_verdict("{\"score\": 11}").is_err());
        assert!(parse_verdict("{\"score\": \"high\"}").is_err());
    }
}

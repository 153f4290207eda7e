//! What `switchyard rollout status` and `GET /admin/rollouts` print: each rollout's state,
//! step, weight, every guard's value and limit, and its transitions with their reasons.
//!
//! ```json
//! {"rollouts": [{"route", "state", "step", "weight", "guards": [{"name", "value", "limit",
//!   "ok"}], "history": [{"at", "from", "to", "reason"}]}]}
//! ```
//! (`ok` is null for a guard without data; members beyond these are extra detail.)

use std::fmt::Write;

use serde_json::{Value, json};

use super::state::{HistoryEntry, Record};

/// RFC 3339 (UTC, seconds) for a Unix-milliseconds time.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// One rollout as JSON.
pub fn to_json(r: &Record, history: &[HistoryEntry]) -> Value {
    json!({
        "route": r.route,
        "state": r.state.as_str(),
        // Steps are numbered from 1 for people; `steps` lists their weights.
        "step": r.step + 1,
        "steps": r.steps,
        "weight": r.weight,
        "candidate": r.candidate,
        "fingerprint": r.fingerprint,
        "started": rfc3339(r.started_ms),
        "step_started": rfc3339(r.step_started_ms),
        "reason": r.reason,
        "window": {
            "candidate": r.window.candidate,
            "incumbent": r.window.incumbent,
        },
        "guards": r.guards.iter().map(|g| json!({
            "name": g.name,
            "value": g.value,
            "limit": g.limit,
            "ok": g.ok,
            "detail": g.detail,
        })).collect::<Vec<_>>(),
        "history": history.iter().map(|h| json!({
            "at": rfc3339(h.at_ms),
            "from": h.from,
            "to": h.to,
            "reason": h.reason,
            "weight": h.weight,
            "candidate_requests": h.candidate_requests,
            "incumbent_requests": h.incumbent_requests,
        })).collect::<Vec<_>>(),
    })
}

/// `{"rollouts": [...]}`.
pub fn list_json(list: &[(Record, Vec<HistoryEntry>)]) -> Value {
    json!({"rollouts": list.iter().map(|(r, h)| to_json(r, h)).collect::<Vec<_>>()})
}

/// The text report.
pub fn list_text(list: &[(Record, Vec<HistoryEntry>)]) -> String {
    let mut out = String::new();
    if list.is_empty() {
        out.push_str("no rollouts\n");
    }
    for (r, history) in list {
        let steps: Vec<String> = r.steps.iter().map(|s| format!("{s}%")).collect();
        let _ = writeln!(
            out,
            "route {}: {} at step {}/{} [{}], {}% on {}",
            r.route,
            r.state.as_str(),
            r.step + 1,
            r.steps.len(),
            steps.join(" "),
            r.weight,
            r.candidate
        );
        if let Some(reason) = &r.reason {
            let _ = writeln!(out, "  {reason}");
        }
        let (c, i) = (&r.window.candidate, &r.window.incumbent);
        let _ = writeln!(
            out,
            "  step window: candidate {} requests ({} errors, {} rejected), incumbent {} requests ({} errors, {} rejected)",
            c.requests, c.errors, c.rejects, i.requests, i.errors, i.rejects
        );
        if !r.guards.is_empty() {
            let _ = writeln!(
                out,
                "  {:<22} {:>12} {:>10}  {:<8} detail",
                "guard", "value", "limit", "status"
            );
        }
        for g in &r.guards {
            let value = g.value.map_or("-".to_string(), |v| format!("{v:.4}"));
            let ok = match g.ok {
                Some(true) => "ok",
                Some(false) => "BREACHED",
                None => "no data",
            };
            let _ = writeln!(
                out,
                "  {:<22} {:>12} {:>10}  {:<8} {}",
                g.name, value, g.limit, ok, g.detail
            );
        }
        for h in history {
            let _ = writeln!(
                out,
                "  {}  {} -> {}  {}",
                rfc3339(h.at_ms),
                h.from,
                h.to,
                h.reason
            );
        }
    }
    out
}

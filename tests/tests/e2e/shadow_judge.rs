//! `routes[].shadow.judge`: an LLM judge scores shadow pairs off the serving path; the
//! scores are stored with the pairs, summarised by `switchyard shadow report`, observed on
//! `/metrics`, and every judge call is a ledger row of kind `judge`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::client::Client;
use switchyard_tests::mock::MockUpstream;
use switchyard_tests::{Gateway, run_switchyard};

const PAIRS: usize = 30;

/// The judge's score for a shadow answer `answer i`: 1 + i mod 10 (so the figures spread).
fn scripted_score(answer: &str) -> Option<u32> {
    answer
        .strip_prefix("answer ")
        .and_then(|n| n.parse::<u32>().ok())
        .map(|i| 1 + i % 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_figures_in_the_report_equal_a_computation_from_the_stored_pairs() {
    let mock = MockUpstream::start().await;
    mock.set_script(|req| {
        if req["model"] != "judge" {
            return None;
        }
        let p = req["messages"][0]["content"].as_str().unwrap_or("");
        let field = |tag: &str| {
            let start = p.find(&format!("<{tag}>"))? + tag.len() + 2;
            let end = p.find(&format!("</{tag}>"))?;
            Some(p[start..end].to_string())
        };
        let (reference, answer) = (field("ref")?, field("ans")?);
        // The served answer is the reference, the shadow's the answer under test.
        assert!(reference.starts_with("served "), "{p}");
        Some(match scripted_score(&answer) {
            Some(s) => format!("{{\"score\": {s}, \"reason\": \"scripted\"}}"),
            None => "no opinion".to_string(),
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let rubric = dir.path().join("rubric.txt");
    std::fs::write(
        &rubric,
        "{question}\n<ref>{reference}</ref>\n<ans>{answer}</ans>",
    )
    .unwrap();
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
[[backends]]
name = "m"
url = "{url}"
[[prices]]
backend = "m"
model = "judge"
input_per_1m = 2.0
output_per_1m = 4.0
[[routes]]
model = "r"
targets = [{{ backend = "m", model = "big" }}]
shadow = {{ backend = "m", model = "small", sample = 1.0, judge = {{ backend = "m", model = "judge", sample = 1.0, rubric = "{rubric}" }} }}
[state]
path = "{db}"
"#,
        url = mock.url(),
        rubric = rubric.display(),
        db = db.display()
    );
    let gw = Gateway::start(&text);
    let client = Client::new();
    for i in 0..PAIRS {
        // Every seventh shadow answer is one the judge cannot score.
        let shadow = if i % 7 == 3 {
            "rambling".to_string()
        } else {
            format!("answer {i}")
        };
        let body = json!({"model": "r", "messages": [{"role": "user", "content": format!("q{i}")}],
                          "mock_answers": {"big": format!("served {i}"), "small": shadow}});
        let r = client
            .post_json(&gw.url("/v1/chat/completions"), &body, &[])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            format!("served {i}")
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut metrics = String::new();
    while !metrics.contains(&format!("switchyard_shadow_recorded_total {PAIRS}")) {
        assert!(Instant::now() < deadline, "pairs not recorded: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = client.get(&gw.url("/metrics")).await.text();
    }

    // Straight from the stored pairs.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut scores: Vec<f64> = conn
        .prepare(
            "SELECT judge_score FROM shadow_pairs WHERE route = 'r' AND judge_score IS NOT NULL",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let unscored: i64 = conn
        .query_row("SELECT COUNT(*) FROM shadow_pairs WHERE judge_score IS NULL AND judge_error IS NOT NULL", [], |r| r.get(0))
        .unwrap();
    let errors_expected = (0..PAIRS).filter(|i| i % 7 == 3).count();
    assert_eq!(scores.len(), PAIRS - errors_expected);
    assert_eq!(unscored as usize, errors_expected);
    let reason: String = conn
        .query_row(
            "SELECT judge_reason FROM shadow_pairs WHERE judge_score IS NOT NULL LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reason, "scripted");
    scores.sort_by(f64::total_cmp);
    let n = scores.len() as f64;
    let mean = scores.iter().sum::<f64>() / n;
    let p10 = scores[((n - 1.0) * 0.10).round() as usize];
    let share = scores.iter().filter(|s| **s >= 8.0).count() as f64 / n;

    let (code, out, err) = run_switchyard(
        &[
            "shadow",
            "report",
            "--config",
            gw.config_path.to_str().unwrap(),
            "--json",
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let r = &doc["routes"][0];
    assert_eq!(r["judged"], scores.len());
    assert_eq!(r["judge_errors"], errors_expected);
    assert!(
        (r["judge_mean"].as_f64().unwrap() - mean).abs() < 1e-12,
        "{r}"
    );
    assert_eq!(r["judge_p10"].as_f64().unwrap(), p10);
    assert!((r["judge_share_at_least_8"].as_f64().unwrap() - share).abs() < 1e-12);
    let (code, out, _) = run_switchyard(
        &[
            "shadow",
            "report",
            "--config",
            gw.config_path.to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!(
            "judge: {} pair(s) scored, mean {mean:.2}/10",
            scores.len()
        )),
        "{out}"
    );

    // /metrics: the histogram by route and shadow backend.
    let count_line = format!(
        "switchyard_shadow_judge_score_count{{route=\"r\",backend=\"m\"}} {}",
        scores.len()
    );
    assert!(metrics.contains(&count_line), "{metrics}");
    let le8: usize = scores.iter().filter(|s| **s <= 8.0).count();
    assert!(
        metrics.contains(&format!(
            "switchyard_shadow_judge_score_bucket{{route=\"r\",backend=\"m\",le=\"8\"}} {le8}"
        )),
        "{metrics}"
    );

    // Every judge call is a ledger row of kind `judge`, priced like any other.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM ledger WHERE kind = 'judge'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        if n as usize == PAIRS {
            break;
        }
        assert!(Instant::now() < deadline, "judge rows: {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (model, tin, tout, cost): (String, i64, i64, f64) = conn
        .query_row(
            "SELECT model, tokens_in, tokens_out, cost_usd FROM ledger WHERE kind = 'judge' LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(model, "judge");
    assert!(tin > 0 && tout > 0);
    assert!((cost - (tin as f64 * 2.0 + tout as f64 * 4.0) / 1e6).abs() < 1e-12);
}

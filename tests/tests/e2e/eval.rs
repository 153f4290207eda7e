//! `switchyard eval`: a dataset replayed against targets through the config's backends,
//! scored, compared with the baseline, gated; the exit code is what CI reads.

use serde_json::{Value, json};
use switchyard_tests::mock::{Behaviour, MockUpstream};
use switchyard_tests::{plugins, run_switchyard};

/// The labels of the e2e fixture in `tests/fixtures/eval/reference.py` (20 examples; the
/// candidate is right on 15), and scikit-learn's macro-F1 for them (printed by that script).
const TRUTH: [&str; 20] = [
    "positive", "positive", "positive", "positive", "positive", "positive", "positive", "positive",
    "negative", "negative", "negative", "negative", "negative", "negative", "negative", "negative",
    "neutral", "neutral", "neutral", "neutral",
];
const PREDICTED: [&str; 20] = [
    "positive", "positive", "positive", "positive", "positive", "positive", "negative", "negative",
    "negative", "negative", "negative", "negative", "negative", "negative", "negative", "neutral",
    "neutral", "neutral", "positive", "positive",
];
const SKLEARN_MACRO_F1: f64 = 0.7149859943977591;

fn config(url: &str, extra: &str) -> String {
    format!(
        r#"[[backends]]
name = "m"
url = "{url}"
[[routes]]
model = "x"
targets = [{{ backend = "m", model = "good" }}]
[[prices]]
backend = "m"
model = "good"
input_per_1m = 5.0
output_per_1m = 15.0
[[prices]]
backend = "m"
model = "bad"
input_per_1m = 0.5
output_per_1m = 1.5
{extra}"#
    )
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn lines(v: &[Value]) -> String {
    v.iter().map(|l| format!("{l}\n")).collect()
}

fn eval(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["eval", "--config", "switchyard.toml"];
    all.extend_from_slice(args);
    run_switchyard(&all, dir, &[])
}

fn target<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == name)
        .unwrap_or_else(|| panic!("no target {name} in {doc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_metric_reports_accuracy_macro_f1_costs_and_gates_the_exit_code() {
    let mock = MockUpstream::start().await;
    // Every answer reports 100 prompt and 100 completion tokens.
    mock.set_behaviour(Behaviour {
        usage: Some(100),
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "switchyard.toml", &config(&mock.url(), ""));
    let data: Vec<Value> = (0..20)
        .map(|i| {
            json!({"id": format!("e{i}"), "messages": [{"role": "user", "content": format!("review {i}")}],
                   "expected": TRUTH[i], "metric": "label",
                   // The answer's first line is its label; the rest is ignored.
                   "mock_answers": {"good": format!("{}\nbecause", TRUTH[i].to_uppercase()), "bad": PREDICTED[i]}})
        })
        .collect();
    let ds = write(dir.path(), "ds.jsonl", &lines(&data));
    let out = dir.path().join("out");
    let (code, stdout, stderr) = eval(
        dir.path(),
        &[
            "--dataset",
            &ds,
            "--baseline",
            "m:good",
            "--target",
            "m:bad",
            "--json",
            "--gate",
            "quality>=0.95*baseline",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "a failed gate exits 1: {stdout}\n{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["baseline"], "m:good");
    assert_eq!(
        doc["targets"][0]["target"], "m:good",
        "baseline listed first"
    );
    let good = target(&doc, "m:good");
    let bad = target(&doc, "m:bad");
    assert_eq!(good["examples"], 20);
    assert_eq!(good["errors"], 0);
    assert_eq!(good["accuracy"], 1.0);
    assert_eq!(good["macro_f1"], 1.0);
    assert_eq!(bad["accuracy"], 0.75);
    let f1 = bad["macro_f1"].as_f64().unwrap();
    assert!((f1 - SKLEARN_MACRO_F1).abs() < 1e-12, "macro-F1 {f1}");
    assert_eq!(bad["quality"], 0.75);
    assert_eq!(bad["quality_vs_baseline"], 0.75);
    // Costs are the upstream's usage times `[[prices]]`: 20 × (100 × $5 + 100 × $15) / 1M.
    assert_eq!(good["tokens"], json!({"input": 2000, "output": 2000}));
    assert!(
        (good["cost_usd"].as_f64().unwrap() - 0.04).abs() < 1e-12,
        "{good}"
    );
    assert!(
        (bad["cost_usd"].as_f64().unwrap() - 0.004).abs() < 1e-12,
        "{bad}"
    );
    assert!((bad["cost_vs_baseline"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    assert_eq!(
        bad["gates"],
        json!([{"expr": "quality>=0.95*baseline", "pass": false}])
    );
    assert_eq!(good["gates"], json!([]), "the baseline is not gated");
    assert!(bad["latency_ms"]["p50"].is_number() && bad["latency_ms"]["p99"].is_number());

    // --out: every example's answers and scores, and a self-contained HTML report.
    let jsonl = std::fs::read_to_string(out.join("examples.jsonl")).unwrap();
    let rows: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 40);
    let e6 = rows
        .iter()
        .find(|r| r["target"] == "m:bad" && r["id"] == "e6")
        .unwrap();
    assert_eq!(
        (e6["answer"].as_str(), e6["score"].as_f64()),
        (Some("negative"), Some(0.0))
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("m:bad") && !html.contains("<script src"));

    // A looser gate passes: exit 0.
    let (code, stdout, stderr) = eval(
        dir.path(),
        &[
            "--dataset",
            &ds,
            "--baseline",
            "m:good",
            "--target",
            "m:bad",
            "--gate",
            "quality>=0.7*baseline",
            "--gate",
            "cost<=0.4*baseline",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("gate quality>=0.7*baseline: pass"),
        "{stdout}"
    );
    assert!(stdout.contains("accuracy 0.7500"), "{stdout}");

    // Usage and config errors exit 2, naming what is wrong.
    let (code, _, stderr) = eval(dir.path(), &["--dataset", &ds, "--target", "nope:bad"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no backend named \"nope\""), "{stderr}");
    let (code, _, stderr) = eval(
        dir.path(),
        &[
            "--dataset",
            &ds,
            "--target",
            "m:bad",
            "--gate",
            "quality>=0.9*baseline",
        ],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("give --baseline"), "{stderr}");
    let (code, _, stderr) = eval(
        dir.path(),
        &["--dataset", &ds, "--target", "m:bad", "--gate", "speed>1"],
    );
    assert_eq!(code, 2, "{stderr}");
    let bad_ds = write(
        dir.path(),
        "bad.jsonl",
        "{\"messages\": [{\"role\":\"user\",\"content\":\"x\"}], \"expected\": \"a\"}\n{\"expected\": \"b\"}\n",
    );
    let (code, _, stderr) = eval(dir.path(), &["--dataset", &bad_ds, "--target", "m:bad"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("bad.jsonl:2") && stderr.contains("messages"),
        "{stderr}"
    );
    let (code, _, _) = eval(
        dir.path(),
        &["--dataset", &ds, "--target", "m:bad", "--metric", "bleu"],
    );
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_json_and_rouge_l_scores_equal_the_reference_implementations() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "switchyard.toml", &config(&mock.url(), ""));
    let ask = |id: &str, metric: &str, expected: Value, answer: &str| {
        json!({"id": id, "metric": metric, "expected": expected, "temperature": 0,
               "messages": [{"role": "user", "content": id}], "mock_answers": {"bad": answer}})
    };
    // Reference values: tests/fixtures/eval/reference.py (rouge-score for ROUGE-L).
    let data = [
        ask(
            "r1",
            "rouge_l",
            json!("the cat sat on the mat"),
            "the cat was sitting on the mat",
        ),
        ask(
            "r2",
            "rouge_l",
            json!("Q3 revenue grew 12 percent thanks to cloud sales."),
            "Revenue rose 12% in Q3, driven by cloud.",
        ),
        ask(
            "j1",
            "json",
            json!({"a": {"b": [1, 2, 4]}, "c": true}),
            r#"{"a": {"b": [1, 2, 3]}, "c": true}"#,
        ),
        ask(
            "j2",
            "json",
            json!(r#"{"name": "Ada", "age": 36}"#),
            "```json\n{\"name\": \"Ada\", \"age\": 36.0, \"extra\": 1}\n```",
        ),
        ask("x1", "exact", json!("Paris"), "  paris \n"),
        ask("x2", "exact", json!("Paris"), "Paris."),
    ];
    let ds = write(dir.path(), "ds.jsonl", &lines(&data));
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut a = vec![
            "--dataset",
            ds.as_str(),
            "--target",
            "m:bad",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        let (code, stdout, stderr) = eval(dir.path(), &a);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let rows: Vec<Value> = std::fs::read_to_string(out.join("examples.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let score = move |id: &str| {
            rows.iter().find(|r| r["id"] == id).unwrap()["score"]
                .as_f64()
                .unwrap()
        };
        (serde_json::from_str::<Value>(&stdout).unwrap(), score)
    };
    let (doc, score) = run(&[]);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(score("r1"), 0.7692307692307692), "{}", score("r1"));
    assert!(close(score("r2"), 0.35294117647058826), "{}", score("r2"));
    assert!(close(score("j1"), 0.75));
    assert!(close(score("j2"), 1.0));
    assert_eq!((score("x1"), score("x2")), (0.0, 0.0), "case differs");
    let q = doc["targets"][0]["quality"].as_f64().unwrap();
    let want = (0.7692307692307692 + 0.35294117647058826 + 0.75 + 1.0) / 6.0;
    assert!(close(q, want), "quality {q} want {want}");
    assert_eq!(doc["baseline"], Value::Null);
    // The request went as given, extra fields and all, to the target's model.
    let sent = mock.last_request().unwrap().json();
    assert_eq!(sent["model"], "bad");
    assert_eq!(sent["temperature"], 0);
    assert!(
        sent.get("expected").is_none() && sent.get("id").is_none() && sent.get("metric").is_none()
    );

    let (_, score) = run(&["--ignore-case"]);
    assert_eq!((score("x1"), score("x2")), (1.0, 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_scores_come_from_its_replies_and_unparseable_replies_are_judge_errors() {
    let mock = MockUpstream::start().await;
    // The judge reads its prompt (the rubric below) and answers per case.
    mock.set_script(|req| {
        if req["model"] != "judge" {
            return None;
        }
        let p = req["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let field = |tag: &str| {
            let start = p.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
            let end = p.find(&format!("</{tag}>")).unwrap();
            p[start..end].to_string()
        };
        let (r, a) = (field("ref"), field("ans"));
        Some(if a == r {
            r#"{"score": 9, "reason": "same as the reference"}"#.to_string()
        } else if a.contains("ramble") {
            "I would rather not say.".to_string()
        } else {
            "Partly right.\nSCORE: 4".to_string()
        })
    });
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "switchyard.toml", &config(&mock.url(), ""));
    let rubric = write(
        dir.path(),
        "rubric.txt",
        "Q: {question}\n<ref>{reference}</ref>\n<ans>{answer}</ans>\nReply {\"score\": N}.",
    );
    let ex = |id: &str, expected: Option<&str>, good: &str, bad: &str| {
        let mut v = json!({"id": id, "messages": [{"role": "user", "content": format!("question {id}")}],
                           "mock_answers": {"good": good, "bad": bad}});
        if let Some(e) = expected {
            v["expected"] = json!(e);
        }
        v
    };
    let data = [
        ex("a", Some("Paris"), "Paris", "Paris"),
        ex("b", Some("Berlin"), "Berlin", "Munich"),
        ex("c", Some("Rome"), "Rome", "let me ramble"),
        // No expected: the baseline's answer is the reference.
        ex("d", None, "Madrid", "Madrid"),
    ];
    let ds = write(dir.path(), "ds.jsonl", &lines(&data));
    let out = dir.path().join("out");
    let (code, stdout, stderr) = eval(
        dir.path(),
        &[
            "--dataset",
            &ds,
            "--baseline",
            "m:good",
            "--target",
            "m:bad",
            "--metric",
            "judge",
            "--judge",
            "m:judge",
            "--rubric",
            &rubric,
            "--json",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    let bad = target(&doc, "m:bad");
    assert_eq!(bad["judge_errors"], 1, "{bad}");
    // 9, 4 and 9 out of 10; the unparseable reply is not a score.
    let q = bad["quality"].as_f64().unwrap();
    assert!((q - (0.9 + 0.4 + 0.9) / 3.0).abs() < 1e-12, "{q}");
    let rows: Vec<Value> = std::fs::read_to_string(out.join("examples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |t: &str, id: &str| {
        rows.iter()
            .find(|r| r["target"] == t && r["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(row("m:bad", "b")["judge"]["score"], 4.0);
    assert_eq!(row("m:bad", "c")["score"], Value::Null);
    assert!(
        row("m:bad", "c")["judge"]["error"]
            .as_str()
            .unwrap()
            .contains("no score")
    );
    assert_eq!(row("m:bad", "d")["reference"], "Madrid");
    // The prompt is the template with the reference and the answer where it puts them.
    let prompts: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.json())
        .filter(|j| j["model"] == "judge")
        .map(|j| j["messages"][0]["content"].as_str().unwrap().to_string())
        .collect();
    assert!(
        prompts.contains(
            &"Q: question b\n<ref>Berlin</ref>\n<ans>Munich</ans>\nReply {\"score\": N}."
                .to_string()
        ),
        "{prompts:?}"
    );
    // The baseline is not judged where it is its own reference (d): 3 + 4 judge calls.
    assert_eq!(prompts.len(), 7, "{prompts:?}");

    // metric judge without --judge is a usage error.
    let (code, _, stderr) = eval(
        dir.path(),
        &[
            "--dataset",
            &ds,
            "--target",
            "m:bad",
            "--baseline",
            "m:good",
            "--metric",
            "judge",
        ],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("--judge"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_applies_the_targets_adapt_plugins() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("plugins");
    plugins::install(
        &plugins::first_party("prompt-adapter"),
        &pdir,
        "prompt-adapter",
    );
    let extra = format!("[plugins]\ndir = \"{}\"\nwatch = false\n", pdir.display());
    write(dir.path(), "switchyard.toml", &config(&mock.url(), &extra));
    let ds = write(
        dir.path(),
        "ds.jsonl",
        &lines(&[
            json!({"messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}], "expected": "Bonjour", "mock_answers": {"gemma-2-9b": "Bonjour"}}),
        ]),
    );
    let (code, stdout, stderr) = eval(
        dir.path(),
        &["--dataset", &ds, "--target", "m:gemma-2-9b", "--json"],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // A template without a system role: the adapter moved it into the user turn.
    let sent = mock.last_request().unwrap().json();
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "Answer in French.\n\nHello"}])
    );
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["targets"][0]["quality"], 1.0);
}

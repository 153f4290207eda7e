//! `switchyard check`: prints what it found, or names file, key and problem.

use switchyard_tests::run_switchyard;

#[test]
fn check_prints_a_summary_of_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(
        &cfg,
        r#"
[server]
listen = "127.0.0.1:8080"
[[backends]]
name = "local"
urls = ["http://127.0.0.1:9001/v1", "http://127.0.0.1:9002/v1"]
[[backends]]
name = "openai"
url = "https://api.openai.com/v1"
api_key_env = "SWITCHYARD_TEST_KEY"
[[routes]]
model = "gpt-4o"
targets = [{ backend = "local", model = "llama-3.1-8b", weight = 90 }, { backend = "openai", weight = 10 }]
fallback = [{ backend = "openai", model = "gpt-4o" }]
"#,
    )
    .unwrap();
    let (code, out, err) = run_switchyard(
        &["check"],
        dir.path(),
        &[("SWITCHYARD_TEST_KEY", "sk-secret-value")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is valid"), "{out}");
    assert!(
        out.contains("local: http://127.0.0.1:9001/v1, http://127.0.0.1:9002/v1"),
        "{out}"
    );
    assert!(out.contains("llama-3.1-8b (weight 90, 90.0%)"), "{out}");
    assert!(out.contains("fallback 1: openai"), "{out}");
    assert!(!out.contains("sk-secret-value") && !err.contains("sk-secret-value"));
}

#[test]
fn check_names_the_file_the_key_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"
[[backends]]
name = "local"
url = "http://127.0.0.1:9001/v1"
[[routes]]
model = "gpt-4o"
targets = [{ backend = "lcoal" }]
"#,
    )
    .unwrap();
    let (code, _out, err) = run_switchyard(
        &["check", "--config", cfg.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("routes[0].targets[0].backend"), "{err}");
    assert!(err.contains("no backend named \"lcoal\""), "{err}");

    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n").unwrap();
    let (code, _out, err) = run_switchyard(
        &["check", "--config", cfg.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("listne") && err.contains("line 3"), "{err}");

    let (code, _out, err) = run_switchyard(
        &["check", "--config", "/nonexistent/x.toml"],
        dir.path(),
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("/nonexistent/x.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn check_without_a_file_checks_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _err) = run_switchyard(&["check"], dir.path(), &[]);
    assert_eq!(code, 0);
    assert!(out.contains("embedded default"), "{out}");
}

//! Reference values for the metrics' unit tests, printed by
//! `tests/fixtures/eval/reference.py` (rouge-score 0.1.2, scikit-learn 1.9.1); do not edit by hand.

/// (prediction, reference, rouge-score's ROUGE-L F1)
pub const ROUGE_L: &[(&str, &str, f64)] = &[
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    (
        "the cat was sitting on the mat",
        "the cat sat on the mat",
        0.7692307692307692,
    ),
    (
        "A quick brown fox!",
        "the quick, brown FOX jumps",
        0.6666666666666665,
    ),
    (
        "Revenue rose 12% in Q3, driven by cloud.",
        "Q3 revenue grew 12 percent thanks to cloud sales.",
        0.35294117647058826,
    ),
    ("", "nothing here", 0.0),
    (
        "café au lait, s'il vous plaît",
        "cafe au lait s il vous plait",
        0.6666666666666666,
    ),
    ("police killed the gunman", "the gunman kill police", 0.5),
    (
        "1,000 examples at 32-way concurrency",
        "1000 examples, concurrency 32",
        0.36363636363636365,
    ),
];

/// (true labels, predicted labels, accuracy_score, f1_score(average="macro"))
pub const MACRO_F1: &[(&[&str], &[&str], f64, f64)] = &[
    (
        &["pos", "neg", "neu", "pos", "neg", "neu"],
        &["pos", "neg", "neu", "pos", "neg", "neu"],
        1.0,
        1.0,
    ),
    (
        &["pos", "neg", "neu", "pos", "neg", "neu", "pos", "pos"],
        &["pos", "pos", "neu", "neg", "neg", "pos", "pos", "pos"],
        0.625,
        0.611111111111111,
    ),
    (
        &["spam", "ham", "ham", "ham"],
        &["spam", "spam", "other", "ham"],
        0.5,
        0.38888888888888884,
    ),
    (
        &[
            "positive", "positive", "positive", "positive", "positive", "positive", "positive",
            "positive", "negative", "negative", "negative", "negative", "negative", "negative",
            "negative", "negative", "neutral", "neutral", "neutral", "neutral",
        ],
        &[
            "positive", "positive", "positive", "positive", "positive", "positive", "negative",
            "negative", "negative", "negative", "negative", "negative", "negative", "negative",
            "negative", "neutral", "neutral", "neutral", "positive", "positive",
        ],
        0.75,
        0.7149859943977591,
    ),
];

/// (answer, expected JSON, share of expected leaves found equal)
pub const JSON: &[(&str, &str, f64)] = &[
    (
        "{\"name\": \"Ada\", \"age\": 36}",
        "{\"name\": \"Ada\", \"age\": 36}",
        1.0,
    ),
    (
        "{\"name\": \"Ada\", \"age\": 37}",
        "{\"name\": \"Ada\", \"age\": 36}",
        0.5,
    ),
    (
        "{\"name\": \"Ada\", \"age\": 36.0, \"extra\": 1}",
        "{\"name\": \"Ada\", \"age\": 36}",
        1.0,
    ),
    (
        "{\"a\": {\"b\": [1, 2, 3]}, \"c\": true}",
        "{\"a\": {\"b\": [1, 2, 4]}, \"c\": true}",
        0.75,
    ),
    (
        "{\"a\": {\"b\": [1]}}",
        "{\"a\": {\"b\": [1, 2]}, \"c\": \"x\"}",
        0.3333333333333333,
    ),
    ("not json", "{\"a\": 1}", 0.0),
    (
        "[\"x\", {\"y\": \"z\"}]",
        "[\"x\", {\"y\": \"z\", \"w\": false}]",
        0.6666666666666666,
    ),
    ("{\"a\": \"1\"}", "{\"a\": 1}", 0.0),
    (
        "{\"a\": null, \"b\": {}}",
        "{\"a\": null, \"b\": {}, \"c\": null}",
        0.6666666666666666,
    ),
    ("```json\n{\"a\": 1}\n```", "{\"a\": 1}", 1.0),
];

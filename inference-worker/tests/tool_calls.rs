//! Tool calls parsed out of model text: fixtures of each format's output, whole and split at
//! every boundary into two stream chunks (and one character per chunk), give the same content
//! and `tool_calls`; malformed output comes back verbatim as content.

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used)]

use switchyard_worker::tools::Format;
use switchyard_worker::tools::parse::{Delta, Parser};

/// What a parse gave: the content, and per call (id, name, arguments).
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    content: String,
    calls: Vec<(String, String, String)>,
}

fn collect(deltas: Vec<Delta>) -> Answer {
    let mut a = Answer {
        content: String::new(),
        calls: Vec::new(),
    };
    for d in deltas {
        match d {
            Delta::Content(t) => a.content.push_str(&t),
            Delta::Start { index, id, name } => {
                assert_eq!(index, a.calls.len(), "calls start in order");
                a.calls.push((id, name, String::new()));
            }
            Delta::Args { index, text } => a.calls[index].2.push_str(&text),
        }
    }
    a
}

fn parse_chunks(format: Format, incremental: bool, chunks: &[&str]) -> Answer {
    let mut p = Parser::new(format, incremental, "call_");
    let mut out = Vec::new();
    for c in chunks {
        out.extend(p.push(c));
    }
    out.extend(p.finish());
    let a = collect(out);
    // The completed calls the parser reports are the streamed ones.
    let done: Vec<(String, String, String)> = p
        .calls()
        .iter()
        .map(|c| (c.id.clone(), c.name.clone(), c.arguments.clone()))
        .collect();
    assert_eq!(done, a.calls, "{chunks:?}");
    a
}

/// The whole text, then every two-chunk split and one character per chunk, all equal.
fn check(format: Format, text: &str, want: &Answer, incremental_too: bool) {
    let modes: &[bool] = if incremental_too {
        &[false, true]
    } else {
        &[false]
    };
    for &inc in modes {
        assert_eq!(
            &parse_chunks(format, inc, &[text]),
            want,
            "whole, incremental={inc}"
        );
        for k in (0..=text.len()).filter(|&k| text.is_char_boundary(k)) {
            let got = parse_chunks(format, inc, &[&text[..k], &text[k..]]);
            assert_eq!(&got, want, "split at {k}, incremental={inc}");
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(
            &parse_chunks(format, inc, &refs),
            want,
            "by char, incremental={inc}"
        );
    }
}

fn calls(list: &[(&str, &str)]) -> Vec<(String, String, String)> {
    list.iter()
        .enumerate()
        .map(|(i, (n, a))| (format!("call_{i}"), n.to_string(), a.to_string()))
        .collect()
}

#[test]
fn hermes_single_call() {
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>";
    let want = Answer {
        content: String::new(),
        calls: calls(&[("get_weather", r#"{"city": "Paris", "unit": "c"}"#)]),
    };
    check(Format::Hermes, text, &want, true);
}

#[test]
fn hermes_parallel_calls_after_text_with_tricky_strings() {
    let text = "Let me check.\n<tool_call>{\"name\":\"a\",\"arguments\":{\"x\":1}}</tool_call>\n<tool_call>{\"arguments\":{\"y\":[1,2.5e3,{\"z\":\"}</tool_call>\\\"é\"}]},\"name\":\"b\"}</tool_call>";
    let want = Answer {
        content: "Let me check.\n".into(),
        calls: calls(&[
            ("a", r#"{"x":1}"#),
            ("b", r#"{"y":[1,2.5e3,{"z":"}</tool_call>\"é"}]}"#),
        ]),
    };
    // Arguments before the name cannot stream before the call is complete; the result is
    // the same.
    check(Format::Hermes, text, &want, true);
}

#[test]
fn mistral_array_of_calls() {
    let text = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}}]";
    let want = Answer {
        content: String::new(),
        calls: calls(&[
            ("get_weather", r#"{"city": "Paris"}"#),
            ("get_time", r#"{"tz": "CET"}"#),
        ]),
    };
    check(Format::Mistral, text, &want, true);
}

#[test]
fn llama3_python_tag_and_plain_json() {
    let tagged = "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}; {\"name\": \"get_time\", \"parameters\": {}}";
    let want = Answer {
        content: String::new(),
        calls: calls(&[("get_weather", r#"{"city": "Paris"}"#), ("get_time", "{}")]),
    };
    check(Format::Llama3, tagged, &want, true);
    let plain = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
    let want = Answer {
        content: String::new(),
        calls: calls(&[("get_weather", r#"{"city": "Paris"}"#)]),
    };
    check(Format::Llama3, plain, &want, true);
}

#[test]
fn malformed_output_is_returned_as_text() {
    let cases: &[(Format, &str)] = &[
        // Arguments never closed before the closing tag.
        (
            Format::Hermes,
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"</tool_call>",
        ),
        // The text ends inside the call.
        (Format::Hermes, "Sure <tool_call>{\"name\": \"get_weath"),
        // No name.
        (Format::Hermes, "<tool_call>{\"arguments\": {}}</tool_call>"),
        // Arguments that are not an object.
        (
            Format::Mistral,
            "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": [1]}]",
        ),
        (Format::Mistral, "[TOOL_CALLS] I would call a tool here."),
        // A JSON answer that is not a call.
        (Format::Llama3, "{\"answer\": 42}"),
        (Format::Llama3, "<|python_tag|>print(1 + 1)"),
        // A near miss of the marker.
        (Format::Hermes, "see <toolbox> and <tool_call"),
    ];
    for (f, text) in cases {
        let want = Answer {
            content: text.to_string(),
            calls: Vec::new(),
        };
        check(*f, text, &want, false);
    }
}

#[test]
fn a_bad_call_after_a_good_one_keeps_the_good_one() {
    let text = "<tool_call>{\"name\":\"a\",\"arguments\":{}}</tool_call><tool_call>oops";
    let want = Answer {
        content: "<tool_call>oops".into(),
        calls: calls(&[("a", "{}")]),
    };
    check(Format::Hermes, text, &want, false);
    let text = "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"na";
    let want = Answer {
        content: "; {\"na".into(),
        calls: calls(&[("a", "{}")]),
    };
    check(Format::Llama3, text, &want, false);
}

#[test]
fn text_after_a_closed_call_is_content() {
    let text = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call> done";
    let want = Answer {
        content: " done".into(),
        calls: calls(&[("f", "{}")]),
    };
    check(Format::Hermes, text, &want, true);
}

#[test]
fn incremental_mode_streams_arguments_before_the_call_closes() {
    let mut p = Parser::new(Format::Hermes, true, "call_");
    let mut out = p.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"q\": \"a long");
    assert_eq!(
        out,
        vec![
            Delta::Start {
                index: 0,
                id: "call_0".into(),
                name: "f".into()
            },
            Delta::Args {
                index: 0,
                text: "{\"q\": \"a long".into()
            },
        ]
    );
    out = p.push(" query\"}}\n</tool_call>");
    assert_eq!(
        out,
        vec![Delta::Args {
            index: 0,
            text: " query\"}".into()
        }]
    );
}

//! Schema grammars: what the automaton accepts and rejects, its shortest closes, and the
//! token masks (the trie walk with its string fast path against checking every token).

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::{Value, json};
use switchyard_worker::gguf::Gguf;
use switchyard_worker::grammar::{Constraint, Grammar, Matcher, TokenTrie};
use switchyard_worker::models_dir::{SMOLLM2, test_model};
use switchyard_worker::tokenizer::Tokenizer;

fn matcher(schema: &Value) -> Matcher {
    Matcher::new(Arc::new(Grammar::from_schema(schema).unwrap()))
}

fn accepts(schema: &Value, text: &str) -> bool {
    let mut m = matcher(schema);
    m.advance_all(text.as_bytes()) && m.can_finish()
}

fn person() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 5},
            "age": {"type": "integer"},
            "role": {"enum": ["admin", "user", 7, null]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
            "boss": {"$ref": "#/$defs/ref"},
            "score": {"type": ["number", "null"]}
        },
        "required": ["name", "age"],
        "$defs": {"ref": {"type": "object", "properties": {"boss": {"$ref": "#/$defs/ref"}, "ok": {"type": "boolean"}}}}
    })
}

#[test]
fn valid_documents_are_accepted() {
    let s = person();
    for text in [
        r#"{"name":"Ann","age":3}"#,
        r#"{ "age" : -12 , "name" : "Bo" }"#,
        r#"{"name":"A\"b","age":0,"role":"admin","tags":["x"],"score":1.5e-3}"#,
        r#"{"name":"é","age":1,"role":7,"boss":{"boss":{"ok":true}},"score":null}"#,
        r#"{"name":"x","age":1,"role":null,"tags":["a","b"]}"#,
    ] {
        assert!(accepts(&s, text), "{text}");
    }
}

#[test]
fn invalid_documents_are_rejected() {
    let s = person();
    for text in [
        r#"{"name":"Ann"}"#,                            // age required
        r#"{"name":"Annabel","age":1}"#,                // maxLength 5
        r#"{"name":"A","age":1.5}"#,                    // integer
        r#"{"name":"A","age":01}"#,                     // leading zero
        r#"{"name":"A","age":1,"role":"boss"}"#,        // enum
        r#"{"name":"A","age":1,"tags":[]}"#,            // minItems
        r#"{"name":"A","age":1,"tags":["a","b","c"]}"#, // maxItems
        r#"{"name":"A","age":1,"name":"B"}"#,           // a property twice
        r#"{"name":"A","age":1,"extra":1}"#,            // unknown property
        r#"{"name":"A","age":1,"boss":{"ok":1}}"#,      // nested boolean
        r#"{"name":"A","age":1} x"#,                    // trailing text
        r#"{"name":"A","age":1,}"#,                     // trailing comma
    ] {
        assert!(!accepts(&s, text), "{text}");
    }
}

#[test]
fn closing_finishes_any_prefix_with_a_valid_document() {
    let s = person();
    let full = r#"{"tags": ["ab", "c"], "role": "user", "name": "Jo\u00e9", "score": -1.25e+2, "age": 42}"#;
    for k in 0..full.len() {
        let mut m = matcher(&s);
        assert!(m.advance_all(&full.as_bytes()[..k]), "prefix {k}");
        let mut text = full.as_bytes()[..k].to_vec();
        text.extend(m.closing());
        let text = String::from_utf8(text).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(v.get("name").is_some() && v.get("age").is_some(), "{text}");
        assert!(accepts(&s, &text), "{text}");
    }
}

#[test]
fn json_object_mode_takes_any_object_only() {
    let g = Arc::new(Grammar::any_object());
    let ok = |t: &str| {
        let mut m = Matcher::new(g.clone());
        m.advance_all(t.as_bytes()) && m.can_finish()
    };
    assert!(ok(r#"{"a": [1, {"b": null}], "c": "d"}"#));
    assert!(!ok("[1]"));
    assert!(!ok(r#"{"a": tru}"#));
}

fn smollm2() -> Option<Tokenizer> {
    let path = test_model(SMOLLM2)?;
    let g = Gguf::open(&path).unwrap();
    Some(Tokenizer::from_gguf(&g).unwrap())
}

/// The allowed tokens found by trying every token's bytes.
fn brute_force(tok: &Tokenizer, m: &Matcher) -> Vec<u32> {
    (0..tok.vocab_size() as u32)
        .filter(|&t| {
            if tok.is_eog(t) {
                return m.can_finish();
            }
            let b = tok.token_bytes(t, false);
            let mut m = m.clone();
            !b.is_empty() && m.advance_all(&b)
        })
        .collect()
}

#[test]
fn trie_masks_equal_checking_every_token() {
    let Some(tok) = smollm2() else {
        return;
    };
    let trie = Arc::new(TokenTrie::new(&tok));
    let s = person();
    let g = Arc::new(Grammar::from_schema(&s).unwrap());
    // States inside keys, a free string, a bounded string, numbers, enums, between tokens.
    let doc = r#"{"name": "Ab", "tags": ["free text here é", "x"], "role": "us"#;
    let mut checked = 0;
    for k in 0..=doc.len() {
        let mut m = Matcher::new(g.clone());
        if !m.advance_all(&doc.as_bytes()[..k]) {
            continue;
        }
        let mut c = Constraint::new(g.clone(), trie.clone());
        assert!(c.advance_text(&doc.as_bytes()[..k]));
        let bits = c.mask();
        let got: Vec<u32> = (0..tok.vocab_size() as u32)
            .filter(|&i| bits[i as usize / 64] >> (i % 64) & 1 == 1)
            .collect();
        let want = brute_force(&tok, &m);
        assert_eq!(
            got,
            want,
            "after {:?}",
            String::from_utf8_lossy(&doc.as_bytes()[..k])
        );
        assert!(!want.is_empty());
        checked += 1;
    }
    assert!(checked > 40, "{checked}");
}

#[test]
fn a_forced_call_grammar_takes_the_format_wrapper_and_the_tool_schema() {
    use switchyard_worker::tools::{Prompting, Tool};
    let tool = Tool {
        name: "get_weather".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    };
    let p = Prompting::new("<|im_start|>", None);
    let g = Arc::new(p.call_grammar(&[&tool]).unwrap());
    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let mut m = Matcher::new(g.clone());
    assert!(m.advance_all(call.as_bytes()) && m.is_done());
    // The wrapper's closing text (which starts with a newline) is part of the shortest close.
    let mut m = Matcher::new(g.clone());
    let head = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {";
    assert!(m.advance_all(head.as_bytes()));
    let rest = String::from_utf8(m.closing()).unwrap();
    assert_eq!(rest, "\"city\":\"\"}}\n</tool_call>");
    // Another function, or arguments out of schema, do not fit.
    let mut m = Matcher::new(g.clone());
    assert!(!m.advance_all(b"<tool_call>\n{\"name\": \"get_time\""));
    let mut m = Matcher::new(g);
    assert!(!m.advance_all(b"<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"town\""));
}

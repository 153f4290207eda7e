//! The OpenAI wire format, read without copying and rewritten by splicing.
//!
//! A request body is parsed once into the list of its top-level members, each kept as the
//! byte range of its raw JSON value. The gateway decodes only what it interprets (`model`,
//! `stream`, `stream_options`, the presence of `messages`/`prompt`/`input`); everything else
//! (tools, response_format, logprobs, vendor extras) is copied upstream byte for byte. A
//! rewrite (new model name, `stream_options.include_usage`) concatenates the untouched
//! ranges around the changed members instead of re-encoding a `serde_json::Value`, which is
//! both faster and exactly faithful (number formatting, key order, unicode escapes).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::base::Endpoint;
use crate::base::error::GatewayError;
use crate::base::loose::{LooseSeq, LooseStr, scalars_are};

/// The longest `model` a client may send, in bytes. Model names are short (OpenAI's longest
/// is under 64 bytes); the cap keeps one request from putting megabytes into every place
/// the name travels (logs, spans, the ledger).
pub const MAX_MODEL_BYTES: usize = 256;

/// Top-level members counted beyond which duplicates are found with a hash set instead of
/// comparing every pair (a request body has a dozen or so).
const PAIRWISE_MAX: usize = 32;

/// A parsed request body: the bytes and where each top-level member sits in them.
#[derive(Debug, Clone)]
pub struct RequestBody {
    bytes: Bytes,
    fields: Vec<Field>,
    /// The client's `model`.
    pub model: String,
    /// The client asked for a streamed answer.
    pub stream: bool,
    /// The client itself asked for the usage chunk at the end of a stream.
    pub client_include_usage: bool,
}

#[derive(Debug, Clone)]
struct Field {
    key: Key,
    value: Range<usize>,
}

#[derive(Debug, Clone)]
enum Key {
    /// The key's text is this range of the body (no escapes in it).
    Span(Range<usize>),
    /// The key had escapes; its decoded text.
    Owned(Box<str>),
}

/// A key borrowed from the input when it has no escapes.
struct KeyText<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for KeyText<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyText(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyText(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(KeyText(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Collects the top-level members of an object as (key, raw value) pairs.
struct Members<'de>(Vec<(KeyText<'de>, &'de RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(k) = map.next_key::<KeyText<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn offset_in(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

impl RequestBody {
    /// Parse and check a request body for `endpoint`.
    pub fn parse(bytes: Bytes, endpoint: Endpoint) -> Result<Self, GatewayError> {
        let members: Members<'_> = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                return Err(if e.classify() == serde_json::error::Category::Data {
                    GatewayError::NotAnObject
                } else {
                    GatewayError::BadJson {
                        detail: strip_position(&e.to_string()),
                        line: e.line(),
                        column: e.column(),
                    }
                });
            }
        };
        if let Some(key) = first_duplicate(&members.0) {
            return Err(GatewayError::DuplicateKey(key.to_owned()));
        }
        let mut fields = Vec::with_capacity(members.0.len());
        let mut model = None;
        let mut stream = false;
        let mut client_include_usage = false;
        let mut has_payload = false;
        let payload_key = match endpoint {
            Endpoint::ChatCompletions => "messages",
            Endpoint::Completions => "prompt",
            Endpoint::Embeddings => "input",
        };
        for (key, raw) in &members.0 {
            let text = raw.get();
            let k: &str = &key.0;
            match k {
                "model" => {
                    model = Some(match serde_json::from_str::<String>(text) {
                        Ok(m) if m.len() > MAX_MODEL_BYTES => {
                            return Err(GatewayError::ParamTooLong {
                                param: "model",
                                max: MAX_MODEL_BYTES,
                            });
                        }
                        Ok(m) if !m.is_empty() => m,
                        Ok(_) => return Err(GatewayError::MissingParam { param: "model" }),
                        Err(_) => {
                            return Err(GatewayError::InvalidParam {
                                param: "model",
                                expected: "a string",
                            });
                        }
                    })
                }
                "stream" => {
                    stream = match text {
                        "true" => true,
                        "false" | "null" => false,
                        _ => {
                            return Err(GatewayError::InvalidParam {
                                param: "stream",
                                expected: "a boolean",
                            });
                        }
                    }
                }
                "stream_options" => {
                    #[derive(Deserialize)]
                    struct StreamOptions {
                        include_usage: Option<bool>,
                    }
                    match serde_json::from_str::<Option<StreamOptions>>(text) {
                        Ok(o) => {
                            client_include_usage = o.and_then(|o| o.include_usage).unwrap_or(false)
                        }
                        Err(_) => {
                            return Err(GatewayError::InvalidParam {
                                param: "stream_options",
                                expected: "an object like {\"include_usage\": true}",
                            });
                        }
                    }
                }
                _ if k == payload_key => {
                    has_payload = text != "null";
                    if endpoint == Endpoint::ChatCompletions && !text.starts_with('[') {
                        return Err(GatewayError::InvalidParam {
                            param: "messages",
                            expected: "an array of messages",
                        });
                    }
                }
                _ => {}
            }
            let key = match &key.0 {
                Cow::Borrowed(s) => Key::Span(offset_in(&bytes, s.as_bytes())),
                Cow::Owned(s) => Key::Owned(s.clone().into_boxed_str()),
            };
            fields.push(Field {
                key,
                value: offset_in(&bytes, text.as_bytes()),
            });
        }
        let Some(model) = model else {
            return Err(GatewayError::MissingParam { param: "model" });
        };
        if !has_payload {
            return Err(GatewayError::MissingParam {
                param: payload_key_static(endpoint),
            });
        }
        drop(members);
        Ok(RequestBody {
            bytes,
            fields,
            model,
            stream,
            client_include_usage,
        })
    }

    /// The body exactly as the client sent it.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    fn key_text<'s>(&'s self, k: &'s Key) -> &'s str {
        match k {
            // The span was a &str borrowed from these same bytes.
            Key::Span(r) => std::str::from_utf8(&self.bytes[r.clone()]).unwrap_or(""),
            Key::Owned(s) => s,
        }
    }

    /// Whether a member's key is `text` (compared as bytes: no UTF-8 check per key).
    fn key_is(&self, k: &Key, text: &str) -> bool {
        match k {
            Key::Span(r) => self.bytes.get(r.clone()) == Some(text.as_bytes()),
            Key::Owned(s) => &**s == text,
        }
    }

    /// The raw JSON of a top-level member, if present.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| self.key_is(&f.key, key))
            .and_then(|f| std::str::from_utf8(&self.bytes[f.value.clone()]).ok())
    }

    /// Every top-level member as (key, raw JSON value), in the client's order.
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|f| {
            let v = std::str::from_utf8(&self.bytes[f.value.clone()]).unwrap_or("null");
            (self.key_text(&f.key), v)
        })
    }

    /// A top-level member decoded as `T`, if present and of that type.
    pub fn get<'a, T: Deserialize<'a>>(&'a self, key: &str) -> Option<T> {
        self.raw(key).and_then(|r| serde_json::from_str(r).ok())
    }

    /// The body to send upstream: `model` replaced by `upstream_model` (when it differs), and,
    /// for streams where the client did not ask for it, `stream_options.include_usage` set so
    /// the gateway always learns the token counts. Returns the original bytes when nothing
    /// changes.
    pub fn upstream_body(&self, upstream_model: &str, force_usage: bool) -> Bytes {
        let change_model = upstream_model != self.model;
        let add_usage = force_usage && self.stream && !self.client_include_usage;
        if !change_model && !add_usage {
            return self.bytes.clone();
        }
        let mut out = Vec::with_capacity(self.bytes.len() + upstream_model.len() + 48);
        out.push(b'{');
        let mut first = true;
        let mut saw_stream_options = false;
        for f in &self.fields {
            let key = self.key_text(&f.key);
            if !first {
                out.push(b',');
            }
            first = false;
            write_json_string(&mut out, key);
            out.push(b':');
            match key {
                "model" if change_model => write_json_string(&mut out, upstream_model),
                "stream_options" if add_usage => {
                    saw_stream_options = true;
                    let raw = &self.bytes[f.value.clone()];
                    let mut obj: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_slice(raw).unwrap_or_default();
                    obj.insert("include_usage".into(), serde_json::Value::Bool(true));
                    // A small object the gateway owns; re-encoding it is fine.
                    let _ = serde_json::to_writer(&mut out, &obj);
                }
                _ => out.extend_from_slice(&self.bytes[f.value.clone()]),
            }
        }
        if add_usage && !saw_stream_options {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
        }
        out.push(b'}');
        Bytes::from(out)
    }

    /// Whether the gateway injected `include_usage` and must strip that chunk again.
    pub fn strip_usage_chunk(&self, force_usage: bool) -> bool {
        force_usage && self.stream && !self.client_include_usage
    }
}

/// The first top-level key that appears twice. serde_json keeps the last of duplicates and
/// other parsers the first, so the gateway (which judges `max_tokens`, `model`, `stream`)
/// and the upstream could each read a different value. Only the top level is checked: that
/// is all the gateway interprets.
fn first_duplicate<'a>(members: &'a [(KeyText<'_>, &RawValue)]) -> Option<&'a str> {
    if members.len() <= PAIRWISE_MAX {
        for (i, (a, _)) in members.iter().enumerate() {
            if members[..i].iter().any(|(b, _)| a.0 == b.0) {
                return Some(&a.0);
            }
        }
        return None;
    }
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    members
        .iter()
        .map(|(k, _)| &*k.0)
        .find(|k| !seen.insert(*k))
}

fn payload_key_static(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "messages",
        Endpoint::Completions => "prompt",
        Endpoint::Embeddings => "input",
    }
}

/// serde_json appends " at line X column Y"; the error carries those separately.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

pub(crate) fn write_json_string(out: &mut Vec<u8>, s: &str) {
    let needs_escape = s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
    if needs_escape {
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Token counts as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

/// What the gateway reads from a complete (non-streamed) answer, in one pass: usage and model
/// for accounting, and (borrowed) the id and finish reasons that a traced request's span
/// reports.
#[derive(Debug, Default, Deserialize)]
pub struct ResponseProbe<'a> {
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    /// Each choice's `finish_reason`, read in the same pass (the rest of `choices` is
    /// skipped, not copied).
    #[serde(borrow, default, rename = "choices")]
    pub finish_reasons: FinishReasons<'a>,
}

impl<'a> ResponseProbe<'a> {
    /// Read an answer; `None` if the body is not a JSON object.
    pub fn read(body: &'a [u8]) -> Option<ResponseProbe<'a>> {
        serde_json::from_slice::<ResponseProbe<'a>>(body).ok()
    }
}

/// The raw JSON of an answer's `choices` (for `capture_content`), if it has them.
pub fn raw_choices(body: &[u8]) -> Option<&str> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        choices: Option<&'a RawValue>,
    }
    serde_json::from_slice::<Raw<'_>>(body)
        .ok()?
        .choices
        .map(RawValue::get)
}

/// The `finish_reason` of each choice that has a string one. `choices` that are not what
/// OpenAI sends (not an array, elements that are not objects, a reason that is not a
/// string) yield fewer or no reasons, never an error: the rest of the probe (usage, model)
/// must still be read.
#[derive(Debug, Default)]
pub struct FinishReasons<'a>(pub Vec<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for FinishReasons<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let LooseSeq(choices) = LooseSeq::<Reason<'a>>::deserialize(d)?;
        Ok(FinishReasons(
            choices.into_iter().flatten().filter_map(|r| r.0).collect(),
        ))
    }
}

/// One choice's `finish_reason`, if it is an object with a string one.
struct Reason<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Reason<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Choice<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Choice<'a> {
            type Value = Reason<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a choice")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut reason = None;
                while let Some(IsReason(is)) = map.next_key()? {
                    if is {
                        reason = map.next_value::<LooseStr<'a>>()?.0;
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                Ok(Reason(reason))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Reason(None))
            }
            scalars_are!(Reason(None));
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Reason(None))
            }
        }
        d.deserialize_any(Choice(std::marker::PhantomData))
    }
}

/// Whether an object key is `finish_reason` (read without copying it).
struct IsReason(bool);

impl<'de> Deserialize<'de> for IsReason {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct K;
        impl Visitor<'_> for K {
            type Value = IsReason;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IsReason(v == "finish_reason"))
            }
        }
        d.deserialize_str(K)
    }
}

/// True when an error body from upstream already has OpenAI's `{"error": {...}}` shape, so
/// it can be relayed as it came.
pub fn is_openai_error_body(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct E {
        error: serde_json::Map<String, serde_json::Value>,
    }
    serde_json::from_slice::<E>(body).is_ok_and(|e| e.error.contains_key("message"))
}

/// GET /v1/models for a list of model names, in OpenAI's list format.
pub fn models_list<'a>(names: impl Iterator<Item = &'a str>) -> Bytes {
    let data: Vec<serde_json::Value> = names
        .map(|n| {
            serde_json::json!({"id": n, "object": "model", "created": 0, "owned_by": "switchyard"})
        })
        .collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe reads usage, model, id and every choice's finish reason in one pass; a
    /// `choices` that is not what OpenAI sends costs the reasons, never the usage.
    #[test]
    fn the_answer_probe_reads_finish_reasons_and_tolerates_odd_choices() {
        let body = br#"{"id":"c1","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"a \"b\" [c]","finish_reason":"no"},"finish_reason":"stop"},{"index":1,"finish_reason":"len\u0067th"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let p = ResponseProbe::read(body).expect("probe");
        assert_eq!(p.finish_reasons.0, ["stop", "length"]);
        assert_eq!(
            (p.model.as_deref(), p.id.as_deref()),
            (Some("m"), Some("c1"))
        );
        assert_eq!(p.usage.map(|u| u.completion_tokens), Some(4));
        assert!(raw_choices(body).is_some_and(|r| r.starts_with("[{\"index\":0")));
        for odd in [
            r#""x""#,
            "{}",
            "null",
            "3",
            r#"[1, "a", [2], null, {"finish_reason": 3}, {"finish_reason": null}, {"finish_reason": {"x": 1}}, {"finish_reason": "stop"}]"#,
        ] {
            let body = format!(
                r#"{{"choices":{odd},"usage":{{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}}}"#
            );
            let p = ResponseProbe::read(body.as_bytes()).expect(odd);
            assert_eq!(p.usage.map(|u| u.total_tokens), Some(3), "{odd}");
            let want: &[&str] = if odd.starts_with('[') { &["stop"] } else { &[] };
            assert_eq!(p.finish_reasons.0, want, "{odd}");
        }
    }

    fn parse(s: &str) -> Result<RequestBody, GatewayError> {
        RequestBody::parse(Bytes::from(s.to_string()), Endpoint::ChatCompletions)
    }

    #[test]
    fn unchanged_body_is_forwarded_as_is() {
        let s = r#"{ "model" : "m",  "messages":[{"role":"user","content":"hi"}], "seed": 1.50 }"#;
        let b = parse(s).unwrap();
        assert_eq!(&b.upstream_body("m", true)[..], s.as_bytes());
    }

    #[test]
    fn model_is_spliced_and_everything_else_kept_exactly() {
        let s = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"h\u00e9"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"temperature":0.70,"x_vendor":{"a":[1,2e3]}}"#;
        let b = parse(s).unwrap();
        let out = b.upstream_body("llama", false);
        let expected = s.replace("\"gpt-4o\"", "\"llama\"");
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
    }

    #[test]
    fn include_usage_is_added_for_streams_and_merged_with_client_options() {
        let b = parse(r#"{"model":"m","messages":[],"stream":true}"#).unwrap();
        assert!(b.strip_usage_chunk(true));
        let v: serde_json::Value = serde_json::from_slice(&b.upstream_body("m", true)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);

        let b = parse(
            r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b.upstream_body("m", true)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["x"], 1);

        let b = parse(
            r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert!(!b.strip_usage_chunk(true));
    }

    #[test]
    fn escaped_keys_survive_a_rewrite() {
        let b = parse(r#"{"mo\u0064el":"m","messages":[],"k\"q":1}"#).unwrap();
        assert_eq!(b.model, "m");
        let v: serde_json::Value = serde_json::from_slice(&b.upstream_body("n", false)).unwrap();
        assert_eq!(v["model"], "n");
        assert_eq!(v["k\"q"], 1);
    }

    #[test]
    fn bad_input_is_named() {
        match parse(r#"{"model":"m","messages":[}"#) {
            Err(GatewayError::BadJson { line, column, .. }) => {
                assert_eq!(line, 1);
                assert!(column > 20);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"messages":[]}"#),
            Err(GatewayError::MissingParam { param: "model" })
        ));
        assert!(matches!(
            parse(r#"{"model":"m"}"#),
            Err(GatewayError::MissingParam { param: "messages" })
        ));
        assert!(matches!(
            parse(r#"{"model":5,"messages":[]}"#),
            Err(GatewayError::InvalidParam { param: "model", .. })
        ));
        assert!(matches!(
            parse(r#"{"model":"m","messages":[],"stream":"yes"}"#),
            Err(GatewayError::InvalidParam {
                param: "stream",
                ..
            })
        ));
        assert!(matches!(parse(r#"[1,2]"#), Err(GatewayError::NotAnObject)));
    }

    #[test]
    fn duplicate_top_level_keys_are_refused_naming_the_key() {
        match parse(r#"{"model":"m","messages":[],"max_tokens":1,"max_tokens":99999}"#) {
            Err(GatewayError::DuplicateKey(k)) => assert_eq!(k, "max_tokens"),
            other => panic!("{other:?}"),
        }
        // The same key spelled with an escape is the same key.
        assert!(matches!(
            parse(r#"{"model":"m","messages":[],"mod\u0065l":"n"}"#),
            Err(GatewayError::DuplicateKey(k)) if k == "model"
        ));
        // Past the pairwise limit, the hash set finds it too.
        let mut many: String = (0..100).map(|i| format!("\"k{i}\":{i},")).collect();
        many.push_str(r#""k7":0,"#);
        let body = format!(r#"{{{many}"model":"m","messages":[]}}"#);
        assert!(matches!(parse(&body), Err(GatewayError::DuplicateKey(k)) if k == "k7"));
        // Nested duplicates are the upstream's business.
        assert!(parse(r#"{"model":"m","messages":[{"role":"user","role":"user"}]}"#).is_ok());
    }

    #[test]
    fn an_over_long_model_name_is_refused_naming_the_field() {
        let long = "m".repeat(MAX_MODEL_BYTES + 1);
        let e = parse(&format!(r#"{{"model":"{long}","messages":[]}}"#)).unwrap_err();
        assert!(matches!(
            e,
            GatewayError::ParamTooLong { param: "model", .. }
        ));
        assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
        let ok = "m".repeat(MAX_MODEL_BYTES);
        assert!(parse(&format!(r#"{{"model":"{ok}","messages":[]}}"#)).is_ok());
    }

    #[test]
    fn accessors_read_members() {
        let b = parse(r#"{"model":"m","messages":[],"max_tokens":64}"#).unwrap();
        assert_eq!(b.get::<u64>("max_tokens"), Some(64));
        assert_eq!(b.raw("messages"), Some("[]"));
        assert_eq!(b.raw("nope"), None);
    }

    #[test]
    fn openai_error_bodies_are_recognised() {
        assert!(is_openai_error_body(
            br#"{"error":{"message":"x","type":"invalid_request_error"}}"#
        ));
        assert!(!is_openai_error_body(b"<html>bad gateway</html>"));
    }
}

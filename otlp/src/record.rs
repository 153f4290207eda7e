//! A span that is recorded straight into its OTLP encoding: each attribute is written as
//! protobuf bytes when it is set.
//!
//! # Why not the SDK's `SpanData`
//! `SpanData` keeps attributes as `KeyValue`s. Each has an owned or ref-counted key and
//! value. Every `set` searches them, and when the span ends each one is encoded and then
//! dropped on its own. With every request traced, that bookkeeping cost the gateway about as
//! much as the encoding itself. It also cost an atomic increment and decrement of a shared
//! `Arc<str>` (route, backend, model) per attribute, and those counters bounce between cores.
//!
//! A [`SpanRecord`] encodes an attribute from borrowed text when it is set. Ending the span
//! copies those bytes into the export batch (`QueueProcessor::push_record`). A processor that
//! wants `SpanData` gets one decoded from them ([`SpanRecord::to_span_data`]).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::wire;

/// An attribute value, borrowed: what [`SpanRecord::set`] encodes.
#[derive(Debug, Clone, Copy)]
pub enum AttrValue<'a> {
    Str(&'a str),
    Bool(bool),
    I64(i64),
    F64(f64),
    /// An array of strings (`gen_ai.response.finish_reasons`).
    Strs(&'a [String]),
    /// Any other SDK value (arrays of numbers, say), encoded as the SDK would.
    Other(&'a Value),
}

impl<'a> From<&'a str> for AttrValue<'a> {
    fn from(v: &'a str) -> Self {
        AttrValue::Str(v)
    }
}

impl<'a> From<&'a String> for AttrValue<'a> {
    fn from(v: &'a String) -> Self {
        AttrValue::Str(v)
    }
}

impl<'a> From<&'a Arc<str>> for AttrValue<'a> {
    fn from(v: &'a Arc<str>) -> Self {
        AttrValue::Str(v)
    }
}

impl<'a> From<&'a Cow<'a, str>> for AttrValue<'a> {
    fn from(v: &'a Cow<'a, str>) -> Self {
        AttrValue::Str(v)
    }
}

impl From<bool> for AttrValue<'_> {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

impl From<i64> for AttrValue<'_> {
    fn from(v: i64) -> Self {
        AttrValue::I64(v)
    }
}

impl From<f64> for AttrValue<'_> {
    fn from(v: f64) -> Self {
        AttrValue::F64(v)
    }
}

impl<'a> From<&'a [String]> for AttrValue<'a> {
    fn from(v: &'a [String]) -> Self {
        AttrValue::Strs(v)
    }
}

impl<'a> From<&'a Vec<String>> for AttrValue<'a> {
    fn from(v: &'a Vec<String>) -> Self {
        AttrValue::Strs(v)
    }
}

impl<'a> From<&'a Value> for AttrValue<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::String(s) => AttrValue::Str(s.as_str()),
            Value::Bool(x) => AttrValue::Bool(*x),
            Value::I64(x) => AttrValue::I64(*x),
            Value::F64(x) => AttrValue::F64(*x),
            other => AttrValue::Other(other),
        }
    }
}

/// A span being recorded, its attributes already encoded.
#[derive(Debug)]
pub struct SpanRecord {
    pub context: SpanContext,
    /// `SpanId::INVALID` for a root.
    pub parent: SpanId,
    /// The parent came from another process (a client's `traceparent`).
    pub parent_is_remote: bool,
    pub kind: SpanKind,
    pub name: Cow<'static, str>,
    pub start: SystemTime,
    /// Set when the span ends; until then the start.
    pub end: SystemTime,
    pub status: Status,
    /// `Span.attributes` entries, each a complete field 9 (tag, length, `KeyValue`).
    attributes: Vec<u8>,
    /// A bit per key set so far ([`key_bit`]): a key whose bit is clear is not among the
    /// attributes, so setting it needs no search (the usual case).
    keys: u64,
    events: Vec<(Cow<'static, str>, SystemTime)>,
    links: Vec<SpanContext>,
}

impl SpanRecord {
    /// A span started now, with room for `attribute_bytes` of encoded attributes.
    pub fn new(
        context: SpanContext,
        parent: SpanId,
        parent_is_remote: bool,
        kind: SpanKind,
        name: Cow<'static, str>,
        attribute_bytes: usize,
    ) -> SpanRecord {
        let now = SystemTime::now();
        SpanRecord {
            context,
            parent,
            parent_is_remote,
            kind,
            name,
            start: now,
            end: now,
            status: Status::Unset,
            attributes: Vec::with_capacity(attribute_bytes),
            keys: 0,
            events: Vec::new(),
            links: Vec::new(),
        }
    }

    /// Set an attribute, replacing an earlier value of the same key (as the SDK does).
    pub fn set(&mut self, key: &str, value: AttrValue<'_>) {
        if self.keys & key_bit(key) != 0
            && let Some(range) = wire::find_attribute(&self.attributes, key)
        {
            self.attributes.drain(range);
        }
        self.add(key, value);
    }

    /// Add an attribute whose key the span does not have yet, without looking: for the
    /// attributes a span starts with. (A repeated key would be sent twice.)
    pub fn add(&mut self, key: &str, value: AttrValue<'_>) {
        self.keys |= key_bit(key);
        wire::encode_attribute(&mut self.attributes, 9, key, value);
    }

    /// The attributes' encoding: `Span.attributes` fields, in the order they were set.
    pub fn encoded_attributes(&self) -> &[u8] {
        &self.attributes
    }

    /// The attributes, decoded (each key owned).
    pub fn attributes(&self) -> Vec<KeyValue> {
        wire::decode_attributes(&self.attributes)
    }

    /// Record an event (a point in time, without attributes).
    pub fn event(&mut self, name: Cow<'static, str>, at: SystemTime) {
        self.events.push((name, at));
    }

    pub fn events(&self) -> &[(Cow<'static, str>, SystemTime)] {
        &self.events
    }

    /// Link this span to another (the request a shadow call was made for).
    pub fn link(&mut self, to: SpanContext) {
        self.links.push(to);
    }

    pub fn links(&self) -> &[SpanContext] {
        &self.links
    }

    /// The SDK's record of this span, for a `SpanProcessor` of the embedder's choosing.
    pub fn to_span_data(&self, scope: &InstrumentationScope) -> SpanData {
        let mut events = SpanEvents::default();
        events.events = self
            .events
            .iter()
            .map(|(name, at)| opentelemetry::trace::Event::new(name.clone(), *at, Vec::new(), 0))
            .collect();
        let mut links = SpanLinks::default();
        links.links = self
            .links
            .iter()
            .map(|cx| opentelemetry::trace::Link::with_context(cx.clone()))
            .collect();
        SpanData {
            span_context: self.context.clone(),
            parent_span_id: self.parent,
            parent_span_is_remote: self.parent_is_remote,
            span_kind: self.kind.clone(),
            name: self.name.clone(),
            start_time: self.start,
            end_time: self.end,
            attributes: self.attributes(),
            dropped_attributes_count: 0,
            events,
            links,
            status: self.status.clone(),
            instrumentation_scope: scope.clone(),
        }
    }
}

/// One of 64 bits for `key`, from its length and its last eight bytes (keys share their
/// first ones: `gen_ai.`, `switchyard.`): the keys of one span (a dozen or so) rarely share
/// one, and a shared bit only costs a search.
fn key_bit(key: &str) -> u64 {
    let b = key.as_bytes();
    let mut tail = [0u8; 8];
    let n = b.len().min(8);
    tail[..n].copy_from_slice(&b[b.len() - n..]);
    let h = (u64::from_le_bytes(tail) ^ b.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    1 << (h >> 58)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceFlags, TraceId, TraceState};

    fn cx(span: u64) -> SpanContext {
        SpanContext::new(
            TraceId::from(7_u128),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    }

    fn record() -> SpanRecord {
        let mut r = SpanRecord::new(
            cx(9),
            SpanId::from(3_u64),
            true,
            SpanKind::Client,
            "chat m".into(),
            64,
        );
        r.add("gen_ai.operation.name", "chat".into());
        r.add("server.port", 8080_i64.into());
        r.set("gen_ai.request.temperature", 0.25.into());
        r.set("switchyard.cached", true.into());
        let reasons = vec!["stop".to_owned(), "length".to_owned()];
        r.set("gen_ai.response.finish_reasons", (&reasons).into());
        r.set("long", AttrValue::Str(&"x".repeat(300)));
        r
    }

    /// Setting a key again replaces its value wherever it was, as the SDK does.
    #[test]
    fn a_repeated_key_replaces_the_value() {
        let mut r = record();
        r.set("server.port", 9090_i64.into());
        r.set("long", "short".into());
        r.set("error.type", "timeout".into());
        r.set("error.type", "http_502".into());
        let attrs = r.attributes();
        let get = |k: &str| {
            let found: Vec<&KeyValue> = attrs.iter().filter(|kv| kv.key.as_str() == k).collect();
            assert_eq!(found.len(), 1, "{k} once in {attrs:?}");
            found[0].value.clone()
        };
        assert_eq!(get("server.port"), Value::I64(9090));
        assert_eq!(get("long"), Value::from("short"));
        assert_eq!(get("error.type"), Value::from("http_502"));
        assert_eq!(get("gen_ai.operation.name"), Value::from("chat"));
        assert_eq!(attrs.len(), 7);
    }

    /// The record encodes exactly as the SDK's `SpanData` of the same span does, so what the
    /// end-to-end tests check against the official protobuf types holds for both.
    #[test]
    fn encodes_as_the_same_span_data() {
        let scope = InstrumentationScope::builder("s").build();
        let mut r = record();
        r.event("first token".into(), SystemTime::UNIX_EPOCH);
        r.link(cx(11));
        r.status = Status::error("timeout");
        r.end = SystemTime::now();
        let data = r.to_span_data(&scope);
        assert_eq!(data.attributes.len(), 6);
        assert_eq!(
            data.attributes[4].value,
            Value::Array(
                vec![
                    opentelemetry::StringValue::from("stop"),
                    opentelemetry::StringValue::from("length"),
                ]
                .into()
            )
        );
        let (mut from_record, mut from_data) = (Vec::new(), Vec::new());
        wire::encode_record_entry(&mut from_record, &r);
        wire::encode_span_entry(&mut from_data, &data);
        assert_eq!(from_record, from_data);
    }

    #[test]
    fn every_value_type_survives_decoding() {
        let values = [
            Value::from(""),
            Value::from("llama"),
            Value::Bool(false),
            Value::I64(-7),
            Value::I64(0),
            Value::F64(1.5),
            Value::Array(vec![true, false].into()),
            Value::Array(vec![1_i64, -2].into()),
            Value::Array(vec![0.5_f64].into()),
            Value::Array(vec![opentelemetry::StringValue::from("a")].into()),
        ];
        let mut r = SpanRecord::new(
            cx(1),
            SpanId::INVALID,
            false,
            SpanKind::Internal,
            "x".into(),
            0,
        );
        for (i, v) in values.iter().enumerate() {
            r.add(&format!("k{i}"), v.into());
        }
        let back = r.attributes();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(back[i].key.as_str(), format!("k{i}"));
            assert_eq!(&back[i].value, v, "k{i}");
        }
    }
}

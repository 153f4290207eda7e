//! The OTLP protobuf encoding of finished spans, written straight from `SpanData`.
//!
//! # Why our own
//! With every request traced, the gateway benchmark spent about half of the tracing cost in
//! the generic exporter: it converts each `SpanData` into an owned copy of the OTLP message
//! tree (every name, key and value cloned), measures it, then encodes it. Here each span is
//! encoded straight from its `SpanData` when it ends, on the thread that ended it, and
//! appended to the [`ScopeBatch`] that becomes the request body: one allocation-free write
//! per field, while the span is still in that thread's cache, and the span's memory is freed
//! where it was allocated instead of by the export task. The wire format is the one in
//! `opentelemetry-proto` (`collector/trace/v1/trace_service.proto` and the messages it
//! uses); the end-to-end tests decode what we send with the official generated types.
//!
//! Nested messages are written in place: a one-byte length is reserved, the content
//! written after it, and in the rare case the content needs a longer length prefix the
//! content is moved right by the extra bytes. Lengths stay canonical (minimal varints).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use std::ops::Range;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

use crate::record::{AttrValue, SpanRecord};

/// Room a [`ScopeBatch`] leaves before its spans for the envelope: the gRPC message
/// prefix, three (key, length) pairs of at most 11 bytes, and the resource.
pub fn head_room(resource_len: usize) -> usize {
    5 + 3 * 11 + resource_len
}

/// The spans of one instrumentation scope, encoded when they end, becoming one export
/// request body.
///
/// The spans are written after room left for the envelope (request → resource spans →
/// scope spans, whose lengths are known only at the end), and [`ScopeBatch::into_body`]
/// writes the envelope into that room, right-aligned; the body is the buffer from there on.
/// So the batch, hundreds of kilobytes at full load, is written once and never moved, where
/// the in-place lengths of the reference encoding (`encode_request`, in the tests) would move
/// it once per enclosing message.
#[derive(Debug)]
pub struct ScopeBatch {
    buf: Vec<u8>,
    room: usize,
    spans: usize,
    scope: InstrumentationScope,
    /// The address of the process-lifetime scope this batch was made for, if it was.
    made_from: Option<usize>,
}

impl ScopeBatch {
    /// An empty batch for `scope`, with room for a resource of `resource_len` bytes and
    /// `capacity` bytes of spans.
    pub fn new(scope: &InstrumentationScope, resource_len: usize, capacity: usize) -> ScopeBatch {
        let room = head_room(resource_len);
        let mut buf = Vec::with_capacity(room + capacity);
        buf.resize(room, 0);
        // ScopeSpans.scope = 1
        nested(&mut buf, 1, |b| {
            string_field(b, 1, scope.name());
            if let Some(v) = scope.version() {
                string_field(b, 2, v);
            }
            for kv in scope.attributes() {
                nested(b, 3, |b| encode_kv(b, kv));
            }
        });
        ScopeBatch {
            buf,
            room,
            spans: 0,
            scope: scope.clone(),
            made_from: None,
        }
    }

    /// This batch (made for `scope`'s spans) knows `scope` by its address from now on. A
    /// `'static` scope is never freed, so no other scope can ever have that address.
    pub fn from_static(mut self, scope: &'static InstrumentationScope) -> ScopeBatch {
        self.made_from = Some(scope as *const InstrumentationScope as usize);
        self
    }

    /// Whether the batch was made for the `'static` scope at this address.
    pub fn made_from(&self, scope: &'static InstrumentationScope) -> bool {
        self.made_from == Some(scope as *const InstrumentationScope as usize)
    }

    pub fn scope(&self) -> &InstrumentationScope {
        &self.scope
    }

    /// Spans in the batch.
    pub fn spans(&self) -> usize {
        self.spans
    }

    /// Bytes written so far (without the envelope).
    pub fn encoded_len(&self) -> usize {
        self.buf.len() - self.room
    }

    /// Append one span entry (as [`encode_span_entry`] writes it), given in pieces.
    pub fn push_pieces(&mut self, pieces: [&[u8]; 4]) {
        self.buf.reserve(pieces.iter().map(|p| p.len()).sum());
        for p in pieces {
            self.buf.extend_from_slice(p);
        }
        self.spans += 1;
    }

    /// The request body: an `ExportTraceServiceRequest` under `resource` (the encoded
    /// `Resource` message, at most the length the batch was made for), after the 5-byte gRPC
    /// message prefix when `grpc`.
    pub fn into_body(mut self, resource: &[u8], grpc: bool) -> Bytes {
        if let Some(url) = self.scope.schema_url() {
            string_field(&mut self.buf, 3, url);
        }
        let room = self.room;
        let scope_len = (self.buf.len() - room) as u64;
        // ResourceSpans: resource = 1, scope_spans = 2 (the part written after the room).
        let mut head = Vec::with_capacity(room);
        if grpc {
            head.resize(5, 0);
        }
        let resource_field = 1 + varint_len(resource.len() as u64) + resource.len();
        let resource_spans_len =
            resource_field as u64 + 1 + varint_len(scope_len) as u64 + scope_len;
        // ExportTraceServiceRequest.resource_spans = 1
        key(&mut head, 1, 2);
        varint(&mut head, resource_spans_len);
        bytes_field(&mut head, 1, resource);
        key(&mut head, 2, 2);
        varint(&mut head, scope_len);
        if grpc {
            let len = (head.len() - 5) as u64 + scope_len;
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            head[1..5].copy_from_slice(&len.to_be_bytes());
        }
        assert!(head.len() <= room, "resource larger than the batch's room");
        let start = room - head.len();
        self.buf[start..room].copy_from_slice(&head);
        Bytes::from(self.buf).slice(start..)
    }
}

/// One span as a `ScopeSpans.spans` entry (field 2, length-delimited), appended to `buf`.
pub fn encode_span_entry(buf: &mut Vec<u8>, span: &SpanData) {
    nested(buf, 2, |b| encode_span(b, span));
}

/// `ExportTraceServiceRequest` for `spans`, all under one resource (spans grouped by their
/// instrumentation scope, in order of first appearance): the reference the batch encoding
/// is tested against.
#[cfg(test)]
fn encode_request(buf: &mut Vec<u8>, resource: &[u8], spans: &[SpanData]) {
    if spans.is_empty() {
        return;
    }
    // ExportTraceServiceRequest.resource_spans = 1
    nested(buf, 1, |b| {
        // ResourceSpans.resource = 1
        bytes_field(b, 1, resource);
        let mut done = vec![false; spans.len()];
        for i in 0..spans.len() {
            if done[i] {
                continue;
            }
            let scope = &spans[i].instrumentation_scope;
            // ResourceSpans.scope_spans = 2
            nested(b, 2, |b| {
                // ScopeSpans.scope = 1
                nested(b, 1, |b| {
                    string_field(b, 1, scope.name());
                    if let Some(v) = scope.version() {
                        string_field(b, 2, v);
                    }
                    for kv in scope.attributes() {
                        nested(b, 3, |b| encode_kv(b, kv));
                    }
                });
                for (j, s) in spans.iter().enumerate().skip(i) {
                    if !done[j] && s.instrumentation_scope == *scope {
                        done[j] = true;
                        // ScopeSpans.spans = 2
                        nested(b, 2, |b| encode_span(b, s));
                    }
                }
                if let Some(url) = scope.schema_url() {
                    string_field(b, 3, url);
                }
            });
        }
    });
}

/// The `Resource` message (attributes only).
pub fn encode_resource(buf: &mut Vec<u8>, resource: &Resource) {
    for (k, v) in resource.iter() {
        // Resource.attributes = 1
        nested(buf, 1, |b| {
            string_field(b, 1, k.as_str());
            nested(b, 2, |b| encode_value(b, v));
        });
    }
}

/// Span flags: the W3C trace flags plus whether the parent is known to be remote.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// `trace_id` (1), `span_id` (2) and `trace_state` (3): the same field numbers in `Span`
/// and `Span.Link`.
fn encode_context(b: &mut Vec<u8>, sc: &SpanContext) {
    bytes_field(b, 1, &sc.trace_id().to_bytes());
    bytes_field(b, 2, &sc.span_id().to_bytes());
    let state = sc.trace_state().header();
    if !state.is_empty() {
        string_field(b, 3, &state);
    }
}

/// What every `Span` message has, from either kind of record.
struct SpanHead<'a> {
    context: &'a SpanContext,
    parent: SpanId,
    parent_is_remote: bool,
    name: &'a str,
    kind: &'a SpanKind,
    start: SystemTime,
    end: SystemTime,
    status: &'a Status,
}

/// A `Span` message's fields 1 to 8: ids, name, kind, times.
fn encode_head(b: &mut Vec<u8>, h: &SpanHead<'_>) {
    encode_context(b, h.context);
    if h.parent != SpanId::INVALID {
        bytes_field(b, 4, &h.parent.to_bytes());
    }
    string_field(b, 5, h.name);
    let kind = match h.kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    uint_field(b, 6, kind);
    fixed64_field(b, 7, unix_nanos(h.start));
    fixed64_field(b, 8, unix_nanos(h.end));
}

/// A `Span` message's fields 15 and 16: status and flags.
fn encode_tail(b: &mut Vec<u8>, h: &SpanHead<'_>) {
    match h.status {
        Status::Unset => {}
        Status::Ok => nested(b, 15, |b| uint_field(b, 3, 1)),
        Status::Error { description } => nested(b, 15, |b| {
            if !description.is_empty() {
                string_field(b, 2, description);
            }
            uint_field(b, 3, 2);
        }),
    }
    let mut flags = u32::from(h.context.trace_flags().to_u8()) | HAS_IS_REMOTE;
    if h.parent_is_remote {
        flags |= IS_REMOTE;
    }
    fixed32_field(b, 16, flags);
}

fn encode_span(b: &mut Vec<u8>, s: &SpanData) {
    let head = SpanHead {
        context: &s.span_context,
        parent: s.parent_span_id,
        parent_is_remote: s.parent_span_is_remote,
        name: &s.name,
        kind: &s.span_kind,
        start: s.start_time,
        end: s.end_time,
        status: &s.status,
    };
    encode_head(b, &head);
    for kv in &s.attributes {
        attribute(b, 9, kv);
    }
    uint_field(b, 10, u64::from(s.dropped_attributes_count));
    for e in s.events.iter() {
        encode_event(
            b,
            &e.name,
            e.timestamp,
            &e.attributes,
            e.dropped_attributes_count,
        );
    }
    uint_field(b, 12, u64::from(s.events.dropped_count));
    for l in s.links.iter() {
        encode_link(
            b,
            &l.span_context,
            &l.attributes,
            l.dropped_attributes_count,
        );
    }
    uint_field(b, 14, u64::from(s.links.dropped_count));
    encode_tail(b, &head);
}

/// A span record's encoding but for its attributes, which the record holds encoded: the
/// fields before them (ids, name, kind, times) are written to `parts`, then those after
/// them (events, links, status, flags). Returns where the second part starts.
///
/// The `ScopeSpans.spans` entry is then: its [`entry_prefix`] for the three parts' total
/// length, the first part, the attributes, the second part. Knowing the length
/// before writing, the entry is written once, where a nested encoding moves every span
/// longer than 127 bytes to make room for its length.
pub fn record_parts(parts: &mut Vec<u8>, r: &SpanRecord) -> usize {
    let head = SpanHead {
        context: &r.context,
        parent: r.parent,
        parent_is_remote: r.parent_is_remote,
        name: &r.name,
        kind: &r.kind,
        start: r.start,
        end: r.end,
        status: &r.status,
    };
    encode_head(parts, &head);
    let split = parts.len();
    for (name, at) in r.events() {
        encode_event(parts, name, *at, &[], 0);
    }
    for l in r.links() {
        encode_link(parts, l, &[], 0);
    }
    encode_tail(parts, &head);
    split
}

/// Append the start of a `ScopeSpans.spans` entry (field 2) whose content is `len` bytes:
/// its tag and length.
pub fn entry_prefix(buf: &mut Vec<u8>, len: usize) {
    key(buf, 2, 2);
    varint(buf, len as u64);
}

/// One span record as a `ScopeSpans.spans` entry, appended to `buf`: the same bytes as
/// [`encode_span_entry`] of the equivalent `SpanData` (the reference the queue's pieces,
/// `QueueProcessor::push_record`, are tested against).
#[cfg(test)]
pub(crate) fn encode_record_entry(buf: &mut Vec<u8>, r: &SpanRecord) {
    let mut parts = Vec::new();
    let split = record_parts(&mut parts, r);
    entry_prefix(buf, parts.len() + r.encoded_attributes().len());
    buf.extend_from_slice(&parts[..split]);
    buf.extend_from_slice(r.encoded_attributes());
    buf.extend_from_slice(&parts[split..]);
}

/// `Span.events` entry (field 11).
fn encode_event(b: &mut Vec<u8>, name: &str, at: SystemTime, attrs: &[KeyValue], dropped: u32) {
    nested(b, 11, |b| {
        fixed64_field(b, 1, unix_nanos(at));
        string_field(b, 2, name);
        for kv in attrs {
            attribute(b, 3, kv);
        }
        uint_field(b, 4, u64::from(dropped));
    });
}

/// `Span.links` entry (field 13).
fn encode_link(b: &mut Vec<u8>, lc: &SpanContext, attrs: &[KeyValue], dropped: u32) {
    nested(b, 13, |b| {
        encode_context(b, lc);
        for kv in attrs {
            attribute(b, 4, kv);
        }
        uint_field(b, 5, u64::from(dropped));
        let mut flags = u32::from(lc.trace_flags().to_u8()) | HAS_IS_REMOTE;
        if lc.is_remote() {
            flags |= IS_REMOTE;
        }
        fixed32_field(b, 6, flags);
    });
}

/// A `KeyValue` as message field `field`.
fn attribute(b: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    encode_attribute(b, field, kv.key.as_str(), AttrValue::from(&kv.value));
}

/// An attribute as message field `field`: what `nested(b, field, |b| encode_kv(b, kv))`
/// writes, but for scalar and string values (nearly all attributes) with the lengths worked
/// out first and each part written once, which halves the cost of encoding a span.
pub fn encode_attribute(b: &mut Vec<u8>, field: u32, key_text: &str, value: AttrValue<'_>) {
    // The `AnyValue` field: its tag byte, then its varint or fixed64 or length + bytes.
    let (tag, scalar, text): (u8, u64, &[u8]) = match value {
        AttrValue::Str(s) => (1 << 3 | 2, 0, s.as_bytes()),
        AttrValue::Bool(x) => (2 << 3, u64::from(x), &[]),
        AttrValue::I64(x) => (3 << 3, x as u64, &[]),
        AttrValue::F64(x) => (4 << 3 | 1, x.to_bits(), &[]),
        AttrValue::Strs(xs) => {
            return nested(b, field, |b| {
                string_field(b, 1, key_text);
                nested(b, 2, |b| {
                    nested(b, 5, |b| {
                        for x in xs {
                            nested(b, 1, |b| string_field(b, 1, x));
                        }
                    })
                });
            });
        }
        AttrValue::Other(v) => {
            return nested(b, field, |b| {
                string_field(b, 1, key_text);
                nested(b, 2, |b| encode_value(b, v));
            });
        }
    };
    let any_len = 1 + match tag & 7 {
        0 => varint_len(scalar),
        1 => 8,
        _ => varint_len(text.len() as u64) + text.len(),
    };
    let k = key_text.as_bytes();
    let kv_len =
        1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(any_len as u64) + any_len;
    b.reserve(11 + kv_len);
    key(b, field, 2);
    varint(b, kv_len as u64);
    b.push(1 << 3 | 2);
    varint(b, k.len() as u64);
    b.extend_from_slice(k);
    b.push(2 << 3 | 2);
    varint(b, any_len as u64);
    b.push(tag);
    match tag & 7 {
        0 => varint(b, scalar),
        1 => b.extend_from_slice(&scalar.to_le_bytes()),
        _ => {
            varint(b, text.len() as u64);
            b.extend_from_slice(text);
        }
    }
}

/// Where the attribute `key_text` is in `buf` (a run of `KeyValue` fields, of a field
/// number below 16, as [`encode_attribute`] writes them, each with its key first): the byte
/// range of its whole field.
pub fn find_attribute(buf: &[u8], key_text: &str) -> Option<Range<usize>> {
    let k = key_text.as_bytes();
    let mut r = Reader { b: buf, at: 0 };
    while r.at < buf.len() {
        let start = r.at;
        // The field's tag is one byte (field numbers below 16), then the KeyValue's length.
        r.at += 1;
        let len = usize::try_from(r.varint()?).ok()?;
        let end = r.at.checked_add(len)?;
        // The key first: its tag (field 1, length-delimited), length and text.
        if buf.get(r.at) == Some(&(1 << 3 | 2)) {
            r.at += 1;
            let n = usize::try_from(r.varint()?).ok()?;
            if r.take(n) == Some(k) {
                return Some(start..end);
            }
        }
        r.at = end;
    }
    None
}

/// The `KeyValue`s in `buf` (length-delimited `KeyValue` fields), keys owned. Values keep
/// their type; an array takes the type of its first element.
pub fn decode_attributes(buf: &[u8]) -> Vec<KeyValue> {
    let mut out = Vec::new();
    let mut r = Reader { b: buf, at: 0 };
    while let Some((_, Field::Bytes(kv))) = r.field() {
        let (mut key_text, mut value) = (String::new(), Value::from(""));
        let mut k = Reader { b: kv, at: 0 };
        while let Some((n, f)) = k.field() {
            match (n, f) {
                (1, Field::Bytes(t)) => key_text = String::from_utf8_lossy(t).into_owned(),
                (2, Field::Bytes(v)) => value = decode_any(v).unwrap_or(value),
                _ => {}
            }
        }
        out.push(KeyValue::new(key_text, value));
    }
    out
}

/// An `AnyValue` message.
fn decode_any(b: &[u8]) -> Option<Value> {
    let mut r = Reader { b, at: 0 };
    let (n, f) = r.field()?;
    Some(match (n, f) {
        (1, Field::Bytes(t)) => Value::from(String::from_utf8_lossy(t).into_owned()),
        (2, Field::Varint(x)) => Value::Bool(x != 0),
        (3, Field::Varint(x)) => Value::I64(x as i64),
        (4, Field::Fixed64(x)) => Value::F64(f64::from_bits(x)),
        (5, Field::Bytes(list)) => {
            let mut items = Vec::new();
            let mut l = Reader { b: list, at: 0 };
            while let Some((1, Field::Bytes(v))) = l.field() {
                items.extend(decode_any(v));
            }
            fn all<T>(items: &[Value], pick: impl Fn(&Value) -> Option<T>) -> Vec<T> {
                items.iter().filter_map(pick).collect()
            }
            Value::Array(match items.first() {
                Some(Value::Bool(_)) => all(&items, |v| match v {
                    Value::Bool(x) => Some(*x),
                    _ => None,
                })
                .into(),
                Some(Value::I64(_)) => all(&items, |v| match v {
                    Value::I64(x) => Some(*x),
                    _ => None,
                })
                .into(),
                Some(Value::F64(_)) => all(&items, |v| match v {
                    Value::F64(x) => Some(*x),
                    _ => None,
                })
                .into(),
                _ => all(&items, |v| Some(StringValue::from(v.to_string()))).into(),
            })
        }
        _ => return None,
    })
}

/// One protobuf field's content.
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Bytes(&'a [u8]),
}

/// Reads the fields of one encoded message (ours: well-formed; anything else ends it).
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at)?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn field(&mut self) -> Option<(u64, Field<'a>)> {
        if self.at >= self.b.len() {
            return None;
        }
        let tag = self.varint()?;
        let f = match tag & 7 {
            0 => Field::Varint(self.varint()?),
            1 => Field::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            2 => {
                let n = usize::try_from(self.varint()?).ok()?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed32
            }
            _ => return None,
        };
        Some((tag >> 3, f))
    }
}

fn encode_kv(b: &mut Vec<u8>, kv: &KeyValue) {
    string_field(b, 1, kv.key.as_str());
    nested(b, 2, |b| encode_value(b, &kv.value));
}

/// `AnyValue`: a oneof, so even a zero or `false` is written.
fn encode_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => string_field(b, 1, s.as_str()),
        Value::Bool(x) => {
            key(b, 2, 0);
            varint(b, u64::from(*x));
        }
        Value::I64(x) => {
            key(b, 3, 0);
            varint(b, *x as u64);
        }
        Value::F64(x) => {
            key(b, 4, 1);
            b.extend_from_slice(&x.to_le_bytes());
        }
        Value::Array(a) => nested(b, 5, |b| match a {
            Array::Bool(xs) => {
                for x in xs {
                    nested(b, 1, |b| encode_value(b, &Value::Bool(*x)));
                }
            }
            Array::I64(xs) => {
                for x in xs {
                    nested(b, 1, |b| encode_value(b, &Value::I64(*x)));
                }
            }
            Array::F64(xs) => {
                for x in xs {
                    nested(b, 1, |b| encode_value(b, &Value::F64(*x)));
                }
            }
            Array::String(xs) => {
                for x in xs {
                    nested(b, 1, |b| string_field(b, 1, x.as_str()));
                }
            }
            // A future array type: written as its text rather than dropped.
            #[allow(unreachable_patterns)]
            other => nested(b, 1, |b| string_field(b, 1, &other.to_string())),
        }),
        // A future value type: its text.
        #[allow(unreachable_patterns)]
        other => string_field(b, 1, &other.to_string()),
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 significant bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(b: &mut Vec<u8>, field: u32, wire: u8) {
    varint(b, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes_field(b: &mut Vec<u8>, field: u32, data: &[u8]) {
    key(b, field, 2);
    varint(b, data.len() as u64);
    b.extend_from_slice(data);
}

fn string_field(b: &mut Vec<u8>, field: u32, s: &str) {
    bytes_field(b, field, s.as_bytes());
}

/// A scalar proto3 field: omitted when zero, as proto3 does.
fn uint_field(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(b, field, 0);
        varint(b, v);
    }
}

fn fixed64_field(b: &mut Vec<u8>, field: u32, v: u64) {
    key(b, field, 1);
    b.extend_from_slice(&v.to_le_bytes());
}

fn fixed32_field(b: &mut Vec<u8>, field: u32, v: u32) {
    key(b, field, 5);
    b.extend_from_slice(&v.to_le_bytes());
}

/// A length-delimited field whose content `f` writes in place.
fn nested(b: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    key(b, field, 2);
    let at = b.len();
    b.push(0);
    f(b);
    let len = b.len() - at - 1;
    let n = varint_len(len as u64);
    if n > 1 {
        b.resize(b.len() + n - 1, 0);
        b.copy_within(at + 1..at + 1 + len, at + n);
    }
    let mut v = len as u64;
    for i in 0..n {
        let mut byte = (v & 0x7f) as u8;
        v >>= 7;
        if i + 1 < n {
            byte |= 0x80;
        }
        b[at + i] = byte;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_minimal() {
        for (v, n) in [
            (0u64, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(b.len(), n, "{v}");
            assert_eq!(varint_len(v), n, "{v}");
        }
    }

    fn span(name: &'static str, attrs: usize, scope: &InstrumentationScope) -> SpanData {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(7_u128),
                SpanId::from(9_u64),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: SpanId::from(3_u64),
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: name.into(),
            start_time: UNIX_EPOCH,
            end_time: SystemTime::now(),
            attributes: (0..attrs)
                .map(|i| KeyValue::new(format!("attribute.{i}"), "x".repeat(i * 7)))
                .collect(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Ok,
            instrumentation_scope: scope.clone(),
        }
    }

    /// The envelope written after the spans gives the same bytes as nesting in place, for
    /// batches whose lengths need one to three length bytes, with and without the gRPC prefix.
    #[test]
    fn the_body_equals_the_nested_encoding() {
        let resource = Resource::builder().with_service_name("svc").build();
        let mut res = Vec::new();
        encode_resource(&mut res, &resource);
        let scopes = [
            InstrumentationScope::builder("switchyard")
                .with_version("1")
                .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
                .build(),
            InstrumentationScope::builder("other").build(),
        ];
        for scope in &scopes {
            for (n, attrs) in [(1, 0), (1, 3), (3, 6), (400, 12)] {
                let spans: Vec<SpanData> = (0..n).map(|_| span("chat m", attrs, scope)).collect();
                let mut want = Vec::new();
                encode_request(&mut want, &res, &spans);
                let batch = |capacity| {
                    let mut batch = ScopeBatch::new(scope, res.len(), capacity);
                    let mut entry = Vec::new();
                    for s in &spans {
                        entry.clear();
                        encode_span_entry(&mut entry, s);
                        batch.push_pieces([&entry, &[], &[], &[]]);
                    }
                    assert_eq!(batch.spans(), n);
                    batch
                };
                assert_eq!(
                    &batch(64).into_body(&res, false)[..],
                    &want[..],
                    "{n} spans"
                );
                let grpc = batch(1).into_body(&res, true);
                assert_eq!(grpc[0], 0);
                assert_eq!(
                    u32::from_be_bytes([grpc[1], grpc[2], grpc[3], grpc[4]]) as usize,
                    want.len()
                );
                assert_eq!(&grpc[5..], &want[..]);
            }
        }
    }

    /// The direct attribute encoding writes what the generic nested one does, for every
    /// value type and for lengths that need one or two length bytes at each level.
    #[test]
    fn attributes_equal_the_nested_encoding() {
        let long_key = "k".repeat(140);
        let mut kvs = Vec::new();
        for k in ["a", "gen_ai.request.model", long_key.as_str()] {
            for v in [
                Value::from(""),
                Value::from("llama-3.1-8b"),
                Value::from("v".repeat(127)),
                Value::from("v".repeat(300)),
                Value::Bool(false),
                Value::Bool(true),
                Value::I64(0),
                Value::I64(-1),
                Value::I64(1 << 40),
                Value::F64(0.3),
                Value::Array(vec![opentelemetry::StringValue::from("stop")].into()),
            ] {
                kvs.push(KeyValue::new(k.to_owned(), v));
            }
        }
        for kv in &kvs {
            for field in [3, 4, 9] {
                let (mut want, mut got) = (Vec::new(), Vec::new());
                nested(&mut want, field, |b| encode_kv(b, kv));
                attribute(&mut got, field, kv);
                assert_eq!(got, want, "{kv:?} as field {field}");
            }
        }
    }

    #[test]
    fn nested_lengths_grow_in_place() {
        for size in [0usize, 1, 127, 128, 300, 20_000] {
            let mut b = vec![9u8];
            nested(&mut b, 1, |b| b.extend(std::iter::repeat_n(7u8, size)));
            let mut expect = vec![9u8, 0x0a];
            varint(&mut expect, size as u64);
            expect.extend(std::iter::repeat_n(7u8, size));
            assert_eq!(b, expect, "content of {size} bytes");
        }
    }
}

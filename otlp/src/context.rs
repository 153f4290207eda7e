//! Span and trace ids, and the W3C Trace Context (`traceparent`) in and out.

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// Random, non-zero 64 bits from a per-thread generator (SplitMix64 seeded from the standard
/// library's per-process random keys), as cheap as the SDK's id generator.
pub fn random_u64() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x5377_6974_6368_7964);
            h.finish()
        });
    }
    STATE.with(|st| {
        loop {
            let x = st.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            st.set(x);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    })
}

pub fn new_span_id() -> SpanId {
    SpanId::from(random_u64())
}

pub fn new_trace_id() -> TraceId {
    TraceId::from((u128::from(random_u64()) << 64) | u128::from(random_u64()))
}

/// The context of a new span under `parent`: same trace, flags and state, a new span id.
pub fn child_context(parent: &SpanContext) -> SpanContext {
    SpanContext::new(
        parent.trace_id(),
        new_span_id(),
        parent.trace_flags(),
        false,
        parent.trace_state().clone(),
    )
}

/// The trace-id ratio sampler's threshold, as the SDK computes it: a root trace is sampled
/// when the low 63 bits of its id's last 8 bytes fall below `ratio * 2^63`.
pub fn sample_bound(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        // Saturating float-to-int conversion; callers validate the ratio to be in 0..=1.
        (ratio.max(0.0) * (1u64 << 63) as f64) as u64
    }
}

/// Whether a new root trace with `trace_id` is sampled under [`sample_bound`]`(ratio)`.
pub fn sampled_root(bound: u64, trace_id: TraceId) -> bool {
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    bound == u64::MAX || (u64::from_be_bytes(low) >> 1) < bound
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The caller's span context from `traceparent` / `tracestate`, marked remote; the empty
/// (invalid) context when there is none or it does not parse, as the specification says.
pub fn extract(headers: &HeaderMap) -> SpanContext {
    if !headers.contains_key("traceparent") {
        return SpanContext::empty_context();
    }
    TraceContextPropagator::new()
        .extract(&HeaderExtractor(headers))
        .span()
        .span_context()
        .clone()
}

/// The W3C `traceparent` value of `sc`: `00-{trace id}-{span id}-{flags}` in lowercase hex
/// (written by hand into a stack buffer: the gateway does this on every upstream attempt).
pub fn traceparent(sc: &SpanContext) -> [u8; 55] {
    fn hex(out: &mut [u8], bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
    }
    let mut tp = [b'-'; 55];
    tp[..2].copy_from_slice(b"00");
    hex(&mut tp[3..35], &sc.trace_id().to_bytes());
    hex(&mut tp[36..52], &sc.span_id().to_bytes());
    hex(&mut tp[53..55], &[sc.trace_flags().to_u8()]);
    tp
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceFlags, TraceState};

    #[test]
    fn traceparent_is_w3c_lowercase_hex() {
        let sc = SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            SpanId::from(0xb7ad6b7169203331_u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        assert_eq!(
            &traceparent(&sc)[..],
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let unsampled = SpanContext::new(
            TraceId::from(1_u128),
            SpanId::from(2_u64),
            TraceFlags::default(),
            false,
            TraceState::NONE,
        );
        assert_eq!(
            &traceparent(&unsampled)[..],
            b"00-00000000000000000000000000000001-0000000000000002-00"
        );
    }

    #[test]
    fn extract_reads_what_traceparent_writes_and_refuses_garbage() {
        let sc = SpanContext::new(
            new_trace_id(),
            new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            http::HeaderValue::from_bytes(&traceparent(&sc)).unwrap(),
        );
        let got = extract(&h);
        assert_eq!(got.trace_id(), sc.trace_id());
        assert_eq!(got.span_id(), sc.span_id());
        assert!(got.is_sampled() && got.is_remote());
        h.insert("traceparent", http::HeaderValue::from_static("00-zz-1-01"));
        assert!(!extract(&h).is_valid());
        assert!(!extract(&HeaderMap::new()).is_valid());
    }
}

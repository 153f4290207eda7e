//! The exact response cache: answers kept by a key made of the route, the resolved target
//! and the request's canonical form, in memory (LRU within `[cache] max_bytes`) or in Redis
//! when `[state] redis` is set (shared by every replica that points at it).
//!
//! An entry is the complete answer, plus the stream's events when it was served as a
//! stream, so a streamed request is answered with the events it was first served and a
//! request of the other kind is answered by converting (done by the request path).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use lru::LruCache;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Members that do not change the answer and must not split entries: who asks, their
/// labels, and whether it is streamed (a stream and a complete answer are one entry).
const IGNORED_MEMBERS: &[&str] = &["user", "metadata", "stream", "stream_options"];

/// Prefix of the cache's Redis keys.
const REDIS_PREFIX: &str = "switchyard:cache:";

/// How long a Redis lookup may take before the request goes upstream instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// An entry's key: SHA-256 of what identifies the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

/// What identifies an answer.
pub struct KeyParts<'a> {
    pub route: &'a str,
    pub backend: &'a str,
    pub model: &'a str,
    pub endpoint: &'a str,
    /// The request body as sent (before the gateway's own rewrites).
    pub body: &'a [u8],
}

impl Key {
    /// The key of a request, or `None` when its body is not a JSON object. Members are
    /// compared in a canonical form: key order and whitespace do not matter.
    pub fn of(p: &KeyParts<'_>) -> Option<Key> {
        let Value::Object(mut body) = serde_json::from_slice::<Value>(p.body).ok()? else {
            return None;
        };
        for m in IGNORED_MEMBERS {
            body.remove(*m);
        }
        let mut h = Sha256::new();
        for part in [p.route, p.backend, p.model, p.endpoint] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        // serde_json's map is ordered by key, so this writes every object sorted.
        let canonical = serde_json::to_vec(&body).ok()?;
        h.update(&canonical);
        Some(Key(h.finalize().into()))
    }

    fn redis_key(&self) -> String {
        let mut s = String::with_capacity(REDIS_PREFIX.len() + 64);
        s.push_str(REDIS_PREFIX);
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

/// A request the cache may answer: `temperature` 0 or a `seed` (or an embedding, which is
/// deterministic anyway).
pub fn deterministic(body: &[u8], embeddings: bool) -> bool {
    if embeddings {
        return true;
    }
    #[derive(serde::Deserialize)]
    struct Params {
        temperature: Option<f64>,
        seed: Option<Value>,
    }
    match serde_json::from_slice::<Params>(body) {
        Ok(p) => p.temperature == Some(0.0) || p.seed.is_some_and(|s| !s.is_null()),
        Err(_) => false,
    }
}

/// One cached answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The backend and the model that produced it.
    pub backend: String,
    pub model: String,
    /// The complete answer (for a stream: put together from its events).
    pub complete: Bytes,
    /// The events as first served, when it was a stream.
    pub events: Option<Bytes>,
    /// Those events carry the usage chunk.
    pub events_have_usage: bool,
}

impl Entry {
    fn size(&self) -> usize {
        self.backend.len()
            + self.model.len()
            + self.complete.len()
            + self.events.as_ref().map_or(0, Bytes::len)
            + 64
    }

    /// Length-prefixed fields, for Redis.
    fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(self.size() + 32);
        b.put_u8(1);
        for f in [
            self.backend.as_bytes(),
            self.model.as_bytes(),
            &self.complete[..],
        ] {
            b.put_u64_le(f.len() as u64);
            b.put_slice(f);
        }
        b.put_u8(u8::from(self.events_have_usage));
        match &self.events {
            Some(e) => {
                b.put_u8(1);
                b.put_u64_le(e.len() as u64);
                b.put_slice(e);
            }
            None => b.put_u8(0),
        }
        b.to_vec()
    }

    fn decode(raw: &[u8]) -> Option<Entry> {
        let mut b = raw;
        let field = |b: &mut &[u8]| -> Option<Bytes> {
            if b.remaining() < 8 {
                return None;
            }
            let n = usize::try_from(b.get_u64_le()).ok()?;
            if b.remaining() < n {
                return None;
            }
            let out = Bytes::copy_from_slice(&b[..n]);
            b.advance(n);
            Some(out)
        };
        if b.remaining() < 1 || b.get_u8() != 1 {
            return None;
        }
        let backend = String::from_utf8(field(&mut b)?.to_vec()).ok()?;
        let model = String::from_utf8(field(&mut b)?.to_vec()).ok()?;
        let complete = field(&mut b)?;
        if b.remaining() < 2 {
            return None;
        }
        let events_have_usage = b.get_u8() == 1;
        let events = if b.get_u8() == 1 {
            Some(field(&mut b)?)
        } else {
            None
        };
        Some(Entry {
            backend,
            model,
            complete,
            events,
            events_have_usage,
        })
    }
}

struct Stored {
    entry: Arc<Entry>,
    expires: Instant,
    size: usize,
}

/// The memory store: least recently used evicted past the byte cap.
struct Memory {
    lru: LruCache<Key, Stored>,
    bytes: usize,
}

/// How a request met the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// Not looked up: the client said `cache-control: no-cache`/`no-store`, or the request
    /// is not deterministic enough.
    Bypass,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }
}

#[derive(Default)]
struct RouteCounts {
    hit: AtomicU64,
    miss: AtomicU64,
    bypass: AtomicU64,
}

/// The response cache a gateway owns.
pub struct ResponseCache {
    memory: Mutex<Memory>,
    redis: OnceLock<redis::aio::ConnectionManager>,
    counts: Mutex<HashMap<Arc<str>, Arc<RouteCounts>>>,
    store_errors: AtomicU64,
}

impl Default for ResponseCache {
    fn default() -> Self {
        ResponseCache {
            memory: Mutex::new(Memory {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            redis: OnceLock::new(),
            counts: Mutex::new(HashMap::new()),
            store_errors: AtomicU64::new(0),
        }
    }
}

impl ResponseCache {
    /// Keep entries in Redis at `url` from now on (checked with a PING).
    pub async fn connect_redis(&self, url: &str) -> Result<(), String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid redis URL: {e}"))?;
        let mut conn =
            tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
                .await
                .map_err(|_| "redis did not answer within 5s".to_string())?
                .map_err(|e| format!("cannot connect to redis: {e}"))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("redis PING failed: {e}"))?;
        let _ = self.redis.set(conn);
        Ok(())
    }

    /// The entry for `key`, if one is stored and fresh. A Redis failure is a miss (the
    /// request goes upstream), counted in `switchyard_cache_store_errors_total`.
    pub async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        if let Some(conn) = self.redis.get() {
            let mut conn = conn.clone();
            let got: Result<Result<Option<Vec<u8>>, _>, _> = tokio::time::timeout(
                REDIS_TIMEOUT,
                redis::cmd("GET")
                    .arg(key.redis_key())
                    .query_async(&mut conn),
            )
            .await;
            return match got {
                Ok(Ok(Some(raw))) => Entry::decode(&raw).map(Arc::new),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => {
                    self.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "cache lookup in redis failed");
                    None
                }
                Err(_) => {
                    self.store_errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
        }
        let mut m = self.memory.lock().ok()?;
        let stored = m.lru.get(key)?;
        if stored.expires > Instant::now() {
            return Some(stored.entry.clone());
        }
        if let Some(old) = m.lru.pop(key) {
            m.bytes -= old.size;
        }
        None
    }

    /// Store `entry` for `ttl`. An entry larger than `max_bytes` is not kept.
    pub fn put(self: &Arc<Self>, key: Key, entry: Entry, ttl: Duration, max_bytes: u64) {
        if let Some(conn) = self.redis.get() {
            let mut conn = conn.clone();
            let this = self.clone();
            tokio::spawn(async move {
                let r: Result<(), _> = redis::cmd("SET")
                    .arg(key.redis_key())
                    .arg(entry.encode())
                    .arg("EX")
                    .arg(ttl.as_secs().max(1))
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = r {
                    this.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "cache store in redis failed");
                }
            });
            return;
        }
        let size = entry.size();
        let cap = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        if size > cap {
            return;
        }
        let Ok(mut m) = self.memory.lock() else {
            return;
        };
        let stored = Stored {
            entry: Arc::new(entry),
            expires: Instant::now() + ttl,
            size,
        };
        if let Some(old) = m.lru.put(key, stored) {
            m.bytes -= old.size;
        }
        m.bytes += size;
        while m.bytes > cap {
            match m.lru.pop_lru() {
                Some((_, old)) => m.bytes -= old.size,
                None => break,
            }
        }
    }

    /// Count one request of `route`.
    pub fn count(&self, route: &Arc<str>, outcome: Outcome) {
        let counts = {
            let Ok(mut map) = self.counts.lock() else {
                return;
            };
            map.entry(route.clone()).or_default().clone()
        };
        let c = match outcome {
            Outcome::Hit => &counts.hit,
            Outcome::Miss => &counts.miss,
            Outcome::Bypass => &counts.bypass,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The cache's Prometheus series.
    pub fn render_metrics(&self, out: &mut String) {
        let Ok(map) = self.counts.lock() else {
            return;
        };
        if map.is_empty() {
            return;
        }
        let mut routes: Vec<_> = map.iter().collect();
        routes.sort_by(|a, b| a.0.cmp(b.0));
        out.push_str("# HELP switchyard_cache_requests_total Requests on routes with a cache, by how the cache answered.\n# TYPE switchyard_cache_requests_total counter\n");
        for (route, c) in &routes {
            for (label, n) in [("hit", &c.hit), ("miss", &c.miss), ("bypass", &c.bypass)] {
                let _ = writeln!(
                    out,
                    "switchyard_cache_requests_total{{route=\"{}\",result=\"{label}\"}} {}",
                    escape(route),
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP switchyard_cache_hit_ratio Hits over hits and misses (bypasses not counted), per route.\n# TYPE switchyard_cache_hit_ratio gauge\n");
        for (route, c) in &routes {
            let (h, m) = (
                c.hit.load(Ordering::Relaxed),
                c.miss.load(Ordering::Relaxed),
            );
            let ratio = if h + m == 0 {
                0.0
            } else {
                h as f64 / (h + m) as f64
            };
            let _ = writeln!(
                out,
                "switchyard_cache_hit_ratio{{route=\"{}\"}} {ratio}",
                escape(route)
            );
        }
        drop(map);
        if let Ok(m) = self.memory.lock() {
            let _ = writeln!(
                out,
                "# HELP switchyard_cache_bytes Bytes of answers in the memory cache.\n# TYPE switchyard_cache_bytes gauge\nswitchyard_cache_bytes {}\n# HELP switchyard_cache_entries Answers in the memory cache.\n# TYPE switchyard_cache_entries gauge\nswitchyard_cache_entries {}",
                m.bytes,
                m.lru.len()
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchyard_cache_store_errors_total Redis cache lookups or stores that failed (served as misses).\n# TYPE switchyard_cache_store_errors_total counter\nswitchyard_cache_store_errors_total {}",
            self.store_errors.load(Ordering::Relaxed)
        );
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(body: &str) -> Key {
        Key::of(&KeyParts {
            route: "r",
            backend: "b",
            model: "m",
            endpoint: "/v1/chat/completions",
            body: body.as_bytes(),
        })
        .unwrap()
    }

    fn entry(n: usize) -> Entry {
        Entry {
            backend: "b".into(),
            model: "m".into(),
            complete: Bytes::from(vec![b'x'; n]),
            events: None,
            events_have_usage: false,
        }
    }

    #[test]
    fn canonical_key_ignores_order_whitespace_user_and_stream() {
        let a = key(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#);
        let b = key(
            r#"{ "temperature": 0, "user": "u1", "stream": true, "stream_options": {"include_usage": true},
                 "messages": [ {"content": "hi", "role": "user"} ], "model": "m", "metadata": {"a": "b"} }"#,
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            key(r#"{"model":"m","messages":[{"role":"user","content":"hi!"}],"temperature":0}"#)
        );
    }

    #[test]
    fn memory_store_evicts_least_recently_used_past_the_cap() {
        let c = Arc::new(ResponseCache::default());
        let (k1, k2, k3) = (key(r#"{"a":1}"#), key(r#"{"a":2}"#), key(r#"{"a":3}"#));
        let ttl = Duration::from_secs(60);
        c.put(k1, entry(100), ttl, 400);
        c.put(k2, entry(100), ttl, 400);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(c.get(&k1)).is_some());
        c.put(k3, entry(100), ttl, 400);
        assert!(
            rt.block_on(c.get(&k2)).is_none(),
            "k2 was the least recently used"
        );
        assert!(rt.block_on(c.get(&k1)).is_some());
        assert!(rt.block_on(c.get(&k3)).is_some());
        c.put(k2, entry(1000), ttl, 400);
        assert!(
            rt.block_on(c.get(&k2)).is_none(),
            "larger than the cap: not kept"
        );
    }

    #[test]
    fn entries_round_trip_through_their_encoding() {
        let mut e = entry(10);
        e.events = Some(Bytes::from_static(b"data: {}\n\n"));
        e.events_have_usage = true;
        assert_eq!(Entry::decode(&e.encode()), Some(e));
        assert!(deterministic(br#"{"temperature":0}"#, false));
        assert!(deterministic(br#"{"seed":7,"temperature":1}"#, false));
        assert!(!deterministic(br#"{"temperature":0.7}"#, false));
        assert!(!deterministic(br#"{}"#, false));
    }
}

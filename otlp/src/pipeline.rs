//! The way from a finished span to the collector: a bounded queue the request path appends
//! encoded spans to, and one task, on a background-priority thread of its own, that exports
//! the queue batch by batch.
//!
//! Batches behind a mutex rather than a channel: a channel wakes the export task for
//! nearly every span (tens of thousands of cross-thread wake-ups a second at full load, which
//! cost more than the spans), while here a request only appends. The export task wakes when a
//! batch is full (one wake-up per [`MAX_BATCH`] spans), on its [`EXPORT_INTERVAL`] tick, and
//! when asked to flush. A full queue drops the span and counts it: exporting never blocks a
//! request.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::export::Exporter;
use crate::record::SpanRecord;
use crate::wire::{ScopeBatch, encode_span_entry, entry_prefix, record_parts};

/// Finished spans waiting for export; beyond this they are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 8192;
/// Spans sent per export call.
pub const MAX_BATCH: usize = 512;
/// Encoded bytes per export call: a batch is sent once it reaches this size even with fewer
/// than [`MAX_BATCH`] spans (large spans come from `capture_content`), keeping requests well
/// under the 4 MiB message limit collectors apply to gRPC by default.
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// How long a finished span waits at most before it is exported.
pub const EXPORT_INTERVAL: Duration = Duration::from_millis(500);
/// One export call may take this long; a slow collector then costs dropped spans, not time.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the pipeline reports: counts for the process's metrics, and one log line per outage.
pub trait ExportEvents: Send + Sync + 'static {
    /// Spans the collector accepted.
    fn exported(&self, spans: u64);
    /// Spans dropped because the queue was full.
    fn dropped(&self, spans: u64);
    /// Spans lost to a failed export.
    fn failed(&self, spans: u64);
    /// An export failed after the previous one worked (called once per outage, not per batch).
    fn outage(&self, error: &str, spans: u64);
    /// An export worked after an outage.
    fn recovered(&self);
}

/// Encoded spans waiting for the export task.
struct Pending {
    /// Batches being filled, one per instrumentation scope (usually just one).
    open: Vec<ScopeBatch>,
    /// Batches that reached [`MAX_BATCH`] spans or [`MAX_BATCH_BYTES`].
    full: Vec<ScopeBatch>,
    /// Spans in `open` and `full`.
    spans: usize,
    /// Encoded size of the last full batch, to size the next batch's buffer once.
    batch_bytes: usize,
}

struct Queue {
    pending: Mutex<Pending>,
    batch_full: Notify,
    events: Arc<dyn ExportEvents>,
    /// Length of the exporter's encoded resource (the room a batch leaves for it).
    resource_len: usize,
}

impl Queue {
    /// What is queued so far, full batches first: all of it, or (`sealed_only`) just the
    /// full batches, leaving the ones being filled to fill up.
    fn take(&self, sealed_only: bool) -> Vec<ScopeBatch> {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::mem::take(&mut p.full);
        if !sealed_only {
            out.append(&mut p.open);
        }
        p.spans -= out.iter().map(ScopeBatch::spans).sum::<usize>();
        out
    }
}

thread_local! {
    /// The span being encoded, outside the queue's lock.
    static ENTRY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Hands finished spans to the export task without ever waiting for it.
///
/// A span is encoded to its OTLP bytes here, on the thread that ended it, while its data is
/// still in that thread's cache, and freed there (a [`SpanRecord`]'s attributes already are
/// bytes, written as they were set); the queue holds only bytes. Handing the
/// `SpanData` itself to the export task cost more: the task read every span's attributes
/// back from memory another core wrote, and freed them on the wrong thread.
#[derive(Clone)]
pub struct QueueProcessor(Arc<Queue>);

impl std::fmt::Debug for QueueProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueProcessor")
    }
}

impl QueueProcessor {
    /// Queue a finished span (unsampled ones are ignored).
    pub fn push(&self, span: SpanData) {
        self.push_ref(&span);
    }

    /// Queue a finished span the caller keeps (and frees): [`QueueProcessor::push`] without
    /// moving the record, which is a few hundred bytes.
    pub fn push_ref(&self, span: &SpanData) {
        if span.span_context.is_sampled() {
            self.queue(ScopeRef::Any(&span.instrumentation_scope), &[], |entry| {
                encode_span_entry(entry, span);
                [0..entry.len(), 0..0, 0..0]
            });
        }
    }

    /// Queue a finished span record of `scope` (unsampled ones are ignored). Its attributes,
    /// already encoded, are copied once, into the batch; the rest of the span is encoded
    /// before taking the queue's lock.
    pub fn push_record(&self, span: &SpanRecord, scope: &'static InstrumentationScope) {
        if !span.context.is_sampled() {
            return;
        }
        let attributes = span.encoded_attributes();
        self.queue(ScopeRef::Static(scope), attributes, |entry| {
            let split = record_parts(entry, span);
            let parts = entry.len();
            entry_prefix(entry, parts + attributes.len());
            [parts..entry.len(), 0..split, split..parts]
        });
    }

    /// Encode a span with `encode` into this thread's entry buffer, then append it to its
    /// scope's batch. The entry is three ranges of that buffer with `attributes` between
    /// the second and the third.
    fn queue(
        &self,
        scope: ScopeRef<'_>,
        attributes: &[u8],
        encode: impl Fn(&mut Vec<u8>) -> [std::ops::Range<usize>; 3],
    ) {
        let queue = |entry: &mut Vec<u8>| {
            entry.clear();
            let [a, b, c] = encode(entry);
            let pieces = [&entry[a], &entry[b], attributes, &entry[c]];
            if self.append(pieces, scope) {
                self.0.batch_full.notify_one();
            }
        };
        let done = ENTRY
            .try_with(|cell| {
                let Ok(mut entry) = cell.try_borrow_mut() else {
                    return false;
                };
                queue(&mut entry);
                if entry.capacity() > 64 * 1024 {
                    // A span with captured content: do not keep its buffer for later spans.
                    *entry = Vec::new();
                }
                true
            })
            .unwrap_or(false);
        if !done {
            // A span ended while this thread is being torn down: a buffer of its own.
            queue(&mut Vec::new());
        }
    }

    /// Append an encoded span to its scope's batch; whether that sealed a batch.
    fn append(&self, entry: [&[u8]; 4], scope: ScopeRef<'_>) -> bool {
        let q = &self.0;
        let mut p = q.pending.lock().unwrap_or_else(|p| p.into_inner());
        if p.spans >= QUEUE_CAPACITY {
            drop(p);
            q.events.dropped(1);
            return false;
        }
        let i = match p.open.iter().position(|b| scope.is(b)) {
            Some(i) => i,
            None => {
                let capacity = p.batch_bytes + p.batch_bytes / 8;
                let batch = ScopeBatch::new(scope.get(), q.resource_len, capacity);
                p.open.push(match scope {
                    ScopeRef::Static(s) => batch.from_static(s),
                    ScopeRef::Any(_) => batch,
                });
                p.open.len() - 1
            }
        };
        let batch = &mut p.open[i];
        batch.push_pieces(entry);
        let sealed = batch.spans() >= MAX_BATCH || batch.encoded_len() >= MAX_BATCH_BYTES;
        p.spans += 1;
        if sealed {
            let batch = p.open.swap_remove(i);
            p.batch_bytes = batch.encoded_len().min(MAX_BATCH_BYTES);
            p.full.push(batch);
        }
        sealed
    }
}

/// A span's instrumentation scope. One that lives for the whole process (the gateway's)
/// finds its batch by address; comparing the scopes' names, versions and attributes cost a
/// tenth of a microsecond per request.
#[derive(Clone, Copy)]
enum ScopeRef<'a> {
    Static(&'static InstrumentationScope),
    Any(&'a InstrumentationScope),
}

impl ScopeRef<'_> {
    fn get(&self) -> &InstrumentationScope {
        match self {
            ScopeRef::Static(s) => s,
            ScopeRef::Any(s) => s,
        }
    }

    /// Whether `batch` holds this scope's spans.
    fn is(&self, batch: &ScopeBatch) -> bool {
        match self {
            ScopeRef::Static(s) if batch.made_from(s) => true,
            _ => batch.scope() == self.get(),
        }
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        self.push(span);
    }

    // Flushing is asynchronous ([`Pipeline::flush`]); these run on runtime threads and must
    // not block them.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The export task's handle: ask it to send what is queued now.
#[derive(Debug, Clone)]
pub struct Pipeline {
    flush: mpsc::Sender<oneshot::Sender<()>>,
}

impl Pipeline {
    /// Start the export task on a thread of its own; spans pushed to the returned processor
    /// reach `exporter`. Fails only if the thread or its runtime cannot be created.
    pub fn start(
        exporter: Exporter,
        events: Arc<dyn ExportEvents>,
    ) -> std::io::Result<(QueueProcessor, Pipeline)> {
        let queue = Arc::new(Queue {
            pending: Mutex::new(Pending {
                open: Vec::new(),
                full: Vec::new(),
                spans: 0,
                batch_bytes: MAX_BATCH * 512,
            }),
            batch_full: Notify::new(),
            events,
            resource_len: exporter.resource_len(),
        });
        let (tx, rx) = mpsc::channel(4);
        let task = export_loop(exporter, queue.clone(), rx);
        // The export task gets a thread of its own at background priority, not a place on the
        // caller's runtime: an export (framing a batch of up to 512 spans, writing it to the
        // socket, reading the answer) then never waits in front of a request on a worker's
        // queue, and on a busy machine it uses the CPU the requests leave. It needs ~3 % of a
        // core at 26k requests/s (three spans each); starved for longer, the bounded queue
        // drops spans (counted) rather than slowing requests down.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                lower_thread_priority();
                rt.block_on(task);
            })?;
        Ok((QueueProcessor(queue), Pipeline { flush: tx }))
    }

    /// Export everything queued so far; waits at most [`EXPORT_TIMEOUT`].
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.flush.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(EXPORT_TIMEOUT, rx).await;
        }
    }
}

/// Run the calling thread at background priority (nice 10), so its work uses the CPU the
/// request threads leave idle. The export thread runs so, and the gateway's store writer
/// too. `false` if the system refused (no permission): the thread keeps normal priority,
/// which only costs requests a little latency.
pub fn lower_thread_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

async fn export_loop(
    exporter: Exporter,
    queue: Arc<Queue>,
    mut flush: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut tick = tokio::time::interval(EXPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        // A full batch wakes the task for that batch alone: the one being filled goes when it
        // is full too, or on the tick. (Sending it along each time doubled the export calls,
        // each a round trip and a wake-up or two on both sides, for a few spans more.)
        let (done, sealed_only) = tokio::select! {
            asked = flush.recv() => match asked {
                Some(done) => (Some(done), false),
                None => {
                    export(&exporter, &queue, false, &mut failing).await;
                    return;
                }
            },
            () = queue.batch_full.notified() => (None, true),
            _ = tick.tick() => (None, false),
        };
        export(&exporter, &queue, sealed_only, &mut failing).await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// Export what is queued (see [`Queue::take`]), one call per batch.
async fn export(exporter: &Exporter, queue: &Queue, sealed_only: bool, failing: &mut bool) {
    for batch in queue.take(sealed_only) {
        let n = batch.spans() as u64;
        match exporter.export(batch).await {
            Ok(()) => {
                queue.events.exported(n);
                if *failing {
                    queue.events.recovered();
                    *failing = false;
                }
            }
            Err(e) => {
                queue.events.failed(n);
                if !*failing {
                    queue.events.outage(&e, n);
                    *failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceFlags, TraceId, TraceState};
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Counts {
        dropped: AtomicU64,
    }

    impl ExportEvents for Counts {
        fn exported(&self, _: u64) {}
        fn dropped(&self, spans: u64) {
            self.dropped.fetch_add(spans, Ordering::Relaxed);
        }
        fn failed(&self, _: u64) {}
        fn outage(&self, _: &str, _: u64) {}
        fn recovered(&self) {}
    }

    fn queue(counts: Arc<Counts>) -> QueueProcessor {
        QueueProcessor(Arc::new(Queue {
            pending: Mutex::new(Pending {
                open: Vec::new(),
                full: Vec::new(),
                spans: 0,
                batch_bytes: 0,
            }),
            batch_full: Notify::new(),
            events: counts,
            resource_len: 40,
        }))
    }

    fn span(scope: &InstrumentationScope, sampled: bool, attribute: &str) -> SpanData {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let cx = SpanContext::new(
            TraceId::from(1_u128),
            SpanId::from(2_u64),
            flags,
            false,
            TraceState::NONE,
        );
        let attrs = vec![opentelemetry::KeyValue::new("a", attribute.to_owned())];
        crate::record(
            cx,
            SpanId::INVALID,
            false,
            SpanKind::Internal,
            "s".into(),
            attrs,
            scope,
        )
    }

    /// Spans are grouped by scope, a batch is sealed at [`MAX_BATCH`] spans or
    /// [`MAX_BATCH_BYTES`], unsampled spans are ignored, and a full queue drops and counts.
    #[test]
    fn spans_are_batched_by_scope_and_size_and_bounded() {
        let counts = Arc::new(Counts::default());
        let q = queue(counts.clone());
        let a = InstrumentationScope::builder("a").build();
        let b = InstrumentationScope::builder("b").build();
        for i in 0..MAX_BATCH + 3 {
            q.push(span(&a, true, "x"));
            if i % 2 == 0 {
                q.push(span(&b, true, "y"));
            }
            q.push(span(&a, false, "unsampled"));
        }
        let batches = q.0.take(false);
        let shape: Vec<(&str, usize)> = batches
            .iter()
            .map(|b| (b.scope().name(), b.spans()))
            .collect();
        assert_eq!(
            shape,
            [("a", MAX_BATCH), ("b", MAX_BATCH / 2 + 2), ("a", 3)],
            "one full batch of scope a first, then the open ones"
        );
        assert!(q.0.take(false).is_empty(), "take empties the queue");

        let big = "z".repeat(MAX_BATCH_BYTES / 3);
        for _ in 0..4 {
            q.push(span(&a, true, &big));
        }
        let sizes: Vec<usize> = q.0.take(false).iter().map(ScopeBatch::spans).collect();
        assert_eq!(sizes, [3, 1], "sealed once past {MAX_BATCH_BYTES} bytes");

        for _ in 0..QUEUE_CAPACITY + 5 {
            q.push(span(&a, true, "x"));
        }
        assert_eq!(counts.dropped.load(Ordering::Relaxed), 5);
        let queued: usize = q.0.take(false).iter().map(ScopeBatch::spans).sum();
        assert_eq!(queued, QUEUE_CAPACITY);
    }

    /// A full batch's wake-up takes that batch alone; the open one stays, still counted
    /// against the queue's bound, until it fills or the tick takes everything.
    #[test]
    fn a_full_batch_leaves_the_open_one_queued() {
        let counts = Arc::new(Counts::default());
        let q = queue(counts.clone());
        let a = InstrumentationScope::builder("a").build();
        for _ in 0..MAX_BATCH + 3 {
            q.push(span(&a, true, "x"));
        }
        let sizes: Vec<usize> = q.0.take(true).iter().map(ScopeBatch::spans).collect();
        assert_eq!(sizes, [MAX_BATCH], "only the sealed batch");
        assert!(q.0.take(true).is_empty(), "nothing else is sealed");
        for _ in 0..QUEUE_CAPACITY {
            q.push(span(&a, true, "x"));
        }
        assert_eq!(
            counts.dropped.load(Ordering::Relaxed),
            3,
            "the 3 spans left queued count against the bound"
        );
        let queued: usize = q.0.take(false).iter().map(ScopeBatch::spans).sum();
        assert_eq!(queued, QUEUE_CAPACITY, "the tick takes everything");
    }

    /// A record of a process-lifetime scope lands in the same batch as `SpanData` of an
    /// equal scope, as the same bytes; unsampled records are ignored.
    #[test]
    fn records_join_the_batch_of_their_scope_as_the_same_bytes() {
        static SCOPE: std::sync::LazyLock<InstrumentationScope> =
            std::sync::LazyLock::new(|| InstrumentationScope::builder("a").build());
        let q = queue(Arc::new(Counts::default()));
        let data = span(&SCOPE, true, "x");
        let record = |sampled: bool| {
            let mut r = SpanRecord::new(
                data.span_context.clone(),
                SpanId::INVALID,
                false,
                SpanKind::Internal,
                "s".into(),
                0,
            );
            if !sampled {
                r.context = span(&SCOPE, false, "x").span_context;
            }
            r.add("a", crate::AttrValue::Str("x"));
            r.start = data.start_time;
            r.end = data.end_time;
            r
        };
        q.push_ref(&data);
        q.push_record(&record(true), &SCOPE);
        q.push_record(&record(false), &SCOPE);
        let other = InstrumentationScope::builder("a").build();
        q.push_record(&record(true), Box::leak(Box::new(other)));
        let batches = q.0.take(false);
        assert_eq!(batches.len(), 1, "one scope, one batch");
        assert_eq!(batches[0].spans(), 3);
        let body = batches
            .into_iter()
            .next()
            .expect("batch")
            .into_body(&[], false);
        let mut one = Vec::new();
        encode_span_entry(&mut one, &data);
        assert_eq!(&body[body.len() - 3 * one.len()..], one.repeat(3));
    }
}

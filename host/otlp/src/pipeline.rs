//! The way from a finished span to the collector: a bounded queue the request path appends
//! to, and one task that batches the queue and exports it.
//!
//! A plain vector behind a mutex rather than a channel: a channel wakes the export task for
//! nearly every span (tens of thousands of cross-thread wake-ups a second at full load, which
//! cost more than the spans), while here a request only appends. The export task wakes when a
//! batch is full (one wake-up per [`MAX_BATCH`] spans), on its [`EXPORT_INTERVAL`] tick, and
//! when asked to flush. A full queue drops the span and counts it: exporting never blocks a
//! request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::export::Exporter;

/// Finished spans waiting for export; beyond this they are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 8192;
/// Spans sent per export call.
pub const MAX_BATCH: usize = 512;
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

struct Queue {
    spans: Mutex<Vec<SpanData>>,
    batch_full: Notify,
    events: Arc<dyn ExportEvents>,
}

impl Queue {
    /// Everything queued so far (the queue starts again empty).
    fn take(&self) -> Vec<SpanData> {
        let mut q = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *q, Vec::with_capacity(MAX_BATCH))
    }
}

/// Hands finished spans to the export task without ever waiting for it.
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
        if !span.span_context.is_sampled() {
            return;
        }
        let len = {
            let mut q = self.0.spans.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= QUEUE_CAPACITY {
                drop(q);
                self.0.events.dropped(1);
                return;
            }
            q.push(span);
            q.len()
        };
        if len == MAX_BATCH {
            self.0.batch_full.notify_one();
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
    /// Start the export task on the current tokio runtime; spans pushed to the returned
    /// processor reach `exporter`.
    pub fn start(exporter: Exporter, events: Arc<dyn ExportEvents>) -> (QueueProcessor, Pipeline) {
        let queue = Arc::new(Queue {
            spans: Mutex::new(Vec::with_capacity(MAX_BATCH)),
            batch_full: Notify::new(),
            events,
        });
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(export_loop(exporter, queue.clone(), rx));
        (QueueProcessor(queue), Pipeline { flush: tx })
    }

    /// Export everything queued so far; waits at most [`EXPORT_TIMEOUT`].
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.flush.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(EXPORT_TIMEOUT, rx).await;
        }
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
        let done = tokio::select! {
            asked = flush.recv() => match asked {
                Some(done) => Some(done),
                None => {
                    export_all(&exporter, &queue, &mut failing).await;
                    return;
                }
            },
            () = queue.batch_full.notified() => None,
            _ = tick.tick() => None,
        };
        export_all(&exporter, &queue, &mut failing).await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// Export everything queued, [`MAX_BATCH`] spans per call.
async fn export_all(exporter: &Exporter, queue: &Queue, failing: &mut bool) {
    let mut spans = queue.take();
    while !spans.is_empty() {
        let rest = spans.split_off(spans.len().min(MAX_BATCH));
        let n = spans.len() as u64;
        match exporter.export(&spans).await {
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
        spans = rest;
    }
}

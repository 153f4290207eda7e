//! `switchyard eval`: replay a dataset against targets through the gateway's own machinery
//! (the config's backends and credentials, the `adapt` plugins for each target; no retries,
//! no fallback: a failure is the target's), score every answer, compare with a baseline,
//! and check gates, so a CI job can fail a prompt or model change that costs quality.
//!
//! ```text
//! dataset ─► baseline (all examples, ≤ N at once) ─► other targets (≤ N at once)
//!         ─► judge calls (metric judge, ≤ N at once) ─► scores ─► summaries, gates
//!         ─► text | --json, and --out DIR (examples.jsonl, report.html)
//! ```
//!
//! The baseline runs first because an example without `expected` is scored against the
//! baseline's answer.

pub mod dataset;
#[cfg(test)]
mod fixtures;
pub mod gate;
pub mod labels;
pub mod report;
pub mod score;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::HeaderMap;
use serde_json::Value;

use crate::base::Endpoint;
use crate::base::openai::RequestBody;
use crate::config::{self, Runtime, Target};
use crate::services::judge;
use crate::services::plugins::{CallerInfo, Pass, Plugins};
use crate::services::upstream::{Upstream, Upstreams, throughput};
use dataset::Example;
use gate::Gate;
use report::{Outcome, TargetReport};
use score::Metric;

/// `switchyard eval` arguments.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Config file [default: $SWITCHYARD_CONFIG, then ./switchyard.toml, then built in]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The examples, one JSON object a line.
    #[arg(long, value_name = "FILE.jsonl")]
    pub dataset: PathBuf,
    /// A target to evaluate (repeatable).
    #[arg(long, value_name = "BACKEND:MODEL")]
    pub target: Vec<String>,
    /// The reference target: evaluated too, listed first; gates compare with it.
    #[arg(long, value_name = "BACKEND:MODEL")]
    pub baseline: Option<String>,
    /// Metric for examples that name none [default: exact].
    #[arg(long, value_name = "exact|json|label|rouge_l|judge")]
    pub metric: Option<String>,
    /// The judge for metric `judge`.
    #[arg(long, value_name = "BACKEND:MODEL")]
    pub judge: Option<String>,
    /// Rubric template for the judge, with {question}, {reference} and {answer}.
    #[arg(long, value_name = "FILE")]
    pub rubric: Option<PathBuf>,
    /// A condition every target but the baseline must meet (repeatable), e.g.
    /// `quality>=0.95*baseline`, `cost<=0.4*baseline`, `p99_ms<=3000`, `errors<=0.01`.
    #[arg(long, value_name = "EXPR")]
    pub gate: Vec<String>,
    /// Requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,
    /// `exact`: compare case-insensitively.
    #[arg(long)]
    pub ignore_case: bool,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write examples.jsonl and report.html into DIR.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write training labels for `switchyard router train --data`: per example, the
    /// cheapest target whose score met --label-threshold (every target needs a price).
    #[arg(long, value_name = "FILE.jsonl")]
    pub emit_labels: Option<PathBuf>,
    /// The least score (0 to 1) that makes a target's answer good enough for a label.
    #[arg(
        long,
        value_name = "SCORE",
        default_value_t = 0.8,
        requires = "emit_labels"
    )]
    pub label_threshold: f64,
}

/// A usage or config error: exit 2.
fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// `switchyard eval`: 0 when every gate passes, 1 when one fails, 2 for a usage or config
/// error.
pub fn main(args: EvalArgs) -> ExitCode {
    let source = config::locate(args.config.as_deref());
    let rt = match config::load(&source) {
        Ok(rt) => rt,
        Err(e) => return usage(e),
    };
    let plan = match Plan::new(&args, &rt) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return usage(format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(run(args, Arc::new(rt), plan))
}

/// One target to evaluate, resolved against the config.
struct Spec {
    name: String,
    target: Target,
    model: String,
}

/// Everything checked before any request is sent.
struct Plan {
    examples: Vec<Example>,
    metrics: Vec<Metric>,
    /// Baseline first (when given), then the other targets.
    specs: Vec<Spec>,
    has_baseline: bool,
    judge: Option<Spec>,
    rubric: String,
    gates: Vec<Gate>,
}

fn resolve(rt: &Runtime, what: &str, s: &str) -> Result<Spec, String> {
    let Some((backend, model)) = s
        .split_once(':')
        .filter(|(b, m)| !b.is_empty() && !m.is_empty())
    else {
        return Err(format!("{what} \"{s}\": expected BACKEND:MODEL"));
    };
    let Some(b) = rt.backend(backend) else {
        let known: Vec<&str> = rt.backends.iter().map(|b| &*b.name).collect();
        return Err(format!(
            "{what} \"{s}\": no backend named \"{backend}\" in {} (known: {})",
            rt.source,
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        ));
    };
    Ok(Spec {
        name: s.to_string(),
        target: Target {
            backend: b.clone(),
            model: Some(Arc::from(model)),
            weight: 1,
        },
        model: model.to_string(),
    })
}

impl Plan {
    fn new(args: &EvalArgs, rt: &Runtime) -> Result<Plan, String> {
        if args.target.is_empty() && args.baseline.is_none() {
            return Err("--target BACKEND:MODEL is required".into());
        }
        if args.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        let default_metric = match &args.metric {
            Some(m) => Metric::parse(m).map_err(|e| format!("--metric: {e}"))?,
            None => Metric::Exact,
        };
        let examples = dataset::load(&args.dataset)?;
        let metrics: Vec<Metric> = examples
            .iter()
            .map(|e| e.metric.unwrap_or(default_metric))
            .collect();
        let mut specs = Vec::new();
        if let Some(b) = &args.baseline {
            specs.push(resolve(rt, "--baseline", b)?);
        }
        for t in &args.target {
            if specs.iter().any(|s| &s.name == t) {
                continue;
            }
            specs.push(resolve(rt, "--target", t)?);
        }
        let has_baseline = args.baseline.is_some();
        for (e, m) in examples.iter().zip(&metrics) {
            if e.expected.is_none() && !has_baseline {
                return Err(format!(
                    "{}: example \"{}\" has no expected answer; give --baseline to score against its answers",
                    args.dataset.display(),
                    e.id
                ));
            }
            if *m == Metric::Json
                && let Some(x) = &e.expected
                && score::parse_json(x).is_none()
            {
                return Err(format!(
                    "{}: example \"{}\": metric json, but expected is not JSON",
                    args.dataset.display(),
                    e.id
                ));
            }
        }
        let judged = metrics.contains(&Metric::Judge);
        let judge = match (&args.judge, judged) {
            (Some(j), _) => Some(resolve(rt, "--judge", j)?),
            (None, true) => {
                return Err("metric judge needs --judge BACKEND:MODEL".into());
            }
            (None, false) => None,
        };
        let rubric = match &args.rubric {
            Some(p) => {
                std::fs::read_to_string(p).map_err(|e| format!("--rubric {}: {e}", p.display()))?
            }
            None => judge::DEFAULT_RUBRIC.to_string(),
        };
        judge::check_rubric(&rubric).map_err(|e| match &args.rubric {
            Some(p) => format!("--rubric {}: {e}", p.display()),
            None => e,
        })?;
        if args.emit_labels.is_some() {
            check_labels(args, rt, &specs)?;
        }
        let gates = args
            .gate
            .iter()
            .map(|g| Gate::parse(g))
            .collect::<Result<Vec<_>, _>>()?;
        if !has_baseline && let Some(g) = gates.iter().find(|g| g.relative()) {
            return Err(format!(
                "--gate \"{}\" compares with the baseline: give --baseline",
                g.expr
            ));
        }
        Ok(Plan {
            examples,
            metrics,
            specs,
            has_baseline,
            judge,
            rubric,
            gates,
        })
    }
}

/// `--emit-labels` ranks targets by cost: each needs a price, and the threshold is a score.
fn check_labels(args: &EvalArgs, rt: &Runtime, specs: &[Spec]) -> Result<(), String> {
    let t = args.label_threshold;
    if !(0.0..=1.0).contains(&t) {
        return Err(format!("--label-threshold {t}: a score from 0 to 1"));
    }
    for s in specs {
        let b = &s.target.backend;
        if rt.governance.price(&b.name, &s.model).is_none() && b.gpu_hour_usd.is_none() {
            return Err(format!(
                "--emit-labels labels each example with the cheapest good target, and {} has no price: add a [[prices]] entry for backend \"{}\" model \"{}\" (or gpu_hour_usd on the backend)",
                s.name, b.name, s.model
            ));
        }
    }
    Ok(())
}

/// What the tasks of a run share.
struct Ctx {
    upstreams: Vec<Arc<Upstream>>,
    plugins: Plugins,
    examples: Vec<Example>,
    done: AtomicUsize,
}

impl Ctx {
    fn upstream(&self, t: &Target) -> &Arc<Upstream> {
        &self.upstreams[t.backend.index]
    }
}

/// Send example `i` to `spec` and read its answer.
async fn ask(ctx: &Ctx, spec: &Spec, i: usize) -> Outcome {
    let ex = &ctx.examples[i];
    let mut req = ex.request.clone();
    req.insert("model".into(), Value::String(spec.model.clone()));
    let body = Bytes::from(Value::Object(req).to_string());
    let mut o = Outcome::default();
    let parsed = match RequestBody::parse(body, Endpoint::ChatCompletions) {
        Ok(b) => b,
        Err(e) => {
            o.error = Some(format!("the request is invalid: {e}"));
            return o;
        }
    };
    // The target's `adapt` plugins rewrite the request as they would on the serving path.
    let pass = Pass::new(
        &ctx.plugins,
        &parsed,
        Endpoint::ChatCompletions,
        &HeaderMap::new(),
        CallerInfo::default(),
    );
    let adapted = match pass.adapt(&spec.target, &spec.model) {
        Ok(a) => a,
        Err(e) => {
            o.error = Some(format!("adapt: {e}"));
            return o;
        }
    };
    let request = adapted.as_ref().unwrap_or(&parsed);
    let bytes = request.upstream_body(&spec.model, false);
    match judge::call(
        ctx.upstream(&spec.target),
        Endpoint::ChatCompletions,
        bytes,
        &HeaderMap::new(),
    )
    .await
    {
        Err(e) => o.error = Some(e),
        Ok(c) => {
            o.latency_ms = c.latency_ms;
            match judge::answer_text(&c.body) {
                Ok((text, usage)) => {
                    o.answer = Some(text);
                    if let Some(u) = usage {
                        o.tokens_in = u.prompt_tokens;
                        o.tokens_out = u.completion_tokens;
                    }
                }
                Err(e) => o.error = Some(e),
            }
        }
    }
    o
}

/// Run `jobs` with at most `limit` at once, results in job order.
async fn bounded<T, F, Fut>(limit: usize, jobs: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(limit));
    let mut handles = Vec::with_capacity(jobs);
    for j in 0..jobs {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let fut = f(j);
        handles.push(tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        }));
    }
    let mut out = Vec::with_capacity(jobs);
    for h in handles {
        match h.await {
            Ok(r) => out.push(r),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// A progress line on stderr, redrawn while the run lasts, only when stderr is a terminal
/// (a CI log gets no carriage-return noise).
fn progress(ctx: Arc<Ctx>, total: usize) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(tokio::spawn(async move {
        loop {
            let done = ctx.done.load(Ordering::Relaxed).min(total);
            let width = 30;
            let filled = done * width / total.max(1);
            eprint!(
                "\r[{}{}] {done}/{total}",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            if done >= total {
                eprintln!();
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }))
}

async fn run(args: EvalArgs, rt: Arc<Runtime>, plan: Plan) -> ExitCode {
    let upstreams = match Upstreams::default().build(&rt) {
        Ok(u) => u,
        Err(e) => return usage(e),
    };
    let plugins = Plugins::default();
    if let Some(settings) = &rt.plugins {
        match plugins.load_all(settings) {
            Ok(r) => {
                if let Some((path, e)) = r.failed.first() {
                    return usage(format!("plugin {}: {e}", path.display()));
                }
            }
            Err(e) => return usage(format!("plugins.dir: {e}")),
        }
    }
    let Plan {
        examples,
        metrics,
        specs,
        has_baseline,
        judge: judge_spec,
        rubric,
        gates,
    } = plan;
    let n = examples.len();
    let ctx = Arc::new(Ctx {
        upstreams,
        plugins,
        examples,
        done: AtomicUsize::new(0),
    });
    let specs = Arc::new(specs);
    // Throughput of self-hosted backends priced by `gpu_hour_usd`, measured across the run.
    let meters = throughput::Meters::start(&ctx.upstreams, specs.iter().map(|s| &s.target)).await;
    let judged = metrics.iter().filter(|m| **m == Metric::Judge).count();
    let total_calls = n * specs.len() + judged * specs.len();
    let bar = progress(ctx.clone(), total_calls);

    // Phase 1: the baseline; phase 2: every other target, in one pool.
    let mut answers: Vec<Vec<Outcome>> = Vec::with_capacity(specs.len());
    let first = usize::from(has_baseline);
    if has_baseline {
        let (c, s) = (ctx.clone(), specs.clone());
        answers.push(
            bounded(args.concurrency, n, move |i| {
                let (c, s) = (c.clone(), s.clone());
                async move {
                    let o = ask(&c, &s[0], i).await;
                    c.done.fetch_add(1, Ordering::Relaxed);
                    o
                }
            })
            .await,
        );
    }
    let others = specs.len() - first;
    let (c, s) = (ctx.clone(), specs.clone());
    let flat = bounded(args.concurrency, n * others, move |j| {
        let (c, s) = (c.clone(), s.clone());
        async move {
            let o = ask(&c, &s[first + j / n], j % n).await;
            c.done.fetch_add(1, Ordering::Relaxed);
            o
        }
    })
    .await;
    let mut it = flat.into_iter();
    for _ in 0..others {
        answers.push(it.by_ref().take(n).collect());
    }

    // The reference of each example: its `expected`, else the baseline's answer.
    let references: Vec<Option<String>> = ctx
        .examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.expected
                .clone()
                .or_else(|| answers.first().and_then(|a| a[i].answer.clone()))
        })
        .collect();

    // Phase 3: the judge, for answers to examples whose metric is `judge`.
    if let Some(js) = &judge_spec {
        let mut jobs = Vec::new();
        for (t, per) in answers.iter().enumerate() {
            for (i, o) in per.iter().enumerate() {
                let self_reference = t == 0 && has_baseline && ctx.examples[i].expected.is_none();
                if metrics[i] == Metric::Judge
                    && !self_reference
                    && let (Some(a), Some(r)) = (&o.answer, &references[i])
                {
                    let prompt = judge::render(&rubric, &ctx.examples[i].question, r, a);
                    jobs.push((t, i, judge::request_body(&js.model, &prompt)));
                }
            }
        }
        let jobs = Arc::new(jobs);
        let judge_target = Arc::new(js.target.clone());
        let (c, jb) = (ctx.clone(), jobs.clone());
        let verdicts = bounded(args.concurrency, jobs.len(), move |k| {
            let (c, jb, jt) = (c.clone(), jb.clone(), judge_target.clone());
            async move {
                let body = jb[k].2.clone();
                let r = judge::call(
                    c.upstream(&jt),
                    Endpoint::ChatCompletions,
                    body,
                    &HeaderMap::new(),
                )
                .await
                .and_then(|called| judge::answer_text(&called.body))
                .and_then(|(text, _)| judge::parse_verdict(&text));
                c.done.fetch_add(1, Ordering::Relaxed);
                r
            }
        })
        .await;
        for ((t, i, _), v) in jobs.iter().zip(verdicts) {
            let o = &mut answers[*t][*i];
            match v {
                Ok(v) => {
                    o.judge_score = Some(v.score);
                    o.judge_reason = Some(v.reason);
                }
                Err(e) => o.judge_error = Some(e),
            }
        }
    }
    // Every call is done; the bar may still count judge calls that were never needed.
    ctx.done.store(total_calls, Ordering::Relaxed);
    if let Some(b) = bar {
        let _ = b.await;
    }
    let derived = meters.finish().await;

    // Scores, costs and summaries.
    let mut reports = Vec::with_capacity(specs.len());
    for (t, spec) in specs.iter().enumerate() {
        let self_reference_target = t == 0 && has_baseline;
        let per = &mut answers[t];
        let price = price_for(&rt, &derived, &spec.target, &spec.model);
        for (i, o) in per.iter_mut().enumerate() {
            if let Some((p, _)) = price {
                o.cost_usd = p.cost(o.tokens_in, o.tokens_out);
            }
            if o.error.is_some() {
                o.score = Some(0.0);
                continue;
            }
            let (Some(a), Some(r)) = (&o.answer, &references[i]) else {
                continue;
            };
            let own = self_reference_target && ctx.examples[i].expected.is_none();
            o.score = match metrics[i] {
                Metric::Exact => Some(score::exact(a, r, args.ignore_case)),
                Metric::Json => score::parse_json(r).map(|e| score::json(a, &e)),
                Metric::Label => Some(if score::label_of(a) == score::label_of(r) {
                    1.0
                } else {
                    0.0
                }),
                Metric::RougeL => Some(score::rouge_l(a, r)),
                Metric::Judge if own => Some(1.0),
                Metric::Judge => o.judge_score.map(|s| s / 10.0),
            };
        }
        reports.push(summarize(SummaryArgs {
            name: &spec.name,
            outcomes: per,
            metrics: &metrics,
            references: &references,
            derived: price.is_some_and(|(_, d)| d),
        }));
    }
    let baseline = has_baseline.then(|| reports[0].clone());
    let mut failed = false;
    for (t, r) in reports.iter_mut().enumerate() {
        if let Some(b) = &baseline {
            r.quality_vs_baseline = match (r.quality, b.quality) {
                (Some(q), Some(bq)) if bq > 0.0 => Some(q / bq),
                _ => None,
            };
            r.cost_vs_baseline = (b.cost_usd > 0.0).then(|| r.cost_usd / b.cost_usd);
        }
        if t == 0 && has_baseline {
            continue;
        }
        for g in &gates {
            let pass = g.check(r, baseline.as_ref());
            failed |= !pass;
            r.gates.push((g.expr.clone(), pass));
        }
    }
    let baseline_name = has_baseline.then(|| specs[0].name.as_str());
    if let Some(dir) = &args.out {
        let mut lines = Vec::new();
        let mut rows = Vec::new();
        for (t, spec) in specs.iter().enumerate() {
            for (i, o) in answers[t].iter().enumerate() {
                let ex = &ctx.examples[i];
                lines.push(report::example_line(
                    &spec.name,
                    &ex.id,
                    metrics[i].name(),
                    references[i].as_deref(),
                    o,
                ));
                rows.push(report::Row {
                    target: &spec.name,
                    id: &ex.id,
                    reference: references[i].as_deref(),
                    outcome: o,
                });
            }
        }
        let html = report::html(baseline_name, &reports, &rows);
        if let Err(e) = report::write_out(dir, &lines, &html) {
            return usage(format!("--out {e}"));
        }
    }
    if let Some(path) = &args.emit_labels {
        match emit_labels(path, &args, &specs, &ctx.examples, &answers) {
            Ok(w) => {
                let per: Vec<String> = w
                    .per_label
                    .iter()
                    .map(|(l, n)| format!("{l} {n}"))
                    .collect();
                eprintln!(
                    "labels: {} examples labelled ({}), {} with no target at score >= {} left out; written to {}",
                    w.labelled,
                    per.join(", "),
                    w.unlabelled,
                    args.label_threshold,
                    path.display()
                );
            }
            Err(e) => return usage(e),
        }
    }
    if args.json {
        println!("{}", report::document(baseline_name, &reports));
    } else {
        print!("{}", report::text(baseline_name, &reports));
    }
    drop(ctx);
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn emit_labels(
    path: &std::path::Path,
    args: &EvalArgs,
    specs: &[Spec],
    examples: &[Example],
    answers: &[Vec<Outcome>],
) -> Result<labels::Written, String> {
    let candidates: Vec<labels::Candidate<'_>> = specs
        .iter()
        .map(|s| labels::Candidate {
            name: &s.name,
            backend: &s.target.backend.name,
        })
        .collect();
    let names = labels::label_names(&candidates);
    let chosen = labels::choose(answers, examples.len(), args.label_threshold);
    let ids: Vec<&str> = examples.iter().map(|e| e.id.as_str()).collect();
    let requests: Vec<&serde_json::Map<String, Value>> =
        examples.iter().map(|e| &e.request).collect();
    labels::write(labels::EmitArgs {
        path,
        ids: &ids,
        requests: &requests,
        labels: &names,
        chosen: &chosen,
    })
}

/// The price of `model` on the target's backend: `[[prices]]`, else derived from
/// `gpu_hour_usd` and the throughput measured over the run (`true`: derived).
fn price_for(
    rt: &Runtime,
    derived: &throughput::Derived,
    t: &Target,
    model: &str,
) -> Option<(crate::config::governance::Price, bool)> {
    if let Some(p) = rt.governance.price(&t.backend.name, model) {
        return Some((p, false));
    }
    derived.price(&t.backend.name).map(|p| (p, true))
}

struct SummaryArgs<'a> {
    name: &'a str,
    outcomes: &'a [Outcome],
    metrics: &'a [Metric],
    references: &'a [Option<String>],
    derived: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(a: SummaryArgs<'_>) -> TargetReport {
    let o = a.outcomes;
    let scores: Vec<f64> = o.iter().filter_map(|x| x.score).collect();
    let mut lat: Vec<f64> = o
        .iter()
        .filter(|x| x.error.is_none())
        .map(|x| x.latency_ms)
        .collect();
    lat.sort_by(f64::total_cmp);
    let mut labels = Vec::new();
    let mut any_label = false;
    for (i, x) in o.iter().enumerate() {
        if a.metrics[i] != Metric::Label {
            continue;
        }
        any_label = true;
        if let (Some(ans), Some(r)) = (&x.answer, &a.references[i]) {
            labels.push((score::label_of(r), score::label_of(ans)));
        }
    }
    let (accuracy, macro_f1) = if any_label {
        let (acc, f1) = score::accuracy_macro_f1(&labels);
        (Some(acc), Some(f1))
    } else {
        (None, None)
    };
    let judge_items: Vec<&Outcome> = o
        .iter()
        .enumerate()
        .filter(|(i, x)| a.metrics[*i] == Metric::Judge && x.answer.is_some())
        .map(|(_, x)| x)
        .collect();
    let judged = a
        .metrics
        .contains(&Metric::Judge)
        .then_some(judge_items.len());
    TargetReport {
        target: a.name.to_string(),
        examples: o.len(),
        errors: o.iter().filter(|x| x.error.is_some()).count(),
        quality: (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64),
        accuracy,
        macro_f1,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        tokens_in: o.iter().map(|x| x.tokens_in).sum(),
        tokens_out: o.iter().map(|x| x.tokens_out).sum(),
        cost_usd: o.iter().map(|x| x.cost_usd).sum(),
        cost_derived: a.derived,
        judged,
        judge_errors: judge_items
            .iter()
            .filter(|x| x.judge_error.is_some())
            .count(),
        ..TargetReport::default()
    }
}

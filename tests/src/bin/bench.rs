//! Gateway benchmark: the same load sent directly to the mock upstream and through the
//! gateway, so the difference is what the gateway adds.
//!
//! ```text
//! cargo run --release -p switchyard-tests --bin bench -- [--duration 5] [--concurrency 1,8,64]
//!     [--rates 2000,5000] [--stream-concurrency 8] [--config-extra FILE]
//!     [--otlp-sink grpc|http] [--gateway-log warn] [--tail] [--governance]
//!     [--interleave [--b-extra FILE] [--b-gateway PATH] [--b-cache] [--sink-for a|b|both]
//!     [--slice 0.5]]
//! ```
//!
//! It starts `mock-openai` and `switchyard` (release builds) as separate processes, and
//! drives them from this process over keep-alive HTTP/1.1 connections (one per concurrent
//! client, raw hyper connections: no pool overhead in the load generator). Reported:
//! p50/p99 latency direct and through the gateway and the difference, requests/s, the
//! gateway's resident memory, and for streams the added time to first byte and whether the
//! gateway coalesced chunks.
//!
//! `--interleave` compares two gateways (A, and B with more config or another build) on
//! the closed-loop phases: it runs direct, A and B in turn, half a second each, for as many
//! rounds as `--duration` allows, so that the speed changes of a small shared machine
//! (which move whole runs by 10-20 %) fall on all three alike; it prints each one's figures
//! and B's requests/s relative to A's, round by round.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use switchyard_tests::otlp::{OtlpReceiver, Protocol};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
struct Args {
    /// Seconds of measurement per phase (after a 1 s warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Closed-loop concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    concurrency: Vec<usize>,
    /// Open-loop request rates (requests/s; 0 skips the open-loop phases).
    #[arg(long, value_delimiter = ',', default_value = "2000,5000")]
    rates: Vec<u64>,
    /// Concurrent streams for the streaming phase (0 skips it).
    #[arg(long, default_value_t = 8)]
    stream_concurrency: usize,
    /// TOML appended to the gateway's config (plugins, telemetry, ...).
    #[arg(long)]
    config_extra: Option<PathBuf>,
    /// Worker threads for the mock upstream.
    #[arg(long, default_value_t = 1)]
    mock_threads: usize,
    /// Enable governance: a real virtual key with per-key and per-team rate limits and
    /// budgets, prices, and the ledger (every request written to the store). With
    /// `--interleave`, B gets the same key (into its PostgreSQL store if `--b-extra` names one).
    #[arg(long)]
    governance: bool,
    /// Skip the direct (no gateway) runs.
    #[arg(long)]
    gateway_only: bool,
    /// Start an in-process OTLP receiver (gRPC or HTTP) that counts and discards spans, and
    /// trace every request to it (`[telemetry]` with sample_ratio 1.0).
    #[arg(long, value_name = "grpc|http")]
    otlp_sink: Option<String>,
    /// The gateway's log filter (`SWITCHYARD_LOG`); `info` includes the access log.
    #[arg(long, default_value = "warn")]
    gateway_log: String,
    /// Compare two gateways in one run: a second gateway, B, runs with the first one's config
    /// plus `--b-extra` and the OTLP sink (`--otlp-sink` then applies to B only), and the
    /// closed-loop phases alternate between direct, A and B in short slices, so the
    /// machine's changes of speed hit all of them alike. Skips the open-loop and stream phases.
    #[arg(long)]
    interleave: bool,
    /// TOML appended to gateway B's config with `--interleave`.
    #[arg(long, value_name = "FILE")]
    b_extra: Option<PathBuf>,
    /// With `--interleave`: gateway B's route has the response cache on
    /// (`cache = { ttl_secs = 3600, deterministic_only = false }`), so after its first request
    /// B answers every request from the cache while A goes to the (zero-latency) mock: the
    /// hit path against the miss path.
    #[arg(long)]
    b_cache: bool,
    /// Gateway B's binary with `--interleave` (to compare two builds), instead of A's.
    #[arg(long, value_name = "PATH")]
    b_gateway: Option<PathBuf>,
    /// Which gateways `--otlp-sink` traces with `--interleave`.
    #[arg(long, value_name = "a|b|both", default_value = "b")]
    sink_for: String,
    /// Measured seconds per slice with `--interleave` (each slice starts with 0.1 s unmeasured).
    #[arg(long, default_value_t = 0.5)]
    slice: f64,
    /// Print each closed-loop phase's latency distribution (p75 to p99.9 and the maximum)
    /// under its row: where a p99 comes from, a broad tail or a few long stalls.
    #[arg(long)]
    tail: bool,
}

/// `--tail`, set once in `main`.
static TAIL: AtomicBool = AtomicBool::new(false);
/// The mock upstream's process, whose CPU time each closed-loop slice also measures, so the
/// CPU line can say how busy the whole machine was (set once in `main`).
static MOCK_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

const BODY: &str = r#"{"model":"bench","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the capital of France? Answer in one word."}],"temperature":0.2,"max_tokens":16}"#;

struct Proc {
    child: Child,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_ready(mut cmd: Command, prefix: &str) -> Proc {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(Stdio::piped())
        // Inherited: a process that fails to start says why (log level is `--gateway-log`).
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(rest) = l.strip_prefix(prefix) {
                    break rest.trim_start_matches("http://").to_string();
                }
            }
            _ => panic!("{prefix}: process exited before it was ready"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Proc { child, addr }
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn connect(addr: &str) -> SendRequest<Full<Bytes>> {
    try_connect(addr).await.expect("connect")
}

async fn try_connect(addr: &str) -> Option<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(send)
}

/// The `Authorization` header sent (a real key with `--governance`).
static AUTH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn request(addr: &str, extra: Option<(&str, &str)>, body: &'static str) -> Request<Full<Bytes>> {
    let mut b = Request::post("/v1/chat/completions")
        .header("host", addr)
        .header("content-type", "application/json")
        .header(
            "authorization",
            AUTH.get().map_or("Bearer sk-bench", String::as_str),
        );
    if let Some((k, v)) = extra {
        b = b.header(k, v);
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request")
}

#[derive(Default, Clone)]
struct Stats {
    latencies_us: Vec<u32>,
    errors: u64,
    elapsed: Duration,
    /// CPU time (user + system) the measured process used during the measured window.
    cpu: Option<Duration>,
    /// CPU time this process (the load generator, and the OTLP sink if any) used then.
    own_cpu: Option<Duration>,
    /// CPU time the mock upstream used then.
    mock_cpu: Option<Duration>,
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may contain spaces: utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }
    fn rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// How much of the machine's CPU `used` is over `elapsed` wall time, in percent.
fn busy(used: Duration, elapsed: Duration) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    100.0 * used.as_secs_f64() / (elapsed.as_secs_f64() * cores as f64).max(f64::MIN_POSITIVE)
}

/// One line of the results table: requests/s, p50, p99, errors.
fn print_row(label: &str, s: &Stats) {
    println!(
        "{:<22} {:>10.0} {:>10.3} {:>10.3} {:>8}",
        label,
        s.rps(),
        s.pct(0.5),
        s.pct(0.99),
        s.errors
    );
    if TAIL.load(Ordering::Relaxed) && !s.latencies_us.is_empty() {
        let q = [0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999];
        let parts: Vec<String> = q
            .iter()
            .map(|&p| format!("p{} {:.3}", p * 100.0, s.pct(p)))
            .collect();
        println!(
            "{:<22} {}, max {:.3}",
            "  tail ms",
            parts.join(", "),
            s.pct(1.0)
        );
    }
}

/// What the gateway added to the direct latency, p50 and p99.
fn print_added(label: &str, via: &Stats, direct: &Stats) {
    println!(
        "{:<22} {:>10} {:>10.3} {:>10.3}",
        label,
        "",
        via.pct(0.5) - direct.pct(0.5),
        via.pct(0.99) - direct.pct(0.99)
    );
}

/// Closed loop: `conc` clients each send the next request as soon as the last answered.
async fn closed_loop(
    addr: &str,
    conc: usize,
    warmup: Duration,
    dur: Duration,
    cpu_of: Option<u32>,
) -> Stats {
    let mut conns = Vec::with_capacity(conc);
    for _ in 0..conc {
        conns.push(connect(addr).await);
    }
    run_slice(conns, addr, warmup, dur, cpu_of).await.1
}

type Conn = SendRequest<Full<Bytes>>;

/// Drive `conns` in a closed loop for `settle` (not measured) and then `dur` (measured);
/// hands the connections back for the next slice. A broken connection is replaced.
async fn run_slice(
    conns: Vec<Conn>,
    addr: &str,
    settle: Duration,
    dur: Duration,
    cpu_of: Option<u32>,
) -> (Vec<Conn>, Stats) {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Room for the latencies of a fast client, so measuring does not reallocate.
    let room = ((dur.as_secs_f64() * 25_000.0) as usize).clamp(1024, 200_000);
    let mut tasks = Vec::with_capacity(conns.len());
    for mut send in conns {
        let (addr, measuring, stop) = (addr.to_string(), measuring.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(room);
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = match send.ready().await {
                    Ok(()) => match send.send_request(request(&addr, None, BODY)).await {
                        Ok(resp) => {
                            let ok = resp.status().is_success();
                            ok && resp.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    },
                    Err(_) => match try_connect(&addr).await {
                        Some(fresh) => {
                            send = fresh;
                            false
                        }
                        // The server is gone: count it and stop this client.
                        None => {
                            errors += 1;
                            break;
                        }
                    },
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        lat.push(t.elapsed().as_micros() as u32);
                    } else {
                        errors += 1;
                    }
                }
            }
            (send, lat, errors)
        }));
    }
    tokio::time::sleep(settle).await;
    measuring.store(true, Ordering::Relaxed);
    let cpu_before = cpu_of.and_then(cpu_time);
    let own_before = cpu_time(std::process::id());
    let mock_before = MOCK_PID.get().and_then(|&p| cpu_time(p));
    let start = Instant::now();
    tokio::time::sleep(dur).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let cpu_after = cpu_of.and_then(cpu_time);
    let own_after = cpu_time(std::process::id());
    let mock_after = MOCK_PID.get().and_then(|&p| cpu_time(p));
    stop.store(true, Ordering::Relaxed);
    let mut stats = Stats {
        elapsed,
        cpu: cpu_before.zip(cpu_after).map(|(b, a)| a.saturating_sub(b)),
        own_cpu: own_before.zip(own_after).map(|(b, a)| a.saturating_sub(b)),
        mock_cpu: mock_before
            .zip(mock_after)
            .map(|(b, a)| a.saturating_sub(b)),
        ..Default::default()
    };
    let mut conns = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (send, lat, errors) = t.await.expect("task");
        conns.push(send);
        stats.latencies_us.extend(lat);
        stats.errors += errors;
    }
    stats.latencies_us.sort_unstable();
    (conns, stats)
}

/// One of the systems `--interleave` compares.
struct Target<'a> {
    label: &'static str,
    addr: &'a str,
    /// The gateway's process, whose CPU time is measured (none for direct).
    pid: Option<u32>,
}

/// `--interleave`: the closed loop at `conc`, in slices of `slice` seconds that rotate over
/// `targets`, `total` measured seconds each; prints each target's figures and how B compares
/// with A slice by slice (the last two targets are A and B).
async fn interleaved(
    targets: &[Target<'_>],
    conc: usize,
    slice: Duration,
    total: Duration,
    sink_cpu: bool,
) {
    let settle = Duration::from_millis(100);
    let rounds = ((total.as_secs_f64() / slice.as_secs_f64()).round() as usize).max(1);
    let mut conns = Vec::with_capacity(targets.len());
    for t in targets {
        let mut v = Vec::with_capacity(conc);
        for _ in 0..conc {
            v.push(connect(t.addr).await);
        }
        // Warm-up.
        let (v, _) = run_slice(v, t.addr, Duration::from_secs(1), Duration::ZERO, None).await;
        conns.push(v);
    }
    let mut all: Vec<Stats> = targets.iter().map(|_| Stats::default()).collect();
    let mut cpu: Vec<Duration> = vec![Duration::ZERO; targets.len()];
    let mut own_cpu: Vec<Duration> = vec![Duration::ZERO; targets.len()];
    let mut mock_cpu: Vec<Duration> = vec![Duration::ZERO; targets.len()];
    let mut per_round: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); targets.len()];
    for r in 0..rounds {
        for k in 0..targets.len() {
            let i = (r + k) % targets.len();
            let t = &targets[i];
            let (v, st) =
                run_slice(std::mem::take(&mut conns[i]), t.addr, settle, slice, t.pid).await;
            conns[i] = v;
            per_round[i].push(st.rps());
            cpu[i] += st.cpu.unwrap_or_default();
            own_cpu[i] += st.own_cpu.unwrap_or_default();
            mock_cpu[i] += st.mock_cpu.unwrap_or_default();
            let a = &mut all[i];
            a.latencies_us.extend(st.latencies_us);
            a.errors += st.errors;
            a.elapsed += st.elapsed;
        }
    }
    println!(
        "interleaved c={conc}: {rounds} rounds, each target {:.1} s per round (+0.1 s unmeasured), order rotated",
        slice.as_secs_f64()
    );
    for (i, t) in targets.iter().enumerate() {
        let a = &mut all[i];
        a.latencies_us.sort_unstable();
        print_row(&format!("{} c={conc}", t.label), a);
        if !a.latencies_us.is_empty() {
            let per = |d: Duration| d.as_secs_f64() * 1e6 / a.latencies_us.len() as f64;
            let gateway = if t.pid.is_some() {
                format!("gateway {:.1}, ", per(cpu[i]))
            } else {
                String::new()
            };
            println!(
                "{:<22} {gateway}load generator{} {:.1}, mock {:.1} µs/request; machine {:.0} % busy",
                "  CPU",
                if sink_cpu { " + sink" } else { "" },
                per(own_cpu[i]),
                per(mock_cpu[i]),
                busy(cpu[i] + own_cpu[i] + mock_cpu[i], a.elapsed)
            );
        }
    }
    let n = targets.len();
    if n == 3 {
        let d = &all[0];
        for (name, g) in [("A", &all[1]), ("B", &all[2])] {
            print_added(&format!("added {name} c={conc}"), g, d);
        }
    }
    let mut ratios: Vec<f64> = per_round[n - 1]
        .iter()
        .zip(&per_round[n - 2])
        .map(|(b, a)| b / a)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let q = |p: f64| ratios[((ratios.len() - 1) as f64 * p).round() as usize];
    println!(
        "B/A RPS c={conc}: per round median {:.3} (quartiles {:.3}-{:.3}), all slices {:.3}",
        q(0.5),
        q(0.25),
        q(0.75),
        all[n - 1].rps() / all[n - 2].rps()
    );
}

/// Open loop: requests are scheduled at a fixed rate; latency counts from the scheduled
/// time, so a stalled server is charged for the requests it delayed.
async fn open_loop(addr: &str, rate: u64, dur: Duration) -> Stats {
    let conns = 128;
    let (tx, rx) = async_channel_pair(conns);
    for _ in 0..conns {
        tx.send(connect(addr).await).await.ok();
    }
    let n = (rate as f64 * dur.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled).await;
        let (tx, rx, addr) = (tx.clone(), rx.clone(), addr.to_string());
        tasks.push(tokio::spawn(async move {
            let mut send = rx.recv().await.expect("connection");
            let ok = match send.ready().await {
                Ok(()) => match send.send_request(request(&addr, None, BODY)).await {
                    Ok(resp) => resp.into_body().collect().await.is_ok(),
                    Err(_) => false,
                },
                Err(_) => false,
            };
            let lat = scheduled.elapsed();
            let _ = tx.send(send).await;
            (ok, lat)
        }));
    }
    let mut stats = Stats::default();
    for t in tasks {
        let (ok, lat) = t.await.expect("task");
        if ok {
            stats.latencies_us.push(lat.as_micros() as u32);
        } else {
            stats.errors += 1;
        }
    }
    stats.elapsed = start.elapsed();
    stats.latencies_us.sort_unstable();
    stats
}

type Pool = tokio::sync::mpsc::Sender<SendRequest<Full<Bytes>>>;

/// An mpmc channel of idle connections (tokio's mpsc receiver behind a mutex).
fn async_channel_pair(cap: usize) -> (Pool, Arc<PoolRx>) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap);
    (tx, Arc::new(PoolRx(tokio::sync::Mutex::new(rx))))
}

struct PoolRx(tokio::sync::Mutex<tokio::sync::mpsc::Receiver<SendRequest<Full<Bytes>>>>);

impl PoolRx {
    async fn recv(&self) -> Option<SendRequest<Full<Bytes>>> {
        self.0.lock().await.recv().await
    }
}

#[derive(Default)]
struct StreamStats {
    ttfb_us: Vec<u32>,
    responses: u64,
    coalesced: u64,
    errors: u64,
}

/// Streams: time to first byte, and whether each event arrived in its own frame.
async fn streams(addr: &str, conc: usize, dur: Duration) -> StreamStats {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let body: &'static str = r#"{"model":"bench","stream":true,"messages":[{"role":"user","content":"Tell me a story."}]}"#;
    for _ in 0..conc {
        let mut send = connect(addr).await;
        let (addr, stop) = (addr.to_string(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = StreamStats::default();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if send.ready().await.is_err() {
                    s.errors += 1;
                    break;
                }
                let resp = match send
                    .send_request(request(
                        &addr,
                        Some(("x-mock", "chunks=20,delay_ms=2")),
                        body,
                    ))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        s.errors += 1;
                        continue;
                    }
                };
                let mut body = resp.into_body();
                let mut frames = 0;
                let mut events = 0;
                let mut first = None;
                while let Some(f) = body.frame().await {
                    let Ok(f) = f else {
                        s.errors += 1;
                        break;
                    };
                    if let Ok(d) = f.into_data() {
                        first.get_or_insert_with(|| t.elapsed());
                        frames += 1;
                        events += memchr::memmem::find_iter(&d, b"\n\n").count();
                    }
                }
                if let Some(f) = first {
                    s.ttfb_us.push(f.as_micros() as u32);
                }
                s.responses += 1;
                if frames < events {
                    s.coalesced += 1;
                }
            }
            s
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = StreamStats::default();
    for t in tasks {
        let s = t.await.expect("task");
        all.ttfb_us.extend(s.ttfb_us);
        all.responses += s.responses;
        all.coalesced += s.coalesced;
        all.errors += s.errors;
    }
    all.ttfb_us.sort_unstable();
    all
}

fn pct(v: &[u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    f64::from(v[((v.len() as f64 - 1.0) * p).round() as usize]) / 1000.0
}

/// A `--config-extra` file's TOML; `{workspace}` in it names this checkout (the gateway
/// runs in a temporary folder).
fn extra_toml(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let root = switchyard_tests::workspace_root();
    format!(
        "\n{}",
        text.replace("{workspace}", &root.display().to_string())
    )
}

fn start_gateway(bin: &std::path::Path, dir: &std::path::Path, cfg: &str, log: &str) -> Proc {
    let cfg_path = dir.join("bench.toml");
    std::fs::write(&cfg_path, cfg).expect("write config");
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config"])
        .arg(&cfg_path)
        // The store (ledger) lives with the config, not in the caller's folder.
        .current_dir(dir)
        .env("SWITCHYARD_LOG", log);
    spawn_ready(cmd, "switchyard listening on ")
}

/// Give gateway B the virtual key created in A's store, so that both gateways of
/// `--interleave --governance` answer the same `Authorization`: a copy of A's SQLite store,
/// or, when B's config names a PostgreSQL store (`[state] postgres`), A's store migrated
/// into it (which must be empty).
fn share_key(bin: &std::path::Path, a: &std::path::Path, b: &std::path::Path, cfg_b: &str) {
    let store = a.join("switchyard.db");
    let parsed: toml::Table = cfg_b.parse().expect("gateway B's config is TOML");
    let state = parsed.get("state").and_then(toml::Value::as_table);
    let url = state
        .and_then(|s| s.get("postgres"))
        .and_then(toml::Value::as_str);
    let Some(url) = url else {
        std::fs::copy(&store, b.join("switchyard.db")).expect("copy A's store for B");
        return;
    };
    let mut cmd = Command::new(bin);
    cmd.args(["state", "migrate", "--from"])
        .arg(&store)
        .args(["--to", url]);
    if let Some(var) = state
        .and_then(|s| s.get("postgres_password_env"))
        .and_then(toml::Value::as_str)
    {
        cmd.args(["--password-env", var]);
    }
    let out = cmd.output().expect("switchyard state migrate");
    assert!(
        out.status.success(),
        "switchyard state migrate into B's PostgreSQL failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("gateway B: A's key migrated into {url}");
}

/// Why the numbers given cannot be measured, if they cannot (clap checked their types).
fn check_numbers(args: &Args) -> Result<(), String> {
    let seconds = |name: &str, v: f64| {
        if v.is_finite() && v > 0.0 && v < 1e6 {
            Ok(())
        } else {
            Err(format!("--{name}: expected seconds above 0, got {v}"))
        }
    };
    seconds("duration", args.duration)?;
    seconds("slice", args.slice)?;
    if args.concurrency.contains(&0) {
        return Err("--concurrency: each level must be at least 1 client".into());
    }
    Ok(())
}

fn main() {
    let mut args = Args::parse();
    if let Err(e) = check_numbers(&args) {
        eprintln!("{e}");
        std::process::exit(2);
    }
    args.rates.retain(|&r| r > 0);
    if (args.b_extra.is_some() || args.b_gateway.is_some() || args.b_cache) && !args.interleave {
        eprintln!("--b-extra, --b-gateway and --b-cache configure gateway B of --interleave");
        std::process::exit(2);
    }
    let (sink_a, sink_b) = match (args.interleave, args.sink_for.as_str()) {
        (false, _) | (true, "a") => (true, false),
        (true, "b") => (false, true),
        (true, "both") => (true, true),
        (_, other) => {
            eprintln!("--sink-for: expected a, b or both, got {other}");
            std::process::exit(2);
        }
    };
    let sink_protocol = match args.otlp_sink.as_deref() {
        None => None,
        Some("grpc") => Some(Protocol::Grpc),
        Some("http") => Some(Protocol::Http),
        Some(other) => {
            eprintln!("--otlp-sink: expected grpc or http, got {other}");
            std::process::exit(2);
        }
    };
    let mock_bin = switchyard_tests::binary("switchyard-tests", "mock-openai");
    let gw_bin = switchyard_tests::binary("switchyard", "switchyard");

    let mut mock_cmd = Command::new(mock_bin);
    // Streams get 20 chunks 2 ms apart from the mock's own default, so the gateway need not
    // forward the `x-mock` header (its `forward_headers` default does not).
    mock_cmd.args([
        "--threads",
        &args.mock_threads.to_string(),
        "--behaviour",
        "chunks=20,delay_ms=2",
    ]);
    let mock = spawn_ready(mock_cmd, "mock-openai listening on ");
    let _ = MOCK_PID.set(mock.child.id());
    TAIL.store(args.tail, Ordering::Relaxed);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[backends]]\nname = \"mock\"\nurl = \"http://{}/v1\"\n\n[[routes]]\nmodel = \"bench\"\ntargets = [{{ backend = \"mock\", model = \"bench-model\" }}]\n",
        mock.addr
    );
    if let Some(extra) = &args.config_extra {
        cfg.push_str(&extra_toml(extra));
    }
    if args.governance {
        cfg.push_str(
            "\n[[prices]]\nbackend = \"mock\"\nmodel = \"*\"\ninput_per_1m = 0.15\noutput_per_1m = 0.60\n\n[[teams]]\nname = \"bench\"\nrpm = 1000000000\ntpm = 1000000000000\nbudget_daily = 1000000000.0\nbudget_monthly = 1000000000.0\n",
        );
    }
    // The sink runs on its own runtime thread, like a collector on the same machine would.
    let sink_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let sink = sink_protocol.map(|p| sink_rt.block_on(OtlpReceiver::start_counting(p)));
    let mut cfg_b = cfg.clone();
    if let Some(sink) = &sink {
        let traced = format!("\n{}", sink.config(1.0, ""));
        if sink_a {
            cfg.push_str(&traced);
        }
        if sink_b {
            cfg_b.push_str(&traced);
        }
    }
    if let Some(extra) = &args.b_extra {
        cfg_b.push_str(&extra_toml(extra));
    }
    if args.b_cache {
        let route = "model = \"bench-model\" }]\n";
        cfg_b = cfg_b.replacen(
            route,
            &format!("{route}cache = {{ ttl_secs = 3600, deterministic_only = false }}\n"),
            1,
        );
        assert!(
            cfg_b.contains("cache = {"),
            "the bench route was not found in B's config"
        );
    }
    let cfg_path = dir.path().join("bench.toml");
    if args.governance {
        std::fs::write(&cfg_path, &cfg).expect("write config");
        let out = Command::new(&gw_bin)
            .args(["keys", "create", "--team", "bench", "--rpm", "1000000000"])
            .args(["--tpm", "1000000000000", "--budget-daily", "1000000000"])
            .args(["--budget-monthly", "1000000000", "--config"])
            .arg(&cfg_path)
            .current_dir(dir.path())
            .output()
            .expect("switchyard keys create");
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(key.starts_with("sk-sy-"), "keys create failed");
        let _ = AUTH.set(format!("Bearer {key}"));
        println!("governance: on (key + team limits, budgets, prices, ledger)");
    }
    // Gateway B of `--interleave`, in a folder (and so with a ledger) of its own.
    let dir_b = tempfile::tempdir().expect("tempdir");
    if args.interleave && args.governance {
        share_key(&gw_bin, dir.path(), dir_b.path(), &cfg_b);
    }
    let gw = start_gateway(&gw_bin, dir.path(), &cfg, &args.gateway_log);
    let gw_pid = gw.child.id();
    let gw_b = args.interleave.then(|| {
        let bin = args.b_gateway.as_ref().unwrap_or(&gw_bin);
        start_gateway(bin, dir_b.path(), &cfg_b, &args.gateway_log)
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dur = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs(1);
    println!(
        "switchyard gateway benchmark ({} cores; load generator, gateway and mock on this machine)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>8}",
        "phase", "RPS", "p50 ms", "p99 ms", "errors"
    );
    rt.block_on(async {
        if let Some(b) = &gw_b {
            let mut targets = Vec::new();
            if !args.gateway_only {
                targets.push(Target {
                    label: "direct",
                    addr: &mock.addr,
                    pid: None,
                });
            }
            targets.push(Target {
                label: "gateway A",
                addr: &gw.addr,
                pid: Some(gw_pid),
            });
            targets.push(Target {
                label: "gateway B",
                addr: &b.addr,
                pid: Some(b.child.id()),
            });
            let traced = |on: bool| match (&sink, on) {
                (Some(s), true) => format!(" + OTLP export ({:?}, sampling 1.0)", s.protocol),
                _ => String::new(),
            };
            println!("A = the gateway{}", traced(sink_a));
            println!(
                "B = {}{}{}{}",
                args.b_gateway
                    .as_ref()
                    .map_or("the same gateway".to_string(), |p| p.display().to_string()),
                traced(sink_b),
                args.b_extra
                    .as_ref()
                    .map_or(String::new(), |f| format!(" + {}", f.display())),
                if args.b_cache {
                    " + the route's response cache (every request after the first a hit)"
                } else {
                    ""
                }
            );
            for &c in &args.concurrency {
                let slice = Duration::from_secs_f64(args.slice);
                interleaved(&targets, c, slice, dur, sink.is_some()).await;
            }
            return;
        }
        for &c in &args.concurrency {
            let direct = if args.gateway_only {
                None
            } else {
                Some(closed_loop(&mock.addr, c, warmup, dur, None).await)
            };
            let via = closed_loop(&gw.addr, c, warmup, dur, Some(gw_pid)).await;
            if let Some(d) = &direct {
                print_row(&format!("direct  c={c}"), d);
            }
            print_row(&format!("gateway c={c}"), &via);
            if let Some(cpu) = via.cpu
                && !via.latencies_us.is_empty()
            {
                let per = |d: Duration| d.as_secs_f64() * 1e6 / via.latencies_us.len() as f64;
                let (own, mock) = (
                    via.own_cpu.unwrap_or_default(),
                    via.mock_cpu.unwrap_or_default(),
                );
                println!(
                    "{:<22} {:>10.1} µs/request (load generator {:.1}, mock {:.1}; machine {:.0} % busy)",
                    format!("gateway CPU c={c}"),
                    per(cpu),
                    per(own),
                    per(mock),
                    busy(cpu + own + mock, via.elapsed)
                );
            }
            if let Some(d) = &direct {
                print_added(&format!("added   c={c}"), &via, d);
            }
        }
        for &r in &args.rates {
            let direct = if args.gateway_only {
                None
            } else {
                Some(open_loop(&mock.addr, r, dur).await)
            };
            let via = open_loop(&gw.addr, r, dur).await;
            if let Some(d) = &direct {
                print_row(&format!("direct  {r}/s"), d);
            }
            print_row(&format!("gateway {r}/s"), &via);
            if let Some(d) = &direct {
                print_added(&format!("added   {r}/s"), &via, d);
            }
        }
        if args.stream_concurrency > 0 {
            let sc = args.stream_concurrency;
            let d = streams(&mock.addr, sc, dur).await;
            let g = streams(&gw.addr, sc, dur).await;
            println!("streams c={sc} (20 chunks, 2 ms apart):");
            println!(
                "  TTFB p50/p99 ms: direct {:.3}/{:.3}, gateway {:.3}/{:.3}, added {:.3}/{:.3}",
                pct(&d.ttfb_us, 0.5),
                pct(&d.ttfb_us, 0.99),
                pct(&g.ttfb_us, 0.5),
                pct(&g.ttfb_us, 0.99),
                pct(&g.ttfb_us, 0.5) - pct(&d.ttfb_us, 0.5),
                pct(&g.ttfb_us, 0.99) - pct(&d.ttfb_us, 0.99)
            );
            println!(
                "  responses: direct {} ({} coalesced), gateway {} ({} coalesced), errors {}",
                d.responses,
                d.coalesced,
                g.responses,
                g.coalesced,
                d.errors + g.errors
            );
        }
    });
    if let Some(sink) = &sink {
        // Let the last batch arrive before reading the count.
        std::thread::sleep(Duration::from_millis(1500));
        let spans = sink.span_count();
        println!(
            "OTLP sink ({:?}): {} spans received in {} export calls, {} bytes a span",
            sink.protocol,
            spans,
            sink.export_requests(),
            sink.bytes_received() / spans.max(1)
        );
    }
    let (rss, hwm) = rss_kib(gw_pid);
    println!(
        "gateway memory: RSS {:.1} MiB, peak {:.1} MiB",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}

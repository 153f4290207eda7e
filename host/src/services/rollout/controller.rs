//! The rollout controller: a thread of its own that, every [`TICK`], turns the request
//! path's counters into each step's window, evaluates the guards, and moves the weight.
//!
//! ```text
//!            step_secs held, min_requests seen, every guard ok
//!   running(step i) ──────────────────────────────────────────► running(step i+1) … complete
//!      │  ▲                                                         (weight 100)
//! pause│  │resume (a new window)
//!      ▼  │
//!   paused ── any guard breached, once min_requests is reached ──► rolled_back (weight 0)
//!            (checked every tick, running or paused)
//! ```
//! `promote` completes at once, `abort` rolls back at once. Every transition is a history
//! row in the store, a log line, a count in `switchyard_rollout_transitions_total` and,
//! with `rollout.webhook`, a JSON POST retried in the background.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::json;

use super::guard::{self, ArmStats, Quality, QualityQuery};
use super::shared;
use super::state::{self, HistoryEntry, Record, State, WindowRecord};
use super::{ArmSnapshot, Counts, Live, Rollouts};
use crate::base::clock::now_ms;
use crate::config::rollout::Rollout;
use crate::config::state::StoreTarget;
use crate::config::{Route, Target};
use crate::services::Services;
use crate::services::governance::store::{Store, Write};

/// How often the controller looks at the counters.
pub const TICK: Duration = Duration::from_millis(200);
/// How often the store's quality signals (pairs, feedback) are read again.
const QUALITY_EVERY: Duration = Duration::from_secs(1);
/// How often a running step's counts are saved (a restart loses at most this much).
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// An operator's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "promote" => Action::Promote,
            "abort" => Action::Abort,
            _ => return None,
        })
    }
}

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("route \"{0}\" has no rollout in the config in force")]
    NoRollout(String),
    #[error(
        "this replica follows the rollouts another replica decides (PostgreSQL store): send \
         the action to the replica holding the rollout lease"
    )]
    NotDeciding,
    #[error("the rollout of route \"{route}\" is {state}: cannot {action}")]
    WrongState {
        route: String,
        state: &'static str,
        action: &'static str,
    },
}

/// One route's rollout, as the controller runs it.
pub struct Run {
    rollout: Arc<Rollout>,
    live: Arc<Live>,
    pub(crate) rec: Record,
    pub(crate) history: Vec<HistoryEntry>,
    /// The counters when the step's window began (in this process).
    baseline: [ArmSnapshot; 2],
    /// Counts of the window from before a restart.
    carried: [Counts; 2],
    quality: Quality,
    quality_at: Option<Instant>,
    saved_at: Instant,
}

/// Where a transition's effects go.
struct Env<'a> {
    store: Option<&'a Store>,
    rollouts: &'a Rollouts,
}

fn candidate_label(t: &Target) -> String {
    match &t.model {
        Some(m) => format!("{}/{m}", t.backend.name),
        None => t.backend.name.to_string(),
    }
}

/// Percent to hundredths of a percent.
fn bp(percent: f64) -> u32 {
    (percent * 100.0).round().clamp(0.0, 10_000.0) as u32
}

fn stats(window: &ArmSnapshot, carried: Counts) -> ArmStats {
    let c = window.counts.plus(carried);
    ArmStats {
        requests: c.requests,
        errors: c.errors,
        rejects: c.rejects,
        p99_ms: window.p99_ms(),
    }
}

/// Reads a route's stored rollout and its history (from either backend).
type StoredLoader<'a> = dyn FnMut(&str) -> Option<(Record, Vec<HistoryEntry>)> + 'a;
/// Reads the candidate's quality signals from the store (either backend).
type QualityReader<'a> =
    dyn FnMut(&QualityQuery<'_>, &crate::config::rollout::Guards) -> Quality + 'a;

/// Queue a rollout's row (and a transition) for the store, in its backend's dialect.
fn save(store: &Store, rec: Record, entry: Option<HistoryEntry>) {
    if store.is_postgres() {
        store.submit(Write::Pg(Box::new(move |tx| {
            shared::save(tx, &rec)?;
            match &entry {
                Some(h) => shared::append(tx, &rec.route, &rec.fingerprint, h),
                None => Ok(()),
            }
        })));
    } else {
        store.submit(Write::Other(Box::new(move |c| {
            state::save(c, &rec)?;
            match &entry {
                Some(h) => state::append(c, &rec.route, &rec.fingerprint, h),
                None => Ok(()),
            }
        })));
    }
}

impl Run {
    /// Resume the stored rollout when it is this one (same fingerprint), else start anew.
    fn start(
        route: &Arc<str>,
        rollout: Arc<Rollout>,
        stored: Option<(Record, Vec<HistoryEntry>)>,
        env: &Env<'_>,
    ) -> Run {
        let resumed = stored.filter(|(r, _)| *r.fingerprint == *rollout.fingerprint);
        let now = now_ms();
        let fresh = resumed.is_none();
        let (rec, history) = resumed.unwrap_or_else(|| {
            (
                Record {
                    route: route.to_string(),
                    fingerprint: rollout.fingerprint.to_string(),
                    candidate: candidate_label(&rollout.candidate),
                    steps: rollout.steps.clone(),
                    state: State::Running,
                    step: 0,
                    weight: 0.0,
                    started_ms: now,
                    step_started_ms: now,
                    updated_ms: now,
                    window: WindowRecord::default(),
                    guards: Vec::new(),
                    reason: None,
                },
                Vec::new(),
            )
        });
        let live = Arc::new(Live::new(
            route.clone(),
            rollout.fingerprint.clone(),
            bp(rec.weight),
        ));
        let carried = [
            WindowRecord::counts(&rec.window.candidate),
            WindowRecord::counts(&rec.window.incumbent),
        ];
        let mut run = Run {
            baseline: live.snapshot(),
            rollout,
            live,
            rec,
            history,
            carried,
            quality: Quality::default(),
            quality_at: None,
            saved_at: Instant::now(),
        };
        if fresh {
            let steps: Vec<String> = run.rec.steps.iter().map(|s| format!("{s}%")).collect();
            let reason = format!(
                "rollout started: {} in steps {}",
                run.rec.candidate,
                steps.join(", ")
            );
            run.go(State::Running, 0, reason, env);
        } else {
            tracing::info!(
                route = %run.rec.route,
                state = run.rec.state.as_str(),
                step = run.rec.step + 1,
                weight = run.rec.weight,
                "rollout resumed from the store"
            );
        }
        run
    }

    /// Where the rollout stands, as history names it: `5%`, `paused`, `complete`, ...
    fn position(&self) -> String {
        match self.rec.state {
            State::Running => format!("{}%", self.rec.steps[self.rec.step]),
            s => s.as_str().to_string(),
        }
    }

    /// Make a transition: new state and step, weight, window, history, log, metrics,
    /// store and webhook.
    fn go(&mut self, to: State, step: usize, reason: String, env: &Env<'_>) {
        let from = if self.history.is_empty() {
            "new".to_string()
        } else {
            self.position()
        };
        let now = now_ms();
        let ended = (
            self.rec.window.candidate.requests,
            self.rec.window.incumbent.requests,
        );
        let new_window = step != self.rec.step
            || (self.rec.state == State::Paused && to == State::Running)
            || self.history.is_empty();
        self.rec.state = to;
        self.rec.step = step.min(self.rec.steps.len().saturating_sub(1));
        self.rec.weight = match to {
            State::Running | State::Paused => self.rec.steps[self.rec.step],
            State::Complete => 100.0,
            State::RolledBack => 0.0,
        };
        if new_window {
            self.rec.step_started_ms = now;
            self.baseline = self.live.snapshot();
            self.carried = [Counts::default(); 2];
            self.rec.window.candidate = ArmStats::default();
            self.rec.window.incumbent = ArmStats::default();
            self.quality = Quality::default();
            self.quality_at = None;
        }
        self.rec.reason = Some(reason.clone());
        self.rec.updated_ms = now;
        self.live.set_weight_bp(bp(self.rec.weight));
        let entry = HistoryEntry {
            at_ms: now,
            from,
            to: self.position(),
            reason,
            weight: self.rec.weight,
            candidate_requests: ended.0,
            incumbent_requests: ended.1,
        };
        if to == State::RolledBack {
            tracing::warn!(route = %self.rec.route, from = %entry.from, to = %entry.to, weight = entry.weight, reason = %entry.reason, "rollout transition");
        } else {
            tracing::info!(route = %self.rec.route, from = %entry.from, to = %entry.to, weight = entry.weight, reason = %entry.reason, "rollout transition");
        }
        env.rollouts.count_transition(&self.live.route, to.as_str());
        if let Some(store) = env.store {
            save(store, self.rec.clone(), Some(entry.clone()));
            self.saved_at = Instant::now();
        }
        if let (Some(url), Some(hooks)) = (&self.rollout.webhook, env.rollouts.webhooks.get()) {
            hooks.send(
                url.clone(),
                json!({
                    "route": self.rec.route,
                    "candidate": self.rec.candidate,
                    "state": self.rec.state.as_str(),
                    "step": self.rec.step + 1,
                    "weight": self.rec.weight,
                    "from": entry.from,
                    "to": entry.to,
                    "reason": entry.reason,
                    "at": super::status::rfc3339(entry.at_ms),
                    "guards": self.rec.guards,
                }),
            );
        }
        self.history.push(entry);
    }

    /// The step's window from the counters (and what a restart carried over) into the record.
    fn measure(&mut self) -> (ArmStats, ArmStats) {
        let snap = self.live.snapshot();
        let cand = stats(&snap[0].since(&self.baseline[0]), self.carried[0]);
        let inc = stats(&snap[1].since(&self.baseline[1]), self.carried[1]);
        self.rec.window.candidate = cand;
        self.rec.window.incumbent = inc;
        (cand, inc)
    }

    /// One look at the counters: update the window and guards, then advance, roll back or
    /// wait.
    fn tick(&mut self, env: &Env<'_>, quality: Option<&mut QualityReader<'_>>) {
        if self.rec.state.is_final() {
            return;
        }
        let now = Instant::now();
        let (cand, inc) = self.measure();
        // At 100 % the incumbents get no traffic; the last step in which they had some is
        // the reference.
        let reference = match self.rec.window.reference {
            Some(r) if inc.requests == 0 => r,
            _ => inc,
        };
        if let Some(read) = quality
            && self
                .quality_at
                .is_none_or(|t| now.duration_since(t) >= QUALITY_EVERY)
        {
            let c = &self.rollout.candidate;
            self.quality = read(
                &QualityQuery {
                    route: &self.rec.route,
                    backend: &c.backend.name,
                    model: c.model.as_deref(),
                    since_ms: self.rec.step_started_ms,
                },
                &self.rollout.guards,
            );
            self.quality_at = Some(now);
        }
        self.rec.guards = guard::evaluate(&self.rollout.guards, &cand, &reference, &self.quality);
        let enough = cand.requests >= self.rollout.min_requests;
        if enough && let Some(b) = self.rec.guards.iter().find(|g| g.ok == Some(false)) {
            let reason = format!(
                "guard {} breached: {} = {:.4}, limit {} ({}); candidate back to 0%",
                b.name,
                b.name,
                b.value.unwrap_or(f64::NAN),
                b.limit,
                b.detail
            );
            self.go(State::RolledBack, self.rec.step, reason, env);
            return;
        }
        let held_ms = now_ms() - self.rec.step_started_ms;
        let step_ms = i64::try_from(self.rollout.step_time.as_millis()).unwrap_or(i64::MAX);
        if self.rec.state == State::Running
            && held_ms >= step_ms
            && enough
            && self.rec.guards.iter().all(|g| g.ok == Some(true))
        {
            if inc.requests > 0 {
                self.rec.window.reference = Some(inc);
            }
            let reason = format!(
                "step {} ({}%) held {:.0}s with {} candidate and {} incumbent requests; every guard held",
                self.rec.step + 1,
                self.rec.steps[self.rec.step],
                held_ms as f64 / 1000.0,
                cand.requests,
                inc.requests
            );
            if self.rec.step + 1 < self.rec.steps.len() {
                self.go(State::Running, self.rec.step + 1, reason, env);
            } else {
                self.go(State::Complete, self.rec.step, reason, env);
            }
            return;
        }
        if let Some(store) = env.store
            && now.duration_since(self.saved_at) >= SAVE_EVERY
        {
            self.rec.updated_ms = now_ms();
            save(store, self.rec.clone(), None);
            self.saved_at = now;
        }
    }

    /// Apply an operator's action.
    fn act(&mut self, action: Action, env: &Env<'_>) -> Result<(), ActError> {
        let state = self.rec.state;
        let refuse = |action: &'static str| ActError::WrongState {
            route: self.rec.route.clone(),
            state: state.as_str(),
            action,
        };
        match action {
            Action::Pause if state == State::Running => self.go(
                State::Paused,
                self.rec.step,
                "paused by operator".into(),
                env,
            ),
            Action::Pause => return Err(refuse("pause")),
            Action::Resume if state == State::Paused => self.go(
                State::Running,
                self.rec.step,
                "resumed by operator (the step's window starts again)".into(),
                env,
            ),
            Action::Resume => return Err(refuse("resume")),
            Action::Promote if !state.is_final() => self.go(
                State::Complete,
                self.rec.step,
                "promoted by operator".into(),
                env,
            ),
            Action::Promote => return Err(refuse("promote")),
            Action::Abort if !state.is_final() => self.go(
                State::RolledBack,
                self.rec.step,
                "aborted by operator; candidate back to 0%".into(),
                env,
            ),
            Action::Abort => return Err(refuse("abort")),
        }
        Ok(())
    }
}

impl Rollouts {
    /// Every running rollout's status, by route.
    pub fn statuses(&self) -> Vec<(Record, Vec<HistoryEntry>)> {
        let Ok(runs) = self.runs.lock() else {
            return Vec::new();
        };
        let mut out: Vec<_> = runs
            .values()
            .map(|r| (r.rec.clone(), r.history.clone()))
            .collect();
        out.sort_by(|a, b| a.0.route.cmp(&b.0.route));
        out
    }

    /// Save every running rollout's window now (at shutdown: the store closes after this,
    /// writing what is queued), so a restart resumes the step with all of its counts.
    pub fn save_all(&self, store: &Store) {
        // A follower's rows are the decider's: it writes nothing.
        if self.following.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let Ok(mut runs) = self.runs.lock() else {
            return;
        };
        for run in runs.values_mut() {
            if run.rec.state.is_final() {
                continue;
            }
            run.measure();
            run.rec.updated_ms = now_ms();
            save(store, run.rec.clone(), None);
        }
    }

    /// Apply an operator's action to `route`'s rollout; its status after.
    pub fn act(
        &self,
        route: &str,
        action: Action,
        store: Option<&Store>,
    ) -> Result<(Record, Vec<HistoryEntry>), ActError> {
        if self.following.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ActError::NotDeciding);
        }
        let mut runs = self
            .runs
            .lock()
            .map_err(|_| ActError::NoRollout(route.to_string()))?;
        let run = runs
            .get_mut(route)
            .ok_or_else(|| ActError::NoRollout(route.to_string()))?;
        run.act(
            action,
            &Env {
                store,
                rollouts: self,
            },
        )?;
        Ok((run.rec.clone(), run.history.clone()))
    }

    /// One pass of the controller over the config in force.
    fn control(&self, routes: &[Arc<Route>], store: Option<&Store>, conn: Option<&Connection>) {
        let mut stored = |route: &str| {
            let c = conn?;
            let rec = state::load(c, route).ok().flatten()?;
            let history = state::history(c, &rec.route, &rec.fingerprint).unwrap_or_default();
            Some((rec, history))
        };
        let mut read = |q: &QualityQuery<'_>, g: &crate::config::rollout::Guards| match conn {
            Some(c) => guard::read_quality(c, q, g),
            None => Quality::default(),
        };
        let quality: Option<&mut QualityReader<'_>> = match conn {
            Some(_) => Some(&mut read),
            None => None,
        };
        self.control_with(routes, store, quality, &mut stored);
    }

    /// [`Rollouts::control`] with the stored state read by `stored` (either backend).
    fn control_with(
        &self,
        routes: &[Arc<Route>],
        store: Option<&Store>,
        mut quality: Option<&mut QualityReader<'_>>,
        stored: &mut StoredLoader<'_>,
    ) {
        let env = Env {
            store,
            rollouts: self,
        };
        let Ok(mut runs) = self.runs.lock() else {
            return;
        };
        let mut changed = false;
        for route in routes {
            let Some(ro) = &route.rollout else { continue };
            match runs.get_mut(&route.name) {
                Some(run) if run.rollout.fingerprint == ro.fingerprint => {
                    // The same rollout in a reloaded config: its progress stays, its targets
                    // are the new version's.
                    run.rollout = ro.clone();
                }
                _ => {
                    let stored = stored(&route.name);
                    let run = Run::start(&route.name, ro.clone(), stored, &env);
                    runs.insert(route.name.clone(), run);
                    changed = true;
                }
            }
        }
        let before = runs.len();
        runs.retain(|name, _| {
            routes
                .iter()
                .any(|r| r.name == *name && r.rollout.is_some())
        });
        if changed || runs.len() != before {
            self.publish(
                runs.iter()
                    .map(|(k, r)| (k.clone(), r.live.clone()))
                    .collect::<HashMap<_, _>>(),
            );
        }
        for run in runs.values_mut() {
            run.tick(&env, quality.as_deref_mut());
        }
    }
}

impl Rollouts {
    /// A replica that does not hold the lease: each rollout as stored by the one that does,
    /// its weight applied here.
    fn follow(&self, routes: &[Arc<Route>], client: &mut postgres::Client) {
        let env = Env {
            store: None,
            rollouts: self,
        };
        let Ok(mut runs) = self.runs.lock() else {
            return;
        };
        let mut changed = false;
        for route in routes {
            let Some(ro) = &route.rollout else { continue };
            // Not stored yet (or a config version the decider does not run yet): 0 % here.
            let Ok(Some(rec)) = shared::load(client, &route.name) else {
                continue;
            };
            if *rec.fingerprint != *ro.fingerprint {
                continue;
            }
            let history = shared::history(client, &rec.route, &rec.fingerprint).unwrap_or_default();
            match runs.get_mut(&route.name) {
                Some(run) if run.rollout.fingerprint == ro.fingerprint => {
                    run.rollout = ro.clone();
                    run.live.set_weight_bp(bp(rec.weight));
                    run.rec = rec;
                    run.history = history;
                }
                _ => {
                    let run = Run::start(&route.name, ro.clone(), Some((rec, history)), &env);
                    runs.insert(route.name.clone(), run);
                    changed = true;
                }
            }
        }
        let before = runs.len();
        runs.retain(|name, _| {
            routes
                .iter()
                .any(|r| r.name == *name && r.rollout.is_some())
        });
        if changed || runs.len() != before {
            self.publish(
                runs.iter()
                    .map(|(k, r)| (k.clone(), r.live.clone()))
                    .collect::<HashMap<_, _>>(),
            );
        }
    }
}

/// The controller's link to a PostgreSQL store: its connection and whether it decides.
struct SharedControl {
    client: Option<postgres::Client>,
    holder: String,
    leading: bool,
}

impl SharedControl {
    /// One tick on a shared store: renew or take the lease, then decide (holder) or follow.
    /// Without the database nobody here decides: the weights stay as they are.
    fn tick(&mut self, rollouts: &Rollouts, routes: &[Arc<Route>], store: &Store) {
        let StoreTarget::Postgres(pg) = store.target() else {
            return;
        };
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = crate::services::governance::pg::connect(pg).ok();
        }
        let lease = match self.client.as_mut() {
            Some(c) => shared::acquire(c, shared::ROLLOUT_LEASE, &self.holder)
                .map_err(|e| crate::services::governance::pg::describe(&e)),
            None => Err("cannot connect".to_string()),
        };
        let leading = match lease {
            Ok(l) => l,
            Err(e) => {
                self.client = None;
                if self.leading {
                    tracing::warn!(error = %e, "rollouts: the store is unreachable; decisions paused");
                }
                self.leading = false;
                rollouts
                    .following
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        };
        if leading != self.leading {
            tracing::info!(
                holder = %self.holder,
                "rollouts: {}",
                if leading {
                    "this replica holds the lease and decides"
                } else {
                    "another replica decides; following the stored state"
                }
            );
            // A new decider resumes every rollout from the stored rows.
            if leading && let Ok(mut runs) = rollouts.runs.lock() {
                runs.clear();
            }
            self.leading = leading;
        }
        rollouts
            .following
            .store(!leading, std::sync::atomic::Ordering::Relaxed);
        let Some(client) = self.client.as_mut() else {
            return;
        };
        if leading {
            // One connection for the stored rows and the guards' figures, which every
            // replica's shadow pairs and feedback reach.
            let cell = std::cell::RefCell::new(client);
            let mut stored = |route: &str| {
                let mut c = cell.borrow_mut();
                let rec = shared::load(&mut c, route).ok().flatten()?;
                let history =
                    shared::history(&mut c, &rec.route, &rec.fingerprint).unwrap_or_default();
                Some((rec, history))
            };
            let mut read = |q: &QualityQuery<'_>, g: &crate::config::rollout::Guards| {
                guard::read_quality_pg(&mut cell.borrow_mut(), q, g)
            };
            rollouts.control_with(routes, Some(store), Some(&mut read), &mut stored);
        } else {
            rollouts.follow(routes, client);
        }
    }
}

impl Drop for SharedControl {
    fn drop(&mut self) {
        if self.leading
            && let Some(c) = self.client.as_mut()
        {
            let _ = shared::release(c, shared::ROLLOUT_LEASE, &self.holder);
        }
    }
}

/// Start the controller thread; it stops when the services are gone.
pub fn spawn(services: &Arc<Services>) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let _ = services.rollouts.webhooks.set(Webhooks::start(&handle));
    }
    let weak: Weak<Services> = Arc::downgrade(services);
    let started = std::thread::Builder::new()
        .name("rollout-controller".into())
        .spawn(move || {
            let mut conn: Option<Connection> = None;
            let mut shared_control = SharedControl {
                client: None,
                holder: format!("pid{}-{:016x}", std::process::id(), fastrand::u64(..)),
                leading: false,
            };
            loop {
                std::thread::sleep(TICK);
                let Some(s) = weak.upgrade() else { break };
                let snap = s.snapshot();
                if snap.config.routes.iter().all(|r| r.rollout.is_none())
                    && s.rollouts.runs.lock().is_ok_and(|r| r.is_empty())
                {
                    continue;
                }
                let store = s.governance.as_ref().map(|g| g.store.clone());
                if let Some(st) = store.as_deref()
                    && st.is_postgres()
                {
                    shared_control.tick(&s.rollouts, &snap.config.routes, st);
                    continue;
                }
                if conn.is_none()
                    && let Some(st) = &store
                {
                    conn = st.connect().ok();
                }
                s.rollouts
                    .control(&snap.config.routes, store.as_deref(), conn.as_ref());
            }
        });
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start the rollout controller thread: rollouts will not move");
    }
}

/// Transition webhooks: POSTed from a background task, retried, never awaited by anyone.
pub struct Webhooks {
    tx: tokio::sync::mpsc::Sender<(Arc<str>, serde_json::Value)>,
}

/// Tries per webhook call (the first and the retries).
const WEBHOOK_TRIES: u32 = 4;
const WEBHOOK_QUEUE: usize = 1024;

impl Webhooks {
    fn start(handle: &tokio::runtime::Handle) -> Webhooks {
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(Arc<str>, serde_json::Value)>(WEBHOOK_QUEUE);
        handle.spawn(async move {
            let native = rustls_native_certs::load_native_certs().certs;
            let client = match crate::services::upstream::client::build_client(
                Duration::from_secs(5),
                &native,
                &[],
            ) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "rollout webhooks: cannot build an HTTP client");
                    return;
                }
            };
            while let Some((url, body)) = rx.recv().await {
                let client = client.clone();
                tokio::spawn(async move { post_with_retries(&client, &url, body).await });
            }
        });
        Webhooks { tx }
    }

    fn send(&self, url: Arc<str>, body: serde_json::Value) {
        if self.tx.try_send((url.clone(), body)).is_err() {
            tracing::warn!(%url, "rollout webhook dropped: its queue is full");
        }
    }
}

async fn post_with_retries(
    client: &crate::services::upstream::client::HttpClient,
    url: &str,
    body: serde_json::Value,
) {
    let bytes = bytes::Bytes::from(body.to_string());
    let mut last = String::new();
    for attempt in 0..WEBHOOK_TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << (attempt - 1))).await;
        }
        let req = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes.clone()));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%url, error = %e, "rollout webhook: not a valid request URL");
                return;
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => return,
            Ok(Ok(resp)) => last = format!("HTTP {}", resp.status().as_u16()),
            Ok(Err(e)) => last = crate::base::error::error_chain(&e),
            Err(_) => last = "no answer within 10 s".into(),
        }
    }
    tracing::warn!(%url, error = %last, tries = WEBHOOK_TRIES, "rollout webhook failed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, load_str};
    use crate::services::rollout::{Arm, Outcome};

    fn routes(guard: &str) -> Vec<Arc<Route>> {
        load_str(
            &format!(
                r#"
[[backends]]
name = "old"
url = "http://127.0.0.1:1/v1"
[[backends]]
name = "new"
url = "http://127.0.0.1:2/v1"
[[routes]]
model = "m"
targets = [{{ backend = "old" }}]
rollout = {{ candidate = {{ backend = "new" }}, steps = [10, 100], step_secs = 0.001, min_requests = 5, guard = {{ {guard} }} }}
"#
            ),
            ConfigSource::Embedded,
        )
        .unwrap()
        .routes
        .clone()
    }

    fn feed(r: &Rollouts, cand: Outcome, n: usize) {
        for _ in 0..n {
            r.record("m", Arm::Candidate, cand);
            r.record(
                "m",
                Arm::Incumbent,
                Outcome::Served(Duration::from_millis(5)),
            );
        }
    }

    fn state(r: &Rollouts) -> (State, f64, Vec<String>) {
        let s = r.statuses();
        let (rec, h) = &s[0];
        (
            rec.state,
            rec.weight,
            h.iter().map(|e| e.to.clone()).collect(),
        )
    }

    #[test]
    fn a_healthy_candidate_advances_only_with_enough_requests_and_completes() {
        let rs = routes("max_error_rate = 0.01");
        let r = Rollouts::default();
        r.control(&rs, None, None);
        assert_eq!(r.weight_bp("m"), 1000);
        std::thread::sleep(Duration::from_millis(5));
        // Too few candidate requests: the step holds however long it lasted.
        feed(&r, Outcome::Served(Duration::from_millis(5)), 4);
        r.control(&rs, None, None);
        assert_eq!(state(&r).1, 10.0);
        feed(&r, Outcome::Served(Duration::from_millis(5)), 1);
        r.control(&rs, None, None);
        assert_eq!(state(&r).1, 100.0);
        assert_eq!(r.weight_bp("m"), 10_000);
        std::thread::sleep(Duration::from_millis(5));
        // At 100 % the incumbents have no traffic: the last step's window is the reference.
        for _ in 0..5 {
            r.record(
                "m",
                Arm::Candidate,
                Outcome::Served(Duration::from_millis(5)),
            );
        }
        r.control(&rs, None, None);
        let (st, w, h) = state(&r);
        assert_eq!((st, w), (State::Complete, 100.0));
        assert_eq!(h, ["10%", "100%", "complete"]);
    }

    #[test]
    fn a_breach_rolls_back_at_once_and_missing_data_never_passes() {
        let rs = routes("max_error_rate = 0.01, min_feedback = 0.5");
        let r = Rollouts::default();
        r.control(&rs, None, None);
        std::thread::sleep(Duration::from_millis(5));
        // Healthy, but no feedback: no data, so no advance.
        feed(&r, Outcome::Served(Duration::from_millis(5)), 20);
        r.control(&rs, None, None);
        let s = r.statuses();
        let g = s[0]
            .0
            .guards
            .iter()
            .find(|g| g.name == "min_feedback")
            .unwrap();
        assert_eq!((g.value, g.ok), (None, None));
        assert_eq!(state(&r).0, State::Running);
        assert_eq!(state(&r).1, 10.0);
        // Failures: rolled back on this tick, not at the step's end.
        feed(&r, Outcome::Failed, 5);
        r.control(&rs, None, None);
        let (st, w, h) = state(&r);
        assert_eq!((st, w), (State::RolledBack, 0.0));
        assert_eq!(r.weight_bp("m"), 0);
        assert!(
            r.statuses()[0]
                .1
                .last()
                .unwrap()
                .reason
                .contains("max_error_rate")
        );
        assert_eq!(h.last().unwrap(), "rolled_back");
        // Over: nothing moves it, and operator actions are refused.
        assert!(matches!(
            r.act("m", Action::Resume, None),
            Err(ActError::WrongState { .. })
        ));
        assert!(matches!(
            r.act("x", Action::Abort, None),
            Err(ActError::NoRollout(_))
        ));
    }
}

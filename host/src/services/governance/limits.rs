//! Rate limits and budgets: admission counters, in memory or shared through Redis.
//!
//! Every limit is a counter checked and charged at admission, before any upstream sees the
//! request:
//! - requests per minute and tokens per minute, per key and per team, over a sliding
//!   window approximated by two fixed one-minute buckets: the count is
//!   `previous × (1 − elapsed fraction of this minute) + current`. Tokens are charged at
//!   admission as a reservation (prompt estimate + `max_tokens`) and corrected to the real
//!   usage when the answer ends, streams included, so one long stream cannot overshoot a
//!   limit that is only charged afterwards;
//! - spend per day and per month (UTC calendar periods), per key and per team, in
//!   micro-dollars: the estimated cost is reserved at admission and corrected to the
//!   ledger's cost at the end, so concurrent requests cannot all slip under a budget.
//!
//! All counters of one request are checked and charged as one step: on Redis by one Lua
//! script (atomic across every replica sharing it, so limits do not multiply by the replica
//! count), in memory by charging in turn and undoing on the first refusal (a concurrent
//! request may then be refused spuriously, never admitted wrongly).

use std::sync::Arc;

use dashmap::DashMap;

/// Length of a rate-limit window.
pub const WINDOW_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// What a counter limits, for errors and `Retry-After`.
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    Requests,
    Tokens,
    /// Spend in a calendar period; ends at `period_end_ms`.
    Budget {
        period: &'static str,
        period_end_ms: i64,
    },
}

/// One counter to check and charge.
#[derive(Debug, Clone)]
pub struct Check {
    /// e.g. `rpm:key:key_ab12` (the bucket number is appended per bucket).
    pub name: String,
    /// Who the limit belongs to, for messages: `key key_ab12`, `team search`.
    pub scope: String,
    pub what: What,
    pub bucket: i64,
    /// Weight of the previous bucket (sliding windows; 0 for budgets).
    pub prev_weight: f64,
    pub limit: i64,
    pub cost: i64,
    /// Seconds a bucket is kept (Redis expiry).
    pub ttl_secs: u64,
    /// How far into the bucket we are, ms (for Retry-After).
    pub elapsed_ms: i64,
    pub now_ms: i64,
}

/// A charge that was made, to be corrected at the end.
#[derive(Debug, Clone)]
pub struct Held {
    pub name: String,
    pub bucket: i64,
    pub cost: i64,
}

/// Why a request was refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub check: Check,
    /// The counter's value when it refused.
    pub count: f64,
    pub retry_after_secs: u64,
}

/// Sliding-window checks for `now_ms`.
pub fn window_check(
    name: String,
    scope: String,
    what: What,
    limit: u64,
    cost: u64,
    now_ms: i64,
) -> Check {
    let bucket = now_ms.div_euclid(WINDOW_MS);
    let elapsed = now_ms.rem_euclid(WINDOW_MS);
    Check {
        name,
        scope,
        what,
        bucket,
        prev_weight: 1.0 - elapsed as f64 / WINDOW_MS as f64,
        limit: i64::try_from(limit).unwrap_or(i64::MAX),
        cost: i64::try_from(cost).unwrap_or(i64::MAX),
        ttl_secs: 3 * (WINDOW_MS as u64 / 1000),
        elapsed_ms: elapsed,
        now_ms,
    }
}

/// A budget check for the day (`monthly = false`) or month containing `now_ms`.
pub fn budget_check(
    name: String,
    scope: String,
    monthly: bool,
    limit_micros: i64,
    cost_micros: i64,
    now_ms: i64,
) -> Check {
    let day = now_ms.div_euclid(DAY_MS);
    let (bucket, start, end) = if monthly {
        let (y, m, _) = civil_from_days(day);
        let start = days_from_civil(y, m, 1) * DAY_MS;
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        (
            y * 12 + (m as i64 - 1),
            start,
            days_from_civil(ny, nm, 1) * DAY_MS,
        )
    } else {
        (day, day * DAY_MS, (day + 1) * DAY_MS)
    };
    Check {
        name,
        scope,
        what: Budget {
            period: if monthly { "monthly" } else { "daily" },
            period_end_ms: end,
        },
        bucket,
        prev_weight: 0.0,
        limit: limit_micros,
        cost: cost_micros,
        ttl_secs: ((end - start) / 1000) as u64 + 86_400,
        elapsed_ms: now_ms - start,
        now_ms,
    }
}
use What::Budget;

/// Start of the UTC day and month containing `now_ms`.
pub fn period_starts(now_ms: i64) -> (i64, i64) {
    let day = now_ms.div_euclid(DAY_MS);
    let (y, m, _) = civil_from_days(day);
    (day * DAY_MS, days_from_civil(y, m, 1) * DAY_MS)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn refused(c: &Check, prev: f64, cur: f64) -> bool {
    let count = prev * c.prev_weight + cur;
    let over = count + c.cost as f64 > c.limit as f64;
    // A budget already spent refuses even a request estimated to cost nothing.
    let spent = matches!(c.what, Budget { .. }) && count >= c.limit as f64;
    over || spent
}

/// Seconds until `c` could admit its cost, given the counter's buckets.
fn retry_after(c: &Check, prev: f64, cur: f64) -> u64 {
    let secs = match &c.what {
        Budget { period_end_ms, .. } => (*period_end_ms - c.now_ms) as f64 / 1000.0,
        _ => {
            let w = WINDOW_MS as f64;
            let f_now = c.elapsed_ms as f64 / w;
            let room = (c.limit - c.cost) as f64;
            if room < 0.0 {
                w / 1000.0
            } else if cur <= room && prev > 0.0 {
                // Wait for the previous bucket's weight to decay enough, this minute.
                let f_needed = 1.0 - (room - cur) / prev;
                (f_needed - f_now).max(0.0) * w / 1000.0
            } else {
                // This minute is full: next minute it becomes the previous bucket.
                let f_next = if cur > 0.0 {
                    (1.0 - room / cur).max(0.0)
                } else {
                    0.0
                };
                ((1.0 - f_now) + f_next) * w / 1000.0
            }
        }
    };
    (secs.ceil() as u64).max(1)
}

/// Where the counters live.
pub enum Limiter {
    Memory(DashMap<String, Counter>),
    Redis(Box<RedisLimiter>),
}

/// An in-memory counter: the current bucket and the one before it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counter {
    bucket: i64,
    cur: i64,
    prev: i64,
}

impl Counter {
    fn roll(&mut self, bucket: i64) {
        if self.bucket == bucket {
            return;
        }
        if self.bucket + 1 == bucket {
            self.prev = self.cur;
        } else if self.bucket < bucket {
            self.prev = 0;
        } else {
            // A counter from the future (clock step back): leave it.
            return;
        }
        self.cur = 0;
        self.bucket = bucket;
    }
}

/// Limits shared by replicas through Redis.
pub struct RedisLimiter {
    conn: redis::aio::ConnectionManager,
    admit: redis::Script,
    prefix: String,
}

const ADMIT_LUA: &str = r#"
-- KEYS: per check, current bucket then previous bucket.
-- ARGV: per check, prev_weight, limit, cost, ttl, is_budget.
local n = #KEYS / 2
for i = 1, n do
  local cur = tonumber(redis.call('GET', KEYS[2*i-1]) or '0')
  local prev = tonumber(redis.call('GET', KEYS[2*i]) or '0')
  local a = (i - 1) * 5
  local count = prev * tonumber(ARGV[a+1]) + cur
  local limit = tonumber(ARGV[a+2])
  if count + tonumber(ARGV[a+3]) > limit or (ARGV[a+5] == '1' and count >= limit) then
    return {i, tostring(prev), tostring(cur)}
  end
end
for i = 1, n do
  local a = (i - 1) * 5
  redis.call('INCRBY', KEYS[2*i-1], ARGV[a+3])
  redis.call('EXPIRE', KEYS[2*i-1], ARGV[a+4])
end
return {0, '0', '0'}
"#;

/// The limits store could not be reached (Redis down).
#[derive(Debug, thiserror::Error)]
#[error("the limits store is unavailable: {0}")]
pub struct Unavailable(pub String);

impl Limiter {
    pub fn memory() -> Arc<Limiter> {
        Arc::new(Limiter::Memory(DashMap::new()))
    }

    /// Connect to Redis at `url` (checked with a PING).
    pub async fn redis(url: &str) -> Result<Arc<Limiter>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid redis URL: {e}"))?;
        let mut conn = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.get_connection_manager(),
        )
        .await
        .map_err(|_| "redis did not answer within 5s".to_string())?
        .map_err(|e| format!("cannot connect to redis: {e}"))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("redis PING failed: {e}"))?;
        Ok(Arc::new(Limiter::Redis(Box::new(RedisLimiter {
            conn,
            admit: redis::Script::new(ADMIT_LUA),
            prefix: "switchyard:".into(),
        }))))
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Limiter::Redis(_))
    }

    /// Check every counter and charge them all, or none.
    pub async fn admit(
        &self,
        checks: &[Check],
    ) -> Result<Result<Vec<Held>, Box<Refusal>>, Unavailable> {
        if checks.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        match self {
            Limiter::Memory(map) => Ok(admit_memory(map, checks)),
            Limiter::Redis(r) => r.admit(checks).await,
        }
    }

    /// Correct earlier charges by `delta` each (real usage minus the reservation).
    pub async fn adjust(&self, corrections: &[(Held, i64)]) {
        match self {
            Limiter::Memory(map) => {
                for (h, delta) in corrections {
                    if *delta == 0 {
                        continue;
                    }
                    if let Some(mut c) = map.get_mut(&h.name) {
                        if c.bucket == h.bucket {
                            c.cur = c.cur.saturating_add(*delta).max(0);
                        } else if c.bucket == h.bucket + 1 {
                            c.prev = c.prev.saturating_add(*delta).max(0);
                        }
                    }
                }
            }
            Limiter::Redis(r) => r.adjust(corrections).await,
        }
    }

    /// Add `amount` to a counter's bucket (seeding budgets from the ledger at start).
    pub fn seed(&self, name: &str, bucket: i64, amount: i64) {
        if let Limiter::Memory(map) = self {
            let mut c = map.entry(name.to_string()).or_default();
            c.roll(bucket);
            if c.bucket == bucket {
                c.cur = c.cur.saturating_add(amount);
            }
        }
    }
}

fn admit_memory(
    map: &DashMap<String, Counter>,
    checks: &[Check],
) -> Result<Vec<Held>, Box<Refusal>> {
    let mut held: Vec<Held> = Vec::with_capacity(checks.len());
    for c in checks {
        let verdict = {
            let mut e = map.entry(c.name.clone()).or_default();
            e.roll(c.bucket);
            let (prev, cur) = (e.prev as f64, e.cur as f64);
            if e.bucket == c.bucket && !refused(c, prev, cur) {
                e.cur = e.cur.saturating_add(c.cost);
                Ok(())
            } else {
                Err(Box::new(Refusal {
                    check: c.clone(),
                    count: prev * c.prev_weight + cur,
                    retry_after_secs: retry_after(c, prev, cur),
                }))
            }
        };
        match verdict {
            Ok(()) => held.push(Held {
                name: c.name.clone(),
                bucket: c.bucket,
                cost: c.cost,
            }),
            Err(r) => {
                // Undo what this request already charged.
                for h in &held {
                    if let Some(mut e) = map.get_mut(&h.name)
                        && e.bucket == h.bucket
                    {
                        e.cur = e.cur.saturating_sub(h.cost).max(0);
                    }
                }
                return Err(r);
            }
        }
    }
    Ok(held)
}

impl RedisLimiter {
    fn key(&self, name: &str, bucket: i64) -> String {
        format!("{}{name}:{bucket}", self.prefix)
    }

    async fn admit(
        &self,
        checks: &[Check],
    ) -> Result<Result<Vec<Held>, Box<Refusal>>, Unavailable> {
        let mut inv = self.admit.prepare_invoke();
        for c in checks {
            inv.key(self.key(&c.name, c.bucket));
            inv.key(self.key(&c.name, c.bucket - 1));
            inv.arg(c.prev_weight)
                .arg(c.limit)
                .arg(c.cost)
                .arg(c.ttl_secs)
                .arg(u8::from(matches!(c.what, Budget { .. })));
        }
        let mut conn = self.conn.clone();
        let (idx, prev, cur): (i64, String, String) = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        if idx == 0 {
            return Ok(Ok(checks
                .iter()
                .map(|c| Held {
                    name: c.name.clone(),
                    bucket: c.bucket,
                    cost: c.cost,
                })
                .collect()));
        }
        let c = usize::try_from(idx - 1)
            .ok()
            .and_then(|i| checks.get(i))
            .ok_or_else(|| {
                Unavailable(format!("unexpected answer from the admit script: {idx}"))
            })?;
        let prev: f64 = prev.parse().unwrap_or(0.0);
        let cur: f64 = cur.parse().unwrap_or(0.0);
        Ok(Err(Box::new(Refusal {
            check: c.clone(),
            count: prev * c.prev_weight + cur,
            retry_after_secs: retry_after(c, prev, cur),
        })))
    }

    async fn adjust(&self, corrections: &[(Held, i64)]) {
        let mut pipe = redis::pipe();
        let mut any = false;
        for (h, delta) in corrections {
            if *delta != 0 {
                pipe.cmd("INCRBY")
                    .arg(self.key(&h.name, h.bucket))
                    .arg(*delta)
                    .ignore();
                any = true;
            }
        }
        if !any {
            return;
        }
        let mut conn = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %e, "could not correct rate-limit reservations in redis");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_math() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(
            days_from_civil(2024, 3, 1) - days_from_civil(2024, 2, 1),
            29
        );
        let d = days_from_civil(2026, 11, 30);
        assert_eq!(civil_from_days(d), (2026, 11, 30));
        let c = budget_check("b".into(), "s".into(), true, 10, 1, d * DAY_MS + 5);
        match c.what {
            Budget { period_end_ms, .. } => {
                assert_eq!(period_end_ms, days_from_civil(2026, 12, 1) * DAY_MS)
            }
            _ => panic!(),
        }
    }

    #[tokio::test]
    async fn sliding_window_admits_exactly_the_limit_and_weights_the_previous_minute() {
        let l = Limiter::memory();
        let t0 = 10 * WINDOW_MS; // start of a minute
        let mut admitted = 0;
        for _ in 0..15 {
            let c = window_check("r".into(), "key k".into(), What::Requests, 10, 1, t0 + 1000);
            if l.admit(&[c]).await.unwrap().is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
        // Half-way through the next minute, half of the previous minute still counts: 5 more.
        let mut admitted = 0;
        let mut last_refusal = None;
        for _ in 0..15 {
            let c = window_check(
                "r".into(),
                "key k".into(),
                What::Requests,
                10,
                1,
                t0 + WINDOW_MS + WINDOW_MS / 2,
            );
            match l.admit(&[c]).await.unwrap() {
                Ok(_) => admitted += 1,
                Err(r) => last_refusal = Some(r),
            }
        }
        assert_eq!(admitted, 5);
        let r = last_refusal.unwrap();
        assert!(r.retry_after_secs >= 1 && r.retry_after_secs <= 60, "{r:?}");
    }

    #[tokio::test]
    async fn a_refusal_undoes_the_other_charges_and_adjust_reconciles() {
        let l = Limiter::memory();
        let now = 5 * WINDOW_MS;
        let tokens = |cost| window_check("t".into(), "team".into(), What::Tokens, 100, cost, now);
        let reqs = || window_check("r".into(), "team".into(), What::Requests, 100, 1, now);
        let held = l.admit(&[reqs(), tokens(80)]).await.unwrap().unwrap();
        // 80 reserved: a second 80 does not fit, and its request charge is undone.
        assert!(l.admit(&[reqs(), tokens(80)]).await.unwrap().is_err());
        // The first used only 30: correct it, and the second now fits.
        l.adjust(&[(held[1].clone(), 30 - 80)]).await;
        assert!(l.admit(&[reqs(), tokens(60)]).await.unwrap().is_ok());
        if let Limiter::Memory(m) = &*l {
            assert_eq!(m.get("r").unwrap().cur, 2);
            assert_eq!(m.get("t").unwrap().cur, 90);
        }
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_until_the_period_ends() {
        let l = Limiter::memory();
        let now = days_from_civil(2026, 1, 31) * DAY_MS + 3_600_000;
        let b = |cost| budget_check("d".into(), "key k".into(), false, 1000, cost, now);
        assert!(l.admit(&[b(600)]).await.unwrap().is_ok());
        let r = l.admit(&[b(600)]).await.unwrap().unwrap_err();
        assert_eq!(r.retry_after_secs, 23 * 3600);
        assert!(l.admit(&[b(400)]).await.unwrap().is_ok());
        // Exactly spent: even a free request is refused.
        assert!(l.admit(&[b(0)]).await.unwrap().is_err());
    }
}

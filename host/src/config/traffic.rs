//! `[traffic]`, validated: the retry budget's rates and the backoff between repeats.

use std::time::Duration;

use super::Problem;
use super::schema::TrafficSection;

/// `[traffic]`, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrafficSettings {
    pub retry_ratio: f64,
    pub retry_min_per_sec: f64,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for TrafficSettings {
    fn default() -> Self {
        TrafficSettings {
            retry_ratio: 0.2,
            retry_min_per_sec: 10.0,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
        }
    }
}

impl TrafficSettings {
    pub fn from_section(s: Option<&TrafficSection>, problems: &mut Vec<Problem>) -> Self {
        let mut out = TrafficSettings::default();
        let Some(s) = s else { return out };
        if let Some(r) = s.retry_budget_ratio {
            if (0.0..=10.0).contains(&r) {
                out.retry_ratio = r;
            } else {
                problems.push(Problem::new(
                    "traffic.retry_budget_ratio",
                    format!("must be between 0.0 and 10.0, got {r}"),
                ));
            }
        }
        if let Some(m) = s.retry_budget_min_per_sec {
            if m.is_finite() && m >= 0.0 {
                out.retry_min_per_sec = m;
            } else {
                problems.push(Problem::new(
                    "traffic.retry_budget_min_per_sec",
                    format!("must be 0 or more, got {m}"),
                ));
            }
        }
        if let Some(b) = s.backoff_base_ms {
            out.backoff_base = Duration::from_millis(b);
        }
        if let Some(m) = s.backoff_max_ms {
            out.backoff_max = Duration::from_millis(m);
        }
        if out.backoff_max < out.backoff_base {
            problems.push(Problem::new(
                "traffic.backoff_max_ms",
                "must not be below backoff_base_ms",
            ));
        }
        out
    }

    /// Full-jitter exponential backoff before the `n`th repeat (1-based) of a target.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16));
        let cap = exp.min(self.backoff_max);
        cap.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_capped() {
        let s = TrafficSettings::default();
        for n in 1..20 {
            let d = s.backoff(n);
            assert!(d <= s.backoff_max);
            assert!(d <= s.backoff_base * (1 << (n - 1).min(16)));
        }
        let draws: std::collections::HashSet<u128> =
            (0..50).map(|_| s.backoff(3).as_micros()).collect();
        assert!(draws.len() > 10, "backoff is not jittered");
    }
}

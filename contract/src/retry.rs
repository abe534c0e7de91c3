//! Backoff schedules: exponential with jitter for handler retries, and a capped schedule for
//! outages (a sink or the dead-letter topic unreachable), which never give up.

use std::time::Duration;

use crate::config::{RetryMode, RetryPolicy, RetryTopic};

/// The retry topics under `policy`: one per distinct backoff, named `<prefix>-retry-<n>`, up to
/// the first whose delay reaches the cap (later attempts reuse the last). None unless the mode is
/// RetryTopics and retries are allowed. The operator's prefix is `<source>-<consumer>`: every
/// consumer has retry topics of its own, so one group never retries another's records.
pub fn retry_topics(prefix: &str, policy: &RetryPolicy) -> Vec<RetryTopic> {
    if policy.mode != RetryMode::RetryTopics {
        return Vec::new();
    }
    let mut topics = Vec::new();
    for retry in 1..=policy.max_retries {
        // The middle of the jitter range: the delay before spread.
        let delay_ms = delay(policy, retry, 0.5).as_millis() as u64;
        topics.push(RetryTopic {
            name: format!("{prefix}-retry-{retry}"),
            delay_ms,
        });
        if delay_ms >= policy.max_backoff_ms {
            break;
        }
    }
    topics
}

/// The retry topic of a record that has failed `attempts` times.
pub fn retry_topic(topics: &[RetryTopic], attempts: u32) -> Option<&RetryTopic> {
    let index = (attempts.max(1) as usize - 1).min(topics.len().checked_sub(1)?);
    topics.get(index)
}

/// The delay before retry `retry` (1-based): min(initial x multiplier^(retry-1), max), then
/// spread by +/- jitter with `unit` in [0, 1) as the random draw.
pub fn delay(policy: &RetryPolicy, retry: u32, unit: f64) -> Duration {
    let exponent = retry.saturating_sub(1).min(63) as i32;
    let base = policy.initial_backoff_ms as f64 * policy.multiplier.max(1.0).powi(exponent);
    let capped = base.min(policy.max_backoff_ms as f64);
    let jitter = policy.jitter.clamp(0.0, 1.0);
    let spread = 1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    Duration::from_millis((capped * spread).max(0.0).round() as u64)
}

/// The delay before trying an unreachable dependency again: 250 ms doubling up to 10 s.
pub fn outage_delay(failures: u32) -> Duration {
    Duration::from_millis((250u64 << failures.min(6)).min(10_000))
}

/// A uniform draw in [0, 1) from a small xorshift generator seeded per worker; jitter needs
/// spread, not cryptographic randomness.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Self(nanos ^ (u64::from(std::process::id()) << 32) | 1)
    }

    /// A generator from a seed (records processed concurrently each get their own).
    pub fn from_seed(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            initial_backoff_ms: 100,
            multiplier: 2.0,
            max_backoff_ms: 1000,
            jitter,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn delays_grow_exponentially_to_the_cap() {
        let p = policy(0.0);
        let ms: Vec<u128> = (1..=6).map(|r| delay(&p, r, 0.7).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_spreads_within_its_bounds() {
        let p = policy(0.2);
        assert_eq!(delay(&p, 1, 0.0).as_millis(), 80);
        assert_eq!(delay(&p, 1, 0.5).as_millis(), 100);
        assert_eq!(delay(&p, 1, 1.0).as_millis(), 120);
        let mut j = Jitter::seeded();
        for _ in 0..1000 {
            let u = j.next_unit();
            assert!((0.0..1.0).contains(&u));
            let d = delay(&p, 3, u).as_millis();
            assert!((320..=480).contains(&d), "{d}");
        }
    }

    #[test]
    fn one_retry_topic_per_distinct_delay_up_to_the_cap() {
        let mut p = RetryPolicy {
            max_retries: 10,
            initial_backoff_ms: 1000,
            multiplier: 2.0,
            max_backoff_ms: 5000,
            mode: RetryMode::RetryTopics,
            ..RetryPolicy::default()
        };
        let topics = retry_topics("orders", &p);
        let named: Vec<(&str, u64)> = topics
            .iter()
            .map(|t| (t.name.as_str(), t.delay_ms))
            .collect();
        assert_eq!(
            named,
            [
                ("orders-retry-1", 1000),
                ("orders-retry-2", 2000),
                ("orders-retry-3", 4000),
                ("orders-retry-4", 5000),
            ]
        );
        assert_eq!(retry_topic(&topics, 1).unwrap().name, "orders-retry-1");
        assert_eq!(retry_topic(&topics, 3).unwrap().name, "orders-retry-3");
        assert_eq!(retry_topic(&topics, 9).unwrap().name, "orders-retry-4");
        p.max_retries = 2;
        assert_eq!(retry_topics("orders", &p).len(), 2);
        p.mode = RetryMode::Blocking;
        assert!(retry_topics("orders", &p).is_empty());
        assert!(retry_topic(&[], 1).is_none());
    }

    #[test]
    fn outages_back_off_to_ten_seconds() {
        let ms: Vec<u128> = [0, 1, 2, 5, 6, 30]
            .iter()
            .map(|f| outage_delay(*f).as_millis())
            .collect();
        assert_eq!(ms, [250, 500, 1000, 8000, 10000, 10000]);
    }
}

//! What happens to a record after a failed attempt. A pure function of the attempt count, the
//! error class, the policy and where this worker may keep the record, so the whole table is
//! tested without Kafka.

use std::time::Duration;

use crate::config::{ErrorClass, RetryPolicy, RetryTopic};
use crate::retry;

/// Where a failed record may wait for its next attempt, as the partition's task allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mode {
    /// In the retry topic of its attempt (mode RetryTopics, when this worker owns the same
    /// partition of every retry topic).
    pub(super) via_topics: bool,
    /// In place, holding the partition (one record at a time, strict offset order); otherwise
    /// the task schedules it again.
    pub(super) wait_in_place: bool,
}

/// The next step for a record that has just failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Decision<'a> {
    /// No retry left, or a class that skips retries: to the dead-letter topic.
    DeadLetter,
    /// To the retry topic of the attempt, due after `delay`: the copy in the retry topic is the
    /// record from then on.
    Forward {
        topic: &'a RetryTopic,
        delay: Duration,
    },
    /// Tried again after the wait, without leaving the worker.
    Wait(Wait),
}

/// How a record waits for its next attempt in the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Sleeping where it is, holding the partition.
    InPlace(Duration),
    /// Handed back to the partition's task, which runs it again after the delay: its
    /// concurrency slot is free meanwhile, and its key's later records stay parked behind it.
    Park(Duration),
}

impl Wait {
    /// The wait `mode` allows, for `delay`.
    pub(super) fn of(mode: Mode, delay: Duration) -> Self {
        if mode.wait_in_place {
            Self::InPlace(delay)
        } else {
            Self::Park(delay)
        }
    }

    /// How long until the next attempt.
    pub(super) fn delay(self) -> Duration {
        match self {
            Self::InPlace(delay) | Self::Park(delay) => delay,
        }
    }
}

/// Decides what follows the `attempts`-th failed attempt of a record with error `class`.
/// `unit` draws the jitter (in [0, 1)); it is not drawn for a dead letter.
pub(super) fn decide<'a>(
    attempts: u32,
    class: ErrorClass,
    policy: &RetryPolicy,
    retry_topics: &'a [RetryTopic],
    mode: Mode,
    unit: impl FnOnce() -> f64,
) -> Decision<'a> {
    if policy.permanent_errors.contains(&class) || attempts > policy.max_retries {
        return Decision::DeadLetter;
    }
    let delay = retry::delay(policy, attempts, unit());
    match retry::retry_topic(retry_topics, attempts).filter(|_| mode.via_topics) {
        Some(topic) => Decision::Forward { topic, delay },
        None => Decision::Wait(Wait::of(mode, delay)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryMode;

    fn policy(max_retries: u32, permanent: &[ErrorClass], mode: RetryMode) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            initial_backoff_ms: 100,
            multiplier: 2.0,
            max_backoff_ms: 1_000,
            jitter: 0.0,
            permanent_errors: permanent.to_vec(),
            mode,
        }
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn the_policy_and_the_mode_decide_every_failure() {
        use ErrorClass::{Conflict, Deserialization, Transient, Validation};
        use RetryMode::{Blocking, RetryTopics};
        let topics = retry::retry_topics("orders-store", &policy(5, &[], RetryTopics));
        let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        // 100, 200, 400, 800, then 1000 ms (the cap) for the fifth: five topics.
        assert_eq!(names.len(), 5, "{names:?}");
        let at = |n: usize| &topics[n - 1];
        let in_place = Mode {
            via_topics: false,
            wait_in_place: true,
        };
        let parked = Mode {
            via_topics: false,
            wait_in_place: false,
        };
        let forwarding = Mode {
            via_topics: true,
            wait_in_place: false,
        };
        let forwarding_one_at_a_time = Mode {
            via_topics: true,
            wait_in_place: true,
        };
        #[rustfmt::skip]
        let table: Vec<(&str, u32, ErrorClass, RetryPolicy, Mode, Decision<'_>)> = vec![
            ("first failure, one at a time", 1, Transient, policy(3, &[], Blocking), in_place, Decision::Wait(Wait::InPlace(ms(100)))),
            ("first failure, key-ordered", 1, Transient, policy(3, &[], Blocking), parked, Decision::Wait(Wait::Park(ms(100)))),
            ("backoff doubles", 3, Transient, policy(3, &[], Blocking), parked, Decision::Wait(Wait::Park(ms(400)))),
            ("backoff capped", 5, Transient, policy(9, &[], Blocking), parked, Decision::Wait(Wait::Park(ms(1_000)))),
            ("the last retry", 3, Transient, policy(3, &[], Blocking), parked, Decision::Wait(Wait::Park(ms(400)))),
            ("retries spent", 4, Transient, policy(3, &[], Blocking), parked, Decision::DeadLetter),
            ("no retries at all", 1, Transient, policy(0, &[], Blocking), in_place, Decision::DeadLetter),
            ("permanent class, first failure", 1, Validation, policy(3, &[Validation, Deserialization], Blocking), parked, Decision::DeadLetter),
            ("permanent class, retry topics", 1, Deserialization, policy(3, &[Deserialization], RetryTopics), forwarding, Decision::DeadLetter),
            ("other class retried", 1, Conflict, policy(3, &[Validation], Blocking), parked, Decision::Wait(Wait::Park(ms(100)))),
            ("retry topic of the attempt", 1, Transient, policy(5, &[], RetryTopics), forwarding, Decision::Forward { topic: at(1), delay: ms(100) }),
            ("third retry topic", 3, Transient, policy(5, &[], RetryTopics), forwarding, Decision::Forward { topic: at(3), delay: ms(400) }),
            ("one record at a time still forwards", 2, Transient, policy(5, &[], RetryTopics), forwarding_one_at_a_time, Decision::Forward { topic: at(2), delay: ms(200) }),
            ("retry topics spent", 6, Transient, policy(5, &[], RetryTopics), forwarding, Decision::DeadLetter),
            ("partition without its retry topics", 2, Transient, policy(5, &[], RetryTopics), parked, Decision::Wait(Wait::Park(ms(200)))),
        ];
        for (case, attempts, class, policy, mode, want) in table {
            let got = decide(attempts, class, &policy, &topics, mode, || 0.5);
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn attempts_past_the_last_topic_reuse_it() {
        // 100, 200, 400 ms, capped at 400: three topics for up to five retries.
        let mut policy = policy(5, &[], RetryMode::RetryTopics);
        policy.max_backoff_ms = 400;
        let topics = retry::retry_topics("t-c", &policy);
        assert_eq!(topics.len(), 3);
        let mode = Mode {
            via_topics: true,
            wait_in_place: false,
        };
        for attempts in 3..=5 {
            assert_eq!(
                decide(
                    attempts,
                    ErrorClass::Transient,
                    &policy,
                    &topics,
                    mode,
                    || 0.5
                ),
                Decision::Forward {
                    topic: &topics[2],
                    delay: ms(400)
                },
                "attempt {attempts}"
            );
        }
    }

    #[test]
    fn jitter_is_drawn_only_for_a_retry() {
        let policy = policy(1, &[ErrorClass::Validation], RetryMode::Blocking);
        let mode = Mode {
            via_topics: false,
            wait_in_place: false,
        };
        let never = || -> f64 { panic!("drew jitter for a dead letter") };
        assert_eq!(
            decide(2, ErrorClass::Transient, &policy, &[], mode, never),
            Decision::DeadLetter
        );
        assert_eq!(
            decide(1, ErrorClass::Validation, &policy, &[], mode, never),
            Decision::DeadLetter
        );
        let mut jittered = policy.clone();
        jittered.jitter = 0.5;
        // unit 0 spreads the delay to its lowest, 1 - jitter.
        assert_eq!(
            decide(1, ErrorClass::Transient, &jittered, &[], mode, || 0.0),
            Decision::Wait(Wait::Park(ms(50)))
        );
    }

    #[test]
    fn a_wait_follows_the_mode() {
        let d = ms(250);
        assert_eq!(
            Wait::of(
                Mode {
                    via_topics: true,
                    wait_in_place: true
                },
                d
            ),
            Wait::InPlace(d)
        );
        assert_eq!(
            Wait::of(
                Mode {
                    via_topics: true,
                    wait_in_place: false
                },
                d
            ),
            Wait::Park(d)
        );
    }
}

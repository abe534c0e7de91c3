//! Requests of one kind from concurrent reconciles, sent to Kafka as one admin request.
//!
//! Describing or creating a topic is one round trip whether it names one topic or a hundred;
//! at 10,000 KafkaTopics the reconciles spent their time in line for those round trips, one
//! each. A [`Batcher`] takes every request of its kind that is waiting when a slot is free
//! (at most [`MAX_IN_FLIGHT`] requests of a kind at once) and sends them together. Nothing is
//! held back to fill a batch: a lone request goes at once, and batches grow only while
//! requests are already waiting, so one reconcile at a time sees no added latency.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{AdminError, Result};

/// Requests of one kind in flight at once.
pub(super) const MAX_IN_FLIGHT: usize = 2;
/// The most items in one request (the broker's request stays well under its size limit).
pub(super) const MAX_BATCH: usize = 256;

/// One request for several items: answers each item, in the order given. It is called with
/// items whose keys are distinct.
pub(super) type Run<I, O> = Box<dyn Fn(Vec<I>) -> Vec<Result<O>> + Send + Sync>;

type Waiting<I, O> = (I, oneshot::Sender<Result<O>>);

/// Collects items of one request kind and runs them in batches on blocking threads. No task
/// of its own: a call that finds a slot free runs the batch, then whatever queued meanwhile,
/// until nothing waits (so a Batcher works from any runtime, and outlives none).
pub(super) struct Batcher<I, O> {
    inner: Arc<Inner<I, O>>,
}

struct Inner<I, O> {
    state: Mutex<State<I, O>>,
    run: Run<I, O>,
    /// Names what must not appear twice in one request (librdkafka refuses a request naming
    /// a topic twice).
    key: fn(&I) -> &[u8],
}

struct State<I, O> {
    waiting: Vec<Waiting<I, O>>,
    in_flight: usize,
}

impl<I, O> Batcher<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    pub(super) fn new(run: Run<I, O>, key: fn(&I) -> &[u8]) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    waiting: Vec::new(),
                    in_flight: 0,
                }),
                run,
                key,
            }),
        }
    }

    /// Runs `item` in the next batch and returns its answer.
    pub(super) async fn call(&self, item: I) -> Result<O> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut state = self.inner.lock();
            state.waiting.push((item, answer));
            let free = state.in_flight < MAX_IN_FLIGHT;
            if free {
                state.in_flight += 1;
            }
            free
        };
        if start {
            let inner = Arc::clone(&self.inner);
            tokio::task::spawn_blocking(move || inner.drain());
        }
        answered
            .await
            .map_err(|_| AdminError::InvalidRequest("an admin batch ended unanswered".into()))?
    }
}

impl<I, O> Inner<I, O> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<I, O>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs what waits, batch after batch, then gives the slot back.
    fn drain(&self) {
        // Gives the slot back if a request panics, so the batcher is not left a slot short;
        // the batch's callers then get an error, and later calls start a new drain.
        struct Slot<'a, I, O>(&'a Inner<I, O>);
        impl<I, O> Drop for Slot<'_, I, O> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.lock().in_flight -= 1;
                }
            }
        }
        let _slot = Slot(self);
        loop {
            let batch = {
                let mut state = self.lock();
                if state.waiting.is_empty() {
                    // Under the lock that a new caller takes to look for a free slot.
                    state.in_flight -= 1;
                    return;
                }
                let take = state.waiting.len().min(MAX_BATCH);
                state.waiting.drain(..take).collect::<Vec<_>>()
            };
            for round in rounds(batch, self.key) {
                let (items, answers): (Vec<I>, Vec<_>) = round.into_iter().unzip();
                let count = items.len();
                let mut results = (self.run)(items).into_iter();
                for answer in answers {
                    let result = results.next().unwrap_or_else(|| {
                        Err(AdminError::InvalidRequest(format!(
                            "an admin batch of {count} answered fewer items"
                        )))
                    });
                    // A caller that stopped waiting (its reconcile was cancelled) is fine.
                    let _ = answer.send(result);
                }
            }
        }
    }
}

/// Splits `batch` into requests whose keys are distinct, keeping each key's items in order:
/// the first of each key in the first request, the second in the next, and so on.
fn rounds<T, I>(batch: Vec<(I, T)>, key: fn(&I) -> &[u8]) -> Vec<Vec<(I, T)>> {
    let mut rounds: Vec<Vec<(I, T)>> = Vec::new();
    let mut seen: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for entry in batch {
        let count = seen.entry(key(&entry.0).to_vec()).or_insert(0);
        if rounds.len() <= *count {
            rounds.push(Vec::new());
        }
        rounds[*count].push(entry);
        *count += 1;
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(item: &String) -> &[u8] {
        item.as_bytes()
    }

    fn pair_name(item: &&'static str) -> &'static [u8] {
        item.as_bytes()
    }

    #[test]
    fn a_key_named_twice_goes_in_a_later_request_and_order_is_kept() {
        let batch = vec![("a", 1), ("b", 2), ("a", 3), ("c", 4), ("a", 5), ("b", 6)];
        let rounds = rounds(batch, pair_name);
        assert_eq!(
            rounds,
            vec![
                vec![("a", 1), ("b", 2), ("c", 4)],
                vec![("a", 3), ("b", 6)],
                vec![("a", 5)],
            ]
        );
    }

    #[tokio::test]
    async fn concurrent_calls_share_requests_and_each_gets_its_own_answer() {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let run: Run<String, String> = Box::new(move |items: Vec<String>| {
            let mut keys: Vec<&String> = items.iter().collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), items.len(), "a key twice in one request");
            seen.lock().unwrap().push(items.len());
            // Long enough for the other callers to queue behind the first requests.
            std::thread::sleep(std::time::Duration::from_millis(50));
            items
                .into_iter()
                .map(|i| match i.as_str() {
                    "bad" => Err(AdminError::InvalidRequest("bad".into())),
                    _ => Ok(i.to_uppercase()),
                })
                .collect()
        });
        let batcher = Arc::new(Batcher::new(run, name));
        // 300 calls: one refused, three asking the same name.
        let names: Vec<String> = (0..300)
            .map(|i| match i {
                37 => "bad".to_owned(),
                100 | 200 => "t0".to_owned(),
                i => format!("t{i}"),
            })
            .collect();
        let calls = names.iter().map(|n| {
            let batcher = Arc::clone(&batcher);
            let n = n.clone();
            async move { batcher.call(n).await }
        });
        let answers = futures::future::join_all(calls).await;
        for (n, answer) in names.iter().zip(&answers) {
            match answer {
                Ok(upper) => assert_eq!(upper, &n.to_uppercase()),
                Err(e) => assert_eq!(
                    (n.as_str(), e.to_string()),
                    ("bad", "invalid admin request: bad".to_owned())
                ),
            }
        }
        let sizes = requests.lock().unwrap().clone();
        assert_eq!(
            sizes.iter().sum::<usize>(),
            300,
            "every call sent once: {sizes:?}"
        );
        assert!(
            sizes.len() <= 10 && sizes.iter().all(|s| *s <= MAX_BATCH),
            "waiting calls went together, at most {MAX_BATCH} a request: {sizes:?}"
        );
        // The last drain gives its slot back just after its answers.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while batcher.inner.lock().in_flight > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(batcher.inner.lock().in_flight, 0, "every slot given back");
    }
}

//! Retries and key order under load: the worker with 1% poison records in its three ways of
//! retrying (the classic blocking consumer, key-ordered retries in place, retry topics) beside
//! its clean run, and a slow handler with one record at a time per partition beside several.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use axum::http::StatusCode;
use pubsubkafka_worker::config::{HandlerConfig, RetryMode, RetryPolicy};
use testenv::KafkaInfo;
use testenv::worker;

use super::{
    Measure, ROUNDS, create_topic, listed, median, produce_orders, raw, verdict, worker_rate,
};

/// One way of retrying, measured.
pub struct PoisonMode {
    label: &'static str,
    mode: RetryMode,
    concurrency: usize,
    /// With the default permanent error classes: a record that is not an order goes to the
    /// dead-letter topic at its first attempt.
    permanent: bool,
    /// Valid records handled per second.
    rates: Vec<f64>,
    /// Each rate over the clean run of its round.
    ratios: Vec<f64>,
}

pub struct PoisonResult {
    records: usize,
    poison: usize,
    retry: RetryPolicy,
    modes: Vec<PoisonMode>,
    clean_rates: Vec<f64>,
}

/// Measured rounds of the poison benchmark. The machine's speed drifts by a third between runs
/// a minute apart (the same run took 2.6 to 4.4 s of CPU); with three rounds of medians
/// compared, the retry-topics ratio read 0.73x to 0.95x at the same commit. Each run is
/// compared with the clean run of its own round, and the median of five such ratios is kept.
const POISON_ROUNDS: usize = 5;

/// 1% of the records are poison, retried 3 times (no error class is permanent here) before
/// the dead-letter topic; the valid records' throughput in each retry mode, against a clean
/// run of the same worker in each round (`clean`: the consumer benchmark's topic and its
/// record count), so both sides of a ratio share the machine's state of the moment.
pub async fn poison_bench(
    kafka: &KafkaInfo,
    worker_bin: &Path,
    dir: &Path,
    records: usize,
    backoff_ms: u64,
    clean: (&str, usize),
) -> PoisonResult {
    let topic = "bench-poison";
    create_topic(kafka, topic, 3).await;
    create_topic(kafka, &format!("{topic}-dlq"), 3).await;
    eprintln!("==> producing {records} orders of 1 KiB, 1% poison");
    produce_orders(kafka, topic, records, Some(100), false).await;
    let poison = records / 100;
    let retry = RetryPolicy {
        max_retries: 3,
        initial_backoff_ms: backoff_ms,
        multiplier: 2.0,
        max_backoff_ms: backoff_ms * 4,
        jitter: 0.0,
        permanent_errors: Vec::new(),
        mode: RetryMode::Blocking,
    };
    let concurrency = pubsubkafka_worker::config::DEFAULT_CONCURRENCY;
    let mut modes = vec![
        PoisonMode {
            label: "blocking (one record at a time per partition)",
            mode: RetryMode::Blocking,
            concurrency: 1,
            permanent: false,
            rates: Vec::new(),
            ratios: Vec::new(),
        },
        PoisonMode {
            label: "key-ordered, retries in place",
            mode: RetryMode::Blocking,
            concurrency,
            permanent: false,
            rates: Vec::new(),
            ratios: Vec::new(),
        },
        PoisonMode {
            label: "key-ordered, retry topics",
            mode: RetryMode::RetryTopics,
            concurrency,
            permanent: false,
            rates: Vec::new(),
            ratios: Vec::new(),
        },
        PoisonMode {
            label: "key-ordered, the default policy (a record that is not an order is permanent: dead-lettered at once)",
            mode: RetryMode::Blocking,
            concurrency,
            permanent: true,
            rates: Vec::new(),
            ratios: Vec::new(),
        },
    ];
    let mut clean_rates = Vec::new();
    // Round 0 is not measured: it warms the broker's JIT for the paths the runs take (its
    // produce and fetch of retry and dead-letter topics). Without it the broker's C2 compiler
    // took 16% of the machine's CPU during the first retry-topics run, whose rate rose from
    // 386k to 468k/s over the three rounds.
    for round in 0..=POISON_ROUNDS {
        let measured = round > 0;
        eprintln!("==> round {round}: the clean run");
        // Groups of their own, after the consumer benchmark's rounds (0 to 4).
        let measure = Measure::noop(clean.0, clean.1, 100 + round);
        let clean_rate = worker_rate(kafka, worker_bin, dir, &measure).await;
        if measured {
            clean_rates.push(clean_rate);
        }
        for (i, m) in modes.iter_mut().enumerate() {
            // The blocking run waits out every backoff: it warms nothing the others do not,
            // and three rounds of it (half a minute each) show what it is.
            if m.concurrency == 1 && !(1..=ROUNDS).contains(&round) {
                continue;
            }
            eprintln!(
                "==> round {round}: poison records, {} ({:?}, concurrency {})",
                m.label, m.mode, m.concurrency
            );
            // The blocking run stops after the first tenth of the topic (see `records`).
            let share = if m.concurrency == 1 { 10 } else { 1 };
            let mut measure = Measure::noop(topic, (records - poison) / share, round * 10 + i);
            measure.retry = RetryPolicy {
                mode: m.mode,
                permanent_errors: if m.permanent {
                    RetryPolicy::default().permanent_errors
                } else {
                    Vec::new()
                },
                ..retry.clone()
            };
            measure.concurrency = m.concurrency;
            measure.outcome = Some("handled");
            for t in pubsubkafka_worker::retry::retry_topics(&measure.label, &measure.retry) {
                create_topic(kafka, &t.name, 3).await;
            }
            let rate = worker_rate(kafka, worker_bin, dir, &measure).await;
            if measured {
                m.rates.push(rate);
                m.ratios.push(rate / clean_rate);
            }
        }
    }
    PoisonResult {
        records,
        poison,
        retry,
        modes,
        clean_rates,
    }
}

pub struct SlowResult {
    records: usize,
    delay_ms: u64,
    /// (concurrency per partition, records/s of each round)
    rates: Vec<(usize, Vec<f64>)>,
}

/// A handler that takes 10 ms per record (an HTTP endpoint that sleeps), with one record at a
/// time per partition and with the default concurrency.
pub async fn slow_bench(
    kafka: &KafkaInfo,
    worker_bin: &Path,
    dir: &Path,
    records: usize,
) -> SlowResult {
    let delay_ms = 10;
    let port = worker::serve(axum::Router::new().route(
        "/slow",
        axum::routing::post(move || async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            StatusCode::OK
        }),
    ))
    .await;
    let topic = "bench-slow";
    create_topic(kafka, topic, 3).await;
    eprintln!("==> producing {records} orders for the slow handler");
    produce_orders(kafka, topic, records, None, true).await;
    let mut rates = Vec::new();
    for concurrency in [1, pubsubkafka_worker::config::DEFAULT_CONCURRENCY] {
        let mut r = Vec::new();
        for round in 0..ROUNDS {
            eprintln!(
                "==> round {}: a 10 ms handler, concurrency {concurrency}",
                round + 1
            );
            let mut measure = Measure::noop(topic, records, round * 10 + concurrency);
            measure.handler = HandlerConfig::Http {
                url: format!("http://127.0.0.1:{port}/slow"),
                timeout_ms: 5_000,
            };
            measure.concurrency = concurrency;
            measure.outcome = Some("handled");
            r.push(worker_rate(kafka, worker_bin, dir, &measure).await);
        }
        rates.push((concurrency, r));
    }
    SlowResult {
        records,
        delay_ms,
        rates,
    }
}

pub fn render_poison(p: &PoisonResult, summary: &mut String, body: &mut String) {
    let clean = median(&p.clean_rates);
    for m in &p.modes {
        let rate = median(&m.rates);
        let ratio = median(&m.ratios);
        let _ = writeln!(
            summary,
            "| consumer, 1% poison records {}, {} (valid records/s) | {rate:.0} | {clean:.0} (the same worker, no poison) | {ratio:.2}x | {} | {} |",
            if m.permanent {
                "dead-lettered at once"
            } else {
                "retried 3 times"
            },
            m.label,
            // Blocking is the comparison: it waits out every backoff by design.
            if m.concurrency == 1 { "" } else { ">= 0.8x" },
            if m.concurrency == 1 {
                ""
            } else {
                verdict(ratio >= 0.8)
            },
        );
    }
    let _ = write!(
        body,
        "## Consumer with poison records\n\n{} records of which {} (one in 100, spread over the 3 \
         partitions, every record its own key) are not orders. In the first three runs no error \
         class is permanent, so each poison record is tried 4 times (3 retries, backoff {} ms \
         doubling, no jitter) and then published to the dead-letter topic with its headers; the \
         fourth run keeps the default policy, where a record that is not an order goes to the \
         dead-letter topic at once. Valid records go to the no-op handler. Measured: valid \
         records handled per second, from the first to the last, against a clean run of the \
         same worker on the consumer benchmark's topic at the start of each round, after a \
         round that is not measured (it warms the broker's JIT). {POISON_ROUNDS} measured rounds; \
         a ratio is the median of each run over the clean run of its round (the machine's \
         speed drifts between rounds). The blocking run reads only the first tenth of the \
         topic, in the first {ROUNDS} rounds: it is the comparison, waiting out every backoff. \
         The runs:\n\n",
        p.records, p.poison, p.retry.initial_backoff_ms,
    );
    for m in &p.modes {
        let _ = writeln!(
            body,
            "- {} (`mode: {:?}`, `concurrencyPerPartition: {}`): {}; over the clean run of \
             each round: {}",
            m.label,
            m.mode,
            m.concurrency,
            raw(&m.rates),
            listed(&m.ratios, 2),
        );
    }
    let _ = write!(
        body,
        "\nClean runs: {}. With one record at a time a partition waits out every backoff, so its \
         valid records wait too; key-ordered processing holds only the failing key.\n\n",
        raw(&p.clean_rates)
    );
}

pub fn render_slow(s: &SlowResult, summary: &mut String, body: &mut String) {
    let one = s
        .rates
        .iter()
        .find(|(c, _)| *c == 1)
        .map(|(_, r)| median(r))
        .unwrap_or(f64::NAN);
    for (concurrency, rates) in s.rates.iter().filter(|(c, _)| *c > 1) {
        let rate = median(rates);
        let _ = writeln!(
            summary,
            "| consumer, {} ms HTTP handler, {concurrency} records at a time per partition (records/s) | {rate:.0} | {one:.0} (one at a time per partition) | {:.2}x | | |",
            s.delay_ms,
            rate / one,
        );
    }
    let _ = write!(
        body,
        "## Slow handler\n\n{} distinct orders in a 3-partition topic, each POSTed by the HTTP \
         handler to an endpoint that answers after {} ms. Records/s handled:\n\n",
        s.records, s.delay_ms
    );
    for (concurrency, rates) in &s.rates {
        let _ = writeln!(
            body,
            "- `concurrencyPerPartition: {concurrency}`: {}",
            raw(rates)
        );
    }
    body.push('\n');
}

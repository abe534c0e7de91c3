//! The worker's header parsing (`headers::get`, `headers::parse_traceparent`) and the
//! dead-letter headers it builds from arbitrary original headers. Never panics; a traceparent it
//! accepts formats back to itself; a dead letter keeps every original header but earlier
//! `x-dlq-*` and `x-retry-*` ones and always carries the contract's headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pubsubkafka_worker::headers::{self as h, DeadLetter};
use rdkafka::message::{Header, Headers, OwnedHeaders};

fuzz_target!(|data: &[u8]| {
    // Records of `key \0 value \n`: arbitrary keys and values, a missing `\0` gives a null value.
    let mut original = OwnedHeaders::new();
    let mut pairs: Vec<(String, Option<&[u8]>)> = Vec::new();
    for record in data.split(|&b| b == b'\n') {
        let mut parts = record.splitn(2, |&b| b == 0);
        let key = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let value = parts.next();
        original = original.insert(Header {
            key: &key,
            value,
        });
        pairs.push((key, value));
    }

    for (key, value) in &pairs {
        if let Some(text) = h::get(Some(&original), key) {
            assert!(
                pairs
                    .iter()
                    .any(|(k, v)| k.eq_ignore_ascii_case(key) && *v == Some(text.as_bytes())),
                "get returned a value no header of that name has"
            );
        }
        if let Some(text) = value.and_then(|v| std::str::from_utf8(v).ok()) {
            if let Some(tp) = h::parse_traceparent(text) {
                let formatted = h::format_traceparent(tp.trace_id, tp.span_id, tp.flags & 1 == 1);
                let again = h::parse_traceparent(&formatted).expect("our own traceparent parses");
                assert_eq!((again.trace_id, again.span_id), (tp.trace_id, tp.span_id));
            }
        }
    }

    let message = String::from_utf8_lossy(data);
    let dead = h::dead_letter_headers(
        Some(&original),
        &DeadLetter {
            topic: "orders",
            partition: 2,
            offset: 42,
            timestamp_ms: Some(1),
            group: "shop.order-store",
            error_class: "Deserialization",
            error_message: &message,
            attempts: 1,
            failed_at: "2026-01-01T00:00:00Z".into(),
            correlation_id: h::get(Some(&original), h::CORRELATION_ID),
            trace_id: None,
            conflict: None,
        },
    );
    let kept: Vec<&str> = pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| {
            let starts = |prefix: &str| {
                k.len() >= prefix.len()
                    && k.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            };
            let ours = (starts("x-dlq-") && !k.eq_ignore_ascii_case(h::DLQ_REPLAY_COUNT))
                || starts("x-retry-");
            !ours
        })
        .collect();
    let out: Vec<&str> = dead.iter().map(|x| x.key).collect();
    assert_eq!(&out[..kept.len()], &kept[..], "original headers first, in order");
    assert_eq!(h::get(Some(&dead), h::DLQ_ORIGINAL_OFFSET), Some("42"));
    assert_eq!(
        h::get(Some(&dead), h::DLQ_ERROR_MESSAGE).map(|m| m.chars().count() <= 1024),
        Some(true),
        "the error message is capped at 1 KiB of characters"
    );
});

//! Record headers: the ones the gateway writes (content type, correlation id, W3C
//! traceparent) and the dead-letter contract the worker adds. The names here are a stable,
//! documented contract (README, "Dead-letter records"); replay tooling reads them.

use rdkafka::message::{Header, Headers, OwnedHeaders};

pub const CONTENT_TYPE: &str = "content-type";
pub const CORRELATION_ID: &str = "x-correlation-id";
pub const TRACEPARENT: &str = "traceparent";

/// Topic the record was first consumed from.
pub const DLQ_ORIGINAL_TOPIC: &str = "x-dlq-original-topic";
/// Partition it was consumed from (decimal).
pub const DLQ_ORIGINAL_PARTITION: &str = "x-dlq-original-partition";
/// Its offset there (decimal).
pub const DLQ_ORIGINAL_OFFSET: &str = "x-dlq-original-offset";
/// Its record timestamp, milliseconds since the Unix epoch (decimal).
pub const DLQ_ORIGINAL_TIMESTAMP: &str = "x-dlq-original-timestamp";
/// The consumer group that gave up on it.
pub const DLQ_CONSUMER_GROUP: &str = "x-dlq-consumer-group";
/// Deserialization, Validation, Rejected or Transient.
pub const DLQ_ERROR_CLASS: &str = "x-dlq-error-class";
/// The last error, human readable (truncated to 1 KiB).
pub const DLQ_ERROR_MESSAGE: &str = "x-dlq-error-message";
/// How many times the handler was tried (decimal).
pub const DLQ_ATTEMPTS: &str = "x-dlq-attempts";
/// When the worker gave up, RFC 3339.
pub const DLQ_FAILED_AT: &str = "x-dlq-failed-at";
/// The correlation id, copied out of the message when no header carried it.
pub const DLQ_CORRELATION_ID: &str = "x-dlq-correlation-id";
/// The W3C trace id of the record's trace.
pub const DLQ_TRACE_ID: &str = "x-dlq-trace-id";
/// Set (to the value's size in bytes) when the value was too large for the dead-letter topic
/// and was left out; the original coordinates locate it.
pub const DLQ_VALUE_OMITTED: &str = "x-dlq-value-omitted";
/// Class Conflict: SHA-256 (hex) of the event the event store holds under the order_id.
pub const DLQ_STORED_CONTENT_SHA256: &str = "x-dlq-stored-content-sha256";
/// Class Conflict: SHA-256 (hex) of this record's event, hashed the same way.
pub const DLQ_INCOMING_CONTENT_SHA256: &str = "x-dlq-incoming-content-sha256";
/// How many times the record was replayed from the dead-letter topic (decimal).
pub const DLQ_REPLAY_COUNT: &str = "x-dlq-replay-count";

/// Where a record in a retry topic was first consumed, how often it failed and when it is due,
/// in one header: `attempts=2;due-at=1764600000000;partition=1;offset=4711;timestamp=1764599990000;topic=orders`
/// (numbers in decimal, times in milliseconds since the Unix epoch; `timestamp` absent when the
/// source record had none; a topic name holds no `;`). One header rather than
/// six: each header of a copy costs librdkafka an allocation when it is produced and again when
/// it is consumed.
pub const RETRY_STATE: &str = "x-retry-state";
/// The six headers that carried [`RETRY_STATE`]'s fields before it: copies written by an earlier
/// version are still read.
pub const LEGACY_RETRY_STATE: [&str; 6] = [
    "x-retry-original-topic",
    "x-retry-original-partition",
    "x-retry-original-offset",
    "x-retry-original-timestamp",
    "x-retry-attempts",
    "x-retry-due-at",
];
/// The class of the last failure.
pub const RETRY_ERROR_CLASS: &str = "x-retry-error-class";
/// The last failure, human readable (truncated to 1 KiB).
pub const RETRY_ERROR_MESSAGE: &str = "x-retry-error-message";

/// The first value of header `name` as UTF-8.
pub fn get<'a, H: Headers>(headers: Option<&'a H>, name: &str) -> Option<&'a str> {
    let headers = headers?;
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// The first values of headers `names` as UTF-8, in one walk of the headers (each lookup
/// through [`get`] walks them all, and a record's headers are read through FFI).
pub fn get_all<'a, H: Headers, const N: usize>(
    headers: Option<&'a H>,
    names: [&str; N],
) -> [Option<&'a str>; N] {
    let mut values = [None; N];
    let Some(headers) = headers else {
        return values;
    };
    let mut found = [false; N];
    let mut left = N;
    for header in headers.iter() {
        let Some(i) = (0..N).find(|&i| !found[i] && header.key.eq_ignore_ascii_case(names[i]))
        else {
            continue;
        };
        found[i] = true;
        values[i] = header.value.and_then(|v| std::str::from_utf8(v).ok());
        left -= 1;
        if left == 0 {
            break;
        }
    }
    values
}

/// A parsed W3C `traceparent`: version 00, trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent<'a> {
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub flags: u8,
}

/// Parses `00-<32 hex>-<16 hex>-<2 hex>`; ids of all zeros are invalid.
pub fn parse_traceparent(value: &str) -> Option<TraceParent<'_>> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || version != "00" {
        return None;
    }
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && !s.bytes().all(|b| b == b'0')
    };
    if !hex(trace_id, 32) || !hex(span_id, 16) || flags.len() != 2 {
        return None;
    }
    Some(TraceParent {
        trace_id,
        span_id,
        flags: u8::from_str_radix(flags, 16).ok()?,
    })
}

/// Formats a `traceparent` for a trace and span.
pub fn format_traceparent(trace_id: &str, span_id: &str, sampled: bool) -> String {
    format!(
        "00-{trace_id}-{span_id}-{}",
        if sampled { "01" } else { "00" }
    )
}

/// Where a dead letter came from and why it failed.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub group: &'a str,
    pub error_class: &'a str,
    pub error_message: &'a str,
    pub attempts: u32,
    pub failed_at: String,
    pub correlation_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    /// Class Conflict: the stored and the incoming content hashes.
    pub conflict: Option<(&'a str, &'a str)>,
}

/// Whether header `name` starts with `prefix` in any case: [`get`] finds names
/// case-insensitively, so an original `X-DLQ-Original-Offset` kept in a dead letter would
/// shadow the real one.
fn has_prefix_ignoring_case(name: &str, prefix: &str) -> bool {
    name.as_bytes()
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// The headers a producer or an earlier owner of the record wrote, without the retry and
/// dead-letter bookkeeping of earlier failures (the replay count stays: it counts replays).
fn original_headers<H: Headers>(original: Option<&H>, extra: usize) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(original.map_or(0, |h| h.count()) + extra);
    if let Some(original) = original {
        for h in original.iter() {
            let ours = (has_prefix_ignoring_case(h.key, "x-dlq-")
                && !h.key.eq_ignore_ascii_case(DLQ_REPLAY_COUNT))
                || has_prefix_ignoring_case(h.key, "x-retry-");
            if !ours {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
    }
    out
}

fn truncated(message: &str) -> String {
    message.chars().take(1024).collect()
}

/// The original headers, unchanged and in order, followed by the dead-letter headers. Any
/// `x-dlq-*` or `x-retry-*` header of an earlier failure is replaced, except the replay count.
pub fn dead_letter_headers<H: Headers>(original: Option<&H>, dl: &DeadLetter<'_>) -> OwnedHeaders {
    let mut out = original_headers(original, 13);
    let message = truncated(dl.error_message);
    let partition = dl.partition.to_string();
    let offset = dl.offset.to_string();
    let timestamp = dl.timestamp_ms.map(|t| t.to_string());
    let attempts = dl.attempts.to_string();
    let mut fields: Vec<(&str, &str)> = vec![
        (DLQ_ORIGINAL_TOPIC, dl.topic),
        (DLQ_ORIGINAL_PARTITION, &partition),
        (DLQ_ORIGINAL_OFFSET, &offset),
        (DLQ_CONSUMER_GROUP, dl.group),
        (DLQ_ERROR_CLASS, dl.error_class),
        (DLQ_ERROR_MESSAGE, &message),
        (DLQ_ATTEMPTS, &attempts),
        (DLQ_FAILED_AT, &dl.failed_at),
    ];
    if let Some(t) = &timestamp {
        fields.push((DLQ_ORIGINAL_TIMESTAMP, t));
    }
    if let Some(c) = dl.correlation_id {
        fields.push((DLQ_CORRELATION_ID, c));
    }
    if let Some(t) = dl.trace_id {
        fields.push((DLQ_TRACE_ID, t));
    }
    if let Some((stored, incoming)) = dl.conflict {
        fields.push((DLQ_STORED_CONTENT_SHA256, stored));
        fields.push((DLQ_INCOMING_CONTENT_SHA256, incoming));
    }
    for (key, value) in fields {
        out = out.insert(Header {
            key,
            value: Some(value),
        });
    }
    out
}

/// Where a record in a retry topic came from, how often it failed and when it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryState<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub attempts: u32,
    pub due_at_ms: i64,
}

impl<'a> RetryState<'a> {
    /// Reads [`RETRY_STATE`] (or, on a copy of an earlier version, its six headers); `None`
    /// when it is missing or malformed.
    pub fn parse<H: Headers>(headers: Option<&'a H>) -> Option<Self> {
        let [state, topic, partition, offset, timestamp, attempts, due_at] = get_all(
            headers,
            [
                RETRY_STATE,
                LEGACY_RETRY_STATE[0],
                LEGACY_RETRY_STATE[1],
                LEGACY_RETRY_STATE[2],
                LEGACY_RETRY_STATE[3],
                LEGACY_RETRY_STATE[4],
                LEGACY_RETRY_STATE[5],
            ],
        );
        if let Some(state) = state {
            return Self::parse_value(state);
        }
        let number = |value: Option<&str>| value?.parse::<i64>().ok();
        Some(Self {
            topic: topic?,
            partition: i32::try_from(number(partition)?).ok()?,
            offset: number(offset)?,
            timestamp_ms: number(timestamp),
            attempts: u32::try_from(number(attempts)?).ok()?,
            due_at_ms: number(due_at)?,
        })
    }

    /// Reads the value of a [`RETRY_STATE`] header: every field once, unknown ones skipped.
    fn parse_value(value: &'a str) -> Option<Self> {
        let (mut attempts, mut due_at, mut partition, mut offset, mut timestamp, mut topic) =
            (None, None, None, None, None, None);
        let mut rest = value;
        while !rest.is_empty() {
            let (name, after) = rest.split_once('=')?;
            let field;
            (field, rest) = after.split_once(';').unwrap_or((after, ""));
            let slot = match name {
                "attempts" => &mut attempts,
                "due-at" => &mut due_at,
                "partition" => &mut partition,
                "offset" => &mut offset,
                "timestamp" => &mut timestamp,
                "topic" => &mut topic,
                _ => continue,
            };
            if slot.replace(field).is_some() {
                return None;
            }
        }
        let number = |value: Option<&str>| value?.parse::<i64>().ok();
        Some(Self {
            topic: topic.filter(|t| !t.is_empty())?,
            partition: partition?.parse().ok()?,
            offset: number(offset)?,
            timestamp_ms: match timestamp {
                Some(t) => Some(t.parse().ok()?),
                None => None,
            },
            attempts: attempts?.parse().ok()?,
            due_at_ms: number(due_at)?,
        })
    }

    /// The value of its [`RETRY_STATE`] header.
    fn value(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(96 + self.topic.len());
        let _ = write!(
            out,
            "attempts={};due-at={};partition={};offset={};",
            self.attempts, self.due_at_ms, self.partition, self.offset
        );
        if let Some(t) = self.timestamp_ms {
            let _ = write!(out, "timestamp={t};");
        }
        out.push_str("topic=");
        out.push_str(self.topic);
        out
    }
}

/// The original headers, unchanged and in order, followed by the retry headers (those of an
/// earlier retry replaced).
pub fn retry_headers<H: Headers>(
    original: Option<&H>,
    state: &RetryState<'_>,
    error_class: &str,
    error_message: &str,
) -> OwnedHeaders {
    original_headers(original, 3)
        .insert(Header {
            key: RETRY_STATE,
            value: Some(&state.value()),
        })
        .insert(Header {
            key: RETRY_ERROR_CLASS,
            value: Some(error_class),
        })
        .insert(Header {
            key: RETRY_ERROR_MESSAGE,
            value: Some(&truncated(error_message)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_walk_finds_what_a_lookup_per_name_finds() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "Content-Type",
                value: Some("application/json"),
            })
            .insert(Header {
                key: "x-bad",
                value: Some(&[0xff_u8, 0xfe][..]),
            })
            .insert(Header {
                key: "x-bad",
                value: Some("later"),
            })
            .insert(Header {
                key: "content-type",
                value: Some("text/plain"),
            })
            .insert(Header::<&str> {
                key: "x-empty",
                value: None,
            });
        let names = ["content-type", "X-BAD", "x-empty", "x-missing"];
        let all = get_all(Some(&headers), names);
        assert_eq!(all, [Some("application/json"), None, None, None]);
        assert_eq!(all, names.map(|n| get(Some(&headers), n)));
        assert_eq!(get_all(None::<&OwnedHeaders>, names), [None; 4]);
    }

    #[test]
    fn traceparent_parses_only_the_w3c_form() {
        let tp =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id, "00f067aa0ba902b7");
        assert_eq!(tp.flags, 1);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        let formatted =
            format_traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", true);
        assert!(parse_traceparent(&formatted).is_some());
    }

    /// Found by the `headers` fuzz target: a header named like ours in another case survived
    /// and `get` (case-insensitive) returned it instead of the contract's value.
    #[test]
    fn earlier_dead_letter_headers_are_replaced_whatever_their_case() {
        let original = OwnedHeaders::new()
            .insert(Header {
                key: "X-Dlq-Original-Offset",
                value: Some("7"),
            })
            .insert(Header {
                key: "X-DLQ-Replay-Count",
                value: Some("2"),
            })
            .insert(Header {
                key: "x-dlq",
                value: Some("kept: not our prefix"),
            });
        let out = dead_letter_headers(
            Some(&original),
            &DeadLetter {
                topic: "orders",
                partition: 0,
                offset: 42,
                timestamp_ms: None,
                group: "g",
                error_class: "Validation",
                error_message: "bad",
                attempts: 1,
                failed_at: "2026-01-01T00:00:00Z".into(),
                correlation_id: None,
                trace_id: None,
                conflict: None,
            },
        );
        assert_eq!(get(Some(&out), DLQ_ORIGINAL_OFFSET), Some("42"));
        assert_eq!(get(Some(&out), DLQ_REPLAY_COUNT), Some("2"));
        assert_eq!(get(Some(&out), "x-dlq"), Some("kept: not our prefix"));
        assert!(!has_prefix_ignoring_case("x-dl\u{e9}", "x-dlq-"));
    }

    #[test]
    fn dead_letter_headers_keep_the_originals_and_add_the_contract() {
        let original = OwnedHeaders::new()
            .insert(Header {
                key: CONTENT_TYPE,
                value: Some("application/json"),
            })
            .insert(Header {
                key: DLQ_ERROR_CLASS,
                value: Some("Transient"),
            })
            .insert(Header {
                key: DLQ_REPLAY_COUNT,
                value: Some("1"),
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            });
        let dl = DeadLetter {
            topic: "orders",
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_700_000_000_000),
            group: "shop.store",
            error_class: "Validation",
            error_message: "items[0].quantity: must be between 1 and 10000",
            attempts: 1,
            failed_at: "2026-11-24T08:00:00Z".into(),
            correlation_id: Some("corr-1"),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            conflict: None,
        };
        let headers = dead_letter_headers(Some(&original), &dl);
        let keys: Vec<&str> = headers.iter().map(|h| h.key).collect();
        assert_eq!(
            &keys[..3],
            [CONTENT_TYPE, DLQ_REPLAY_COUNT, TRACEPARENT],
            "originals first, old class dropped"
        );
        assert_eq!(get(Some(&headers), DLQ_ERROR_CLASS), Some("Validation"));
        assert_eq!(get(Some(&headers), DLQ_ORIGINAL_OFFSET), Some("41"));
        assert_eq!(get(Some(&headers), DLQ_ORIGINAL_PARTITION), Some("2"));
        assert_eq!(
            get(Some(&headers), DLQ_ORIGINAL_TIMESTAMP),
            Some("1700000000000")
        );
        assert_eq!(get(Some(&headers), DLQ_CORRELATION_ID), Some("corr-1"));
        assert_eq!(
            headers.iter().filter(|h| h.key == DLQ_ERROR_CLASS).count(),
            1
        );
    }

    #[test]
    fn retry_headers_round_trip_and_replace_an_earlier_retry() {
        let original = OwnedHeaders::new().insert(Header {
            key: CONTENT_TYPE,
            value: Some("application/json"),
        });
        let first = RetryState {
            topic: "orders",
            partition: 1,
            offset: 7,
            timestamp_ms: Some(1_700_000_000_000),
            attempts: 1,
            due_at_ms: 1_700_000_001_000,
        };
        let once = retry_headers(Some(&original), &first, "Transient", "HTTP 503");
        assert_eq!(RetryState::parse(Some(&once)), Some(first.clone()));
        let second = RetryState {
            attempts: 2,
            due_at_ms: 1_700_000_003_000,
            ..first
        };
        let twice = retry_headers(Some(&once), &second, "Transient", "HTTP 500");
        assert_eq!(RetryState::parse(Some(&twice)), Some(second));
        assert_eq!(twice.iter().filter(|h| h.key == RETRY_STATE).count(), 1);
        assert_eq!(
            twice.iter().map(|h| h.key).collect::<Vec<_>>(),
            [
                CONTENT_TYPE,
                RETRY_STATE,
                RETRY_ERROR_CLASS,
                RETRY_ERROR_MESSAGE
            ],
            "the original headers, then three of ours"
        );
        assert_eq!(get(Some(&twice), RETRY_ERROR_MESSAGE), Some("HTTP 500"));
        assert_eq!(twice.iter().next().unwrap().key, CONTENT_TYPE);
        assert_eq!(RetryState::parse(Some(&original)), None);
    }

    #[test]
    fn the_retry_state_is_one_readable_header() {
        let state = RetryState {
            topic: "shop.orders-v2",
            partition: 11,
            offset: 4711,
            timestamp_ms: Some(1_764_599_990_000),
            attempts: 2,
            due_at_ms: 1_764_600_000_000,
        };
        let headers = retry_headers(None::<&OwnedHeaders>, &state, "Transient", "HTTP 503");
        assert_eq!(
            get(Some(&headers), RETRY_STATE),
            Some(
                "attempts=2;due-at=1764600000000;partition=11;offset=4711;\
                 timestamp=1764599990000;topic=shop.orders-v2"
            )
        );
        let untimed = RetryState {
            timestamp_ms: None,
            ..state.clone()
        };
        let headers = retry_headers(None::<&OwnedHeaders>, &untimed, "Transient", "x");
        assert_eq!(RetryState::parse(Some(&headers)), Some(untimed));
    }

    #[test]
    fn a_retry_state_in_any_field_order_parses_and_a_malformed_one_does_not() {
        let parse = |value: &str| {
            let headers = OwnedHeaders::new().insert(Header {
                key: "X-Retry-State",
                value: Some(value),
            });
            RetryState::parse(Some(&headers)).map(|s| {
                (
                    s.topic.to_owned(),
                    s.partition,
                    s.offset,
                    s.timestamp_ms,
                    s.attempts,
                    s.due_at_ms,
                )
            })
        };
        assert_eq!(
            parse("topic=o;offset=7;partition=1;due-at=9;attempts=3;later=ignored"),
            Some(("o".to_owned(), 1, 7, None, 3, 9))
        );
        for bad in [
            "",
            "attempts=3;due-at=9;partition=1;offset=7",
            "attempts=3;due-at=9;partition=1;offset=7;topic=",
            "attempts=3;attempts=4;due-at=9;partition=1;offset=7;topic=o",
            "attempts=-1;due-at=9;partition=1;offset=7;topic=o",
            "attempts=3;due-at=9;partition=4294967296;offset=7;topic=o",
            "attempts=3;due-at=soon;partition=1;offset=7;topic=o",
            "attempts=3;due-at=9;partition=1;offset=7;timestamp=;topic=o",
            "attempts=3;due-at=9;partition=1;offset=7;topic",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_copy_written_by_an_earlier_version_is_still_read() {
        let mut legacy = OwnedHeaders::new();
        for (key, value) in LEGACY_RETRY_STATE.iter().zip([
            "orders",
            "2",
            "41",
            "1700000000000",
            "1",
            "1700000001000",
        ]) {
            legacy = legacy.insert(Header {
                key,
                value: Some(value),
            });
        }
        assert_eq!(
            RetryState::parse(Some(&legacy)),
            Some(RetryState {
                topic: "orders",
                partition: 2,
                offset: 41,
                timestamp_ms: Some(1_700_000_000_000),
                attempts: 1,
                due_at_ms: 1_700_000_001_000,
            })
        );
        // Its next copy carries the one header, and none of the six.
        let state = RetryState::parse(Some(&legacy)).unwrap();
        let next = retry_headers(Some(&legacy), &state, "Transient", "x");
        assert!(next.iter().all(|h| !LEGACY_RETRY_STATE.contains(&h.key)));
        assert_eq!(RetryState::parse(Some(&next)), Some(state));
    }

    #[test]
    fn a_conflict_carries_both_content_hashes() {
        let dl = DeadLetter {
            topic: "orders",
            partition: 1,
            offset: 7,
            timestamp_ms: None,
            group: "g",
            error_class: "Conflict",
            error_message: "order_id o-1 is already stored with different content",
            attempts: 1,
            failed_at: "2026-11-24T08:00:00Z".into(),
            correlation_id: None,
            trace_id: None,
            conflict: Some(("aa11", "bb22")),
        };
        let headers = dead_letter_headers(None::<&OwnedHeaders>, &dl);
        assert_eq!(get(Some(&headers), DLQ_ERROR_CLASS), Some("Conflict"));
        assert_eq!(get(Some(&headers), DLQ_STORED_CONTENT_SHA256), Some("aa11"));
        assert_eq!(
            get(Some(&headers), DLQ_INCOMING_CONTENT_SHA256),
            Some("bb22")
        );
    }

    #[test]
    fn dead_letters_drop_the_retry_bookkeeping() {
        let state = RetryState {
            topic: "orders",
            partition: 0,
            offset: 3,
            timestamp_ms: None,
            attempts: 3,
            due_at_ms: 5,
        };
        let retried = retry_headers(None::<&OwnedHeaders>, &state, "Transient", "x");
        let dl = DeadLetter {
            topic: "orders",
            partition: 0,
            offset: 3,
            timestamp_ms: None,
            group: "g",
            error_class: "Transient",
            error_message: "x",
            attempts: 4,
            failed_at: "2026-11-24T08:00:00Z".into(),
            correlation_id: None,
            trace_id: None,
            conflict: None,
        };
        let headers = dead_letter_headers(Some(&retried), &dl);
        assert!(headers.iter().all(|h| !h.key.starts_with("x-retry-")));
        assert_eq!(get(Some(&headers), DLQ_ATTEMPTS), Some("4"));
    }
}

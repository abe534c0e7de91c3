//! The ECST order event: the complete state of an order (customer, items, inventory, tracing
//! metadata) carried in each record, so consumers need no call back to the order service.
//!
//! JSON now (ADR-001); the record's `content-type` header names the format so another encoding
//! can follow without guessing.

use serde::{Deserialize, Serialize};

mod fast;
pub mod proto;
mod write;

/// Text fields of an event: short strings (ids, SKUs, codes) are stored inline, so decoding a
/// record allocates for its long strings only.
pub type Text = compact_str::CompactString;

/// The content type of JSON order events.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Largest order event accepted (bytes of the encoded record value).
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Current schema version of the event.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderEvent {
    pub order_id: Text,
    pub customer_info: CustomerInfo,
    pub items: Vec<Item>,
    pub inventory_status: Vec<InventoryStatus>,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerInfo {
    pub customer_id: Text,
    pub name: Text,
    pub email: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<Text>,
    pub shipping_address: Address,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub line1: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<Text>,
    pub city: Text,
    pub postal_code: Text,
    /// ISO 3166-1 alpha-2, e.g. FR.
    pub country: Text,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub sku: Text,
    pub name: Text,
    pub quantity: u32,
    /// Price of one unit in `currency`.
    pub unit_price: f64,
    /// ISO 4217, e.g. EUR.
    pub currency: Text,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryStatus {
    pub sku: Text,
    pub warehouse: Text,
    pub reserved: bool,
    pub available_quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub correlation_id: Text,
    /// W3C trace id: 32 lowercase hex characters.
    pub trace_id: Text,
    /// W3C span id: 16 lowercase hex characters.
    pub span_id: Text,
    /// RFC 3339 time the order was accepted.
    pub created_at: Text,
    pub schema_version: u32,
    /// The service that produced the event.
    pub source: Text,
}

/// One invalid field, named by its path (`items[2].quantity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a record is not a valid order event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not decodable at all (not UTF-8, not JSON, wrong shape, unknown content type).
    #[error("{0}")]
    Deserialization(String),
    /// Decodable, but breaks the contract.
    #[error("invalid fields: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Validation(Vec<FieldError>),
}

/// The record's media type (JSON when absent) and value, refusing an empty or oversized value.
fn framing<'a>(
    content_type: Option<&'a str>,
    value: Option<&'a [u8]>,
) -> Result<(&'a str, &'a [u8]), DecodeError> {
    let value = value.ok_or_else(|| DecodeError::Deserialization("empty record value".into()))?;
    if value.len() > MAX_EVENT_BYTES {
        return Err(DecodeError::Validation(vec![FieldError {
            field: "(record)".into(),
            message: format!(
                "{} bytes exceeds the {MAX_EVENT_BYTES}-byte limit",
                value.len()
            ),
        }]));
    }
    let media_type = content_type
        .map(|c| c.split(';').next().unwrap_or_default().trim())
        .unwrap_or(CONTENT_TYPE_JSON);
    Ok((media_type, value))
}

/// Decodes and validates a record value of `content_type` (JSON when absent).
pub fn decode(content_type: Option<&str>, value: Option<&[u8]>) -> Result<OrderEvent, DecodeError> {
    decode_with(content_type, value, true)
}

/// [`decode`] without the fast JSON parser: serde_json alone, as the reference the fast path
/// must agree with (the fuzz target compares the two on every input).
#[doc(hidden)]
pub fn decode_with_serde(
    content_type: Option<&str>,
    value: Option<&[u8]>,
) -> Result<OrderEvent, DecodeError> {
    decode_with(content_type, value, false)
}

/// The fast JSON parser alone: the event, or `None` where it leaves the decision to
/// serde_json. For the fuzz target and benchmarks.
#[doc(hidden)]
pub fn parse_json_fast(text: &str) -> Option<OrderEvent> {
    fast::parse(text)
}

/// The event as compact JSON, byte for byte what `serde_json::to_vec` writes, faster (see
/// `order/write.rs`): the gateway's encoding of every JSON order.
pub fn encode_json(event: &OrderEvent) -> Vec<u8> {
    write::event_json(event)
}

/// The fast JSON parser on a client's order request (the gateway's `POST /orders` body): its
/// parts, or `None` where it leaves the decision to serde_json, which words the refusal.
pub fn parse_request_fast(body: &[u8]) -> Option<proto::RequestParts> {
    fast::parse_request(body)
}

fn decode_with(
    content_type: Option<&str>,
    value: Option<&[u8]>,
    fast_json: bool,
) -> Result<OrderEvent, DecodeError> {
    let (media_type, value) = framing(content_type, value)?;
    if media_type.eq_ignore_ascii_case(proto::CONTENT_TYPE_PROTOBUF) {
        let event = proto::decode_event(value)?;
        let errors = event.validate();
        return if errors.is_empty() {
            Ok(event)
        } else {
            Err(DecodeError::Validation(errors))
        };
    }
    if !media_type.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
        return Err(DecodeError::Deserialization(format!(
            "unsupported content type {media_type:?}"
        )));
    }
    // One UTF-8 check over the whole value is cheaper than serde_json's check of every string
    // and key it meets (a fifth of the decoding instructions of a 1 KiB order).
    let text = std::str::from_utf8(value).map_err(|e| {
        DecodeError::Deserialization(format!("not an order event: invalid UTF-8: {e}"))
    })?;
    // The fast parser takes the orders it is sure about; serde_json decides everything else
    // (and words the errors).
    let event = match fast_json.then(|| fast::parse(text)).flatten() {
        Some(event) => event,
        None => serde_json::from_str(text)
            .map_err(|e| DecodeError::Deserialization(format!("not an order event: {e}")))?,
    };
    let errors = event.validate();
    if errors.is_empty() {
        Ok(event)
    } else {
        Err(DecodeError::Validation(errors))
    }
}

/// Checks that a record of another domain is well-formed for its content type (JSON parses,
/// Protobuf is not empty) without knowing its schema: what a forwarding handler needs.
pub fn check_encoding(content_type: Option<&str>, value: Option<&[u8]>) -> Result<(), DecodeError> {
    let (media_type, value) = framing(content_type, value)?;
    if media_type.eq_ignore_ascii_case(proto::CONTENT_TYPE_PROTOBUF) {
        return Ok(());
    }
    if !media_type.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
        return Err(DecodeError::Deserialization(format!(
            "unsupported content type {media_type:?}"
        )));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(value)
        .map(drop)
        .map_err(|e| DecodeError::Deserialization(format!("not JSON: {e}")))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `value.trim().is_empty()`, answered from the first byte when it is ASCII and not white space
/// (nearly always): trimming decodes characters from both ends, a few percent of a decode.
fn is_blank(value: &str) -> bool {
    match value.as_bytes().first() {
        // `trim` uses `char::is_whitespace`, which unlike `u8::is_ascii_whitespace` includes
        // the vertical tab.
        Some(&b) if b.is_ascii() && !char::from(b).is_whitespace() => false,
        _ => value.trim().is_empty(),
    }
}

/// Collects field errors with a path prefix.
struct Check<'a> {
    errors: &'a mut Vec<FieldError>,
}

impl Check<'_> {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Checks a required text field; the field path is only formatted on failure (the hot
    /// path validates every consumed record).
    fn text(&mut self, field: std::fmt::Arguments<'_>, value: &str, max: usize) {
        if is_blank(value) {
            self.fail(field.to_string(), "must not be empty");
        } else if value.len() > max {
            self.fail(
                field.to_string(),
                format!("must be at most {max} characters"),
            );
        }
    }
}

impl OrderEvent {
    /// Every contract violation, by field path; empty when valid.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.validate_into(&mut errors);
        errors
    }

    fn validate_into(&self, errors: &mut Vec<FieldError>) {
        let mut check = Check { errors };
        validate_order_id(&mut check, &self.order_id);
        self.customer_info.validate(&mut check, "customer_info");
        validate_items(&mut check, &self.items);
        for (i, inv) in self.inventory_status.iter().enumerate() {
            check.text(format_args!("inventory_status[{i}].sku"), &inv.sku, 64);
            check.text(
                format_args!("inventory_status[{i}].warehouse"),
                &inv.warehouse,
                64,
            );
            if inv.available_quantity < 0 {
                check.fail(
                    format!("inventory_status[{i}].available_quantity"),
                    "must not be negative",
                );
            }
        }
        let m = &self.metadata;
        check.text(
            format_args!("metadata.correlation_id"),
            &m.correlation_id,
            128,
        );
        if !is_hex(&m.trace_id, 32) || m.trace_id.bytes().all(|b| b == b'0') {
            check.fail(
                "metadata.trace_id",
                "must be 32 lowercase hex characters, not all zero",
            );
        }
        if !is_hex(&m.span_id, 16) || m.span_id.bytes().all(|b| b == b'0') {
            check.fail(
                "metadata.span_id",
                "must be 16 lowercase hex characters, not all zero",
            );
        }
        if m.created_at.parse::<jiff::Timestamp>().is_err() {
            check.fail("metadata.created_at", "must be an RFC 3339 time");
        }
        if m.schema_version == 0 || m.schema_version > SCHEMA_VERSION {
            check.fail(
                "metadata.schema_version",
                format!("must be between 1 and {SCHEMA_VERSION}"),
            );
        }
        check.text(format_args!("metadata.source"), &m.source, 128);
    }

    /// Sum of quantity x unit price over the items.
    pub fn total(&self) -> f64 {
        self.items
            .iter()
            .map(|i| f64::from(i.quantity) * i.unit_price)
            .sum()
    }
}

fn validate_order_id(check: &mut Check<'_>, order_id: &str) {
    if order_id.is_empty() || order_id.len() > 64 {
        check.fail("order_id", "must be 1 to 64 characters");
    } else if !order_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        check.fail("order_id", "may contain only letters, digits, '-' and '_'");
    }
}

fn validate_items(check: &mut Check<'_>, items: &[Item]) {
    if items.is_empty() {
        check.fail("items", "an order needs at least one item");
    }
    if items.len() > 500 {
        check.fail("items", "at most 500 items");
    }
    for (i, item) in items.iter().enumerate() {
        check.text(format_args!("items[{i}].sku"), &item.sku, 64);
        check.text(format_args!("items[{i}].name"), &item.name, 256);
        if item.quantity == 0 || item.quantity > 10_000 {
            check.fail(
                format!("items[{i}].quantity"),
                "must be between 1 and 10000",
            );
        }
        if !item.unit_price.is_finite() || item.unit_price < 0.0 || item.unit_price > 1e9 {
            check.fail(
                format!("items[{i}].unit_price"),
                "must be a price between 0 and 1e9",
            );
        }
        if item.currency.len() != 3 || !item.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            check.fail(
                format!("items[{i}].currency"),
                "must be an ISO 4217 code such as EUR",
            );
        }
    }
}

impl CustomerInfo {
    fn validate(&self, check: &mut Check<'_>, at: &str) {
        check.text(format_args!("{at}.customer_id"), &self.customer_id, 64);
        check.text(format_args!("{at}.name"), &self.name, 256);
        let email = &self.email;
        let plausible = email.len() <= 254
            && email
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
        if !plausible {
            check.fail(format!("{at}.email"), "must be an email address");
        }
        if let Some(phone) = &self.phone
            && (phone.len() > 32
                || !phone
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b" +-().".contains(&b)))
        {
            check.fail(format!("{at}.phone"), "must be a phone number");
        }
        let a = &self.shipping_address;
        check.text(format_args!("{at}.shipping_address.line1"), &a.line1, 256);
        check.text(format_args!("{at}.shipping_address.city"), &a.city, 128);
        check.text(
            format_args!("{at}.shipping_address.postal_code"),
            &a.postal_code,
            16,
        );
        if a.country.len() != 2 || !a.country.bytes().all(|b| b.is_ascii_uppercase()) {
            check.fail(
                format!("{at}.shipping_address.country"),
                "must be an ISO 3166-1 alpha-2 code such as FR",
            );
        }
    }
}

/// A valid order event for tests and benchmarks, padded towards `target_bytes` of JSON.
pub fn sample(order_id: &str, target_bytes: usize) -> OrderEvent {
    let mut event = OrderEvent {
        order_id: order_id.to_owned().into(),
        customer_info: CustomerInfo {
            customer_id: "cust-42".into(),
            name: "Ada Lovelace".into(),
            email: "ada@example.com".into(),
            phone: Some("+33 1 23 45 67 89".into()),
            shipping_address: Address {
                line1: "12 rue des Fleurs".into(),
                line2: None,
                city: "Lyon".into(),
                postal_code: "69001".into(),
                country: "FR".into(),
            },
        },
        items: vec![Item {
            sku: "SKU-1".into(),
            name: "Notebook".into(),
            quantity: 2,
            unit_price: 9.5,
            currency: "EUR".into(),
        }],
        inventory_status: vec![InventoryStatus {
            sku: "SKU-1".into(),
            warehouse: "lyon-1".into(),
            reserved: true,
            available_quantity: 120,
        }],
        metadata: Metadata {
            correlation_id: format!("corr-{order_id}").into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            created_at: "2026-11-24T08:00:00Z".into(),
            schema_version: SCHEMA_VERSION,
            source: "order-gateway".into(),
        },
    };
    let mut n = 2;
    while serde_json::to_vec(&event).map(|v| v.len()).unwrap_or(0) < target_bytes && n < 500 {
        event.items.push(Item {
            sku: format!("SKU-{n}").into(),
            name: "Padding item for size".into(),
            quantity: 1,
            unit_price: 1.0,
            currency: "EUR".into(),
        });
        n += 1;
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(event: &OrderEvent) -> Vec<u8> {
        serde_json::to_vec(event).unwrap()
    }

    #[test]
    fn invalid_utf8_anywhere_is_a_deserialization_error_naming_the_byte() {
        let mut value = json(&sample("order-1", 0));
        let at = value.len() / 2;
        value[at] = 0xff;
        match decode(Some(CONTENT_TYPE_JSON), Some(&value)) {
            Err(DecodeError::Deserialization(m)) => {
                assert!(m.contains("invalid UTF-8"), "{m}");
                assert!(m.contains(&at.to_string()), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sample_order_round_trips() {
        let event = sample("order-1", 1024);
        let bytes = json(&event);
        assert!(bytes.len() >= 1024);
        assert_eq!(decode(Some("application/json"), Some(&bytes)), Ok(event));
        assert!(
            decode(None, Some(&bytes)).is_ok(),
            "JSON when no content type"
        );
    }

    #[test]
    fn undecodable_records_are_deserialization_errors() {
        for (content_type, value) in [
            (None, &b"not json"[..]),
            (None, &[0xff, 0xfe, 0x00][..]),
            (None, &br#"{"order_id": 1}"#[..]),
            (None, &br#"{"order_id":"a","customer_info":{}}"#[..]),
            (Some("application/x-protobuf"), &b"\xff\xff"[..]),
            (Some("text/csv"), &b"a,b"[..]),
        ] {
            let err = decode(content_type, Some(value)).unwrap_err();
            assert!(
                matches!(err, DecodeError::Deserialization(_)),
                "{value:?}: {err:?}"
            );
        }
        assert!(matches!(
            decode(None, None),
            Err(DecodeError::Deserialization(_))
        ));
    }

    #[test]
    fn contract_violations_name_each_field() {
        let mut event = sample("order 1!", 0);
        event.items[0].quantity = 0;
        event.customer_info.email = "nobody".into();
        event.metadata.trace_id = "xyz".into();
        let Err(DecodeError::Validation(errors)) = decode(None, Some(&json(&event))) else {
            panic!("expected validation errors");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "order_id",
                "customer_info.email",
                "items[0].quantity",
                "metadata.trace_id"
            ]
        );
    }

    #[test]
    fn oversized_records_are_refused_before_parsing() {
        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        let Err(DecodeError::Validation(errors)) = decode(None, Some(&big)) else {
            panic!("expected a size error");
        };
        assert!(errors[0].message.contains("exceeds"));
    }

    #[test]
    fn is_blank_is_trim_is_empty() {
        for value in [
            "",
            " ",
            "a",
            " a",
            "a ",
            "\t\n\r",
            "\u{b}",
            "\u{c}",
            "\u{b}x",
            "\u{85}",
            "\u{a0}",
            "\u{3000}",
            "\u{3000}x",
            "é",
            "\u{1f680}",
            "\0",
            "\u{1f}",
            "-",
            " \u{2028} ",
        ] {
            assert_eq!(is_blank(value), value.trim().is_empty(), "{value:?}");
        }
        for b in 0..=0x7fu8 {
            let value = char::from(b).to_string();
            assert_eq!(is_blank(&value), value.trim().is_empty(), "{b:#x}");
        }
    }

    #[test]
    fn totals_add_up() {
        let event = sample("o", 0);
        assert_eq!(event.total(), 19.0);
    }
}

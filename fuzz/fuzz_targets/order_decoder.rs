//! The worker's order decoder (`order::decode`, `order::check_encoding`) on arbitrary record
//! values and content types. Whatever the bytes, decoding returns an error or an order, never
//! panics; an order it accepts is valid and survives a JSON and a Protobuf round trip; its fast
//! JSON parser agrees with serde_json alone on every input, and so do the gateway's fast request
//! parser and its JSON encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pubsubkafka_worker::order::{self, CONTENT_TYPE_JSON};
use pubsubkafka_worker::order::proto::{self, CONTENT_TYPE_PROTOBUF};

/// The content types a record may carry: absent, the two supported ones (with parameters and
/// odd case), and one the worker does not know.
const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some(CONTENT_TYPE_JSON),
    Some("Application/JSON; charset=utf-8"),
    Some(CONTENT_TYPE_PROTOBUF),
    Some("application/x-protobuf;v=1"),
    Some("text/plain"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[selector as usize % CONTENT_TYPES.len()];
    // A tombstone (no value) as well as the bytes themselves.
    let value = (selector & 0x80 == 0).then_some(value);

    let encoding = order::check_encoding(content_type, value);
    let decoded = order::decode(content_type, value);
    // The fast JSON parser changes nothing: the same order or the same error as serde_json
    // alone, and any event it builds (valid or not) is serde_json's.
    assert_eq!(
        decoded,
        order::decode_with_serde(content_type, value),
        "decode differs from serde_json alone"
    );
    if let Some(text) = value.and_then(|v| std::str::from_utf8(v).ok())
        && let Some(fast) = order::parse_json_fast(text)
    {
        let serde = serde_json::from_str::<order::OrderEvent>(text)
            .expect("serde_json accepts what the fast parser accepts");
        assert_eq!(fast, serde, "fast parser and serde_json disagree");
    }
    // The gateway's request parser: whatever it accepts, serde_json accepts as the same request.
    if let Some(v) = value
        && let Some((order_id, customer_info, items, inventory_status)) =
            order::parse_request_fast(v)
    {
        let serde = serde_json::from_slice::<pubsubkafka_worker::gateway::OrderRequest>(v)
            .expect("serde_json accepts what the fast request parser accepts");
        assert_eq!(order_id, serde.order_id, "request order_id");
        assert_eq!(customer_info, serde.customer_info, "request customer_info");
        assert_eq!(items, serde.items, "request items");
        assert_eq!(inventory_status, serde.inventory_status, "request inventory_status");
    }
    if let Ok(event) = decoded {
        assert_eq!(
            order::encode_json(&event),
            serde_json::to_vec(&event).expect("an order serializes"),
            "the gateway's JSON encoder differs from serde_json"
        );
        assert!(
            encoding.is_ok(),
            "decode accepted what check_encoding refused"
        );
        assert!(event.validate().is_empty(), "decode accepted an invalid order");
        let json = serde_json::to_vec(&event).expect("an order serializes");
        let again = order::decode(Some(CONTENT_TYPE_JSON), Some(&json))
            .expect("an accepted order decodes again from its own JSON");
        assert_eq!(again, event, "JSON round trip");
        let bytes = proto::encode_event(&event);
        let again = order::decode(Some(CONTENT_TYPE_PROTOBUF), Some(&bytes))
            .expect("an accepted order decodes again from its own Protobuf");
        assert_eq!(again, event, "Protobuf round trip");
    }
});

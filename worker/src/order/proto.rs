//! The Protobuf encoding of order events: the messages of `worker/proto/order.proto`, written
//! with prost's derive (no protoc at build time), and conversions to and from the JSON shape.
//! A unit test checks every field number here against the .proto file.

use super as order;
use super::{DecodeError, FieldError, OrderEvent};

/// The content type of Protobuf order events and requests.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";

#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    #[prost(string, tag = "1")]
    pub line1: String,
    #[prost(string, optional, tag = "2")]
    pub line2: Option<String>,
    #[prost(string, tag = "3")]
    pub city: String,
    #[prost(string, tag = "4")]
    pub postal_code: String,
    #[prost(string, tag = "5")]
    pub country: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CustomerInfo {
    #[prost(string, tag = "1")]
    pub customer_id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub email: String,
    #[prost(string, optional, tag = "4")]
    pub phone: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub shipping_address: Option<Address>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Item {
    #[prost(string, tag = "1")]
    pub sku: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(uint32, tag = "3")]
    pub quantity: u32,
    #[prost(double, tag = "4")]
    pub unit_price: f64,
    #[prost(string, tag = "5")]
    pub currency: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InventoryStatus {
    #[prost(string, tag = "1")]
    pub sku: String,
    #[prost(string, tag = "2")]
    pub warehouse: String,
    #[prost(bool, tag = "3")]
    pub reserved: bool,
    #[prost(int64, tag = "4")]
    pub available_quantity: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    #[prost(string, tag = "1")]
    pub correlation_id: String,
    #[prost(string, tag = "2")]
    pub trace_id: String,
    #[prost(string, tag = "3")]
    pub span_id: String,
    #[prost(string, tag = "4")]
    pub created_at: String,
    #[prost(uint32, tag = "5")]
    pub schema_version: u32,
    #[prost(string, tag = "6")]
    pub source: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderEventProto {
    #[prost(string, tag = "1")]
    pub order_id: String,
    #[prost(message, optional, tag = "2")]
    pub customer_info: Option<CustomerInfo>,
    #[prost(message, repeated, tag = "3")]
    pub items: Vec<Item>,
    #[prost(message, repeated, tag = "4")]
    pub inventory_status: Vec<InventoryStatus>,
    #[prost(message, optional, tag = "5")]
    pub metadata: Option<Metadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderRequestProto {
    #[prost(string, optional, tag = "1")]
    pub order_id: Option<String>,
    #[prost(message, optional, tag = "2")]
    pub customer_info: Option<CustomerInfo>,
    #[prost(message, repeated, tag = "3")]
    pub items: Vec<Item>,
    #[prost(message, repeated, tag = "4")]
    pub inventory_status: Vec<InventoryStatus>,
}

fn missing(field: &str) -> FieldError {
    FieldError {
        field: field.into(),
        message: "is required".into(),
    }
}

fn customer_from(c: Option<CustomerInfo>) -> Result<order::CustomerInfo, FieldError> {
    let c = c.ok_or_else(|| missing("customer_info"))?;
    let a = c
        .shipping_address
        .ok_or_else(|| missing("customer_info.shipping_address"))?;
    Ok(order::CustomerInfo {
        customer_id: c.customer_id.into(),
        name: c.name.into(),
        email: c.email.into(),
        phone: c.phone.map(Into::into),
        shipping_address: order::Address {
            line1: a.line1.into(),
            line2: a.line2.map(Into::into),
            city: a.city.into(),
            postal_code: a.postal_code.into(),
            country: a.country.into(),
        },
    })
}

fn items_from(items: Vec<Item>) -> Vec<order::Item> {
    items
        .into_iter()
        .map(|i| order::Item {
            sku: i.sku.into(),
            name: i.name.into(),
            quantity: i.quantity,
            unit_price: i.unit_price,
            currency: i.currency.into(),
        })
        .collect()
}

fn inventory_from(inventory: Vec<InventoryStatus>) -> Vec<order::InventoryStatus> {
    inventory
        .into_iter()
        .map(|s| order::InventoryStatus {
            sku: s.sku.into(),
            warehouse: s.warehouse.into(),
            reserved: s.reserved,
            available_quantity: s.available_quantity,
        })
        .collect()
}

/// The request's parts: order id (if given), customer, items, inventory.
pub type RequestParts = (
    Option<String>,
    order::CustomerInfo,
    Vec<order::Item>,
    Vec<order::InventoryStatus>,
);

/// Why a Protobuf order request is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// Not a Protobuf order request at all (the gateway answers 400).
    #[error("malformed Protobuf: {0}")]
    Malformed(#[source] prost::DecodeError),
    /// Decodable, but a required field is missing (422, naming the field).
    #[error("{0}")]
    MissingField(FieldError),
}

/// Decodes a Protobuf order request; `Err` names the missing field or says it is not Protobuf.
pub fn decode_request(bytes: &[u8]) -> Result<RequestParts, RequestError> {
    let request: OrderRequestProto =
        prost::Message::decode(bytes).map_err(RequestError::Malformed)?;
    let customer = customer_from(request.customer_info).map_err(RequestError::MissingField)?;
    Ok((
        request.order_id,
        customer,
        items_from(request.items),
        inventory_from(request.inventory_status),
    ))
}

/// Decodes a Protobuf order event (undecodable or incomplete: a deserialization error).
pub fn decode_event(bytes: &[u8]) -> Result<OrderEvent, DecodeError> {
    let event: OrderEventProto = prost::Message::decode(bytes)
        .map_err(|e| DecodeError::Deserialization(format!("not a Protobuf order event: {e}")))?;
    let customer_info = customer_from(event.customer_info)
        .map_err(|e| DecodeError::Deserialization(format!("{e}")))?;
    let m = event
        .metadata
        .ok_or_else(|| DecodeError::Deserialization("metadata: is required".into()))?;
    Ok(OrderEvent {
        order_id: event.order_id.into(),
        customer_info,
        items: items_from(event.items),
        inventory_status: inventory_from(event.inventory_status),
        metadata: order::Metadata {
            correlation_id: m.correlation_id.into(),
            trace_id: m.trace_id.into(),
            span_id: m.span_id.into(),
            created_at: m.created_at.into(),
            schema_version: m.schema_version,
            source: m.source.into(),
        },
    })
}

/// Encodes an order event as Protobuf.
pub fn encode_event(event: &OrderEvent) -> Vec<u8> {
    let c = &event.customer_info;
    let a = &c.shipping_address;
    let m = &event.metadata;
    let proto = OrderEventProto {
        order_id: event.order_id.to_string(),
        customer_info: Some(CustomerInfo {
            customer_id: c.customer_id.to_string(),
            name: c.name.to_string(),
            email: c.email.to_string(),
            phone: c.phone.as_ref().map(ToString::to_string),
            shipping_address: Some(Address {
                line1: a.line1.to_string(),
                line2: a.line2.as_ref().map(ToString::to_string),
                city: a.city.to_string(),
                postal_code: a.postal_code.to_string(),
                country: a.country.to_string(),
            }),
        }),
        items: event
            .items
            .iter()
            .map(|i| Item {
                sku: i.sku.to_string(),
                name: i.name.to_string(),
                quantity: i.quantity,
                unit_price: i.unit_price,
                currency: i.currency.to_string(),
            })
            .collect(),
        inventory_status: event
            .inventory_status
            .iter()
            .map(|s| InventoryStatus {
                sku: s.sku.to_string(),
                warehouse: s.warehouse.to_string(),
                reserved: s.reserved,
                available_quantity: s.available_quantity,
            })
            .collect(),
        metadata: Some(Metadata {
            correlation_id: m.correlation_id.to_string(),
            trace_id: m.trace_id.to_string(),
            span_id: m.span_id.to_string(),
            created_at: m.created_at.to_string(),
            schema_version: m.schema_version,
            source: m.source.to_string(),
        }),
    };
    prost::Message::encode_to_vec(&proto)
}

/// Encodes a request as a client would (tests, the demo, benchmarks).
pub fn encode_request(event: &OrderEvent) -> Vec<u8> {
    let full: OrderEventProto = prost::Message::decode(encode_event(event).as_slice())
        .expect("re-decoding what was just encoded");
    prost::Message::encode_to_vec(&OrderRequestProto {
        order_id: Some(full.order_id),
        customer_info: full.customer_info,
        items: full.items,
        inventory_status: full.inventory_status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_protobuf() {
        let event = order::sample("proto-1", 0);
        let bytes = encode_event(&event);
        assert_eq!(decode_event(&bytes), Ok(event.clone()));
        let (id, customer, items, _) = decode_request(&encode_request(&event)).unwrap();
        assert_eq!(id.as_deref(), Some("proto-1"));
        assert_eq!(customer, event.customer_info);
        assert_eq!(items, event.items);
    }

    #[test]
    fn garbage_and_incomplete_messages_are_refused() {
        assert!(matches!(
            decode_event(b"\xff\xff\xff"),
            Err(DecodeError::Deserialization(_))
        ));
        let empty = prost::Message::encode_to_vec(&OrderEventProto::default());
        assert!(
            matches!(decode_event(&empty), Err(DecodeError::Deserialization(m)) if m.contains("customer_info"))
        );
    }

    #[test]
    fn field_numbers_match_the_proto_file() {
        let proto = include_str!("../../proto/order.proto");
        for (message, fields) in [
            (
                "Address",
                &[
                    "line1 = 1",
                    "line2 = 2",
                    "city = 3",
                    "postal_code = 4",
                    "country = 5",
                ][..],
            ),
            (
                "Item",
                &[
                    "sku = 1",
                    "name = 2",
                    "quantity = 3",
                    "unit_price = 4",
                    "currency = 5",
                ][..],
            ),
            (
                "OrderEvent",
                &[
                    "order_id = 1",
                    "customer_info = 2",
                    "items = 3",
                    "inventory_status = 4",
                    "metadata = 5",
                ][..],
            ),
            (
                "Metadata",
                &[
                    "correlation_id = 1",
                    "trace_id = 2",
                    "span_id = 3",
                    "created_at = 4",
                    "schema_version = 5",
                    "source = 6",
                ][..],
            ),
        ] {
            let start = proto.find(&format!("message {message} {{")).expect(message);
            let body = &proto[start..start + proto[start..].find('}').unwrap()];
            for field in fields {
                assert!(body.contains(field), "{message}: {field}");
            }
        }
    }
}

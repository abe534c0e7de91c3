//! The gateway's JSON encoding of an [`OrderEvent`]: byte for byte what `serde_json::to_vec`
//! writes, in about half its time on a 1 KiB order.
//!
//! serde_json looks up every byte of every string in its escape table; order strings (ids,
//! names, SKUs) almost never need an escape, so this checks 8 bytes at a time for one
//! ([`super::fast`]'s scan) and copies the string whole. A string that does need one, and every
//! number with a fraction, is written by serde_json itself, so the output cannot differ.

use super::fast::string_end;
use super::{Address, CustomerInfo, InventoryStatus, Item, Metadata, OrderEvent};

/// `event` as compact JSON, members in declaration order (what [`super::fast`] reads first).
pub(crate) fn event_json(event: &OrderEvent) -> Vec<u8> {
    let mut out = Writer(Vec::with_capacity(512 + 160 * event.items.len()));
    out.order_event(event);
    out.0
}

struct Writer(Vec<u8>);

impl Writer {
    fn raw(&mut self, text: &str) {
        self.0.extend_from_slice(text.as_bytes());
    }

    fn str(&mut self, value: &str) {
        if string_end(value.as_bytes()).is_none() {
            self.0.reserve(value.len() + 2);
            self.0.push(b'"');
            self.0.extend_from_slice(value.as_bytes());
            self.0.push(b'"');
        } else {
            serde_json::to_writer(&mut self.0, value).expect("writing to a Vec");
        }
    }

    /// `,"name":` (or without the comma for the first member) then the value.
    fn key(&mut self, first: bool, name: &str) {
        if !first {
            self.0.push(b',');
        }
        self.0.push(b'"');
        self.raw(name);
        self.0.extend_from_slice(b"\":");
    }

    fn text(&mut self, first: bool, name: &str, value: &str) {
        self.key(first, name);
        self.str(value);
    }

    fn integer(&mut self, first: bool, name: &str, value: impl itoa::Integer) {
        self.key(first, name);
        self.raw(itoa::Buffer::new().format(value));
    }

    fn array<T>(&mut self, name: &str, values: &[T], mut element: impl FnMut(&mut Self, &T)) {
        self.key(false, name);
        self.0.push(b'[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.0.push(b',');
            }
            element(self, value);
        }
        self.0.push(b']');
    }

    fn order_event(&mut self, e: &OrderEvent) {
        self.0.push(b'{');
        self.text(true, "order_id", &e.order_id);
        self.key(false, "customer_info");
        self.customer_info(&e.customer_info);
        self.array("items", &e.items, Self::item);
        self.array("inventory_status", &e.inventory_status, Self::inventory);
        self.key(false, "metadata");
        self.metadata(&e.metadata);
        self.0.push(b'}');
    }

    fn customer_info(&mut self, c: &CustomerInfo) {
        self.0.push(b'{');
        self.text(true, "customer_id", &c.customer_id);
        self.text(false, "name", &c.name);
        self.text(false, "email", &c.email);
        // `skip_serializing_if = "Option::is_none"`
        if let Some(phone) = &c.phone {
            self.text(false, "phone", phone);
        }
        self.key(false, "shipping_address");
        self.address(&c.shipping_address);
        self.0.push(b'}');
    }

    fn address(&mut self, a: &Address) {
        self.0.push(b'{');
        self.text(true, "line1", &a.line1);
        if let Some(line2) = &a.line2 {
            self.text(false, "line2", line2);
        }
        self.text(false, "city", &a.city);
        self.text(false, "postal_code", &a.postal_code);
        self.text(false, "country", &a.country);
        self.0.push(b'}');
    }

    fn item(&mut self, i: &Item) {
        self.0.push(b'{');
        self.text(true, "sku", &i.sku);
        self.text(false, "name", &i.name);
        self.integer(false, "quantity", i.quantity);
        self.key(false, "unit_price");
        // serde_json's own float formatting (and `null` for a non-finite one).
        serde_json::to_writer(&mut self.0, &i.unit_price).expect("writing to a Vec");
        self.text(false, "currency", &i.currency);
        self.0.push(b'}');
    }

    fn inventory(&mut self, s: &InventoryStatus) {
        self.0.push(b'{');
        self.text(true, "sku", &s.sku);
        self.text(false, "warehouse", &s.warehouse);
        self.key(false, "reserved");
        self.raw(if s.reserved { "true" } else { "false" });
        self.integer(false, "available_quantity", s.available_quantity);
        self.0.push(b'}');
    }

    fn metadata(&mut self, m: &Metadata) {
        self.0.push(b'{');
        self.text(true, "correlation_id", &m.correlation_id);
        self.text(false, "trace_id", &m.trace_id);
        self.text(false, "span_id", &m.span_id);
        self.text(false, "created_at", &m.created_at);
        self.integer(false, "schema_version", m.schema_version);
        self.text(false, "source", &m.source);
        self.0.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::sample;

    fn same_as_serde(event: &OrderEvent) {
        let ours = event_json(event);
        let serde = serde_json::to_vec(event).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&serde)
        );
    }

    #[test]
    fn sample_orders_encode_as_serde_json_does() {
        for target in [0, 1024, 4096, 64 * 1024] {
            same_as_serde(&sample("ord-1", target));
        }
        let mut bare = sample("ord-1", 0);
        bare.customer_info.phone = None;
        bare.customer_info.shipping_address.line2 = None;
        bare.items.clear();
        bare.inventory_status.clear();
        same_as_serde(&bare);
        let mut full = sample("ord-1", 1024);
        full.customer_info.shipping_address.line2 = Some("Bât. B".into());
        same_as_serde(&full);
    }

    #[test]
    fn every_awkward_character_in_every_string_encodes_as_serde_json_does() {
        let awkward = [
            "\"",
            "\\",
            "\n",
            "\t",
            "\u{0}",
            "\u{1f}",
            "\u{7f}",
            "/",
            "é",
            "東京",
            "🚀",
            "\u{2028}",
            "a\"b\\c",
            "</script>",
        ];
        for text in awkward {
            for at in ["", "prefix-longer-than-eight-", "x"] {
                let value: crate::order::Text = format!("{at}{text}{at}").into();
                let mut e = sample("ord-1", 512);
                e.order_id = value.clone();
                e.customer_info.name = value.clone();
                e.customer_info.phone = Some(value.clone());
                e.customer_info.shipping_address.line2 = Some(value.clone());
                e.customer_info.shipping_address.country = value.clone();
                e.items[0].sku = value.clone();
                e.items[0].currency = value.clone();
                e.inventory_status[0].warehouse = value.clone();
                e.metadata.created_at = value.clone();
                e.metadata.source = value;
                same_as_serde(&e);
            }
        }
    }

    #[test]
    fn numbers_at_their_limits_encode_as_serde_json_does() {
        let mut e = sample("ord-1", 0);
        for (quantity, price, available) in [
            (0, 0.0, 0),
            (u32::MAX, 9.99, i64::MAX),
            (1, 0.1 + 0.2, i64::MIN),
            (7, 1e21, -1),
            (7, 5e-324, 42),
            (7, f64::MAX, 42),
            (7, -0.0, 42),
            (7, f64::NAN, 42),
            (7, f64::INFINITY, 42),
        ] {
            e.items[0].quantity = quantity;
            e.items[0].unit_price = price;
            e.inventory_status[0].available_quantity = available;
            e.inventory_status[0].reserved = !e.inventory_status[0].reserved;
            e.metadata.schema_version = quantity;
            same_as_serde(&e);
        }
    }
}

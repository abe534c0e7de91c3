//! A strict single-pass JSON parser for exactly the [`OrderEvent`] shape: the worker's hot path.
//!
//! serde_json's typed parsing was about half of the worker's CPU (string scanning, struct
//! visitors, field-name matching, copies); this parser knows the shape, expects the members in
//! declaration order (trying any other), scans strings 8 bytes at a time and builds the event
//! directly: about 2.3 times faster on a 1 KiB order.
//!
//! It is conservative by design: whenever it meets anything it is not sure about (an escape in
//! a string, a control character, a duplicate, unknown or missing key, an exponent, a leading
//! zero, an out-of-range integer, a wrong type, trailing bytes, ...) it returns `None` and the
//! caller falls back to serde_json, which decides acceptance and words the error. So it only
//! has to be right on what it accepts: there, its event equals serde_json's (`==`).
//!
//! Numbers agree with serde_json because the workspace enables serde_json's `float_roundtrip`:
//! both sides then round a decimal to the nearest double (this side with `str::parse::<f64>`).

use super::proto::RequestParts;
use super::{Address, CustomerInfo, InventoryStatus, Item, Metadata, OrderEvent, Text};

/// Longest number text parsed here (bytes); longer ones are left to serde_json.
const MAX_NUMBER_LEN: usize = 40;

/// The event in `text`, or `None` when this parser is not sure (see the module documentation).
pub(crate) fn parse(text: &str) -> Option<OrderEvent> {
    let mut parser = Parser { text, pos: 0 };
    let event = parser.order_event()?;
    parser.skip_whitespace();
    (parser.pos == text.len()).then_some(event)
}

/// A client's order request in `body` (the gateway's `POST /orders`: an order without its
/// metadata, `order_id` optional, `inventory_status` empty when absent), or `None` when this
/// parser is not sure. The gateway then asks serde_json, which decides and names the field.
pub(crate) fn parse_request(body: &[u8]) -> Option<RequestParts> {
    let mut parser = Parser {
        text: std::str::from_utf8(body).ok()?,
        pos: 0,
    };
    let request = parser.order_request()?;
    parser.skip_whitespace();
    (parser.pos == parser.text.len()).then_some(request)
}

/// The index of the first byte that ends a string without escapes: a quote, a backslash or a
/// control character (below 0x20, forbidden in a JSON string).
///
/// Order strings are short (ids, names, SKUs), too short for `memchr`'s vector set-up to pay;
/// this looks at 8 bytes at a time in a u64 (SWAR) and finds all three kinds in one pass.
pub(super) fn string_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    /// The high bit of every byte below `n` (n <= 0x80). A borrow can also mark a byte after a
    /// marked one, never before, so the lowest mark is exact.
    fn below(word: u64, n: u8) -> u64 {
        word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8 bytes"));
        let marks = below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1)
            | below(word, 0x20);
        if marks != 0 {
            // Little-endian: the lowest mark is the first byte.
            return Some(offset + marks.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    let rest = chunks.remainder();
    let at = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(offset + at)
}

/// `a == b` for short slices (keys, up to 32 bytes in at most four word comparisons): a call
/// to libc's `memcmp` costs more than comparing a key.
fn same_short(a: &[u8], b: &[u8]) -> bool {
    fn word(bytes: &[u8]) -> u64 {
        u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
    }
    fn half(bytes: &[u8]) -> u32 {
        u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"))
    }
    let n = a.len();
    // Two overlapping reads cover the lengths between one and two words.
    match n {
        _ if n != b.len() => false,
        0..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => half(a) == half(b) && half(&a[n - 4..]) == half(&b[n - 4..]),
        8..=16 => word(a) == word(b) && word(&a[n - 8..]) == word(&b[n - 8..]),
        _ => word(a) == word(b) && word(&a[8..]) == word(&b[8..]) && same_short(&a[16..], &b[16..]),
    }
}

/// Stores a field's value, refusing a duplicate (serde_json reports it).
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

/// A cursor over the JSON text; every method returns `None` to bail out.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    /// Skips JSON whitespace: exactly the four bytes serde_json skips.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace, consumed.
    fn next_token(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next_token()? == want).then_some(())
    }

    /// Consumes `word` (after whitespace) if the text continues with it.
    fn eat_literal(&mut self, word: &[u8]) -> bool {
        self.skip_whitespace();
        let found = self.bytes()[self.pos..].starts_with(word);
        if found {
            self.pos += word.len();
        }
        found
    }

    /// A string without escapes, borrowed from the text. An escape is rare in an order (the
    /// gateway writes none for ordinary text) and is left to serde_json; so is a control
    /// character, which JSON forbids inside a string.
    fn str(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        self.str_after_quote()
    }

    /// The rest of a string whose opening quote is consumed (see [`Self::str`]).
    fn str_after_quote(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let end = start + string_end(&self.bytes()[start..])?;
        if self.bytes()[end] != b'"' {
            return None;
        }
        self.pos = end + 1;
        // Both ends are next to an ASCII quote, so on character boundaries.
        self.text.get(start..end)
    }

    fn text(&mut self) -> Option<Text> {
        self.str().map(Text::from)
    }

    /// An optional text field present in the object: `null` or a string.
    fn optional_text(&mut self) -> Option<Option<Text>> {
        if self.eat_literal(b"null") {
            Some(None)
        } else {
            self.text().map(Some)
        }
    }

    fn bool(&mut self) -> Option<bool> {
        if self.eat_literal(b"true") {
            Some(true)
        } else if self.eat_literal(b"false") {
            Some(false)
        } else {
            None
        }
    }

    /// Consumes ASCII digits; how many.
    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    /// The text of a number in the plain forms only: an optional `-`, an integer part without
    /// a leading zero and, when `fraction` allows, a fraction of at least one digit. Exponents
    /// and anything else are left to serde_json. The caller checks what follows the number.
    fn number_text(&mut self, fraction: bool) -> Option<&'a str> {
        self.skip_whitespace();
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let first = self.peek()?;
        let integer_digits = self.digits();
        if integer_digits == 0 || (first == b'0' && integer_digits > 1) {
            return None;
        }
        if self.peek() == Some(b'.') {
            if !fraction {
                return None;
            }
            self.pos += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) || self.pos - start > MAX_NUMBER_LEN {
            return None;
        }
        self.text.get(start..self.pos)
    }

    /// An integer's sign and magnitude (at most 19 digits, so it fits a u64).
    fn integer(&mut self) -> Option<(bool, u64)> {
        let text = self.number_text(false)?;
        let (negative, digits) = match text.strip_prefix('-') {
            Some(digits) => (true, digits),
            None => (false, text),
        };
        if digits.len() > 19 {
            return None;
        }
        let magnitude = digits
            .bytes()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        Some((negative, magnitude))
    }

    /// A u32 as serde_json reads one: no sign (serde_json reads `-0` as a float), in range.
    fn u32(&mut self) -> Option<u32> {
        match self.integer()? {
            (false, n) => u32::try_from(n).ok(),
            (true, _) => None,
        }
    }

    /// An i64 as serde_json reads one: `-0` is a float to serde_json, so it is left to it.
    fn i64(&mut self) -> Option<i64> {
        match self.integer()? {
            (false, n) => i64::try_from(n).ok(),
            (true, 0) => None,
            (true, n) => 0i64.checked_sub_unsigned(n),
        }
    }

    /// A float, rounded to the nearest double as serde_json's `float_roundtrip` does.
    fn f64(&mut self) -> Option<f64> {
        let value: f64 = self.number_text(true)?.parse().ok()?;
        value.is_finite().then_some(value)
    }

    /// Reads an object's members, handing each one's key, as its index in `keys`, to `member`,
    /// which reads the value. An unknown key bails; so does `{}`, as every struct here has a
    /// required field.
    fn object(
        &mut self,
        keys: &[&str],
        mut member: impl FnMut(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        let mut expected = 0;
        loop {
            let key = self.key(keys, expected)?;
            self.expect(b':')?;
            member(self, key)?;
            expected = key + 1;
            match self.next_token()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// A member's key, as its index in `keys`. Writers (the gateway, serde) put the members in
    /// declaration order, so the key after the previous one's is tried first, by comparing the
    /// bytes in place; any other key is read and looked up.
    fn key(&mut self, keys: &[&str], expected: usize) -> Option<usize> {
        self.expect(b'"')?;
        if let Some(key) = keys.get(expected) {
            let (key, rest) = (key.as_bytes(), &self.bytes()[self.pos..]);
            // The key's bytes then the closing quote: no room for an escape.
            if rest.get(key.len()) == Some(&b'"') && same_short(&rest[..key.len()], key) {
                self.pos += key.len() + 1;
                return Some(expected);
            }
        }
        let key = self.str_after_quote()?;
        keys.iter().position(|k| *k == key)
    }

    /// Reads an array, each element with `element`.
    fn array<T>(&mut self, mut element: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        self.expect(b'[')?;
        let mut out = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Some(out);
        }
        loop {
            out.push(element(self)?);
            match self.next_token()? {
                b',' => {}
                b']' => return Some(out),
                _ => return None,
            }
        }
    }

    fn order_event(&mut self) -> Option<OrderEvent> {
        let (mut order_id, mut customer_info, mut items, mut inventory_status, mut metadata) =
            (None, None, None, None, None);
        const KEYS: [&str; 5] = [
            "order_id",
            "customer_info",
            "items",
            "inventory_status",
            "metadata",
        ];
        self.object(&KEYS, |p, key| match key {
            0 => set(&mut order_id, p.text()?),
            1 => set(&mut customer_info, p.customer_info()?),
            2 => set(&mut items, p.array(Self::item)?),
            3 => set(&mut inventory_status, p.array(Self::inventory_status)?),
            _ => set(&mut metadata, p.metadata()?),
        })?;
        Some(OrderEvent {
            order_id: order_id?,
            customer_info: customer_info?,
            items: items?,
            inventory_status: inventory_status?,
            metadata: metadata?,
        })
    }

    fn order_request(&mut self) -> Option<RequestParts> {
        let (mut order_id, mut customer_info, mut items, mut inventory_status) =
            (None, None, None, None);
        const KEYS: [&str; 4] = ["order_id", "customer_info", "items", "inventory_status"];
        self.object(&KEYS, |p, key| match key {
            0 => set(&mut order_id, p.optional_text()?),
            1 => set(&mut customer_info, p.customer_info()?),
            2 => set(&mut items, p.array(Self::item)?),
            _ => set(&mut inventory_status, p.array(Self::inventory_status)?),
        })?;
        Some((
            // `#[serde(default)]`: absent is None, like null.
            order_id.flatten().map(String::from),
            customer_info?,
            items?,
            inventory_status.unwrap_or_default(),
        ))
    }

    fn customer_info(&mut self) -> Option<CustomerInfo> {
        let (mut customer_id, mut name, mut email, mut phone, mut shipping_address) =
            (None, None, None, None, None);
        const KEYS: [&str; 5] = ["customer_id", "name", "email", "phone", "shipping_address"];
        self.object(&KEYS, |p, key| match key {
            0 => set(&mut customer_id, p.text()?),
            1 => set(&mut name, p.text()?),
            2 => set(&mut email, p.text()?),
            3 => set(&mut phone, p.optional_text()?),
            _ => set(&mut shipping_address, p.address()?),
        })?;
        Some(CustomerInfo {
            customer_id: customer_id?,
            name: name?,
            email: email?,
            // `#[serde(default)]`: absent is None, like null.
            phone: phone.flatten(),
            shipping_address: shipping_address?,
        })
    }

    fn address(&mut self) -> Option<Address> {
        let (mut line1, mut line2, mut city, mut postal_code, mut country) =
            (None, None, None, None, None);
        const KEYS: [&str; 5] = ["line1", "line2", "city", "postal_code", "country"];
        self.object(&KEYS, |p, key| match key {
            0 => set(&mut line1, p.text()?),
            1 => set(&mut line2, p.optional_text()?),
            2 => set(&mut city, p.text()?),
            3 => set(&mut postal_code, p.text()?),
            _ => set(&mut country, p.text()?),
        })?;
        Some(Address {
            line1: line1?,
            line2: line2.flatten(),
            city: city?,
            postal_code: postal_code?,
            country: country?,
        })
    }

    fn item(&mut self) -> Option<Item> {
        let (mut sku, mut name, mut quantity, mut unit_price, mut currency) =
            (None, None, None, None, None);
        const KEYS: [&str; 5] = ["sku", "name", "quantity", "unit_price", "currency"];
        self.object(&KEYS, |p, key| match key {
            0 => set(&mut sku, p.text()?),
            1 => set(&mut name, p.text()?),
            2 => set(&mut quantity, p.u32()?),
            3 => set(&mut unit_price, p.f64()?),
            _ => set(&mut currency, p.text()?),
        })?;
        Some(Item {
            sku: sku?,
            name: name?,
            quantity: quantity?,
            unit_price: unit_price?,
            currency: currency?,
        })
    }

    fn inventory_status(&mut self) -> Option<InventoryStatus> {
        let (mut sku, mut warehouse, mut reserved, mut available_quantity) =
            (None, None, None, None);
        const KEYS: [&str; 4] = ["sku", "warehouse", "reserved", "available_quantity"];
        self.object(&KEYS, |p, key| match key {
            0 => set(&mut sku, p.text()?),
            1 => set(&mut warehouse, p.text()?),
            2 => set(&mut reserved, p.bool()?),
            _ => set(&mut available_quantity, p.i64()?),
        })?;
        Some(InventoryStatus {
            sku: sku?,
            warehouse: warehouse?,
            reserved: reserved?,
            available_quantity: available_quantity?,
        })
    }

    fn metadata(&mut self) -> Option<Metadata> {
        let (mut correlation_id, mut trace_id, mut span_id, mut created_at) =
            (None, None, None, None);
        let (mut schema_version, mut source) = (None, None);
        const KEYS: [&str; 6] = [
            "correlation_id",
            "trace_id",
            "span_id",
            "created_at",
            "schema_version",
            "source",
        ];
        self.object(&KEYS, |p, key| match key {
            0 => set(&mut correlation_id, p.text()?),
            1 => set(&mut trace_id, p.text()?),
            2 => set(&mut span_id, p.text()?),
            3 => set(&mut created_at, p.text()?),
            4 => set(&mut schema_version, p.u32()?),
            _ => set(&mut source, p.text()?),
        })?;
        Some(Metadata {
            correlation_id: correlation_id?,
            trace_id: trace_id?,
            span_id: span_id?,
            created_at: created_at?,
            schema_version: schema_version?,
            source: source?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::{DecodeError, decode, decode_with_serde, sample};

    fn gateway_json(event: &OrderEvent) -> String {
        // What the gateway writes (`serde_json::to_vec` of the event).
        serde_json::to_string(event).unwrap()
    }

    /// The fast parser agrees with serde_json on `text`: whatever it accepts, serde_json
    /// accepts as the same event; and `decode` gives exactly serde_json's result, error
    /// messages included. Returns whether the fast parser accepted.
    fn agrees(text: &str) -> bool {
        let fast = parse(text);
        if let Some(event) = &fast {
            let serde: OrderEvent = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("fast path accepted what serde refuses ({e}): {text}"));
            assert_eq!(event, &serde, "{text}");
            for (a, b) in event.items.iter().zip(&serde.items) {
                assert_eq!(a.unit_price.to_bits(), b.unit_price.to_bits(), "{text}");
            }
        }
        assert_eq!(
            decode(None, Some(text.as_bytes())),
            decode_with_serde(None, Some(text.as_bytes())),
            "{text}"
        );
        fast.is_some()
    }

    fn accepted(text: &str) {
        assert!(agrees(text), "fast path bailed on {text}");
    }

    fn bails(text: &str) {
        assert!(!agrees(text), "fast path accepted {text}");
    }

    /// The sample with one value replaced by `to` (`from` must occur once).
    fn edit(from: &str, to: &str) -> String {
        let json = gateway_json(&sample("ord-1", 1024));
        assert_eq!(json.matches(from).count(), 1, "{from}");
        json.replace(from, to)
    }

    #[test]
    fn the_gateways_orders_take_the_fast_path() {
        for target in [0, 1024, 4096] {
            let event = sample("ord-1", target);
            let json = gateway_json(&event);
            assert_eq!(parse(&json), Some(event.clone()), "{json}");
            assert_eq!(decode(None, Some(json.as_bytes())), Ok(event));
        }
        accepted(&gateway_json(&sample("ord-1", 64 * 1024)));
    }

    #[test]
    fn keys_in_any_order_and_whitespace_anywhere() {
        let event = sample("ord-1", 1024);
        // serde_json's Value sorts the keys of every object.
        let sorted = serde_json::to_string(&serde_json::to_value(&event).unwrap()).unwrap();
        assert!(
            sorted.starts_with(r#"{"customer_info":{"customer_id""#),
            "{sorted}"
        );
        accepted(&sorted);
        let pretty = serde_json::to_string_pretty(&event).unwrap();
        accepted(&pretty);
        let spaced = pretty
            .replace('\n', "\r\n\t")
            .replace("\": ", "\" \t:\n ")
            .replace(',', " ,")
            .replace('[', "[ ")
            .replace(']', " ]");
        accepted(&format!(" \n{spaced}\t\r\n "));
        accepted(&format!("{}  ", gateway_json(&event)));
    }

    #[test]
    fn optional_fields_absent_null_or_present() {
        let phone = r#""phone":"+33 1 23 45 67 89","#;
        let line2 = r#""line2":"#;
        let city = r#""city":"Lyon""#;
        accepted(&edit(phone, ""));
        accepted(&edit(phone, r#""phone":null,"#));
        accepted(&edit(phone, r#""phone" : null ,"#));
        accepted(&edit(city, &format!("{line2}null,{city}")));
        accepted(&edit(city, &format!("{line2}\"Bât. B\",{city}")));
        assert_eq!(
            parse(&edit(city, &format!("{line2}\"Bât. B\",{city}")))
                .unwrap()
                .customer_info
                .shipping_address
                .line2
                .as_deref(),
            Some("Bât. B")
        );
        // Twice, even as null, is a duplicate; null for a required text is a wrong type.
        bails(&edit(phone, &format!("{phone}\"phone\":null,")));
        bails(&edit(city, &format!("{line2}null,{line2}null,{city}")));
        bails(&edit(city, r#""city":null"#));
        bails(&edit(phone, r#""phone":nul,"#));
        bails(&edit(phone, r#""phone":nullx,"#));
    }

    #[test]
    fn unicode_and_long_text() {
        let mut event = sample("ord-1", 1024);
        event.customer_info.name = "Zoë Ünïcødé 東京 🚀 Ω".into();
        event.items[0].name = "x".repeat(300).into();
        event.customer_info.shipping_address.line1 = "\u{7f}éàü ~ del and non-ASCII".into();
        accepted(&gateway_json(&event));
        // Escapes are left to serde_json, which accepts them.
        bails(&edit("Ada Lovelace", r#"Ada \"the Countess\" Lovelace"#));
        bails(&edit("Ada Lovelace", r"Ada \u00e9"));
        bails(&edit(r#""order_id""#, r#""order\u005fid""#));
        // A raw control character is refused by serde_json.
        bails(&edit("Ada Lovelace", "Ada\tLovelace"));
        bails(&edit("Ada Lovelace", "Ada\u{1}Lovelace"));
    }

    #[test]
    fn prices_round_like_serde_json() {
        for price in [
            "9.5",
            "0.1",
            "0",
            "0.0",
            "-0",
            "-0.0",
            "-2.5",
            "10",
            "123456789.123456789",
            "0.30000000000000004441",
            "9.500000001922215",
            "2.2250738585072011",
            "12345678901234567890",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999999999999",
            "0.000000000000000000000000000000000001",
        ] {
            accepted(&edit(
                r#""unit_price":9.5"#,
                &format!(r#""unit_price":{price}"#),
            ));
        }
        // Exponents and long or malformed numbers are left to serde_json.
        for price in [
            "1e3",
            "1E-3",
            "9.5e0",
            "1e400",
            "1.",
            ".5",
            "01.5",
            "-",
            "+1",
            "1.5.5",
            "0x10",
            "NaN",
            "Infinity",
            "\"9.5\"",
            "1234567890123456789012345678901234567890.5",
        ] {
            bails(&edit(
                r#""unit_price":9.5"#,
                &format!(r#""unit_price":{price}"#),
            ));
        }
    }

    #[test]
    fn integers_are_range_checked_like_serde_json() {
        let quantity = r#""quantity":2"#;
        for ok in ["0", "1", "4294967295", "10000"] {
            accepted(&edit(quantity, &format!(r#""quantity":{ok}"#)));
        }
        for bad in [
            "-0",
            "-1",
            "4294967296",
            "2.0",
            "2e0",
            "02",
            "true",
            "null",
            "\"2\"",
            "",
        ] {
            bails(&edit(quantity, &format!(r#""quantity":{bad}"#)));
        }
        let available = r#""available_quantity":120"#;
        for ok in [
            "0",
            "-1",
            "-120",
            "9223372036854775807",
            "-9223372036854775808",
        ] {
            accepted(&edit(available, &format!(r#""available_quantity":{ok}"#)));
        }
        for bad in [
            "-0",
            "9223372036854775808",
            "-9223372036854775809",
            "18446744073709551616",
            "1.5",
            "00",
        ] {
            bails(&edit(available, &format!(r#""available_quantity":{bad}"#)));
        }
        for bad in ["0", "4294967296", "-1", "1.0"] {
            let to = format!(r#""schema_version":{bad}"#);
            agrees(&edit(r#""schema_version":1"#, &to));
        }
    }

    #[test]
    fn wrong_shapes_and_trailing_bytes_get_serde_jsons_errors() {
        let json = gateway_json(&sample("ord-1", 1024));
        accepted(&edit(r#""reserved":true"#, r#""reserved":false"#));
        for text in [
            edit(r#""reserved":true"#, r#""reserved":"true""#),
            edit(r#""reserved":true"#, r#""reserved":tru"#),
            edit(r#""reserved":true"#, r#""reserved":1"#),
            edit(r#""order_id":"ord-1""#, r#""order_id":1"#),
            edit(r#""order_id":"ord-1""#, r#""order_id":"ord-1","extra":1"#),
            edit(
                r#""order_id":"ord-1""#,
                r#""order_id":"ord-1","order_id":"ord-2""#,
            ),
            edit(r#""order_id":"ord-1","#, ""),
            edit(r#""order_id":"ord-1""#, r#""order_id":"ord-1","#),
            edit(r#""order_id":"ord-1""#, r#""order_id" "ord-1""#),
            edit(r#""order_id":"ord-1""#, r#""order_id":["ord-1"]"#),
            edit("\"country\":\"FR\"}", "\"country\":\"FR\",}"),
            edit("\"currency\":\"EUR\"}]", "\"currency\":\"EUR\"},]"),
            edit(r#""items":["#, r#""items":{"#),
            edit(
                r#""inventory_status":[{"sku":"SKU-1","#,
                r#""inventory_status":[{"#,
            ),
            format!("{json}x"),
            format!("{json} {{}}"),
            format!("{json}\0"),
            format!("[{json}]"),
            format!("\u{feff}{json}"),
            String::new(),
            "{}".into(),
            "null".into(),
        ] {
            bails(&text);
        }
        // Parses, then fails validation: both paths report the same fields.
        let empty_items = edit(
            &json[json.find(r#""items":["#).unwrap()..json.find(r#","inventory_status""#).unwrap()],
            r#""items":[ ]"#,
        );
        accepted(&empty_items);
        assert!(matches!(
            decode(None, Some(empty_items.as_bytes())),
            Err(DecodeError::Validation(_))
        ));
    }

    #[test]
    fn every_truncation_bails() {
        let json = gateway_json(&sample("ord-1", 1024));
        for end in 0..json.len() {
            if json.is_char_boundary(end) {
                bails(&json[..end]);
            }
        }
    }

    #[test]
    fn every_single_byte_edit_agrees_with_serde_json() {
        let json = gateway_json(&sample("ord-1", 0));
        let mut accepted = 0;
        for at in 0..json.len() {
            for byte in *b"\"\\{}[],: \t0-9.eExn\x01\x7f" {
                let mut edited = json.clone().into_bytes();
                edited[at] = byte;
                if let Ok(text) = String::from_utf8(edited) {
                    accepted += usize::from(agrees(&text));
                }
            }
        }
        // Edits inside strings keep a valid order: the fast path must take some.
        assert!(accepted > 1000, "{accepted}");
    }

    /// A client's request for `event`, as serde writes an `OrderRequest`: no metadata.
    fn request_json(event: &OrderEvent, order_id: Option<&str>) -> String {
        serde_json::to_string(&crate::gateway::OrderRequest {
            order_id: order_id.map(str::to_owned),
            customer_info: event.customer_info.clone(),
            items: event.items.clone(),
            inventory_status: event.inventory_status.clone(),
        })
        .unwrap()
    }

    /// Whatever the request parser accepts, serde_json accepts as the same request (what the
    /// gateway would parse without it). Returns whether the fast parser accepted.
    fn request_agrees(text: &str) -> bool {
        let fast = parse_request(text.as_bytes());
        if let Some((order_id, customer_info, items, inventory_status)) = &fast {
            let serde: crate::gateway::OrderRequest = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("fast path accepted what serde refuses ({e}): {text}"));
            assert_eq!(order_id, &serde.order_id, "{text}");
            assert_eq!(customer_info, &serde.customer_info, "{text}");
            assert_eq!(items, &serde.items, "{text}");
            assert_eq!(inventory_status, &serde.inventory_status, "{text}");
            for (a, b) in items.iter().zip(&serde.items) {
                assert_eq!(a.unit_price.to_bits(), b.unit_price.to_bits(), "{text}");
            }
        }
        fast.is_some()
    }

    #[test]
    fn client_requests_take_the_fast_path() {
        let event = sample("ord-1", 1024);
        for order_id in [None, Some("ord-7")] {
            let json = request_json(&event, order_id);
            assert!(request_agrees(&json), "{json}");
            let (id, customer, items, inventory) = parse_request(json.as_bytes()).unwrap();
            assert_eq!(id.as_deref(), order_id);
            assert_eq!(customer, event.customer_info);
            assert_eq!(
                (items, inventory),
                (event.items.clone(), event.inventory_status.clone())
            );
            let pretty = serde_json::to_string_pretty(
                &serde_json::from_str::<serde_json::Value>(&json).unwrap(),
            )
            .unwrap();
            assert!(request_agrees(&pretty), "keys sorted, whitespace: {pretty}");
        }
        // `order_id` null or absent, `inventory_status` absent: the serde defaults.
        let json = request_json(&event, None);
        assert!(json.starts_with(r#"{"order_id":null,"#), "{json}");
        assert!(request_agrees(&json.replacen(r#""order_id":null,"#, "", 1)));
        let without_inventory = json.replacen(
            &format!(
                r#","inventory_status":{}"#,
                serde_json::to_string(&event.inventory_status).unwrap()
            ),
            "",
            1,
        );
        assert!(!without_inventory.contains("inventory_status"));
        assert!(request_agrees(&without_inventory));
        assert_eq!(
            parse_request(without_inventory.as_bytes()).unwrap().3,
            Vec::new()
        );
    }

    #[test]
    fn requests_serde_refuses_are_left_to_serde() {
        let event = sample("ord-1", 0);
        let json = request_json(&event, Some("ord-1"));
        let bails = |text: &str| assert!(!request_agrees(text), "fast path accepted {text}");
        // A whole event is not a request: `metadata` is an unknown field.
        bails(&gateway_json(&event));
        bails(&json.replacen(
            r#""order_id":"ord-1""#,
            r#""order_id":"ord-1","order_id":null"#,
            1,
        ));
        let inventory = serde_json::to_string(&event.inventory_status).unwrap();
        let null_inventory = json.replacen(&inventory, "null", 1);
        assert!(
            null_inventory.ends_with(r#""inventory_status":null}"#),
            "{null_inventory}"
        );
        bails(&null_inventory);
        bails(&json.replacen(r#""order_id":"ord-1""#, r#""order_id":7"#, 1));
        bails(&format!("{json}{{}}"));
        bails(&json.replacen(r#","items":"#, r#","things":"#, 1));
        let mut not_utf8 = json.clone().into_bytes();
        let at = json.find("Ada").unwrap();
        not_utf8[at] = 0xff;
        assert_eq!(parse_request(&not_utf8), None);
        assert!(serde_json::from_slice::<crate::gateway::OrderRequest>(&not_utf8).is_err());
        for end in 0..json.len() {
            bails(&json[..end]);
        }
    }

    #[test]
    fn every_single_byte_edit_of_a_request_agrees_with_serde_json() {
        let json = request_json(&sample("ord-1", 0), Some("ord-1"));
        let mut accepted = 0;
        for at in 0..json.len() {
            for byte in *b"\"\\{}[],: \t0-9.eExn\x01\x7f" {
                let mut edited = json.clone().into_bytes();
                edited[at] = byte;
                if let Ok(text) = String::from_utf8(edited) {
                    accepted += usize::from(request_agrees(&text));
                }
            }
        }
        assert!(accepted > 1000, "{accepted}");
    }

    #[test]
    fn same_short_is_slice_equality() {
        let text: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for n in 0..=40 {
            for at in 0..n {
                let mut other = text[..n].to_vec();
                assert!(same_short(&text[..n], &other));
                other[at] ^= 0x20;
                assert!(!same_short(&text[..n], &other), "{n} {at}");
            }
            assert!(!same_short(&text[..n], &text[..n.saturating_sub(1)]) || n == 0);
        }
    }

    #[test]
    fn string_end_finds_the_first_quote_backslash_or_control_character() {
        let naive = |bytes: &[u8]| {
            bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        };
        for len in 0..40 {
            for at in 0..len {
                for stop in [b'"', b'\\', 0, 0x1f, b'\n'] {
                    for filler in [b'a', b' ', 0x21, 0x5b, 0x7f, 0x80, 0xff, 0x22 + 1, 0x5c + 1] {
                        let mut bytes = vec![filler; len];
                        bytes[at] = stop;
                        // A second stop later must not hide the first.
                        if at + 3 < len {
                            bytes[at + 3] = b'"';
                        }
                        assert_eq!(string_end(&bytes), naive(&bytes), "{bytes:?}");
                        assert_eq!(string_end(&bytes), Some(at));
                    }
                }
            }
            assert_eq!(string_end(&vec![b'x'; len]), None);
        }
    }
}

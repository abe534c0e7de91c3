//! The Prometheus text exposition both the operator and the workers serve on `/metrics`.

use prometheus::{Encoder, Registry, TextEncoder};

/// The Prometheus text exposition of everything in `registry` (what `/metrics` serves).
pub fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("text encoding is UTF-8")
}

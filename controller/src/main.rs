//! The operator binary: wires configuration, clients and the reconcilers together.

fn main() {
    println!("pubsubkafka-controller {}", env!("CARGO_PKG_VERSION"));
}

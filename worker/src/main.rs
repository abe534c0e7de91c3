//! The worker binary: one subcommand per data-plane role.

fn main() {
    println!("pubsubkafka-worker {}", env!("CARGO_PKG_VERSION"));
}

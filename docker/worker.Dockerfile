# The worker image (consume, gateway, outbox-relay, replay) on a slim, non-root base.
# Build from the repository root: docker build -f docker/worker.Dockerfile .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pubsubkafka-worker --bin pubsubkafka-worker

# librdkafka links the system OpenSSL: a slim Debian with libssl3 and CA certificates.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /src/target/release/pubsubkafka-worker /usr/local/bin/pubsubkafka-worker
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/pubsubkafka-worker"]

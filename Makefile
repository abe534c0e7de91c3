# PubSubKafka: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
STACK_DIR ?= .stack

.DEFAULT_GOAL := help
.PHONY: help demo demo-down test check test-faults fuzz bench tools images up reload down env \
	fmt lint crds rules

## help: this list (from the `##` comments of the Makefile)
help:
	@awk '/^## / { sub(/^## /, ""); if (match($$0, /^[a-z-]+: /)) { name = substr($$0, 1, RLENGTH - 2); text = substr($$0, RLENGTH + 1) } else { name = ""; text = $$0 } printf "  \033[1m%-12s\033[0m %s\n", name, text }' $(MAKEFILE_LIST)

## demo: bring up the local stack and the operator, apply the examples, send orders, summarize
demo:
	scripts/demo.sh

## demo-down: stop everything the demo started and remove its data
demo-down:
	@if [ -x target/debug/demo ]; then target/debug/demo down --dir $(STACK_DIR); \
	else cargo run -q --locked -p pubsubkafka-tests --bin demo -- down --dir $(STACK_DIR); fi

## test: install what is missing, lint, start a fresh stack, run every test, stop the stack
test:
	scripts/test.sh

## check: the fast loop (no stack): fmt, clippy, unit tests, generated CRDs current
check:
	scripts/check.sh

## test-faults: the fault-injection suite (every `fault_` test: broker, database, API server,
## worker crashes, bad input) on a fresh stack, then the fuzz targets for FUZZ_SECONDS each
test-faults:
	scripts/test-faults.sh

## fuzz: the cargo fuzz targets alone (order decoder, header parser), FUZZ_SECONDS each
fuzz:
	scripts/fuzz.sh

## bench: worker, sink, gateway and controller against Kafka's perf tools and PostgreSQL COPY;
## writes docs/BENCHMARKS.md (flags: make bench ARGS="--only sink --sink-records 20000")
bench:
	scripts/bench.sh $(ARGS)

## tools: install Kafka, kube-apiserver, etcd, kubectl, helm and Debian packages (cached)
tools:
	scripts/install-tools.sh

## images: the operator and worker OCI images from the release binaries, without Docker
## (target/images/*.tar; imported into the local node's containerd by `make up`)
images:
	scripts/images.sh

## up: start the local stack for a person and print how to reach it
up: tools images
	cargo run -q --locked -p pubsubkafka-tests --bin stack -- up --dir $(STACK_DIR)

## reload: rebuild the images and import them into the running stack's node
reload: images
	cargo run -q --locked -p pubsubkafka-tests --bin stack -- images --dir $(STACK_DIR)

## down: stop the stack `make up` started
down:
	cargo run -q --locked -p pubsubkafka-tests --bin stack -- down --dir $(STACK_DIR)

## env: the shell exports of the running stack (eval "$(make -s env)")
env:
	@cargo run -q --locked -p pubsubkafka-tests --bin stack -- env --dir $(STACK_DIR)

## crds: regenerate crds/ (and the chart's copy) from the Rust types
crds:
	cargo run -q --locked -p pubsubkafka-controller --bin crdgen

## fmt: format the code
fmt:
	cargo fmt --all

## lint: cargo fmt --check and clippy with warnings denied
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

## rules: regenerate deploy/prometheus/rules.yml from the chart's PrometheusRule, then test it
rules:
	PSK_BLESS=1 cargo test -q --locked -p pubsubkafka-tests --test chart -- plain_prometheus_rules
	promtool check rules deploy/prometheus/rules.yml
	promtool test rules deploy/prometheus/rules.test.yml

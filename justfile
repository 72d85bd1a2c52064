# workhost recipes. Run them through scripts/just, which installs the pinned
# `just` on first use. CI runs `test` and `lint`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Install every toolchain the guests need: the wasm32-wasip2 target (rustup),
# and componentize-js from guest-examples/js/package-lock.json (npm install of the locked versions).
# scripts/just itself installs the Python tools (componentize-py) pinned in
# scripts/requirements-tools.txt into .tools/venv.
setup:
    rustup target add wasm32-wasip2
    scripts/npm-ci guest-examples/js

# Build every guest example: target/guests/<name>.wasm (Rust) and
# target/guests/<name>-<lang>.wasm (py, js).
guests: setup
    cargo build --quiet -p workhost-tests
    @ls target/guests/*.wasm

# The main job: run the example handlers through `workhost exec`.
demo: guests
    cargo build --quiet --workspace --bins
    scripts/demo

# Run every test: unit, integration (guests built from source), doc tests.
test: setup
    cargo test --workspace

# Lints as CI runs them: formatting, and clippy with warnings as errors.
lint: setup
    cargo fmt --all --check
    cd guest-examples && cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cd guest-examples && cargo clippy --target wasm32-wasip2 -- -D warnings

# The crash harness, longer: SIGKILL a serving daemon KILLS times at random
# moments (reproducible from SEED), then check every promise.
chaos SEED="1" KILLS="20" TASKS="20": guests
    cargo run --quiet -p workhost-tests --example chaos -- {{SEED}} {{KILLS}} {{TASKS}}

# Print the benchmarks: echo per run against bare wasmtime; echo in every
# language against Rust and restart-to-first-task; durable throughput.
bench: setup
    cargo bench -p workhost-tests --bench executor
    cargo bench -p workhost-tests --bench languages
    cargo bench -p workhost-tests --bench scheduler

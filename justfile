# workhost recipes. Run them through scripts/just, which installs the pinned
# `just` on first use. CI runs `test` and `lint`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Install every toolchain the guests need: the wasm32-wasip2 target (rustup),
# and componentize-js, esbuild and the JavaScript examples' npm packages from
# guest-examples/js/package-lock.json (npm install of the locked versions);
# and PostgreSQL's server programs for the tests' throwaway server, from
# Debian's packages when initdb is missing (scripts/postgres-install; skipped
# when WORKHOST_TEST_DATABASE_URL names a server to use instead); and
# valgrind, for the C ABI's bad-input test (scripts/valgrind-install);
# and the dashboard's browser test: playwright-core from
# tests/browser/package-lock.json and Debian's chromium
# (scripts/chromium-install).
# First the PyPI tools pinned in scripts/requirements-tools.txt
# (componentize-py, zig, wasm-tools, schemathesis) into .tools/venv
# (scripts/tools-install; scripts/just itself installs only `just`); the
# Python examples' PyPI packages (guest-examples/py/requirements.txt) are
# installed by tests/build.rs into target/py-deps.
setup:
    scripts/tools-install tools
    rustup target add wasm32-wasip2
    scripts/npm-ci guest-examples/js
    scripts/postgres-install
    scripts/valgrind-install
    scripts/npm-ci tests/browser
    scripts/chromium-install

# Build every guest example: target/guests/<name>.wasm (Rust) and
# target/guests/<name>-<lang>.wasm (py, js, c); and target/c-sdk (the C
# bindings and WASI adapter the README's C guide uses).
guests: setup
    cargo build --quiet -p workhost-tests
    @ls target/guests/*.wasm

# The main job: a `workhost serve --debug` daemon on the embedded store,
# driven by the CLI (scripts/demo). It builds only what it runs: the
# wasm32-wasip2 target, the six Rust handlers of scripts/demo.toml
# (scripts/demo-guests) and the `workhost` binary; not the test crate, the
# other languages' toolchains, the PyPI tools or the test services that
# `setup` installs.
# The guests build beside the host: the host's build spends minutes on one
# core (cranelift-codegen), and the guests take the other.
demo:
    #!/usr/bin/env bash
    set -euo pipefail
    rustup target add wasm32-wasip2
    scripts/demo-guests & guests=$!
    cargo build --quiet -p workhost-cli
    wait $guests
    scripts/demo

# Run every test: unit, integration (guests built from source), doc tests.
test: setup
    cargo test --workspace

# Lints as CI runs them: formatting, clippy with warnings as errors, the
# CLI's `otlp` feature (checked, not linked), and the rustdoc of the library,
# the HTTP layer and the OTLP exporter (broken or private links are errors).
lint: setup
    cargo fmt --all --check
    cd guest-examples && cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo check -p workhost-cli --features otlp
    cd guest-examples && cargo clippy --target wasm32-wasip2 -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps -p workhost -p workhost-http -p workhost-otlp

# The crash harness, longer: SIGKILL a serving daemon KILLS times at random
# moments (reproducible from SEED), then check every promise; STORE sqlite
# (default) or postgres (a database of the tests' PostgreSQL server).
chaos SEED="1" KILLS="20" TASKS="20" STORE="sqlite": guests
    cargo run --quiet -p workhost-tests --example chaos -- {{SEED}} {{KILLS}} {{TASKS}} {{STORE}}

# Fuzz the parsers of untrusted text (task input JSON, CLI values, manifests,
# enqueue requests with every duration and count)
# for SECONDS each, then print each target's executions. Stable Rust with
# `--sanitizer none` (see tests/fuzz/Cargo.toml); installs the pinned
# cargo-fuzz into .tools/cargo on first use. Crashes land in
# tests/fuzz/artifacts/<target>/.
fuzz SECONDS="60":
    #!/usr/bin/env bash
    set -euo pipefail
    if [ "$(.tools/cargo/bin/cargo-fuzz --version 2>/dev/null)" != "cargo-fuzz 0.13.2" ]; then
        cargo install --quiet --locked cargo-fuzz --version 0.13.2 --root .tools/cargo
    fi
    export PATH="$PWD/.tools/cargo/bin:$PATH" CARGO_TARGET_DIR="$PWD/target/fuzz"
    for t in input_json cli_values manifest enqueue_request; do
        mkdir -p "target/fuzz-corpus/$t"
        cargo fuzz run --fuzz-dir tests/fuzz --sanitizer none "$t" "target/fuzz-corpus/$t" "tests/fuzz/seeds/$t" \
            -- -max_total_time={{SECONDS}} -timeout=10 -rss_limit_mb=4096 2>&1 | tee "target/fuzz-$t.log" | grep -E '^(#[0-9]+ +DONE|==|SUMMARY|Done)' || true
        grep -q 'Done [0-9]* runs' "target/fuzz-$t.log" || { echo "fuzz target $t failed; see target/fuzz-$t.log" >&2; exit 1; }
        echo "$t: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "target/fuzz-$t.log")"
    done

# Print the benchmarks: echo per run against bare wasmtime; echo in every
# language against Rust and restart-to-first-task; durable throughput.
bench: setup
    cargo bench -p workhost-tests --bench executor
    cargo bench -p workhost-tests --bench languages
    cargo bench -p workhost-tests --bench scheduler
    cargo bench -p workhost-tests --bench schedules

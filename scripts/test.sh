#!/usr/bin/env bash
# The whole test suite: set up Docker, build gitvm and the base template, check formatting and
# lints, then run every test against the real dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh debug
gitvm=target/x86_64-unknown-linux-gnu/debug/gitvm

echo "==> building the base template" >&2
"$gitvm" template build base

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --locked --workspace --all-targets -- -D warnings

echo "==> cargo test" >&2
cargo test --locked --workspace -- --test-threads="${GITVM_TEST_THREADS:-4}"

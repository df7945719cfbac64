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

# The SDK's documentation examples run against a server of their own.
doc_data=$(mktemp -d /tmp/gitvm-doctest.XXXXXX)
"$gitvm" server start --port 0 --data-dir "$doc_data" >"$doc_data/server.out" 2>"$doc_data/server.log" &
doc_server=$!
cleanup() {
  # Sandboxes of examples that failed halfway would outlive the server: delete them first.
  for id in $("$gitvm" vm list --server "${GITVM_SERVER:-http://127.0.0.1:1}" 2>/dev/null | awk 'NR > 1 { print $1 }'); do
    "$gitvm" vm rm --server "$GITVM_SERVER" "$id" >/dev/null 2>&1 || true
  done
  kill "$doc_server" 2>/dev/null || true
  wait "$doc_server" 2>/dev/null || true
  rm -rf "$doc_data"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  grep -q 'listening on' "$doc_data/server.out" && break
  sleep 0.1
done
if ! grep -q 'listening on' "$doc_data/server.out"; then
  echo "error: the server for the documentation examples did not start; its log follows" >&2
  cat "$doc_data/server.log" >&2
  exit 1
fi
GITVM_SERVER=$(sed -n 's/^gitvm server listening on //p' "$doc_data/server.out")
export GITVM_SERVER
unset GITVM_API_KEY

echo "==> cargo test (documentation examples use $GITVM_SERVER)" >&2
cargo test --locked --workspace --no-fail-fast -- --test-threads="${GITVM_TEST_THREADS:-4}"

#!/usr/bin/env bash
# Runs the main job end to end. It sets up the machine, builds the base template and starts a
# gitvm server. Then it creates a sandbox, uploads a small Python project through the files API,
# runs the project's unit tests in the sandbox and prints their output. Last, it cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh release
gitvm=target/x86_64-unknown-linux-gnu/release/gitvm
port=${GITVM_DEMO_PORT:-8080}
# `qemu` runs the sandbox as a microVM instead of a container.
runtime=${GITVM_DEMO_RUNTIME:-docker}
# Kernels and root disks of microVMs are kept here between runs.
cache_dir=${GITVM_CACHE_DIR:-/var/lib/gitvm/cache}
# A data directory made here is removed at the end; one given in GITVM_DEMO_DATA_DIR is kept.
if [ -n "${GITVM_DEMO_DATA_DIR:-}" ]; then
  data_dir=$GITVM_DEMO_DATA_DIR
  keep_data_dir=1
else
  data_dir=$(mktemp -d /tmp/gitvm-demo.XXXXXX)
  keep_data_dir=0
fi

echo "==> building the base template (Debian bookworm; cached after the first run)" >&2
if [ "$runtime" = qemu ]; then
  "$gitvm" template build base --microvm --cache-dir "$cache_dir"
else
  "$gitvm" template build base
fi

echo "==> starting gitvm server on 127.0.0.1:$port (data: $data_dir)" >&2
server_log="$data_dir/server.log"
"$gitvm" server start --port "$port" --data-dir "$data_dir" --cache-dir "$cache_dir" \
  >"$data_dir/server.out" 2>"$server_log" &
server_pid=$!
sandbox=""
cleanup() {
  [ -n "$sandbox" ] && "$gitvm" vm rm "$sandbox" >/dev/null 2>&1 || true
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  [ "$keep_data_dir" = 1 ] || rm -rf "$data_dir"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  grep -q 'listening on' "$data_dir/server.out" 2>/dev/null && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "error: the server exited; its log follows (is port $port in use? set GITVM_DEMO_PORT)" >&2
    cat "$server_log" >&2
    exit 1
  fi
  sleep 0.1
done
if ! grep -q 'listening on' "$data_dir/server.out"; then
  echo "error: the server did not start listening within 10 s; its log follows" >&2
  cat "$server_log" >&2
  exit 1
fi
export GITVM_SERVER="http://127.0.0.1:$port"

sandbox=$("$gitvm" vm create --timeout 600 --runtime "$runtime")
echo "==> $runtime sandbox $sandbox is running" >&2

for file in examples/pyproject/*.py; do
  "$gitvm" vm files put "$sandbox" "$file" "/work/pyproject/$(basename "$file")"
done
"$gitvm" vm files ls "$sandbox" /work/pyproject

echo "==> running the project's unit tests inside the sandbox" >&2
"$gitvm" vm exec "$sandbox" --cwd /work/pyproject -- python3 -m unittest -v
echo "==> done: the tests above ran with $("$gitvm" vm exec "$sandbox" -- python3 --version) in sandbox $sandbox" >&2

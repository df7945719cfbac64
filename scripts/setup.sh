#!/usr/bin/env bash
# Prepares a fresh Debian machine for gitvm: installs Docker, debootstrap, QEMU and tmux when
# missing, starts dockerd when it is not running, and builds the `gitvm` and `gitvm-init` binaries.
# Safe to run again.
# Usage: scripts/setup.sh [release|debug]   (default: release)
set -euo pipefail

profile=${1:-release}
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

need_packages=()
command -v dockerd >/dev/null 2>&1 || need_packages+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_packages+=(debootstrap)
# The terminal tests drive `gitvm vm shell` inside tmux.
command -v tmux >/dev/null 2>&1 || need_packages+=(tmux)
# The qemu runtime: the emulator, qemu-img for disk overlays, mkfs.ext4 for root disks, and
# dpkg-deb to unpack Debian's kernel package.
# Their recommended packages (firmware images, GUI parts) are not needed.
qemu_packages=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || qemu_packages+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || qemu_packages+=(qemu-utils)
command -v mkfs.ext4 >/dev/null 2>&1 || qemu_packages+=(e2fsprogs)
if [ "$(( ${#need_packages[@]} + ${#qemu_packages[@]} ))" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing ${need_packages[*]} ${qemu_packages[*]}; run this script as root or install them with apt-get" >&2
    exit 1
  fi
  log "installing ${need_packages[*]} ${qemu_packages[*]}"
  apt-get update -q
  if [ "${#need_packages[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_packages[@]}"
  fi
  if [ "${#qemu_packages[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${qemu_packages[@]}"
  fi
fi

if ! docker info >/dev/null 2>&1; then
  if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then
    log "started docker with systemd"
  else
    log "starting dockerd (log: /var/log/gitvm-dockerd.log)"
    setsid nohup dockerd >/var/log/gitvm-dockerd.log 2>&1 </dev/null &
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    echo "error: dockerd did not come up within 30 s; see /var/log/gitvm-dockerd.log" >&2
    tail -n 20 /var/log/gitvm-dockerd.log >&2 || true
    exit 1
  fi
fi
log "docker $(docker version --format '{{.Server.Version}}') is running"

log "building gitvm ($profile)"
if [ "$profile" = release ]; then
  cargo build --release --locked --bin gitvm --bin gitvm-init
else
  cargo build --locked --bin gitvm --bin gitvm-init
fi

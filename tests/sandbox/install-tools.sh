#!/usr/bin/env bash
# Installs what building and testing cdr_kafka needs on a Debian machine, skipping what
# is there already: a C compiler and libclang (bindgen), debootstrap (the Asterisk root),
# and the tansu broker (built with cargo; it takes about 13 minutes the first time).
set -euo pipefail

need=()
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v make >/dev/null || need+=(make)
command -v perl >/dev/null || need+=(perl)
command -v debootstrap >/dev/null || need+=(debootstrap)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev clang)
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing ${need[*]}..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

tansu=${TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
if [ ! -x "$tansu" ]; then
  echo "Building the tansu broker (cargo install, about 13 minutes)..."
  cargo install --quiet tansu --features libsql,dynostore
fi

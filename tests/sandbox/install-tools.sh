#!/usr/bin/env bash
# Installs what building and testing cdr_kafka needs on a Debian machine, skipping what
# is there already: a C compiler, clang/libclang (bindgen), cmake and pkg-config (the
# tansu broker's build), debootstrap (the Asterisk root), dpkg-dev, binutils and lintian
# (make deb and its test), openssl and stunnel4 (the TLS tests: certificates, and a TLS
# listener in front of tansu), and tansu itself (built with cargo; about 13 minutes the
# first time).
set -euo pipefail

need=()
for package in gcc libc6-dev make perl debootstrap clang libclang-dev cmake pkg-config util-linux \
  dpkg-dev binutils lintian openssl stunnel4; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || need+=("$package")
done
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

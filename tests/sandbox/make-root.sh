#!/usr/bin/env bash
# Makes the throwaway Debian unstable root the end-to-end tests run Asterisk 22 in, and a
# header folder holding only its asterisk.h and asterisk/ (never its whole /usr/include).
#   make-root.sh ROOT INCLUDE_DIR
set -euo pipefail
root=$1
include_dir=$2

if [ ! -x "$root/usr/sbin/asterisk" ] || [ ! -x "$root/usr/bin/kcat" ]; then
  echo "Making a Debian unstable root with Asterisk in $root (about 2 minutes)..."
  rm -rf "$root"
  mkdir -p "$(dirname "$root")"
  debootstrap --variant=minbase --include=asterisk,asterisk-dev,kcat,tzdata sid "$root" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log"; echo "debootstrap failed (log: $root.log)"; exit 1; }
  # Asterisk's files belong to a user id this machine does not map; the tests run it as root.
  chroot "$root" chown -R root:root /etc/asterisk /var/lib/asterisk /var/spool/asterisk \
    /var/log/asterisk /usr/share/asterisk
  # The root's var/run is a symlink to /run: create the folder on the root's side of it.
  mkdir -p "$root/run/asterisk"
  cp -a "$root/etc/asterisk" "$root/etc/asterisk.dist"
fi

if [ ! -f "$include_dir/asterisk/buildopts.h" ] || [ "$root/usr/include/asterisk/buildopts.h" -nt "$include_dir/asterisk/buildopts.h" ]; then
  rm -rf "$include_dir"
  mkdir -p "$include_dir"
  cp -a "$root/usr/include/asterisk.h" "$root/usr/include/asterisk" "$include_dir/"
fi
echo "Asterisk root: $root ($(chroot "$root" asterisk -V)); headers: $include_dir"

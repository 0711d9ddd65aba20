#!/usr/bin/env bash
# Builds cdr-kafka_<version>_<arch>.deb with dpkg-deb from a built module, for the Asterisk
# whose headers it was built against (`make deb` runs it).
#   make-deb.sh MODULE ASTERISK_INCLUDE_DIR OUT_DIR VERSION MAINTAINER
# The package depends on asterisk-abi-<AST_BUILDOPT_SUM of those headers>, which only that
# Asterisk build provides (what Debian's dh_asterisk does for its own module packages).
set -euo pipefail

module=$1
include_dir=$2
out_dir=$3
version=$4
maintainer=$5
here=$(cd "$(dirname "$0")" && pwd)
tree=$(dirname "$here")

fail() {
  echo "make-deb.sh: $*" >&2
  exit 1
}

[ -f "$module" ] || fail "$module is not built: run make first, or name the module with DEB_MODULE="
buildopts=$include_dir/asterisk/buildopts.h
[ -f "$buildopts" ] || fail "$buildopts not found: set ASTERISK_INCLUDE_DIR to the headers the module was built against"
# The same pattern dh_asterisk reads it with.
abi=$(sed -n 's/^#define[[:space:]]\+AST_BUILDOPT_SUM[[:space:]]\+"\([0-9a-f]\+\)".*/\1/p' "$buildopts")
[ -n "$abi" ] || fail "no AST_BUILDOPT_SUM in $buildopts"
# The module carries its Asterisk's sum (AST_MODULE_INFO): a package must not promise
# another Asterisk than the one the module loads into.
grep -qF "$abi" "$module" ||
  fail "$module was not built against $include_dir (it does not carry build-option sum $abi)"
[ -n "$maintainer" ] || fail "no maintainer: set DEB_MAINTAINER=\"Name <address>\""

arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null)
# Debian's Asterisk paths (its asterisk.conf): modules, third-party XML docs, configs.
moddir=usr/lib/$multiarch/asterisk/modules
docdir=usr/share/asterisk/documentation/thirdparty

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/debian/cdr-kafka
install -d -m 0755 "$pkg/DEBIAN" "$pkg/$moddir" "$pkg/$docdir" "$pkg/etc/asterisk" \
  "$pkg/usr/share/doc/cdr-kafka" "$pkg/usr/share/lintian/overrides"

# Asterisk's own modules are 0644; stripped as dh_strip strips a shared library.
install -m 0644 "$module" "$pkg/$moddir/cdr_kafka.so"
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$pkg/$moddir/cdr_kafka.so"
install -m 0644 "$tree/documentation/cdr_kafka_config-en_US.xml" "$pkg/$docdir/"
# 0640: it may hold sasl_password; postinst gives group asterisk read access.
install -m 0640 "$tree/cdr_kafka.conf.sample" "$pkg/etc/asterisk/cdr_kafka.conf"
install -m 0644 "$here/copyright" "$pkg/usr/share/doc/cdr-kafka/"
install -m 0644 "$here/lintian-overrides" "$pkg/usr/share/lintian/overrides/cdr-kafka"

# A native package's changelog: one entry for this build, dated by the tree's last commit
# so that two builds of one commit are alike.
date=${SOURCE_DATE_EPOCH:-$(git -C "$tree" log -1 --format=%ct 2>/dev/null || date +%s)}
{
  echo "cdr-kafka ($version) unstable; urgency=medium"
  echo
  echo "  * Built for Asterisk build-option sum $abi."
  echo
  echo " -- $maintainer  $(date -R -u -d "@$date")"
} | gzip -9n >"$pkg/usr/share/doc/cdr-kafka/changelog.gz"

install -m 0644 "$here/conffiles" "$pkg/DEBIAN/"
install -m 0755 "$here/postinst" "$here/postrm" "$pkg/DEBIAN/"

# dpkg-shlibdeps reads debian/control and the installed libraries' shlibs/symbols files.
printf 'Source: cdr-kafka\n\nPackage: cdr-kafka\nArchitecture: any\n' >"$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O "-e$pkg/$moddir/cdr_kafka.so" | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || fail "dpkg-shlibdeps found no dependency for $module"

(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/md5sums"
# KiB as dpkg-gencontrol counts them: each file rounded up, one per other entry.
installed_size=$(cd "$pkg" && find . -path ./DEBIAN -prune -o -printf '%y %s\n' |
  awk '{ kib += ($1 == "f") ? int(($2 + 1023) / 1024) : 1 } END { print kib }')
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
  -e "s|@INSTALLED_SIZE@|$installed_size|" -e "s|@ABI@|$abi|" -e "s|@SHLIBS_DEPENDS@|$shlibs|" \
  "$here/control.in" >"$pkg/DEBIAN/control"

mkdir -p "$out_dir"
deb=$out_dir/cdr-kafka_${version}_${arch}.deb
SOURCE_DATE_EPOCH=$date dpkg-deb --root-owner-group --build "$pkg" "$deb" >/dev/null
echo "$deb (for Asterisk build-option sum $abi)"

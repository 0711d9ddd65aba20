#!/bin/sh
# buildopts.sh MODULE ASTERISK warn|refuse
#
# Asterisk refuses, at load, a module built with other build options than its own (the
# AST_BUILDOPT_SUM of buildopts.h). Both files carry their sum as a string of 32 hex
# digits; when no such string of MODULE is anywhere in the ASTERISK binary, that
# Asterisk will refuse the module: say so in one sentence (and fail, with `refuse`).
# Silent when either file is missing, or MODULE carries no sum (Asterisk then does not
# check).
export LC_ALL=C
module=$1 asterisk=$2 mode=$3
[ -f "$module" ] && [ -f "$asterisk" ] || exit 0

# Runs of exactly 32 hex digits, the most frequent first.
sums() {
	tr -c '0-9a-f' '\n' <"$1" | grep -xE '[0-9a-f]{32}' | sort | uniq -c | sort -rn | awk '{ print $2 }'
}

ours=$(sums "$module")
[ -n "$ours" ] || exit 0
# A plain byte search of the binary: its own sum is found wherever it sits.
for sum in $ours; do
	grep -qaF "$sum" "$asterisk" && exit 0
done
theirs=$(sums "$asterisk" | head -n 1)
echo "cdr_kafka: $module has the Asterisk build options sum $(echo "$ours" | head -n 1) but $asterisk has ${theirs:-another}, and refuses to load it: build with ASTERISK_INCLUDE_DIR= set to the headers of that Asterisk (its asterisk-dev package)" >&2
[ "$mode" = warn ]

#!/bin/sh
# buildopts.sh MODULE ASTERISK INCLUDE_DIR warn|refuse
#
# Asterisk refuses, at load, a module built with other build options than its own (the
# AST_BUILDOPT_SUM of buildopts.h). The module was built with INCLUDE_DIR's sum when it
# holds that string; when the ASTERISK binary does not (a plain byte search: its own sum
# is found wherever it sits), that Asterisk will refuse the module: say so in one
# sentence (and fail, with `refuse`). Silent when a file is missing, the sum is empty
# (Asterisk then does not check) or the module was built with other headers.
export LC_ALL=C
module=$1 asterisk=$2 include_dir=$3 mode=$4
[ -f "$module" ] && [ -f "$asterisk" ] || exit 0
ours=$(sed -n 's/^#define AST_BUILDOPT_SUM "\([0-9a-f]*\)".*/\1/p' "$include_dir/asterisk/buildopts.h" 2>/dev/null)
[ -n "$ours" ] && grep -qaF "$ours" "$module" || exit 0
grep -qaF "$ours" "$asterisk" && exit 0
# Its own: the string of 32 hex digits it holds most often.
theirs=$(tr -c '0-9a-f' '\n' <"$asterisk" | grep -xE '[0-9a-f]{32}' | sort | uniq -c | sort -rn | awk '{ print $2; exit }')
echo "cdr_kafka: $module has the Asterisk build options sum $ours but $asterisk has ${theirs:-another}, and refuses to load it: build with ASTERISK_INCLUDE_DIR= set to the headers of that Asterisk (its asterisk-dev package)" >&2
[ "$mode" = warn ]

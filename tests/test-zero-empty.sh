#!/usr/bin/env bash
# The zero plugin: an empty read-only disk that takes no parameters, as nbdkit's.
source "$(dirname "$0")/lib/functions.sh"

start_server zero
[ "$(nbdinfo --size "$uri")" -eq 0 ] || fail "zero: size is not 0"
nbdinfo --json "$uri" > "$tmp/info.json"
grep -q '"is_read_only": true' "$tmp/info.json" || fail "zero: not read-only: $(cat "$tmp/info.json")"
nbdcopy "$uri" "$tmp/out.img"
[ "$(stat -c %s "$tmp/out.img")" -eq 0 ] || fail "zero: copied something"

same_as_nbdkit zero

bad_args zero size=1M -- zero
echo OK

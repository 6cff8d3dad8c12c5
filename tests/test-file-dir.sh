#!/usr/bin/env bash
# file dir=DIR: one export per regular file in DIR, named after the file.  NBD_OPT_LIST lists
# them all; each name serves its own file; unknown names and names escaping DIR are refused.
source "$(dirname "$0")/lib/functions.sh"

mkdir "$tmp/dir" "$tmp/dir/subdir"
random_file "$tmp/dir/a.img" 1M
truncate -s 2M "$tmp/dir/b.img"
echo secret > "$tmp/outside.txt"

start_server file dir="$tmp/dir"
nbdinfo --list --json "$uri" > "$tmp/list.json"
cat "$tmp/list.json"
python3 - "$tmp/list.json" <<'PY' || fail "wrong export list"
import json, sys
exports = {e["export-name"]: e["export-size"] for e in json.load(open(sys.argv[1]))["exports"]}
assert exports == {"a.img": 1 << 20, "b.img": 2 << 20}, exports
PY

at() { echo "nbd+unix:///$1?socket=$sock"; }
[ "$(nbdinfo --size "$(at a.img)")" -eq 1048576 ] || fail "size of a.img"
[ "$(nbdinfo --size "$(at b.img)")" -eq 2097152 ] || fail "size of b.img"
nbdcopy "$(at a.img)" "$tmp/a.copy"
same_file "$tmp/dir/a.img" "$tmp/a.copy"

# Writes go to the right file.
nbdsh -u "$(at b.img)" -c 'h.pwrite(b"B" * 4096, 8192); h.flush()'
python3 -c "
import sys
d = open('$tmp/dir/b.img', 'rb').read()
assert d[8192:8192 + 4096] == b'B' * 4096 and d[:8192] == bytes(8192)
" || fail "write did not land in b.img"
same_file "$tmp/dir/a.img" "$tmp/a.copy"

# Unknown names and names that leave the directory fail to connect.
expect_fail nbdinfo --size "$(at nope.img)"
expect_fail nbdinfo --size "$(at ../outside.txt)"
expect_fail nbdinfo --size "$(at subdir)"
kill -0 "$server_pid" || fail "server died"
echo OK

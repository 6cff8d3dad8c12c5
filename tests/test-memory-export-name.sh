#!/usr/bin/env bash
# -e NAME: the export's name, as listed by NBD_OPT_LIST (nbdinfo --list) and used to connect.
#
# Fails against nbdkit 1.32: -e there only names the export in --run URIs; NBD_OPT_LIST still
# lists the plugin's default export "".
source "$(dirname "$0")/lib/functions.sh"

start_server -e myexport memory 2M
nbdinfo --list "$uri" > "$tmp/list"
cat "$tmp/list"
grep -q 'export="myexport"' "$tmp/list" || fail "export name not listed"
nbdinfo --list --json "$uri" > "$tmp/list.json"
python3 -c "import json; e = json.load(open('$tmp/list.json'))['exports']; assert len(e) == 1, e" ||
    fail "expected exactly one export"
[ "$(nbdinfo --size "nbd+unix:///myexport?socket=$sock")" -eq 2097152 ] || fail "size via name"
nbdsh -u "nbd+unix:///myexport?socket=$sock" -c '
h.pwrite(b"named" * 100, 0)
assert h.pread(500, 0) == b"named" * 100
'
echo OK

#!/usr/bin/env bash
# -e NAME with a plugin that tells export names apart (file dir=DIR), as nbdkit has it: -e only
# names the export that --run's captive client uses ($uri).  With `-e a file dir=DIR`:
# - NBD_OPT_LIST lists the directory's files (a and b), not "a" alone and not "" renamed;
# - a client asking for export "a" gets the file a, one asking for "b" gets b;
# - a client asking for "" gets the plugin's default export, which in directory mode does not
#   exist: it is refused (nbdkit: "A client that requests the default export ("") will be
#   rejected");
# - under --run, $uri names export a, and the captive client reads the file a through it.
source "$(dirname "$0")/lib/functions.sh"

mkdir "$tmp/dir"
python3 - "$tmp/dir" <<'PY'
import sys
open(sys.argv[1] + "/a", "wb").write(b"A" * 1024)
open(sys.argv[1] + "/b", "wb").write(b"B" * 2048)
PY

start_server -e a file dir="$tmp/dir"
nbdinfo --list --json "$uri" > "$tmp/list.json" || fail "nbdinfo --list failed"
python3 - "$tmp/list.json" <<'PY' || fail "wrong export list with -e a"
import json, sys
exports = {e["export-name"]: e["export-size"] for e in json.load(open(sys.argv[1]))["exports"]}
print("listed:", exports)
assert exports == {"a": 1024, "b": 2048}, exports
PY
at() { echo "nbd+unix:///$1?socket=$sock"; }
[ "$(nbdinfo --size "$(at a)")" -eq 1024 ] || fail "export a is not the file a"
[ "$(nbdinfo --size "$(at b)")" -eq 2048 ] || fail "export b is not the file b"
nbdsh -u "$(at a)" -c 'assert h.pread(1024, 0) == b"A" * 1024' || fail "data of export a"
expect_fail nbdinfo --size "$(at "")"
kill -0 "$server_pid" || fail "server died"

"${server_cmd[@]}" -U - -e a file dir="$tmp/dir" --run '
    echo "uri=$uri"
    nbdinfo --size "$uri"
    nbdsh -u "$uri" -c "assert h.pread(16, 0) == b\"A\" * 16" && echo read-ok' \
    </dev/null > "$tmp/run.out" || fail "--run exited with status $?: $(cat "$tmp/run.out")"
cat "$tmp/run.out"
grep -q '^uri=nbd+unix:///a?socket=' "$tmp/run.out" || fail "\$uri does not name export a"
grep -qx '1024' "$tmp/run.out" || fail "--run client did not get the file a"
grep -qx 'read-ok' "$tmp/run.out" || fail "--run client could not read a"
echo OK

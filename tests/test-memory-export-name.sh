#!/usr/bin/env bash
# -e NAME, as nbdkit has it: it only sets the export name in --run's URI and variables ($uri,
# $nbd, $exportname), so the captive client connects to NAME.  It does not rename the export:
# NBD_OPT_LIST (nbdinfo --list) still lists the plugin's default export "" and nothing else, and
# the memory plugin, which ignores export names, serves the same disk under "", NAME and any
# other name.  (test-file-export-name.sh checks -e with a plugin that tells names apart.)
source "$(dirname "$0")/lib/functions.sh"

start_server -e myexport memory 2M
nbdinfo --list --json "$uri" > "$tmp/list.json" || fail "nbdinfo --list failed"
cat "$tmp/list.json"
python3 - "$tmp/list.json" <<'PY' || fail "-e renamed the listed export"
import json, sys
names = [e["export-name"] for e in json.load(open(sys.argv[1]))["exports"]]
assert names == [""], "listed exports %r, want ['']" % names
PY
at() { echo "nbd+unix:///$1?socket=$sock"; }
for name in "" myexport other; do
    [ "$(nbdinfo --size "$(at "$name")")" -eq 2097152 ] || fail "size via export '$name'"
done
# One disk whatever the name.
nbdsh -u "$(at myexport)" -c 'h.pwrite(b"named" * 100, 0)'
nbdsh -u "$(at "")" -c 'assert h.pread(500, 0) == b"named" * 100' || fail "data via ''"

# --run: the URI and $exportname carry the name; the captive client reaches the disk with it.
"${server_cmd[@]}" -U - -e myexport memory 2M --run '
    echo "uri=$uri"; echo "nbd=$nbd"; echo "exportname=$exportname"
    nbdinfo --size "$uri"
    nbdinfo --list --json "$uri" | grep -c "\"export-name\""
    nbdinfo --list --json "$uri" | grep "\"export-name\""' </dev/null > "$tmp/run.out"
cat "$tmp/run.out"
grep -q '^uri=nbd+unix:///myexport?socket=' "$tmp/run.out" || fail "\$uri lacks the export name"
grep -q '^nbd=nbd+unix:///myexport?socket=' "$tmp/run.out" || fail "\$nbd lacks the export name"
grep -qx 'exportname=myexport' "$tmp/run.out" || fail "\$exportname"
grep -qx '2097152' "$tmp/run.out" || fail "--run client could not use \$uri"
grep -qx '1' "$tmp/run.out" || fail "--run: more than one export listed"
grep -q '"export-name": ""' "$tmp/run.out" || fail "--run: default export not listed as \"\""
echo OK

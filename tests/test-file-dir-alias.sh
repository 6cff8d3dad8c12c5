#!/usr/bin/env bash
# file plugin, directory mode, as nbdkit has it:
# - `directory=DIR` is an alias of `dir=DIR`: the same exports, served the same way;
# - NBD_OPT_LIST (nbdinfo --list) gives the files in the order the directory gives them
#   (readdir order, what os.listdir returns), not sorted.  The files are created in a scrambled
#   order on $TMPDIR's file system (ext4 here: hash order; tmpfs: newest first), and the test
#   checks that this order differs from the sorted one.  nbdkit 1.32 lists in readdir order
#   (checked by hand: `nbdkit file dir=DIR` gives os.listdir's order).
source "$(dirname "$0")/lib/functions.sh"

mkdir "$tmp/dir"
i=0
for name in m.img c.img x.img a.img q.img f.img z.img b.img k.img; do
    i=$((i + 1))
    truncate -s "${i}M" "$tmp/dir/$name"
done
printf 'hello from q' | dd of="$tmp/dir/q.img" conv=notrunc status=none

python3 - "$tmp/dir" > "$tmp/readdir-order" <<'PY'
import os, sys
names = os.listdir(sys.argv[1])
if names == sorted(names):
    sys.exit("readdir order is the sorted order here: the test cannot tell them apart")
print("\n".join(names))
PY
echo "readdir order: $(tr '\n' ' ' < "$tmp/readdir-order")"

for param in dir directory; do
    start_server file "$param=$tmp/dir"
    nbdinfo --list --json "$uri" > "$tmp/list.json"
    python3 - "$tmp/list.json" "$tmp/readdir-order" "$tmp/dir" <<'PY' || fail "$param=: wrong export list"
import json, os, sys
exports = json.load(open(sys.argv[1]))["exports"]
names = [e["export-name"] for e in exports]
want = open(sys.argv[2]).read().split()
print("listed:", " ".join(names))
assert sorted(names) == sorted(want), "exports %r, files %r" % (names, want)
assert names == want, "listed in the order %r, readdir order is %r" % (names, want)
for e in exports:
    size = os.stat(os.path.join(sys.argv[3], e["export-name"])).st_size
    assert e["export-size"] == size, e
PY
    [ "$(nbdinfo --size "nbd+unix:///q.img?socket=$sock")" -eq $((5 << 20)) ] || fail "$param=: size of q.img"
    nbdsh -u "nbd+unix:///q.img?socket=$sock" -c 'assert h.pread(12, 0) == b"hello from q"' ||
        fail "$param=: data of q.img"
    stop_server "$server_pid"
done
echo OK

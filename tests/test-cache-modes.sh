#!/usr/bin/env bash
# The cache filter over a file: with cache=writeback a write reaches the file only after a
# flush (and at once with FUA); with writethrough at once; nbdcopy into and out of the export
# gives the same bytes as nbdkit with the same command line; cache-max-size keeps working data
# correct while blocks are dropped (compared with the file served without a cache, as nbdkit
# 1.32 gets this case wrong); the cache file leaves nothing in $TMPDIR.
source "$(dirname "$0")/lib/functions.sh"

export TMPDIR="$tmp/caches"
mkdir -p "$TMPDIR"
random_file "$tmp/data" 4M
truncate -s 4M "$tmp/disk.img"

start_server --filter=cache file "$tmp/disk.img"
DISK="$tmp/disk.img" nbdsh -u "$uri" -c '
import os, nbd
disk = os.environ["DISK"]
def on_disk(n, off):
    with open(disk, "rb") as f:
        f.seek(off)
        return f.read(n)
h.pwrite(b"later", 100)
assert h.pread(5, 100) == b"later"
assert on_disk(5, 100) == bytes(5), "written back before the flush"
h.flush()
assert on_disk(5, 100) == b"later", "not written back by the flush"
h.pwrite(b"fua", 1 << 20, nbd.CMD_FLAG_FUA)
assert on_disk(3, 1 << 20) == b"fua"
'
[ -z "$(ls -A "$TMPDIR")" ] || fail "the cache file is visible in \$TMPDIR"

start_server --filter=cache file "$tmp/disk.img" cache=writethrough
DISK="$tmp/disk.img" nbdsh -u "$uri" -c '
import os
h.pwrite(b"through", 4096)
with open(os.environ["DISK"], "rb") as f:
    f.seek(4096)
    assert f.read(7) == b"through"
'

for params in "" cache=writethrough "cache-max-size=1M cache-min-block-size=4k cache-on-read=true"; do
    cp "$tmp/data" "$tmp/a.img"
    cp "$tmp/data" "$tmp/b.img"
    if [[ "$params" == *cache-max-size* ]]; then
        # nbdkit 1.32 serves wrong data once its reclaim starts: compare with the file itself.
        start_server file "$tmp/a.img"
        peer_uri=$uri
    else
        # shellcheck disable=SC2086
        start_nbdkit --filter=cache file "$tmp/a.img" $params
    fi
    # shellcheck disable=SC2086
    start_server --filter=cache file "$tmp/b.img" $params
    for u in "$peer_uri" "$uri"; do
        nbdsh -u "$u" -c '
import random
rng = random.Random(7)
for _ in range(300):
    off = rng.randrange(0, (4 << 20) - 20000)
    if rng.random() < 0.5:
        h.pwrite(rng.randbytes(rng.randrange(1, 20000)), off)
    else:
        h.pread(rng.randrange(1, 20000), off)
h.flush()
'
    done
    rm -f "$tmp/nbdkit.out" "$tmp/ours.out"
    nbdcopy "$peer_uri" "$tmp/nbdkit.out"
    nbdcopy "$uri" "$tmp/ours.out"
    same_file "$tmp/nbdkit.out" "$tmp/ours.out"
    same_file "$tmp/a.img" "$tmp/b.img"
    echo "$params: ok"
done
bad_args --filter=cache memory 1M cache=sometimes -- cache=sometimes
bad_args --filter=cache memory 1M cache-max-size=4k -- cache-max-size
echo OK

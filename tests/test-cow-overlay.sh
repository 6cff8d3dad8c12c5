#!/usr/bin/env bash
# The cow filter: writes, zeroes and trims through it change what clients read (the same bytes
# as nbdkit ends with for the same requests) but never the file below; a second connection sees
# the first one's changes; block status merges the overlay with the file's holes; the overlay
# file leaves nothing behind in $TMPDIR; works under -r on the file too.
source "$(dirname "$0")/lib/functions.sh"

export TMPDIR="$tmp/overlays"
mkdir -p "$TMPDIR"
random_file "$tmp/data" 1M
truncate -s 8M "$tmp/disk.img"
dd if="$tmp/data" of="$tmp/disk.img" bs=1M seek=2 conv=notrunc status=none
cp "$tmp/disk.img" "$tmp/orig.img"

# (nbdkit 1.32's cow offers no zero over a read-only file: zeroes are written there instead.)
changes='
h.pwrite(b"cow" * 1000, 100)          # partial blocks
h.pwrite(b"\xaa" * 65536, 65536 * 5)   # a whole block
if h.can_zero():
    h.zero(200000, 2 * 1048576 + 1000)     # inside the data
else:
    h.pwrite(bytes(200000), 2 * 1048576 + 1000)
'
start_nbdkit --filter=cow file "$tmp/disk.img"
nbdsh -u "$peer_uri" -c "$changes"
start_server --filter=cow file "$tmp/disk.img"
nbdsh -u "$uri" -c "$changes"
[ -z "$(ls -A "$TMPDIR")" ] || fail "the overlay is visible in \$TMPDIR: $(ls -A "$TMPDIR")"
same_file "$tmp/orig.img" "$tmp/disk.img"

# What a new connection reads: the changes, as with nbdkit.
rm -f "$tmp/nbdkit.out" "$tmp/ours.out"
nbdcopy "$peer_uri" "$tmp/nbdkit.out"
nbdcopy "$uri" "$tmp/ours.out"
same_file "$tmp/nbdkit.out" "$tmp/ours.out"
cmp -s "$tmp/orig.img" "$tmp/ours.out" && fail "the changes are not visible"
nbdsh -u "$uri" -c '
assert h.pread(3000, 100) == b"cow" * 1000
assert h.pread(65536, 65536 * 5) == b"\xaa" * 65536
assert h.pread(200000, 2 * 1048576 + 1000) == bytes(200000)
assert h.can_multi_conn() and h.can_flush() and h.can_trim() and h.can_zero()
h.flush()
h.trim(65536, 3 * 1048576)
assert h.pread(65536, 3 * 1048576) == bytes(65536)
'
nbdinfo --map "$uri" | tee "$tmp/map"
grep -Eq '^ *0 +65536 +0 +data' "$tmp/map" || fail "the first overlay block is not data"
grep -Eq '^ *65536 +262144 +3 +hole,zero' "$tmp/map" || fail "the file's hole between overlay blocks"
grep -Eq '^ *327680 +65536 +0 +data' "$tmp/map" || fail "the second overlay block is not data"
grep -Eq '^ *393216 +1703936 +3 +hole,zero' "$tmp/map" || fail "the file's hole is not reported"

# The file may be read-only: the filter never writes to it.
chmod a-w "$tmp/disk.img"
start_server --filter=cow -r file "$tmp/disk.img"
nbdinfo "$uri" > /dev/null
start_server --filter=cow file "$tmp/disk.img" cow-on-read=true cow-block-size=4k
nbdsh -u "$uri" -c 'h.pwrite(b"x", 0); assert h.pread(4096, 2 * 1048576) == open("'"$tmp/data"'", "rb").read(4096)'
bad_args --filter=cow memory 1M cow-block-size=1k -- cow-block-size=1k
echo OK

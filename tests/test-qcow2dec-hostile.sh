#!/usr/bin/env bash
# The qcow2dec filter on truncated and hostile images (tables or clusters pointing past the end,
# an L1 table of 2^31 entries, 1 GiB clusters, a compressed cluster of random bytes): the
# connection is refused or the reads that need the bad parts fail with EIO while the rest of
# the disk still reads as qemu-img convert gives it; the server logs a message naming the filter,
# stays up, and its memory stays small.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/disk.img" 3M
qemu-img convert -f raw -O qcow2 "$tmp/disk.img" "$tmp/good.qcow2"
patch_image() { python3 "$repo/tests/lib/qcow2_patch.py" "$tmp/good.qcow2" "$tmp/$1.qcow2" "$1"; }

# check_reads IMAGE BAD-OFFSETS: reads of 512 bytes at 0, 64K, ..., 3M-512 give the disk's bytes,
# except at BAD-OFFSETS (comma-separated), where they fail with EIO.
check_reads() {
    start_server --filter=qcow2dec file "$tmp/$1.qcow2"
    ORIG="$tmp/disk.img" BAD="$2" nbdsh -u "$uri" -c '
import errno, os, nbd
data = open(os.environ["ORIG"], "rb").read()
bad = {int(x) for x in os.environ["BAD"].split(",") if x}
assert h.get_size() == len(data)
for off in list(range(0, len(data), 65536)) + [len(data) - 512]:
    try:
        got = h.pread(512, off)
        assert off not in bad, f"read at {off} succeeded"
        assert got == data[off:off + 512], f"wrong data at {off}"
    except nbd.Error as e:
        assert off in bad, f"read at {off}: {e}"
        assert e.errnum == errno.EIO, e
' || fail "$1: reads not as expected"
    kill -0 "$server_pid" || fail "$1: the server died"
    grep -q "qcow2dec: reading 512 bytes at" "$server_log" || fail "$1: no message naming the filter"
    echo "$1: EIO at $2 only"
}

# open_refused IMAGE MESSAGE: the connection is refused, the log says MESSAGE.
open_refused() {
    start_server --filter=qcow2dec file "$tmp/$1.qcow2"
    if nbdinfo "$uri" >/dev/null 2>&1; then fail "$1: served"; fi
    kill -0 "$server_pid" || fail "$1: the server died"
    grep -q "qcow2dec: opening the image: .*$2" "$server_log" || fail "$1: no message '$2'"
    local rss
    rss=$(ps -o rss= -p "$server_pid")
    [ "$rss" -lt 200000 ] || fail "$1: the server holds $rss KiB"
    echo "$1: refused ($(grep -o 'qcow2dec: .*' "$server_log" | head -1))"
}

for c in l1-past-end l1-huge cluster-bits; do patch_image $c; done
open_refused l1-past-end "past its end"
open_refused l1-huge "L1 table too big"
open_refused cluster-bits "cluster size"

# The whole first L2 table is past the end: every read needs it.
patch_image l2-past-end
check_reads l2-past-end "$(seq -s, 0 65536 3145728),3145216"
grep -q "truncated or corrupt: it points to 65536 bytes at offset 1099511627776, past its end" "$server_log" ||
    fail "the message does not say where the table points"
patch_image data-past-end
check_reads data-past-end 65536
patch_image compressed-past-end
check_reads compressed-past-end 196608
patch_image compressed-garbage
check_reads compressed-garbage 131072

# Truncated by qemu-img's own layout: the last 1 MiB of data is gone.
head -c $(($(stat -c %s "$tmp/good.qcow2") - (1 << 20))) "$tmp/good.qcow2" > "$tmp/short.qcow2"
check_reads short "$(seq -s, 2097152 65536 3145728),3145216"
echo OK

#!/usr/bin/env bash
# The ddrescue filter: reads of ranges the mapfile marks finished return the image's data, reads
# touching any other range fail with EIO (as with nbdkit); the export is read-only; a mapfile
# that does not parse names the file and the line.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/disk.img" 1M
cat > "$tmp/disk.map" <<'MAP'
# Mapfile. Created by GNU ddrescue version 1.27
# current_pos  current_status  current_pass
0x00010000     +               1
#      pos        size  status
0x00000000  0x00010000  +
0x00010000  0x00000200  -
0x00010200  0x00000E00  *
0x00011000  0x000EF000  +
MAP

for server in nbdkit ours; do
    if [ "$server" = nbdkit ]; then
        start_nbdkit --filter=ddrescue file "$tmp/disk.img" ddrescue-mapfile="$tmp/disk.map"
        u=$peer_uri
    else
        start_server --filter=ddrescue file "$tmp/disk.img" ddrescue-mapfile="$tmp/disk.map"
        u=$uri
    fi
    DISK="$tmp/disk.img" nbdsh -u "$u" -c '
import errno, os, nbd
disk = open(os.environ["DISK"], "rb").read()
assert h.is_read_only()
assert h.pread(65536, 0) == disk[:65536]
assert h.pread(4096, 0x11000) == disk[0x11000:0x12000]
for off, n in [(0x10000, 512), (0xFFFF, 2), (0x10E00, 4096)]:
    try:
        h.pread(n, off)
        assert False, "read of a bad range succeeded"
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
'
    echo "$server: ok"
done

printf '0 +\n0x0 zz +\n' > "$tmp/bad.map"
bad_args --filter=ddrescue file "$tmp/disk.img" ddrescue-mapfile="$tmp/bad.map" -- bad.map "line 2"
bad_args --filter=ddrescue file "$tmp/disk.img" -- ddrescue-mapfile
echo OK

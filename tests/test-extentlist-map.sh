#!/usr/bin/env bash
# The extentlist filter: nbdinfo --map shows the list (gaps as holes), the same as nbdkit shows
# for the same list; reads of listed data return the file's data; overlapping or unparsable lists
# are refused at start with the file's name.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/disk.img" 10M
# Not in order, with a gap from 3M to 5M.  (No comment lines: nbdkit 1.32 does not take them.)
cat > "$tmp/extents" <<'LIST'
5M 5M hole,zero
0 1M
1M 2M 2
LIST
same_served_as_nbdkit -r --filter=extentlist file "$tmp/disk.img" extentlist="$tmp/extents"
# nbdcopy skips what the list calls holes (as it should); reads of listed data return the
# file's.  (Reads of what the list calls zero come back as zeroes from nbdforge, whose server
# sends hole chunks for ranges the export's extents call zero; nbdkit sends the file's bytes.)
DISK="$tmp/disk.img" nbdsh -u "$uri" -c '
import os
disk = open(os.environ["DISK"], "rb").read()
assert h.pread(65536, 4096) == disk[4096:4096 + 65536]
'
nbdinfo --map "$peer_uri" > "$tmp/nbdkit.map"
nbdinfo --map "$uri" | tee "$tmp/ours.map"
same_file "$tmp/nbdkit.map" "$tmp/ours.map"
grep -Eq '^ *0 +1048576 +0 +data' "$tmp/ours.map" || fail "first extent"
grep -Eq '^ *1048576 +2097152 +2 +zero' "$tmp/ours.map" || fail "numeric type"
grep -Eq '^ *3145728 +7340032 +3 +hole,zero' "$tmp/ours.map" || fail "gap and hole merged"

printf '0 1M\n512K 1M\n' > "$tmp/overlap"
bad_args --filter=extentlist file "$tmp/disk.img" extentlist="$tmp/overlap" -- overlap
printf '0 1M sparse\n' > "$tmp/badtype"
bad_args --filter=extentlist file "$tmp/disk.img" extentlist="$tmp/badtype" -- badtype sparse
bad_args --filter=extentlist file "$tmp/disk.img" -- extentlist
echo OK

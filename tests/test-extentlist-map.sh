#!/usr/bin/env bash
# The extentlist filter: nbdinfo --map shows the list (gaps as holes), the same as nbdkit shows
# for the same list; the data is unchanged; overlapping or unparsable lists are refused at start
# with the file's name.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/disk.img" 10M
cat > "$tmp/extents" <<'LIST'
# not in order, with a gap from 3M to 5M
5M 5M hole,zero
0 1M
1M 2M 2
LIST
same_as_nbdkit -r --filter=extentlist file "$tmp/disk.img" extentlist="$tmp/extents"
same_file "$tmp/disk.img" "$tmp/ours.out"
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

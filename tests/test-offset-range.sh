#!/usr/bin/env bash
# The offset filter serves [offset, offset+range) of a file: nbdcopy gets the same bytes as from
# nbdkit with the same command line and as dd cuts from the file; writes land shifted; block
# status is shifted; a window past the end refuses clients; bad values name the parameter.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/disk.img" 1M
truncate -s 2M "$tmp/disk.img"   # the second MiB is a hole

same_served_as_nbdkit --filter=offset file "$tmp/disk.img" offset=4096 range=64K
dd if="$tmp/disk.img" bs=4096 skip=1 count=16 status=none > "$tmp/want"
same_file "$tmp/want" "$tmp/ours.out"

# Without range: to the end.
same_served_as_nbdkit --filter=offset file "$tmp/disk.img" offset=1536K
[ "$(stat -c %s "$tmp/ours.out")" -eq $((512 * 1024)) ] || fail "size without range"

# Block status in the window's offsets: data up to the hole at 1 MiB, then the hole.
start_server --filter=offset file "$tmp/disk.img" offset=1020K
nbdinfo --map "$uri" > "$tmp/map"
cat "$tmp/map"
grep -Eq '^ *0 +4096 +0 +data' "$tmp/map" || fail "the data before the hole"
grep -Eq '^ *4096 +1048576 +3 +hole,zero' "$tmp/map" || fail "the hole after it"

# Writes are shifted too.
nbdsh -u "$uri" -c 'h.pwrite(b"shifted!", 10)'
[ "$(dd if="$tmp/disk.img" bs=1 skip=$((1020 * 1024 + 10)) count=8 status=none)" = "shifted!" ] ||
    fail "write did not land at offset+10"

# A window past the end: the server starts, clients are refused.
start_server --filter=offset file "$tmp/disk.img" offset=1M range=2M
expect_fail nbdinfo "$uri"

bad_args --filter=offset memory 1M offset=12Q -- offset=12Q
bad_args --filter=offset memory 1M range=x -- range=x
echo OK

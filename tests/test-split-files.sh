#!/usr/bin/env bash
# The split plugin: several files served as one disk, in the order given, with the data and the
# map of data and holes nbdkit serves; writes land in the right file, across file boundaries.
#
# Fails against nbdkit 1.32 at the write across files: its split plugin writes the second file at
# the offset in the whole disk rather than in that file, so the start of b is not written.
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/a" 1M
printf 'a short file' > "$tmp/b"
: > "$tmp/empty"
truncate -s 4M "$tmp/c"                      # a file that is all hole...
printf 'data in the middle' | dd of="$tmp/c" bs=1 seek=2097152 conv=notrunc status=none
random_file "$tmp/d" 64K

files=("$tmp/a" "$tmp/b" "$tmp/empty" "$tmp/c" "$tmp/d")
same_as_nbdkit split "${files[@]}"
cat "${files[@]}" > "$tmp/joined"
same_file "$tmp/ours.img" "$tmp/joined"
same_as_nbdkit split file="$tmp/d" file="$tmp/a"

start_server -r split "${files[@]}"
nbdinfo --map "$uri" > "$tmp/ours.map"
stop_server "$server_pid"
start_reference -r split "${files[@]}"
nbdinfo --map "$uri" > "$tmp/theirs.map"
stop_server "$server_pid"
diff -u "$tmp/theirs.map" "$tmp/ours.map" || fail "the extent maps differ"
grep -q hole "$tmp/ours.map" || fail "the hole in $tmp/c is not reported: $(cat "$tmp/ours.map")"

# A write across the boundary of a and b changes both files.
start_server split "${files[@]}"
size=$(nbdinfo --size "$uri")
[ "$size" -eq $((1048576 + 12 + 4194304 + 65536)) ] || fail "size $size"
nbdsh -u "$uri" -c 'h.pwrite(b"ABCDEFGH", 1048576 - 4)'
[ "$(tail -c 4 "$tmp/a")" = ABCD ] || fail "the end of a was not written"
[ "$(head -c 4 "$tmp/b")" = EFGH ] || fail "the start of b was not written"

bad_args split -- file
bad_args split "$tmp/nonexistent" -- "$tmp/nonexistent"
echo OK

#!/usr/bin/env bash
# The tar filter: the member served is byte for byte nbdkit's and the original, in GNU, pax and
# ustar archives, with a long name (GNU 'L' record, pax path=), and under the gzip filter; writes
# land in the archive in place (tar -xO gives the new bytes, the other members and the archive's
# size unchanged); a missing member, tar-limit= too small, a corrupt header and a missing
# tar-entry= are refused with messages naming them.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/decoders.sh"

decoders_image "$tmp/disk.img"
mkdir -p "$tmp/src/a-directory-with-a-name-long-enough/to-need-more-than-one-hundred-characters-in-all"
long=a-directory-with-a-name-long-enough/to-need-more-than-one-hundred-characters-in-all/disk.img
cp "$tmp/disk.img" "$tmp/src/disk.img"
cp "$tmp/disk.img" "$tmp/src/$long"
echo first > "$tmp/src/first.txt"
echo last > "$tmp/src/last.txt"
for format in gnu pax ustar; do
    members=(first.txt disk.img last.txt)
    [ $format = ustar ] || members+=("$long")
    tar -C "$tmp/src" --format=$format -cf "$tmp/$format.tar" "${members[@]}"
    for entry in disk.img "$long"; do
        [ $format = ustar ] && [ "$entry" = "$long" ] && continue
        same_served_as_nbdkit --filter=tar file "$tmp/$format.tar" tar-entry="$entry"
        served_is "$tmp/disk.img" writable
    done
done

gzip -c "$tmp/pax.tar" > "$tmp/pax.tar.gz"
same_served_as_nbdkit --filter=tar --filter=gzip file "$tmp/pax.tar.gz" tar-entry=disk.img
same_file "$tmp/disk.img" "$tmp/ours.out"

# Writes go to the archive in place.
cp "$tmp/gnu.tar" "$tmp/w.tar"
size=$(stat -c %s "$tmp/w.tar")
start_server --filter=tar file "$tmp/w.tar" tar-entry=disk.img
nbdsh -u "$uri" -c '
assert not h.is_read_only()
h.pwrite(b"W" * 5000, 6242881 - 5000)
h.pwrite(b"X" * 100, 1000)
h.flush()
'
python3 - "$tmp/disk.img" "$tmp/expect.img" <<'PY'
import sys
d = bytearray(open(sys.argv[1], "rb").read())
d[-5000:] = b"W" * 5000
d[1000:1100] = b"X" * 100
open(sys.argv[2], "wb").write(d)
PY
tar -xOf "$tmp/w.tar" disk.img | cmp - "$tmp/expect.img" || fail "the written member differs"
[ "$(tar -xOf "$tmp/w.tar" last.txt)" = last ] || fail "the next member changed"
[ "$(stat -c %s "$tmp/w.tar")" -eq "$size" ] || fail "the archive's size changed"

start_server --filter=tar file "$tmp/gnu.tar" tar-entry=nothere.img
if nbdinfo --size "$uri" 2>/dev/null; then fail "a missing member was served"; fi
grep -q 'tar-entry=nothere.img' "$server_log" || fail "no message for the missing member"

start_server --filter=tar file "$tmp/gnu.tar" tar-entry=last.txt tar-limit=4K
if nbdinfo --size "$uri" 2>/dev/null; then fail "tar-limit=4K: the member past it was served"; fi
grep -q 'tar-limit' "$server_log" || fail "no message naming tar-limit"
start_server --filter=tar file "$tmp/gnu.tar" tar-entry=first.txt tar-limit=4K
[ "$(nbdinfo --size "$uri")" -eq 6 ] || fail "first.txt inside tar-limit=4K"

cp "$tmp/gnu.tar" "$tmp/bad.tar"
printf 'x' | dd of="$tmp/bad.tar" bs=1 seek=10 conv=notrunc status=none
start_server --filter=tar file "$tmp/bad.tar" tar-entry=disk.img
if nbdinfo --size "$uri" 2>/dev/null; then fail "a corrupt header was accepted"; fi
grep -q 'checksum' "$server_log" || fail "no message for the corrupt header"

bad_args --filter=tar file "$tmp/gnu.tar" -- tar-entry
bad_args --filter=tar file "$tmp/gnu.tar" tar-entry=disk.img tar-limit=1Q -- tar-limit=1Q
echo OK

#!/usr/bin/env bash
# The eval plugin: methods written as shell fragments on the command line serve the same disk
# as under nbdkit; a disk is writable when pwrite is given; parameters that are not methods
# reach the config fragment.
source "$(dirname "$0")/lib/functions.sh"

same_as_nbdkit eval get_size='echo 64K' pread='head -c "$3" /dev/zero | tr "\0" "\125"'

truncate -s 1M "$tmp/disk.img"
start_server eval \
    config='[ "$2" = file ] || exit 2; ln -s "$3" "$tmpdir/file"' \
    get_size='stat -Lc %s "$tmpdir/file"' \
    pread='dd if="$tmpdir/file" skip="$4" count="$3" iflag=skip_bytes,count_bytes status=none' \
    pwrite='dd of="$tmpdir/file" seek="$4" conv=notrunc oflag=seek_bytes status=none' \
    file="$tmp/disk.img"
nbdsh -u "$uri" -c '
assert h.get_size() == 1 << 20
assert not h.is_read_only(), "pwrite was given"
assert not h.can_trim() and not h.can_flush()
h.pwrite(b"eval", 512)
assert h.pread(4, 512) == b"eval"
'
[ "$(dd if="$tmp/disk.img" bs=1 skip=512 count=4 status=none)" = eval ] || fail "the write did not reach the file"

bad_args eval get_size='echo 1M' pread='exit 2' colour=blue -- colour
echo OK

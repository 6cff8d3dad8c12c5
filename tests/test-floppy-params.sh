#!/usr/bin/env bash
# The floppy plugin's parameters: each bad value exits 1 before listening with a message naming
# the parameter and the value, as do a file too large for FAT32 and a size= too small for the
# files; --help and --dump-plugin describe the plugin.
#
# nbdkit 1.32 cuts a label longer than 11 characters short and takes any bytes; the manual says
# "up to 11 ASCII characters", and we refuse the rest rather than write a label other than asked.
source "$(dirname "$0")/lib/functions.sh"

mkdir "$tmp/d"
random_file "$tmp/d/f" 2M
printf x > "$tmp/file"

bad_args floppy -- "dir="
bad_args floppy "$tmp/nonexistent" -- "dir=$tmp/nonexistent"
bad_args floppy "$tmp/file" -- "dir=$tmp/file" "not a directory"
bad_args floppy "$tmp/d" dir="$tmp/d" -- "dir=$tmp/d" "once"
bad_args floppy "$tmp/d" label=TWELVE_CHARS -- "label=TWELVE_CHARS"
bad_args floppy "$tmp/d" label=a/b -- "label=a/b"
bad_args floppy "$tmp/d" label=ÄÖ -- "label=ÄÖ"
bad_args floppy "$tmp/d" size=12Q -- "size=12Q"
bad_args floppy "$tmp/d" size=1K -- "size=1K"
bad_args floppy "$tmp/d" size=2M -- "size=2M" "clusters"
bad_args floppy "$tmp/d" colour=red -- "colour"

# A file of 4 GiB does not fit in FAT32 (sparse: no space taken).
mkdir "$tmp/big"
truncate -s 4G "$tmp/big/huge"
bad_args floppy "$tmp/big" -- "dir=$tmp/big" "huge" "FAT32"

# A size= below 65,536 clusters' worth still serves, as a FAT32 with few clusters (fsck.fat warns).
start_server floppy "$tmp/d" size=4M label=""
[ "$(nbdinfo --size "$uri")" -eq 4194304 ] || fail "size=4M"
rm -f "$tmp/small.img"
nbdcopy "$uri" "$tmp/small.img"
stop_server "$server_pid"
dd if="$tmp/small.img" of="$tmp/small-part.img" bs=1M skip=1 status=none
fsck.fat -n "$tmp/small-part.img" || fail "size=4M: fsck.fat finds errors"

plugin_describes_itself floppy dir "label=<LABEL>"
echo OK
